"""Signed commands: keys made by `edge-agent keygen`, Ed25519 over the canonical envelope, checked
by the gateway against one or two platform keys; provisioned by Ansible and the firmware seed;
signed by PlatformClient and `ctl --sign-key`; end to end against `edge-agent run`."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.models import CommandError
from agent.commands.signing import (
    SignatureVerifier,
    canonical_envelope,
    load_private_key,
    load_public_key,
    sign_envelope,
)
from agent.commands.verifying import CommandVerifier, load_verifier
from agent.config import parse_config
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# RFC 8032, section 7.1, TEST 1: a key anyone can check the documented example against.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def edge_agent(*argv: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent", *argv]
    if umask is not None:  # through a shell, so the child starts with exactly that umask
        command = ["bash", "-c", f'umask {umask:03o} && exec "$@"', "bash", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)


@dataclass(frozen=True)
class Pair:
    key: Path
    pub: Path


def keygen(tmp: Path, name: str) -> Pair:
    result = edge_agent("keygen", "--out", str(tmp / name))
    assert result.returncode == 0, result.stderr
    return Pair(tmp / f"{name}.key", tmp / f"{name}.pub")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """Three pairs made by `edge-agent keygen`: the current key, the next one, an outsider's."""
    tmp = tmp_path_factory.mktemp("keys")
    return {name: keygen(tmp, name) for name in ("current", "next", "outsider")}


def envelope(agency: str = "police", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"sig-{uuid.uuid4().hex[:12]}",
        "cmd": "snapshot",
        "args": {"camera": "cam-1", "max_width": 320},
        "issued_at": "2026-11-24T10:00:00.000Z",
        "ttl_s": 30,
        "requester": {"agency": agency, "operator": "officer-1234", "incident": "112-2026-000123"},
        "reply_to": "cctv/v1/gangnam/gw-01/reply/platform-1",
        **extra,
    }


def config_with_keys(*paths: Path) -> Any:
    return parse_config({"gateway": {"district": "d", "id": "g", "platform_keys": [str(p) for p in paths]}})


def refusal(verifier: CommandVerifier, env: dict[str, Any], props: dict[str, str] | None = None) -> str:
    """The reason `verifier` gives for refusing `env`; fails the test if it is accepted."""
    with pytest.raises(CommandError) as info:
        verifier.verify(env, props or {})
    assert info.value.code == "unauthenticated"
    return info.value.message


# -- keygen ---------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_whatever_the_umask(tmp_path: Path) -> None:
    result = edge_agent("keygen", "--out", str(tmp_path / "platform-1"), umask=0)

    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "platform-1.key", tmp_path / "platform-1.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    assert private.read_text(encoding="ascii").startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text(encoding="ascii").startswith("-----BEGIN PUBLIC KEY-----")
    assert "platform_keys" in result.stdout  # says where the public key goes
    # The two files are one pair.
    signed = sign_envelope(envelope(), load_private_key(private))
    SignatureVerifier([load_public_key(public)]).verify(signed, {})


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    pair = keygen(tmp_path, "platform-1")
    before = pair.key.read_bytes(), pair.pub.read_bytes()
    pair.pub.unlink()  # even one half of a pair left over is kept

    again = edge_agent("keygen", "--out", str(tmp_path / "platform-1"))

    assert again.returncode == 1
    assert "not overwriting" in again.stderr
    assert str(pair.key) in again.stderr
    assert pair.key.read_bytes() == before[0]
    assert not pair.pub.exists()


def test_keygen_does_not_write_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n", encoding="utf-8")
    (tmp_path / "trap.key").symlink_to(target)

    result = edge_agent("keygen", "--out", str(tmp_path / "trap"))

    assert result.returncode == 1
    assert target.read_text(encoding="utf-8") == "precious\n"
    assert not (tmp_path / "trap.pub").exists()


# -- verification ---------------------------------------------------------------------------------


