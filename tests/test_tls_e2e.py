"""The agent and the platform client over TLS with client certificates and passwords.

A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate are made
with the `openssl` CLI in tmp_path; a private Mosquitto listens with `require_certificate true`
and a password file. The agent with `[mqtt.tls]` connects and answers a ping sent through the
client over TLS; an agent without a client certificate gets no further than the handshake.
When a TLS connection fails, the link says why (unknown CA, host name mismatch, expired
certificate, no client certificate, refused) once at WARNING rather than on every retry, and
`insecure = true` is warned about at start-up.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import MqttConfig, TlsConfig
from agent.mqtt import MqttLink, Outbox
from agent.sdk.client import ConnectFailed, PlatformClient
from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto
from tests.harness import AgentProcess, wait_answering, write_config

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
    pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd"),
]

USER, PASSWORD = "gw-tls", "s3cret-for-tests"
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    passwords: Path
    password_file: Path  # the client's password, first line


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _issue(d: Path, name: str, subject: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext, encoding="utf-8")
    _openssl("req", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        *EC_KEY,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    _issue(
        d,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _issue(d, "client", "/CN=edge-gw", "extendedKeyUsage=clientAuth\n")
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(d / "passwd"), USER, PASSWORD], check=True, capture_output=True
    )
    (d / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    return Pki(
        d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
        d / "passwd", d / "password",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # As root, mosquitto drops to the `mosquitto` user, which cannot read keys in tmp_path.
    user = "user root\n" if os.geteuid() == 0 else ""
    extra = (
        f"{user}allow_anonymous false\npassword_file {pki.passwords}\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\nrequire_certificate true\n"
    )
    b = start_mosquitto(tmp_path_factory.mktemp("tls-broker"), extra=extra)
    yield b
    stop_mosquitto(b)


def tls(pki: Pki, with_cert: bool = True) -> TlsConfig:
    if with_cert:
        return TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    return TlsConfig(ca_file=pki.ca)


def platform(
    broker: Broker, root: str, pki: Pki, *, password: str = PASSWORD, mode: str = "cert"
) -> PlatformClient:
    """mode: "cert" (CA + client certificate), "ca" (no client certificate), "plain" (no TLS)."""
    config = None if mode == "plain" else tls(pki, with_cert=mode == "cert")
    return PlatformClient(
        broker.host, broker.port, root, agency="police", operator="op-1", tls=config, username=USER,
        password=password,
    )  # fmt: skip


def agent_config(tmp: Path, broker: Broker, pki: Pki, root_id: str, *, client_cert: bool) -> Path:
    cert = f'cert_file = "{pki.client_cert}"\nkey_file = "{pki.client_key}"\n' if client_cert else ""
    auth = f'username = "{USER}"\npassword_file = "{pki.password_file}"\n'
    extra = f'{auth}\n[mqtt.tls]\nca_file = "{pki.ca}"\n{cert}'
    cameras = '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street?fps=5"\nallowed_agencies = ["police"]\n'
    return write_config(
        tmp / "agent.toml", district="tls", gateway=root_id, port=broker.port, data_dir=tmp / "data",
        cameras=cameras, extra=extra,
    )  # fmt: skip


def test_agent_over_tls_with_client_certificate_answers_ping(
    tmp_path: Path, tls_broker: Broker, pki: Pki
) -> None:
    gateway = "gw-" + uuid.uuid4().hex[:10]
    root = f"cctv/v1/tls/{gateway}"
    agent = AgentProcess(
        agent_config(tmp_path, tls_broker, pki, gateway, client_cert=True), tmp_path / "agent.log"
    )
    try:
        with platform(tls_broker, root, pki) as client:
            pong = wait_answering(client)
            assert pong["agent_version"]
            statuses: list[bytes] = []
            client.subscribe(f"{root}/status", lambda m: statuses.append(bytes(m.payload)), timeout=5)
            deadline = time.monotonic() + 5
            while not statuses and time.monotonic() < deadline:
                time.sleep(0.05)
            assert statuses
            assert b'"online"' in statuses[0]
            result, jpeg = client.snapshot("cam-1", max_width=160, timeout=10)
            assert jpeg[:2] == b"\xff\xd8"
            assert result["width"] == 160

        ctl = subprocess.run(
            [
                sys.executable, "-m", "agent", "ctl", "--port", str(tls_broker.port), "--root", root,
                "--agency", "police", "--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert),
                "--key-file", str(pki.client_key), "--username", USER,
                "--password-file", str(pki.password_file), "ping",
            ],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert ctl.returncode == 0, ctl.stderr
        assert "pong" in ctl.stdout
    finally:
        agent.close()


def test_agent_without_client_certificate_is_refused(tmp_path: Path, tls_broker: Broker, pki: Pki) -> None:
    gateway = "gw-" + uuid.uuid4().hex[:10]
    root = f"cctv/v1/tls/{gateway}"
    with platform(tls_broker, root, pki) as watcher:
        statuses: list[mqtt.MQTTMessage] = []
        watcher.subscribe(f"{root}/#", statuses.append, timeout=5)
        agent = AgentProcess(
            agent_config(tmp_path, tls_broker, pki, gateway, client_cert=False), tmp_path / "agent.log"
        )
        try:
            time.sleep(3.0)  # long enough for several connection attempts (reconnect_min_s = 0.5)
            assert agent.proc.poll() is None, "the agent should keep retrying, not exit"
            assert statuses == []
        finally:
            agent.close()
    assert "connected to" not in agent.log()


def test_client_needs_certificate_and_password(tls_broker: Broker, pki: Pki) -> None:
    root = "cctv/v1/tls/nobody"
    with pytest.raises(ConnectFailed, match="Not authorized"):
        platform(tls_broker, root, pki, password="wrong").connect(timeout=5)
    with pytest.raises(ConnectFailed):
        platform(tls_broker, root, pki, mode="ca").connect(timeout=5)
    with pytest.raises(ConnectFailed):  # plain TCP to a TLS listener
        platform(tls_broker, root, pki, mode="plain").connect(timeout=5)


# -- why a TLS connection fails (issue 13 item 12) ----------------------------------------------------


def _server_cert(pki: Pki, name: str, *, hosts: list[str], expired: bool = False) -> tuple[Path, Path]:
    """A server certificate from the test CA, made with `cryptography` (openssl 3.0 cannot backdate)."""
    ca_key = serialization.load_pem_private_key(pki.ca.with_name("ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired else (
        now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)
    )  # fmt: skip
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d = pki.ca.parent
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (d / f"{name}.key").write_bytes(key_pem)
    return d / f"{name}.crt", d / f"{name}.key"


def _broker_with(tmp: pytest.TempPathFactory, cert: Path, key: Path) -> Broker:
    user = "user root\n" if os.geteuid() == 0 else ""
    return start_mosquitto(tmp.mktemp("tls-broker"), extra=f"{user}certfile {cert}\nkeyfile {key}\n")


@pytest.fixture(scope="module")
def wrong_host_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = _broker_with(tmp_path_factory, *_server_cert(pki, "wrong-host", hosts=["broker.elsewhere.example"]))
    yield b
    stop_mosquitto(b)


@pytest.fixture(scope="module")
def expired_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = _broker_with(tmp_path_factory, *_server_cert(pki, "expired", hosts=["127.0.0.1"], expired=True))
    yield b
    stop_mosquitto(b)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("other-ca")
    _openssl(
        "req",
        "-x509",
        *EC_KEY,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=other",
        cwd=d,
    )
    return d / "ca.crt"


def _link_warnings(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, port: int, tls_cfg: TlsConfig, seconds: float = 3.5
) -> list[logging.LogRecord]:
    """Run an MqttLink against 127.0.0.1:port for `seconds`; the WARNING+ records of agent.mqtt."""
    cfg = MqttConfig(
        host="127.0.0.1", port=port, tls=tls_cfg, username=USER, password=PASSWORD,
        reconnect_min_s=0.5, reconnect_max_s=1,
    )  # fmt: skip
    outbox = Outbox(tmp_path / "outbox.db")
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    link = MqttLink(cfg, "gw-" + uuid.uuid4().hex[:8], outbox, "x/status", b"offline")
    link.start()
    try:
        assert not link.wait_connected(seconds)
    finally:
        link.stop(timeout=0.5)
        outbox.close()
    return [r for r in caplog.records if r.name.startswith("agent.mqtt") and r.levelno >= logging.WARNING]


# paho leaves the socket of a failed TLS handshake to the garbage collector (closed there, but
# with a ResourceWarning that pytest turns into an error); that is paho's, not the link's.
PAHO_UNCLOSED = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


@PAHO_UNCLOSED
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown_ca", "unknown CA"),
        ("wrong_host", "host name mismatch"),
        ("expired", "expired"),
        ("no_client_cert", "client certificate"),
        ("refused", "refused"),
    ],
)
def test_a_failing_tls_connection_says_why_once(
    case: str,
    reason: str,
    request: pytest.FixtureRequest,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if case == "unknown_ca":
        port, cfg = (
            request.getfixturevalue("tls_broker").port,
            TlsConfig(
                ca_file=request.getfixturevalue("other_ca"),
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            ),
        )
    elif case == "wrong_host":
        port, cfg = request.getfixturevalue("wrong_host_broker").port, tls(pki)
    elif case == "expired":
        port, cfg = request.getfixturevalue("expired_broker").port, tls(pki)
    elif case == "no_client_cert":
        port, cfg = request.getfixturevalue("tls_broker").port, tls(pki, with_cert=False)
    else:
        port, cfg = free_port(), tls(pki)
    warnings = _link_warnings(caplog, tmp_path, port, cfg)
    about = [r for r in warnings if reason in r.getMessage()]
    assert len(about) == 1, [r.getMessage() for r in warnings]  # said once, not on every retry
    assert about[0].levelno == logging.WARNING
    assert f"127.0.0.1:{port}" in about[0].getMessage()
    assert not [r for r in warnings if "Client is not connected" in r.getMessage()]


@PAHO_UNCLOSED
def test_a_lasting_failure_is_repeated_with_a_count(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MqttLink, "FAILURE_LOG_INTERVAL_S", 1.0)
    warnings = _link_warnings(caplog, tmp_path, free_port(), tls(pki), seconds=3.5)
    refused = [r.getMessage() for r in warnings if "refused" in r.getMessage()]
    assert len(refused) >= 2, refused
    assert "attempts" in refused[-1]


def test_insecure_tls_warns_at_start_up(
    pki: Pki, tls_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insecure = TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key, insecure=True)
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    outbox = Outbox(tmp_path / "outbox.db")
    cfg = MqttConfig(host="127.0.0.1", port=tls_broker.port, tls=insecure, username=USER, password=PASSWORD)
    link = MqttLink(cfg, "gw-" + uuid.uuid4().hex[:8], outbox, "x/status", b"offline")
    try:
        link.start()
        assert link.wait_connected(10)  # it works, and that is the danger
    finally:
        link.stop(timeout=0.5)
        outbox.close()
    (warning,) = [r for r in caplog.records if "insecure" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "host name" in warning.getMessage()
    assert "impersonate" in warning.getMessage()
