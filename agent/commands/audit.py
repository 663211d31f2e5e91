"""The gateway's append-only, hash-chained audit log (one JSON record per line).

The command side writes `{"ts","id","cmd","camera","requester","outcome"}` records
(`agent.commands.models.AuditRecord`); this module only chains and stores them.

Each record carries `prev`, the `hash` of the record before it (64 zeros for the first), and
`hash`, the SHA-256 of its own canonical JSON (sorted keys, no spaces, UTF-8) without `hash`.
Changing, inserting or deleting a record breaks the chain at the next line, and `verify` names
that line. Cutting records off the END cannot be detected from the file alone; every record is
also published on `{root}/audit`, so the platform's copy covers that case.

Policy for a torn last line (power cut in the middle of a write): the file is never rewritten.
On open, `AuditLog` finds the last complete, self-consistent record, reports the torn bytes in
`AuditLog.recovered` (and the log), ends the torn line with a newline, and chains new records to
the last good record. `verify` accepts such a line only when the record after it chains to the
record before it, which cannot happen for a record that was complete and later damaged (its
successor chains to its hash); it lists these lines in `VerifyResult.torn_lines`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import iso

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_TAIL_BYTES = 256 * 1024  # records are < 2 KiB; the last good one is always in this window


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of a record's canonical JSON without its `hash` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _self_consistent(line: bytes) -> dict[str, Any] | None:
    """The record on `line` when it parses and its hash matches its content, else None."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("hash"), str)
        or not isinstance(obj.get("prev"), str)
    ):
        return None
    return obj if record_hash(obj) == obj["hash"] else None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int  # good records read before the first fault (all of them when ok)
    first_bad_line: int | None  # 1-based line number of the first fault
    reason: str | None
    torn_lines: tuple[int, ...] = ()  # lines accepted as power-cut remnants


def verify(path: str | Path) -> VerifyResult:  # noqa: PLR0911 - one return per kind of fault
    """Check every record's hash and the chain of `prev` links, reading the file once."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return VerifyResult(False, 0, None, f"cannot read {path}: {exc.strerror or exc}")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    prev = GENESIS
    records = 0
    torn: list[int] = []
    pending_torn: int | None = None  # an unparseable line waiting for its successor's verdict
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except ValueError:
            if pending_torn is not None:
                return VerifyResult(False, records, pending_torn, "unreadable record")
            pending_torn = number
            continue
        if not isinstance(obj, dict) or "hash" not in obj or "prev" not in obj:
            return VerifyResult(False, records, number, "not an audit record")
        if record_hash(obj) != obj["hash"]:
            return VerifyResult(False, records, number, "record does not match its hash (modified)")
        if obj["prev"] != prev:
            if pending_torn is not None:
                return VerifyResult(False, records, pending_torn, "unreadable record breaks the chain")
            return VerifyResult(False, records, number, "chain broken: prev is not the previous hash")
        if pending_torn is not None:
            torn.append(pending_torn)
            pending_torn = None
        prev = obj["hash"]
        records += 1
    if pending_torn is not None:
        torn.append(pending_torn)  # the last line: a write cut short
    return VerifyResult(True, records, None, None, tuple(torn))


class AuditLog:
    """Appends chained records to `path`, fsyncing each; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recovered: str | None = None  # set when a torn tail was found at open
        self._lock = threading.Lock()  # guards _fd and _last_hash; held across write+fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if created:
            _fsync_dir(self.path.parent)
        self._last_hash = self._recover()

    @classmethod
    def in_data_dir(cls, data_dir: str | Path) -> AuditLog:
        """The gateway's log: `{data_dir}/audit/audit.log`."""
        return cls(Path(data_dir) / "audit" / "audit.log")

    @property
    def last_hash(self) -> str:
        with self._lock:
            return self._last_hash

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Chain and write one record (durably: fsync before returning); return it with `prev`,
        `hash` and, unless given, `ts`. `fields` must be JSON-serialisable."""
        with self._lock:
            if self._fd is None:
                raise ValueError(f"audit log {self.path} is closed")
            body: dict[str, Any] = {"ts": iso(), **fields, "prev": self._last_hash}
            body.pop("hash", None)
            body["hash"] = record_hash(body)
            _write_all(self._fd, canonical(body) + b"\n")
            os.fsync(self._fd)
            self._last_hash = body["hash"]
        return body

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> str:
        """Hash of the last good record; terminates a torn last line (see module docstring)."""
        size = self.path.stat().st_size
        if size == 0:
            return GENESIS
        with self.path.open("rb") as f:
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
        lines = tail.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if size > _TAIL_BYTES:
            lines = lines[1:]  # the window's first line is probably cut
        last: dict[str, Any] | None = None
        if torn:
            last = _self_consistent(torn)  # a whole record that only lacks its newline
            if last is None:
                self.recovered = f"torn last line of {len(torn)} bytes ignored"
                log.warning(
                    "audit log %s: %s; chain continues from the last good record", self.path, self.recovered
                )
            assert self._fd is not None
            _write_all(self._fd, b"\n")
            os.fsync(self._fd)
        for line in reversed(lines):
            if last is not None:
                break
            last = _self_consistent(line)
            if last is None and line:
                log.error("audit log %s: last record is damaged; chaining to the last good one", self.path)
        if last is None:
            if size > _TAIL_BYTES or any(lines):
                log.error("audit log %s: no good record near the end; starting a new chain", self.path)
            return GENESIS
        return str(last["hash"])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
