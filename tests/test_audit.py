"""The audit log: chained, durable, verifiable; tampering and deletion are found, a torn tail is survived."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from agent.commands.audit import GENESIS, AuditLog, VerifyResult, record_hash, verify
from agent.commands.models import AuditRecord


def fields(i: int, camera: str | None = "cam-1", outcome: str = "ok") -> dict[str, Any]:
    return {
        "id": f"r-{i}",
        "cmd": "snapshot",
        "camera": camera,
        "requester": {"agency": "police", "operator": "officer-1", "incident": None},
        "outcome": outcome,
    }


def write(path: Path, n: int) -> list[dict[str, Any]]:
    with AuditLog(path) as log:
        return [log.append(fields(i)) for i in range(n)]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_are_chained_and_match_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    records = write(path, 3)
    assert records[0]["prev"] == GENESIS
    assert [r["prev"] for r in records[1:]] == [r["hash"] for r in records[:-1]]
    on_disk = [json.loads(line) for line in lines(path)]
    assert on_disk == records
    for r in on_disk:
        AuditRecord.model_validate(r, strict=False)
        assert r["hash"] == record_hash(r)
    assert verify(path).ok
    assert verify(path).records == 3


def test_in_data_dir_uses_the_documented_path(tmp_path: Path) -> None:
    with AuditLog.in_data_dir(tmp_path) as log:
        log.append(fields(0))
    assert (tmp_path / "audit" / "audit.log").is_file()


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    first = write(path, 2)
    with AuditLog(path) as log:
        assert log.last_hash == first[-1]["hash"]
        assert log.recovered is None
        nxt = log.append(fields(9))
    assert nxt["prev"] == first[-1]["hash"]
    assert [json.loads(line)["prev"] for line in lines(path)] == [GENESIS, first[0]["hash"], first[1]["hash"]]
    assert verify(path) == VerifyResult(ok=True, records=3, first_bad_line=None, reason=None, torn_lines=())


def test_tampered_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 4)
    content = lines(path)
    content[1] = content[1].replace(b'"outcome":"ok"', b'"outcome":"forbidden"')
    path.write_bytes(b"".join(content))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == 2
    assert result.records == 1
    assert result.reason is not None
    assert "modified" in result.reason


def test_tampered_record_with_recomputed_hash_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 4)
    content = lines(path)
    rec = json.loads(content[1])
    rec["camera"] = "cam-2"
    rec["hash"] = record_hash(rec)
    content[1] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(content))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == 3
    assert result.reason is not None
    assert "chain" in result.reason


def test_hash_covers_every_field_as_documented(tmp_path: Path) -> None:
    """The module's promise, recomputed here without its code: SHA-256 of the canonical JSON of
    everything but `hash` (so `prev` is covered and the chain cannot be relinked after an edit)."""
    path = tmp_path / "a.log"
    write(path, 3)
    for line in lines(path):
        record = json.loads(line)
        body = {k: v for k, v in record.items() if k != "hash"}
        assert set(body) == {"ts", "id", "cmd", "camera", "requester", "outcome", "prev"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert record["hash"] == hashlib.sha256(canonical).hexdigest()
        assert line == json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def audit_verify(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_edit_with_recomputed_hash_and_relinked_successor_fails_audit_verify(tmp_path: Path) -> None:
    """An operator edits record 2, recomputes its hash with the agent's own function and rewrites
    record 3's `prev` to match: `edge-agent audit verify` must still exit 1 and name line 3."""
    data_dir = tmp_path / "data"
    with AuditLog.in_data_dir(data_dir) as log:
        for i in range(4):
            log.append(fields(i, outcome="forbidden" if i == 1 else "ok"))
    clean = audit_verify(data_dir)
    assert (clean.returncode, clean.stdout.split(": ", 1)[1]) == (0, "OK, 4 record(s) chained\n")

    path = data_dir / "audit" / "audit.log"
    content = lines(path)
    edited = json.loads(content[1])
    edited["outcome"] = "ok"  # hide the refused request
    edited["hash"] = record_hash(edited)
    successor = json.loads(content[2])
    successor["prev"] = edited["hash"]
    content[1] = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    content[2] = json.dumps(successor, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(content))

    tampered = audit_verify(data_dir)
    assert tampered.returncode == 1, tampered.stdout
    assert tampered.stderr == f"{path}: BROKEN at line 3: record does not match its hash (modified)\n"


def test_deleted_middle_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 5)
    content = lines(path)
    del content[2]
    path.write_bytes(b"".join(content))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == 3
    assert result.records == 2


