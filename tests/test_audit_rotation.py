"""Issue 13, item 5 (rotation half): the audit log rotates by size, the chain runs on across files,
retention keeps a bounded set, and `audit verify` walks the whole set oldest first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.commands.audit import GENESIS, AuditLog, verify

KEY = b"k" * 64
MAX_BYTES = 4096  # ~15 records a file


def fields(i: int) -> dict[str, Any]:
    return {
        "id": f"r-{i}",
        "cmd": "snapshot",
        "camera": "cam-1",
        "requester": {"agency": "police", "operator": "officer-1", "incident": None},
        "outcome": "ok",
    }


def write(path: Path, n: int, *, max_files: int = 10, key: bytes | None = None, start: int = 0) -> None:
    with AuditLog(path, key=key, max_bytes=MAX_BYTES, max_files=max_files) as log:
        for i in range(n):
            log.append(fields(start + i))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_files_rotate_by_size_and_the_chain_runs_across_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 40)
    rotated = len(names(tmp_path)) - 1
    assert rotated >= 2
    assert names(tmp_path) == sorted(["audit.log", *(f"audit.log.{i}" for i in range(1, rotated + 1))])
    oldest_first = [*(tmp_path / f"audit.log.{i}" for i in range(rotated, 0, -1)), path]
    assert all(0 < f.stat().st_size <= MAX_BYTES for f in oldest_first)
    chained = [r for f in oldest_first for r in records(f)]
    assert [r["id"] for r in chained] == [f"r-{i}" for i in range(40)]
    assert chained[0]["prev"] == GENESIS
    assert [r["prev"] for r in chained[1:]] == [r["hash"] for r in chained[:-1]]
    result = verify(path)
    assert (result.ok, result.records, result.files) == (True, 40, rotated + 1)


def test_retention_keeps_max_files_and_the_rest_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 120, max_files=3)
    assert names(tmp_path) == ["audit.log", "audit.log.1", "audit.log.2"]
    kept = [r for f in ("audit.log.2", "audit.log.1", "audit.log") for r in records(tmp_path / f)]
    assert kept[-1]["id"] == "r-119"
    assert kept[0]["prev"] != GENESIS  # its predecessor went with a deleted file
    result = verify(path)
    assert (result.ok, result.records) == (True, len(kept))


def test_a_missing_file_inside_the_set_is_a_fault(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 60)
    (tmp_path / "audit.log.2").unlink()
    result = verify(path)
    assert not result.ok
    assert result.file == tmp_path / "audit.log.1"
    assert result.first_bad_line == 1
    assert result.reason == "chain broken: prev is not the previous hash"


def test_the_current_file_cannot_lose_its_predecessors_silently(tmp_path: Path) -> None:
    """Retention always leaves a rotated file; an audit.log whose first record follows a missing
    one means records were deleted, not rotated away."""
    path = tmp_path / "audit.log"
    write(path, 20)
    (tmp_path / "audit.log.1").unlink()
    result = verify(path)
    assert not result.ok
    assert (result.file, result.first_bad_line) == (path, 1)
    assert result.reason is not None
    assert "missing" in result.reason


def test_the_chain_continues_after_a_restart_and_a_crash_inside_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 20)
    write(path, 5, start=20)
    # A crash between "audit.log -> audit.log.1" and creating the new file leaves no audit.log.
    for i in sorted((int(p.name.rsplit(".", 1)[1]) for p in tmp_path.glob("audit.log.*")), reverse=True):
        (tmp_path / f"audit.log.{i}").rename(tmp_path / f"audit.log.{i + 1}")
    path.rename(tmp_path / "audit.log.1")
    write(path, 5, start=25)
    result = verify(path)
    assert (result.ok, result.records) == (True, 30)


def test_a_keyed_set_verifies_after_its_key_marker_was_rotated_away(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 100, max_files=2, key=KEY)
    assert b'"chain"' not in b"".join(f.read_bytes() for f in tmp_path.iterdir())
    result = verify(path, key=KEY)
    assert result.ok
    assert result.keyed == result.records


def test_cli_walks_the_set_of_a_data_dir(tmp_path: Path) -> None:
    with AuditLog.in_data_dir(tmp_path, max_bytes=MAX_BYTES) as log:
        for i in range(40):
            log.append(fields(i))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    files = len(list((tmp_path / "audit").iterdir()))
    assert files > 2
    path = tmp_path / "audit" / "audit.log"
    assert done.stdout == f"{path}: OK, 40 record(s) chained, across {files} files\n"