def test_signed_envelope_verifies_in_the_envelope_or_as_a_user_property(keys: dict[str, Pair]) -> None:
    verifier: CommandVerifier = SignatureVerifier([load_public_key(keys["current"].pub)])
    signed = sign_envelope(envelope(), load_private_key(keys["current"].key))

    verifier.verify(signed, {})
    unsigned_body = {k: v for k, v in signed.items() if k != "sig"}
    verifier.verify(unsigned_body, {"sig": signed["sig"]})


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda e: e["requester"].update(agency="fire"), id="agency"),
        pytest.param(lambda e: e["args"].update(camera="cam-2"), id="args"),
        pytest.param(lambda e: e.update(ttl_s=600), id="ttl"),
        pytest.param(lambda e: e.update(reply_to="cctv/v1/gangnam/gw-01/reply/evil"), id="reply_to"),
        pytest.param(lambda e: e.update(extra=1), id="added-field"),
        pytest.param(lambda e: e.pop("reply_to"), id="removed-field"),
    ],
)
def test_any_change_to_what_was_signed_is_unauthenticated(keys: dict[str, Pair], tamper: Any) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])
    signed = sign_envelope(envelope(), load_private_key(keys["current"].key))
    tampered = json.loads(json.dumps(signed))
    tamper(tampered)

    assert "does not match" in refusal(verifier, tampered)


def test_signature_by_another_key_is_unauthenticated(keys: dict[str, Pair]) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])
    forged = sign_envelope(envelope(), load_private_key(keys["outsider"].key))

    assert "does not match any platform key" in refusal(verifier, forged)


def test_missing_signature_is_unauthenticated(keys: dict[str, Pair]) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])

    assert "not signed" in refusal(verifier, envelope())
    assert "not signed" in refusal(verifier, envelope(), {"other": "x"})


@pytest.mark.parametrize(
    "sig",
    [
        "",
        "not base64 at all!",
        base64.b64encode(bytes(63)).decode(),  # one byte short
        base64.b64encode(bytes(65)).decode(),
        base64.urlsafe_b64encode(b"\xfb" * 64).decode(),  # the URL-safe alphabet is not the one
        "A" * 10_000,
        42,
        None,
        ["x"],
        {"sig": "x"},
    ],
    ids=["empty", "junk", "63-bytes", "65-bytes", "urlsafe", "huge", "int", "null", "list", "object"],
)
def test_garbled_signature_is_unauthenticated(keys: dict[str, Pair], sig: object) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])

    reason = refusal(verifier, envelope(sig=sig))

    assert "not a base64 Ed25519 signature" in reason
    assert len(reason) < 120  # the garbage is not echoed


def test_all_zero_signature_of_the_right_length_is_unauthenticated(keys: dict[str, Pair]) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])

    assert "does not match" in refusal(verifier, envelope(sig=base64.b64encode(bytes(64)).decode()))


def test_the_envelopes_sig_wins_over_the_user_property(keys: dict[str, Pair]) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])
    good = sign_envelope(envelope(), load_private_key(keys["current"].key))
    bad = sign_envelope(good, load_private_key(keys["outsider"].key))

    assert "does not match" in refusal(verifier, bad, {"sig": good["sig"]})


def test_envelope_that_has_no_utf8_form_is_refused_not_crashed(keys: dict[str, Pair]) -> None:
    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])
    env = json.loads('{"id":"a","cmd":"ping","requester":{"agency":"police","operator":"\\ud800"}}')
    env["sig"] = base64.b64encode(bytes(64)).decode()

    assert "UTF-8" in refusal(verifier, env)


def test_two_keys_for_rotation_both_verify_and_nothing_else_does(keys: dict[str, Pair]) -> None:
    verifier = load_verifier(config_with_keys(keys["current"].pub, keys["next"].pub))
    assert verifier is not None

    for name in ("current", "next"):
        verifier.verify(sign_envelope(envelope(), load_private_key(keys[name].key)), {})
    assert "does not match" in refusal(
        verifier, sign_envelope(envelope(), load_private_key(keys["outsider"].key))
    )


def test_the_canonical_form_is_sorted_compact_utf8_without_sig() -> None:
    env = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}, "sig": "ignored"}

    assert canonical_envelope(env) == '{"a":{"y":true,"z":null},"b":[1,2.5,"é"]}'.encode()


def test_documented_example_verifies() -> None:
    """docs/protocol.md's worked example (RFC 8032's test key) is what this code computes."""
    doc = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Signed commands") :]
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    blocks = re.findall(r"```(?:json|text)?\n(.*?)\n```", section, re.DOTALL)
    example = json.loads(blocks[0])
    canonical = canonical_envelope(example).decode()

    assert base64.b64encode(raw_public).decode() in section
    assert canonical in blocks
    assert sign_envelope(example, key)["sig"] in section


# -- the gateway's configuration ------------------------------------------------------------------


def test_without_keys_the_agent_warns_that_commands_are_not_authenticated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="agent.commands.signing"):
        assert load_verifier(config_with_keys()) is None

    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "NOT authenticated" in caplog.text


