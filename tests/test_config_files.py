"""`edge-agent check-config` on the files a config names (password, TLS CA, certificate, key), run
in-process: the exit code and the exact lines an operator reads, one per faulty key.

tests/test_config.py runs the same checks through a subprocess (and `run` refusing them); these
keep every line exact, and being in-process they are the ones mutation testing can map (issue 19).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.cli import main
from agent.config import load_config
from agent.config.models import parse_config
from agent.errors import ConfigError

MINIMAL = """
[gateway]
district = "gangnam"
id = "gw-01"
data_dir = "{data}"
[[cameras]]
id = "cam-1"
source = "synthetic:street"
"""


def pem_pair(d: Path, name: str, *, encrypted: bool = False) -> tuple[Path, Path]:
    """A self-signed certificate and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    protection = (
        serialization.BestAvailableEncryption(b"passphrase") if encrypted else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection)
    (d / f"{name}.key").write_bytes(key_pem)
    return d / f"{name}.crt", d / f"{name}.key"


def check_config(tmp_path: Path, mqtt: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """Exit code, the `  - ` lines on stderr, and stdout of `edge-agent check-config`."""
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL.format(data=tmp_path / "data") + mqtt, encoding="utf-8")
    capsys.readouterr()
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    lines = [line[4:] for line in err.splitlines() if line.startswith("  - ")]
    if lines:
        assert err.splitlines()[0] == f"{path}: invalid configuration"
    return code, lines, out


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    crt, key = pem_pair(tmp_path, "client")
    _, other_key = pem_pair(tmp_path, "other")
    _, locked_key = pem_pair(tmp_path, "locked", encrypted=True)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(b"p\xe4ssword\n")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    return {
        "crt": crt,
        "key": key,
        "other_key": other_key,
        "locked_key": locked_key,
        "junk": junk,
        "latin1": latin1,
        "empty": empty,
        "missing": tmp_path / "missing.pem",
        "dir": tmp_path,
    }


def tls(**paths: Path) -> str:
    return "[mqtt.tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in paths.items())


def password(path: Path) -> str:
    return f'[mqtt]\nusername = "gw"\npassword_file = "{path}"\n'


