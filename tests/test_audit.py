"""The audit log: chained, durable, verifiable; tampering and deletion are found, a torn tail is survived."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from agent.commands.audit import GENESIS, AuditLog, record_hash, verify
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
    assert verify(path) == verify(path)
    assert verify(path).records == 3
    assert verify(path).ok


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
    assert after.torn_lines == (3,)
    assert path.read_bytes().startswith(data[: len(data) - 30])  # nothing rewritten


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
    result = verify(tmp_path / "nope.log")
    assert not result.ok
    assert result.reason is not None
    assert "cannot read" in result.reason