def test_with_keys_the_agent_says_how_many(keys: dict[str, Pair], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent.commands.signing"):
        load_verifier(config_with_keys(keys["current"].pub, keys["next"].pub))

    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "2 platform key(s)" in caplog.text


def test_raw_base64_public_key_files_are_accepted(keys: dict[str, Pair], tmp_path: Path) -> None:
    public = load_private_key(keys["current"].key).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw_file = tmp_path / "platform.b64"
    raw_file.write_text(base64.b64encode(raw).decode() + "\n", encoding="ascii")

    verifier = load_verifier(config_with_keys(raw_file))

    assert verifier is not None
    verifier.verify(sign_envelope(envelope(), load_private_key(keys["current"].key)), {})


def test_more_than_two_keys_is_a_config_error(keys: dict[str, Pair], tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[gateway]\ndistrict = "d"\nid = "g"\nplatform_keys = '
        + json.dumps([str(keys[n].pub) for n in ("current", "next", "outsider")])
        + "\n",
        encoding="utf-8",
    )

    result = edge_agent("check-config", str(tmp_path / "c.toml"))

    assert result.returncode == 1
    assert "gateway.platform_keys" in result.stderr


def _unusable_key_files(tmp: Path, keys: dict[str, Pair]) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error must contain); each file's content must never be shown."""
    rsa_like = generate_private_key(SECP256R1())
    ec_pub = tmp / "ec.pub"
    ec_pub.write_bytes(
        rsa_like.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    garbage = tmp / "garbage.pub"
    garbage.write_text("SECRET-LOOKING-GARBAGE-4711\n", encoding="ascii")
    truncated = tmp / "truncated.pub"
    truncated.write_text(keys["current"].pub.read_text(encoding="ascii")[:60], encoding="ascii")
    unreadable = tmp / "unreadable.pub"
    unreadable.mkdir()
    private_copy = tmp / "private.pub"
    private_copy.write_bytes(keys["current"].key.read_bytes())
    return {
        "missing": (tmp / "nope.pub", "cannot read"),
        "directory": (unreadable, "cannot read"),
        "garbage": (garbage, "not an Ed25519 public key"),
        "truncated-pem": (truncated, "not a readable PEM public key"),
        "ec-key": (ec_pub, "not an Ed25519 key"),
        "private-key": (private_copy, "PRIVATE key"),
    }


def test_unusable_key_file_is_a_config_error_naming_the_file_not_its_content(
    keys: dict[str, Pair], tmp_path: Path
) -> None:
    for name, (path, words) in _unusable_key_files(tmp_path, keys).items():
        with pytest.raises(ConfigError) as info:
            load_verifier(config_with_keys(keys["current"].pub, path))
        assert info.value.source == "gateway.platform_keys", name
        [problem] = info.value.problems
        assert str(path) in problem and words in problem, (name, problem)
        content = path.read_bytes() if path.is_file() else b""
        body = b"".join(line for line in content.splitlines() if not line.startswith(b"-----"))
        assert not body or body.decode(errors="replace")[:16] not in problem, name


# -- provisioning ---------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the role's tasks set root ownership: run as root")
@pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible is not installed in this venv")
def test_ansible_role_installs_the_platform_keys_and_drops_a_rotated_one(
    keys: dict[str, Pair], tmp_path: Path
) -> None:
    from tests.test_ansible import render_configs

    host = "mapo-gw-001"
    etc = tmp_path / host / "etc"
    pems = [keys[n].pub.read_text(encoding="ascii") for n in ("current", "next")]

    run = render_configs(tmp_path, (host,), {"edge_agent_platform_keys": pems})

    assert run.rc == 0, run.output
    config = tomllib.loads((etc / "config.toml").read_text(encoding="utf-8"))
    installed = [Path(p) for p in config["gateway"]["platform_keys"]]
    assert installed == [etc / "platform-1.pub", etc / "platform-2.pub"]
    assert [p.read_text(encoding="ascii") for p in installed] == pems
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in installed)
    verifier = load_verifier(parse_config(config))
    assert verifier is not None
    verifier.verify(sign_envelope(envelope(), load_private_key(keys["next"].key)), {})

    # The rotation is over: only the new key is left, in the config and on disk.
    run = render_configs(tmp_path, (host,), {"edge_agent_platform_keys": pems[1:]})

    assert run.rc == 0, run.output
    config = tomllib.loads((etc / "config.toml").read_text(encoding="utf-8"))
    assert config["gateway"]["platform_keys"] == [str(etc / "platform-1.pub")]
    assert (etc / "platform-1.pub").read_text(encoding="ascii") == pems[1]
    assert not (etc / "platform-2.pub").exists()

    # And without keys the config names none.
    run = render_configs(tmp_path, (host,), {"edge_agent_platform_keys": []})

    assert run.rc == 0, run.output
    assert "platform_keys" not in (etc / "config.toml").read_text(encoding="utf-8")
    assert not (etc / "platform-1.pub").exists()