def test_good_files_pass(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for mqtt in (
        tls(ca_file=files["crt"], cert_file=files["crt"], key_file=files["key"]),
        tls(cert_file=files["crt"], key_file=files["key"]),  # the system CAs
        tls(ca_file=files["crt"]),  # no client certificate
    ):
        code, lines, out = check_config(tmp_path, mqtt, capsys)
        assert (code, lines) == (0, []), mqtt
        assert ": OK (cctv/v1/gangnam/gw-01, 1 camera(s))\n" in out


def test_each_bad_file_is_one_exact_line(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    f = files
    good = {"ca_file": f["crt"], "cert_file": f["crt"], "key_file": f["key"]}
    cases = {
        password(f["missing"]): [
            f"mqtt.password_file: cannot read {f['missing']}: No such file or directory"
        ],
        password(f["empty"]): [f"mqtt.password_file: {f['empty']} is empty (its first line is the password)"],
        password(f["dir"]): [f"mqtt.password_file: cannot read {f['dir']}: Is a directory"],
        password(f["latin1"]): [f"mqtt.password_file: cannot read {f['latin1']}: not UTF-8 text"],
        tls(**{**good, "ca_file": f["missing"]}): [
            f"mqtt.tls.ca_file: cannot read {f['missing']}: No such file or directory"
        ],
        tls(**{**good, "cert_file": f["missing"]}): [
            f"mqtt.tls.cert_file: cannot read {f['missing']}: No such file or directory"
        ],
        tls(**{**good, "key_file": f["missing"]}): [
            f"mqtt.tls.key_file: cannot read {f['missing']}: No such file or directory"
        ],
        tls(**{**good, "cert_file": f["junk"]}): [
            f"mqtt.tls.cert_file: {f['junk']} holds no PEM certificate"
        ],
        tls(**{**good, "key_file": f["junk"]}): [f"mqtt.tls.key_file: {f['junk']} holds no PEM private key"],
        tls(**{**good, "key_file": f["locked_key"]}): [
            f"mqtt.tls.key_file: {f['locked_key']} is encrypted; the agent needs an unencrypted key"
        ],
        tls(**{**good, "key_file": f["other_key"]}): [
            f"mqtt.tls.key_file: {f['other_key']} is not the private key of {f['crt']} (KEY_VALUES_MISMATCH)"
        ],
        # every fault at once, in key order: nothing found first hides what is found later
        password(f["empty"]) + tls(ca_file=f["missing"], cert_file=f["missing"], key_file=f["missing"]): [
            f"mqtt.password_file: {f['empty']} is empty (its first line is the password)",
            f"mqtt.tls.ca_file: cannot read {f['missing']}: No such file or directory",
            f"mqtt.tls.cert_file: cannot read {f['missing']}: No such file or directory",
            f"mqtt.tls.key_file: cannot read {f['missing']}: No such file or directory",
        ],
        tls(ca_file=f["junk"], cert_file=f["junk"], key_file=f["junk"]): [
            f"mqtt.tls.ca_file: {f['junk']} holds no PEM CA certificate",
            f"mqtt.tls.cert_file: {f['junk']} holds no PEM certificate",
            f"mqtt.tls.key_file: {f['junk']} holds no PEM private key",
        ],
        tls(ca_file=f["junk"], cert_file=f["crt"], key_file=f["other_key"]): [
            f"mqtt.tls.ca_file: {f['junk']} holds no PEM CA certificate",
            f"mqtt.tls.key_file: {f['other_key']} is not the private key of {f['crt']} (KEY_VALUES_MISMATCH)",
        ],
    }
    for mqtt, expected in cases.items():
        code, lines, _ = check_config(tmp_path, mqtt, capsys)
        assert code == 1, mqtt
        # the CA line ends with ssl's own reason in parentheses, which varies by OpenSSL version
        shown = [line.split(" (", 1)[0] if "no PEM CA certificate" in line else line for line in lines]
        assert shown == expected, mqtt


def test_a_password_file_problem_names_the_key_as_its_source(tmp_path: Path, files: dict[str, Path]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL.format(data=tmp_path) + password(files["empty"]), encoding="utf-8")
    cfg = load_config(path)
    with pytest.raises(ConfigError) as info:
        cfg.mqtt.resolved_password()
    assert (info.value.source, info.value.problems) == (
        "mqtt.password_file",
        [f"{files['empty']} is empty (its first line is the password)"],
    )


def test_a_secret_value_is_masked_in_the_error_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL.format(data=tmp_path) + "[mqtt]\npassword = 12345678\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["mqtt.password: Input should be a valid string (got ***)"]


def test_a_config_given_as_data_is_named_config_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({})
    assert (info.value.source, info.value.problems) == ("<config>", ["gateway: Field required"])


def test_check_config_says_which_cameras_keep_packets_and_which_pixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    path = tmp_path / "c.toml"
    path.write_text(
        '[gateway]\ndistrict = "gangnam"\nid = "gw-01"\n'
        f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nhost = "127.0.0.1"\n'
        '[[cameras]]\nid = "ip"\nsource = "rtsp://192.0.2.10/main"\ndetect_source = "rtsp://192.0.2.10/sub"\n'
        '[[cameras]]\nid = "masked"\nsource = "rtsp://192.0.2.11/main"\n'
        "privacy_masks = [[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]]\n"
        '[[cameras]]\nid = "usb"\nsource = "usb:0"\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(path), "--no-files"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()[1:]}
    assert lines["ip"].split(": ", 1)[1].startswith("packets") and "nothing of the main stream" in lines["ip"]
    assert "pixels (privacy masks must be burnt in" in lines["masked"]
    assert "pixels (the source gives no packets" in lines["usb"]
