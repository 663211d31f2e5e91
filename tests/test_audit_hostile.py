"""Issue 13, item 8: an audit chain a hostile operator or a hostile last line cannot rewrite or stop.

- junk lines are faults, except a torn last line (the only thing a power cut leaves);
- with a key (HMAC-SHA256) an edit re-chained with plain SHA-256 fails, and so does a whole
  rewrite without the key; an unkeyed log that becomes keyed still verifies;
- the platform's anchor (`--head`, the last `hash` it received) catches records cut off the end;
- a last line of 5,000 `[` neither tracebacks `audit verify` nor stops `edge-agent run`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.commands.audit import GENESIS, AuditLog, record_hash, verify
from agent.config import load_config
from agent.errors import ConfigError
from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import Broker
from tests.harness import GatewayRun, wait_answering

KEY = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
HOSTILE = b"[" * 5000


def fields(i: int, outcome: str = "ok", operator: str = "officer-1") -> dict[str, Any]:
    return {
        "id": f"r-{i}",
        "cmd": "snapshot",
        "camera": "cam-1",
        "requester": {"agency": "police", "operator": operator, "incident": None},
        "outcome": outcome,
    }


def write(path: Path, n: int, key: bytes | None = None, start: int = 0) -> list[dict[str, Any]]:
    with AuditLog(path, key=key) as log:
        return [log.append(fields(start + i)) for i in range(n)]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def key_file(tmp: Path, key: bytes = KEY, mode: int = 0o600) -> Path:
    path = tmp / "audit-key"
    path.write_bytes(key + b"\n")
    path.chmod(mode)
    return path


def audit_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# -- junk lines --------------------------------------------------------------------------------


def test_a_junk_line_inserted_between_records_is_a_fault(tmp_path: Path) -> None:
    """The old verifier took junk followed by a record that chains past it for a 'torn line'."""
    path = tmp_path / "a.log"
    write(path, 4)
    content = lines(path)
    content.insert(2, b'{"forged": "entry"\n')
    path.write_bytes(b"".join(content))
    result = verify(path)
    assert not result.ok
    assert (result.first_bad_line, result.records) == (3, 2)
    assert result.reason is not None
    assert result.reason.startswith("unreadable record")


def test_only_a_torn_last_line_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 3)
    path.write_bytes(path.read_bytes() + b'{"ts":"2024-')
    result = verify(path)
    assert result.ok
    assert (result.records, result.torn_lines) == (3, (4,))


# -- a keyed chain -----------------------------------------------------------------------------


def test_keyed_records_are_hmac_sha256_of_the_canonical_json(tmp_path: Path) -> None:
    """Recomputed here without the module: HMAC-SHA256(key, canonical JSON without `hash`); the
    first record of a keyed log says so and names the key by an id, never by its value."""
    path = tmp_path / "a.log"
    records = write(path, 2, key=KEY)
    on_disk = [json.loads(line) for line in lines(path)]
    assert on_disk[1:] == records
    marker = on_disk[0]
    assert marker["chain"] == "hmac-sha256"
    assert marker["prev"] == GENESIS
    assert KEY.decode() not in path.read_text(encoding="utf-8")
    for record in on_disk:
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert record["hash"] == hmac.new(KEY, canonical, hashlib.sha256).hexdigest()
        assert record["hash"] != hashlib.sha256(canonical).hexdigest()
    assert [r["prev"] for r in on_disk[1:]] == [r["hash"] for r in on_disk[:-1]]
    assert verify(path, key=KEY).ok
    assert verify(path, key=KEY).records == 3


def test_with_a_key_an_edit_rechained_with_sha256_fails(tmp_path: Path) -> None:
    """Edit record 3, then recompute it and every later record with the agent's own (unkeyed)
    function: the unkeyed chain is consistent, the keyed one is not."""
    path = tmp_path / "a.log"
    write(path, 4, key=KEY)
    content = lines(path)
    prev = json.loads(content[1])["hash"]
    for i in range(2, len(content)):
        rec = json.loads(content[i])
        if i == 2:
            rec["outcome"] = "forbidden"
        rec["prev"] = prev
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        content[i] = dump(rec)
    path.write_bytes(b"".join(content))
    result = verify(path, key=KEY)
    assert not result.ok
    assert result.first_bad_line == 3
    assert result.reason is not None
    assert "unkeyed record after the chain was keyed" in result.reason


def test_with_a_key_a_whole_rewrite_without_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 3, key=KEY)
    prev = GENESIS
    out = []
    for line in lines(path)[1:]:  # drop the key marker, re-chain the rest with plain SHA-256
        rec = json.loads(line)
        rec["prev"] = prev
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        out.append(dump(rec))
    path.write_bytes(b"".join(out))
    assert verify(path).ok  # consistent as an unkeyed log...
    result = verify(path, key=KEY)  # ...but not for whoever holds the key
    assert not result.ok
    assert result.reason is not None
    assert "no record is keyed" in result.reason


def test_a_log_written_unkeyed_then_keyed_verifies(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    before = write(path, 3)
    after = write(path, 2, key=KEY, start=3)
    records = [json.loads(line) for line in lines(path)]
    assert records[:3] == before
    assert records[3]["chain"] == "hmac-sha256"
    assert records[3]["prev"] == before[-1]["hash"]
    assert records[4:] == after
    assert verify(path, key=KEY).ok
    assert verify(path, key=KEY).records == 6
    unkeyed = verify(path)
    assert not unkeyed.ok
    assert unkeyed.first_bad_line == 4
    assert unkeyed.reason is not None
    assert "--key-file" in unkeyed.reason
    wrong = verify(path, key=OTHER_KEY)
    assert not wrong.ok
    assert wrong.first_bad_line == 4
    assert wrong.reason is not None
    assert "another key" in wrong.reason


def test_dropping_the_key_later_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 2, key=KEY)
    write(path, 1, start=2)  # the key was taken out of the config
    result = verify(path, key=KEY)
    assert not result.ok
    assert result.reason is not None
    assert "unkeyed record after the chain was keyed" in result.reason


def test_a_restart_with_the_same_key_writes_no_second_marker(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 2, key=KEY)
    write(path, 2, key=KEY, start=2)
    assert sum(b'"chain"' in line for line in lines(path)) == 1
    assert verify(path, key=KEY).records == 5


def test_cli_verifies_with_a_key_file_and_names_a_missing_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with AuditLog.in_data_dir(data, key=KEY) as log:
        log.append(fields(0))
    good = audit_verify(str(data), "--key-file", str(key_file(tmp_path)))
    assert good.returncode == 0, good.stderr
    assert "OK, 2 record(s) chained" in good.stdout
    missing = audit_verify(str(data), "--key-file", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert len(missing.stderr.splitlines()) == 1, missing.stderr
    assert "nope" in missing.stderr
    without = audit_verify(str(data))
    assert without.returncode == 1
    assert "--key-file" in without.stderr


# -- the platform's anchor ---------------------------------------------------------------------


def test_records_cut_off_the_end_are_caught_by_the_platforms_head(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    records = write(path, 5, key=KEY)
    head = records[-1]["hash"]
    assert verify(path, key=KEY, head=head).ok
    assert verify(path, key=KEY, head=records[2]["hash"]).ok  # the platform may lag behind
    path.write_bytes(b"".join(lines(path)[:-2]))
    assert verify(path, key=KEY).ok  # the file alone cannot tell
    cut = verify(path, key=KEY, head=head)
    assert not cut.ok
    assert cut.reason is not None
    assert "cut off the end" in cut.reason


def test_cli_head_option(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    records = write(path, 3)
    ok = audit_verify(str(path), "--head", records[-1]["hash"])
    assert ok.returncode == 0, ok.stderr
    path.write_bytes(b"".join(lines(path)[:-1]))
    cut = audit_verify(str(path), "--head", records[-1]["hash"])
    assert cut.returncode == 1
    assert cut.stderr.count("\n") == 1
    assert "cut off the end" in cut.stderr
    bad = audit_verify(str(path), "--head", "not-a-hash")
    assert bad.returncode == 2


# -- hostile lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "code"),
    [
        (HOSTILE, 0),  # no newline: a torn last line, skipped and reported
        (HOSTILE + b"\n", 1),  # a whole line: not a power cut, a fault
        (HOSTILE + b"]" * 5000 + b"\n", 1),  # valid JSON nested 5,000 deep
        (b"{" * 100_000 + b"\n", 1),  # longer than any record
    ],
)
def test_hostile_lines_end_verify_with_one_line_not_a_traceback(
    tmp_path: Path, tail: bytes, code: int
) -> None:
    path = tmp_path / "a.log"
    write(path, 2)
    path.write_bytes(path.read_bytes() + tail)
    result = audit_verify(str(path))
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout if code == 0 else result.stderr
    assert len(out.splitlines()) == 1, out
    assert out.startswith(f"{path}: ")


def test_the_log_opens_over_a_hostile_torn_last_line_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    records = write(path, 2)
    clean = path.read_bytes()
    path.write_bytes(clean + HOSTILE)
    with AuditLog(path) as log:
        assert log.last_hash == records[-1]["hash"]
        assert log.recovered == "torn last line of 5000 bytes removed"
        log.append(fields(9))
    assert path.read_bytes().startswith(clean + b"{")
    result = verify(path)
    assert (result.ok, result.records, result.torn_lines) == (True, 3, ())


def test_the_log_opens_over_a_hostile_whole_last_line(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    records = write(path, 2)
    path.write_bytes(path.read_bytes() + HOSTILE + b"]" * 5000 + b"\n")
    with AuditLog(path) as log:
        assert log.last_hash == records[-1]["hash"]
        log.append(fields(9))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == 3  # kept as evidence, and named


@pytest.mark.broker
def test_edge_agent_run_starts_over_a_hostile_audit_tail(
    tmp_path: Path, broker: Broker, unique_gateway: str
) -> None:
    data = tmp_path / "data"
    path = data / "audit" / "audit.log"
    path.parent.mkdir(parents=True)
    records = write(path, 2)
    path.write_bytes(path.read_bytes() + HOSTILE)
    cameras = '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street"\nallowed_agencies = ["police"]\n'
    run = GatewayRun(tmp_path, broker.host, broker.port, "hostile", unique_gateway, cameras)
    client = PlatformClient(broker.host, broker.port, run.root, agency="fire", operator="f-1").connect()
    try:
        wait_answering(client, timeout=30)
        with pytest.raises(CommandFailed, match="forbidden"):
            client.request("snapshot", {"camera": "cam-1"}, timeout=10)
        assert run.sub.wait_for(lambda ms: any(m.topic.endswith("/audit") for m in ms), 10)
        published = next(m.json() for m in run.sub.on(run.root + "/audit"))
        assert published["prev"] == records[-1]["hash"]
        assert run.agent.terminate()[0] == 0
    finally:
        client.close()
        run.close()
    assert "torn last line of 5000 bytes removed" in run.agent.log()
    assert "the chain is unkeyed" in run.agent.log()
    result = verify(path)
    assert (result.ok, result.records) == (True, 3)


# -- the key file, the start-up notice, files on disk ------------------------------------------


def config_with_key(tmp: Path, key_path: Path) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[gateway]\ndistrict = "d"\nid = "g"\ndata_dir = "{tmp / "data"}"\naudit_key_file = "{key_path}"\n',
        encoding="utf-8",
    )
    return cfg


def test_from_config_keys_the_chain_with_the_configured_file(tmp_path: Path) -> None:
    cfg = load_config(config_with_key(tmp_path, key_file(tmp_path)))
    with AuditLog.from_config(cfg) as log:
        log.append(fields(0))
    path = tmp_path / "data" / "audit" / "audit.log"
    assert verify(path, key=KEY).ok
    assert not verify(path).ok


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (KEY, 0o644, "readable by other users"),
        (b"short", 0o600, "at least 32"),
    ],
)
def test_a_key_file_that_is_open_to_others_or_weak_is_refused(
    tmp_path: Path, content: bytes, mode: int, problem: str
) -> None:
    cfg = load_config(config_with_key(tmp_path, key_file(tmp_path, content, mode)))
    with pytest.raises(ConfigError) as caught:
        AuditLog.from_config(cfg)
    assert caught.value.source == "gateway.audit_key_file"
    assert problem in caught.value.problems[0]
    assert content.decode() not in str(caught.value)


def test_an_unkeyed_log_says_so_once_when_opened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.commands.audit"):
        with AuditLog(tmp_path / "a.log") as log:
            log.append(fields(0))
            log.append(fields(1))
        unkeyed = [r for r in caplog.records if "the chain is unkeyed" in r.getMessage()]
        assert len(unkeyed) == 1
        caplog.clear()
        with AuditLog(tmp_path / "b.log", key=KEY) as log:
            log.append(fields(0))
        assert not [r for r in caplog.records if "unkeyed" in r.getMessage()]
        assert KEY.decode() not in caplog.text


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with AuditLog.in_data_dir(tmp_path / "data", max_bytes=4096) as log:
            for i in range(40):
                log.append(fields(i))
    finally:
        os.umask(old)
    folder = tmp_path / "data" / "audit"
    assert folder.stat().st_mode & 0o777 == 0o700
    files = sorted(folder.iterdir())
    assert len(files) > 1
    assert {f.stat().st_mode & 0o777 for f in files} == {0o600}


def test_a_symlinked_log_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    path = tmp_path / "audit" / "audit.log"
    path.parent.mkdir()
    path.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        AuditLog(path)
    assert target.read_bytes() == b"keep me"


def test_a_lone_surrogate_from_the_platform_is_still_audited(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with AuditLog(path) as log:
        record = log.append(fields(0, operator="x\ud800y"))
    assert record["requester"]["operator"] == "x\ud800y"
    on_disk = json.loads(lines(path)[0])
    assert on_disk["requester"]["operator"] == "x\ud800y"
    assert verify(path).ok