SEED_CONFIG = """
[gateway]
district = "mapo"
id = "gw-007"
platform_keys = ["/etc/edge-agent/platform-1.pub"]

[mqtt]
host = "broker.city.example"
port = 8883

[[cameras]]
id = "cam-1"
source = "synthetic:street"
"""


def _firstboot_gateway(tmp_path: Path) -> Any:
    from tests.test_firmware import Gateway

    return Gateway(tmp_path / "gw")


def test_firmware_seed_installs_the_platform_key(keys: dict[str, Pair], tmp_path: Path) -> None:
    gateway = _firstboot_gateway(tmp_path)
    pem = keys["current"].pub.read_text(encoding="ascii")
    gateway.write_seed(SEED_CONFIG, {"platform-1.pub": pem})

    result = gateway.firstboot()

    assert result.returncode == 0, result.stdout + result.stderr
    assert (gateway.config_dir / "platform-1.pub").read_text(encoding="ascii") == pem
    assert not (gateway.seed / "platform-1.pub").exists()


def test_firmware_seed_without_its_platform_key_or_with_a_bad_one_is_refused(
    keys: dict[str, Pair], tmp_path: Path
) -> None:
    gateway = _firstboot_gateway(tmp_path)
    gateway.write_seed(SEED_CONFIG)

    assert gateway.firstboot().returncode == 1
    assert "gateway.platform_keys[0] names /etc/edge-agent/platform-1.pub, but the seed has no" in (
        gateway.status()
    )

    # The private key by mistake: refused, and the seed keeps it for the technician to remove.
    gateway.write_seed(SEED_CONFIG, {"platform-1.pub": keys["current"].key.read_text(encoding="ascii")})

    assert gateway.firstboot().returncode == 1
    status = gateway.status()
    assert "platform-1.pub: holds a PRIVATE key" in status
    assert "BEGIN" not in status
    assert not (gateway.config_dir / "config.toml").exists()


# -- the platform's side --------------------------------------------------------------------------


def test_platform_client_signs_what_it_sends(keys: dict[str, Pair]) -> None:
    from agent.sdk.client import PlatformClient

    verifier = SignatureVerifier([load_public_key(keys["current"].pub)])
    signing = PlatformClient(
        "127.0.0.1", 1, "cctv/v1/d/g", agency="police", operator="o", signing_key=keys["current"].key
    )
    plain = PlatformClient("127.0.0.1", 1, "cctv/v1/d/g", agency="police", operator="o")
    try:
        verifier.verify(signing.envelope("snapshot", {"camera": "cam-1"}), {})
        assert "not signed" in refusal(verifier, plain.envelope("ping"))
    finally:
        signing.close()
        plain.close()


def test_platform_client_refuses_an_unusable_signing_key(keys: dict[str, Pair]) -> None:
    from agent.commands.signing import KeyFileError
    from agent.sdk.client import PlatformClient

    with pytest.raises(KeyFileError, match="no private key"):
        PlatformClient(
            "127.0.0.1", 1, "cctv/v1/d/g", agency="p", operator="o", signing_key=keys["current"].pub
        )


# -- end to end: `edge-agent run` on a real broker ------------------------------------------------


CAMERA = """
[[cameras]]
id = "cam-1"
source = "synthetic:street?fps=5"
allowed_agencies = ["police"]
"""


@pytest.fixture
def signed_gateway(
    broker: Any, unique_gateway: str, tmp_path: Path, keys: dict[str, Pair]
) -> Iterator[tuple[str, Any, Any]]:
    """`edge-agent run` trusting the `current` key; yields (root, subscriber, agent process)."""
    from tests.harness import AgentProcess, Subscriber, write_config

    root = f"cctv/v1/signing/{unique_gateway}"
    sub = Subscriber(broker.host, broker.port, root + "/#")
    config = write_config(
        tmp_path / "agent.toml",
        district="signing",
        gateway=unique_gateway,
        port=broker.port,
        data_dir=tmp_path / "data",
        cameras=CAMERA,
    )
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("[gateway]\n", f'[gateway]\nplatform_keys = ["{keys["current"].pub}"]\n', 1),
        encoding="utf-8",
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        yield root, sub, agent
    finally:
        agent.close()
        sub.close()