def test_garbled_middle_line_is_not_taken_for_a_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    write(path, 4)
    content = lines(path)
    content[1] = content[1][:40] + b"\n"
    path.write_bytes(b"".join(content))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == 2


def test_truncated_tail_is_reported_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    records = write(path, 3)
    data = path.read_bytes()
    lines_before = lines(path)
    path.write_bytes(data[: len(data) - 30])  # power cut in the middle of writing record 3
    torn = verify(path)
    assert torn.ok
    assert torn.records == 2
    assert torn.torn_lines == (3,)
    with AuditLog(path) as log:
        assert log.recovered is not None
        assert "torn" in log.recovered
        assert log.last_hash == records[1]["hash"]
        new = log.append(fields(7))
    assert new["prev"] == records[1]["hash"]
    after = verify(path)
    assert after.ok
    assert after.records == 3
    # The torn bytes (never a record: append had not returned) are cut off, so that a junk line
    # in the middle can never pass for a power cut; every complete record is kept as it was.
    assert after.torn_lines == ()
    assert lines(path)[:2] == lines_before[:2]


def test_record_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    records = write(path, 2)
    path.write_bytes(path.read_bytes()[:-1])
    with AuditLog(path) as log:
        assert log.recovered is None
        assert log.last_hash == records[1]["hash"]
        log.append(fields(3))
    assert verify(path).ok
    assert verify(path).records == 3
    assert verify(path).torn_lines == ()


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with AuditLog(path) as log:
        threads = [
            threading.Thread(target=lambda k=k: [log.append(fields(k * 100 + i)) for i in range(25)])
            for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    result = verify(path)
    assert result.ok
    assert result.records == 100


def test_missing_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    reason = f"cannot read {missing}: No such file or directory"
    assert verify(missing) == VerifyResult(False, 0, None, reason)


def damaged(tmp_path: Path, edit: dict[int, bytes]) -> Path:
    """A log of 4 good records with some lines (0-based) replaced by `edit`."""
    path = tmp_path / "a.log"
    write(path, 4)
    content = lines(path)
    for i, line in edit.items():
        content[i] = line
    path.write_bytes(b"".join(content))
    return path


def test_every_kind_of_fault_is_named_with_its_line(tmp_path: Path) -> None:
    """What `audit verify` reports for each fault: the first bad line, why, and the good records before it."""
    cases = {
        "two unreadable lines": ({1: b"{garbage\n", 2: b"more garbage\n"}, 2, "unreadable record"),
        "not a record": ({2: b'{"hello": "world"}\n'}, 3, "not an audit record"),
        "a list": ({2: b"[1, 2]\n"}, 3, "not an audit record"),
        "no prev": ({2: b'{"hash": "00"}\n'}, 3, "not an audit record"),
        "no hash": ({2: b'{"prev": "00"}\n'}, 3, "not an audit record"),
        "unreadable, then a broken chain": ({1: b"{garbage\n"}, 2, "unreadable record"),
    }
    for name, (edit, line, reason) in cases.items():
        sub = tmp_path / name.replace(" ", "-").replace(",", "")
        sub.mkdir()
        expected = VerifyResult(False, line - 1, line, reason)
        assert verify(damaged(sub, edit)) == expected, name
    moved = tmp_path / "moved"
    moved.mkdir()
    path = moved / "a.log"
    write(path, 3)
    content = lines(path)
    path.write_bytes(content[0] + content[2] + content[1])
    assert verify(path) == VerifyResult(False, 1, 2, "chain broken: prev is not the previous hash")


def test_a_damaged_last_record_is_not_chained_to(tmp_path: Path) -> None:
    """A last line that parses but no longer matches its hash is skipped when the log reopens."""
    path = tmp_path / "a.log"
    records = write(path, 3)
    content = lines(path)
    content[2] = content[2].replace(b'"outcome":"ok"', b'"outcome":"no"')
    path.write_bytes(b"".join(content))
    with AuditLog(path) as log:
        assert log.last_hash == records[1]["hash"]
        assert log.recovered is None
    whole = path.read_bytes()
    cut = whole[:-1] + b',"x"'  # the last record, garbled and without its newline: a torn write
    path.write_bytes(cut)
    torn = cut[cut.rindex(b"\n") + 1 :]
    with AuditLog(path) as log:
        assert log.recovered == f"torn last line of {len(torn)} bytes removed"
        assert log.last_hash == records[1]["hash"]