@pytest.mark.broker
def test_e2e_unsigned_command_is_refused_and_audited_signed_one_answers(
    broker: Any, keys: dict[str, Pair], signed_gateway: tuple[str, Any, Any]
) -> None:
    from agent.sdk.client import CommandFailed, PlatformClient
    from tests.harness import wait_answering

    root, sub, agent = signed_gateway

    def police(key: Path | None) -> PlatformClient:
        return PlatformClient(
            broker.host, broker.port, root, agency="police", operator="o-1", signing_key=key
        )

    with (
        police(keys["current"].key) as signed,
        police(None) as unsigned,
        police(keys["outsider"].key) as forger,
    ):
        assert wait_answering(signed)["agent_version"]
        refused: dict[str, str] = {}
        for name, client in (("unsigned", unsigned), ("forged", forger)):
            request_id = f"{name}-{uuid.uuid4().hex[:8]}"
            with pytest.raises(CommandFailed) as info:
                client.request("ping", request_id=request_id, timeout=5)
            assert info.value.code == "unauthenticated"
            refused[request_id] = name

        assert sub.wait_for(lambda _: {r.json()["id"] for r in sub.on("/audit")} >= set(refused), 5)
        audits = {r.json()["id"]: r.json() for r in sub.on("/audit") if r.json()["id"] in refused}
        assert {a["outcome"] for a in audits.values()} == {"unauthenticated"}
        assert signed.ping()["agent_version"]  # still answering after the refusals

    code, _ = agent.terminate()
    assert code == 0
    assert "commands must be signed: 1 platform key(s)" in agent.log()
    audit_log = (Path(agent.log_path).parent / "data" / "audit" / "audit.log").read_text(encoding="utf-8")
    assert all(request_id in audit_log for request_id in refused)


@pytest.mark.broker
def test_e2e_ctl_signs_with_sign_key(
    broker: Any, keys: dict[str, Pair], signed_gateway: tuple[str, Any, Any]
) -> None:
    from agent.sdk.client import PlatformClient
    from tests.harness import wait_answering

    root, _, _ = signed_gateway
    with PlatformClient(
        broker.host, broker.port, root, agency="police", operator="o", signing_key=keys["current"].key
    ) as client:
        wait_answering(client)
    common = ["ctl", "--port", str(broker.port), "--root", root, "--agency", "police", "--timeout", "5"]

    signed = edge_agent(*common, "--sign-key", str(keys["current"].key), "ping")
    unsigned = edge_agent(*common, "ping")

    assert signed.returncode == 0, signed.stderr
    assert unsigned.returncode == 1
    assert "unauthenticated" in unsigned.stderr


def test_run_refuses_to_start_with_an_unusable_platform_key(keys: dict[str, Pair], tmp_path: Path) -> None:
    from tests.conftest import free_port
    from tests.harness import write_config

    config = write_config(
        tmp_path / "agent.toml",
        district="signing",
        gateway="gw-bad-key",
        port=free_port(),
        data_dir=tmp_path / "data",
        cameras=CAMERA,
    )
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            "[gateway]\n", f'[gateway]\nplatform_keys = ["{keys["current"].key}"]\n', 1
        ),
        encoding="utf-8",
    )

    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 1
    assert f"{keys['current'].key}: holds a PRIVATE key" in result.stderr
    secret = keys["current"].key.read_text(encoding="ascii").splitlines()[1]
    assert secret not in result.stderr + result.stdout


def test_check_config_loads_the_keys_run_would_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config refuses a missing platform key and an open audit key, naming the key, not its bytes."""
    from agent.cli import main

    audit_key = tmp_path / "audit-key"
    audit_key.write_text("s3cr3t-audit-key-material")
    audit_key.chmod(0o644)  # readable by others: refused as an open private key
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[gateway]\ndistrict = "d"\nid = "g"\ndata_dir = "{tmp_path / "data"}"\n'
        f'audit_key_file = "{audit_key}"\nplatform_keys = ["{tmp_path / "missing.pub"}"]\n'
        '[[cameras]]\nid = "cam-1"\nsource = "synthetic://street"\n'
    )
    assert main(["check-config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "gateway.platform_keys[0]" in err and "gateway.audit_key_file" in err
    assert "s3cr3t" not in err
    assert main(["check-config", "--no-files", str(cfg)]) == 0
