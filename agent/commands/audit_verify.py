"""`verify`: check an audit log's whole file set, oldest first, one line at a time.

A fault is named with its file and line: an unreadable line (only a torn LAST line of the newest
file is accepted: a power cut can leave nothing else), a line not in canonical form, a record that
does not match its hash, a broken `prev` link, an unkeyed record after the chain was keyed.
With the key, an edit re-chained without it fails; without the key, a keyed chain is reported
as needing it. With `head`, the last `hash` the platform received on `{root}/audit`, a log that
no longer contains it lost records off its end (or was replaced).

The oldest file's first record may follow a record that is gone only when that file is a rotated
one (`audit.log.N`): retention deleted its predecessor, and that `prev` cannot be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.commands.audit_chain import (
    CHAIN_KEYED,
    GENESIS,
    MAX_RECORD_BYTES,
    canonical,
    is_rotated,
    key_id,
    log_files,
    parse_line,
    scheme_of,
)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int  # good records read before the first fault (all of them when ok)
    first_bad_line: int | None  # 1-based line number of the first fault, in `file`
    reason: str | None
    torn_lines: tuple[int, ...] = ()  # the newest file's last line, when a write was cut short
    file: Path | None = field(default=None, compare=False)  # the file of the fault
    files: int = field(default=1, compare=False)  # files walked
    keyed: int = field(default=0, compare=False)  # records keyed with the given key


class _FaultError(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Walk:
    """The state carried from one record to the next, across files."""

    def __init__(self, key: bytes | None, head: str | None) -> None:
        self.key = key
        self.head = head
        self.head_found = False
        self.prev: str | None = None  # None before the first record
        self.records = 0
        self.keyed = 0
        self.torn: list[int] = []

    def record(self, rec: dict[str, Any], body: bytes, number: int, file: Path) -> None:
        if body != canonical(rec):
            raise _FaultError(number, "record is not in canonical form (edited)")
        scheme = scheme_of(rec, self.key)
        if scheme is None:
            raise _FaultError(number, self._mismatch(rec))
        if scheme == "sha256" and self.keyed:
            raise _FaultError(
                number,
                "unkeyed record after the chain was keyed (rewritten without the key, or the key"
                " was removed)",
            )
        if self.prev is None:
            if rec["prev"] != GENESIS and not is_rotated(file):
                raise _FaultError(number, "chain broken: the first record follows one that is missing")
        elif rec["prev"] != self.prev:
            raise _FaultError(number, "chain broken: prev is not the previous hash")
        self.keyed += scheme == "hmac"
        self.head_found = self.head_found or rec["hash"] == self.head
        self.prev = rec["hash"]
        self.records += 1

    def _mismatch(self, rec: dict[str, Any]) -> str:
        if rec.get("chain") == CHAIN_KEYED:
            if self.key is None:
                return "the chain is keyed from this record on: give its key (--key-file)"
            if rec.get("key_id") != key_id(self.key):
                return f"the chain is keyed with another key (key id {rec.get('key_id')}) from this record on"
        if self.key is not None:
            return "record does not match its hash (modified, or keyed with another key)"
        return "record does not match its hash (modified)"

    def file(self, path: Path, newest: bool) -> None:
        with path.open("rb") as f:
            number = 0
            while line := f.readline(MAX_RECORD_BYTES + 2):
                number += 1
                complete = line.endswith(b"\n")
                body = line[:-1] if complete else line
                rec, why = parse_line(body)
                if rec is None:
                    if not complete and newest and len(body) <= MAX_RECORD_BYTES:  # a torn write
                        self.torn.append(number)
                        break
                    raise _FaultError(number, why)
                self.record(rec, body, number, path)

    def finish(self) -> None:
        if self.key is not None and self.records and not self.keyed:
            raise _FaultError(
                None, "no record is keyed with the given key (the log was written, or rewritten, without it)"
            )
        if self.head is not None and not self.head_found:
            raise _FaultError(
                None,
                f"the platform's last record (hash {self.head[:16]}…) is not in the log: records were"
                " cut off the end, or the log was replaced",
            )


def verify(path: str | Path, *, key: bytes | None = None, head: str | None = None) -> VerifyResult:
    """Check every file of the log at `path` (see the module docstring); never raises."""
    path = Path(path)
    files = log_files(path) or [path]
    walk = _Walk(key, head)
    current = path
    try:
        for index, current in enumerate(files):
            walk.file(current, newest=index == len(files) - 1)
        walk.finish()
    except OSError as exc:
        reason = f"cannot read {current}: {exc.strerror or exc}"
        return VerifyResult(False, walk.records, None, reason, file=current)
    except _FaultError as fault:
        at = current if fault.line is not None else None
        return VerifyResult(
            False, walk.records, fault.line, fault.reason, tuple(walk.torn), at, len(files), walk.keyed
        )
    return VerifyResult(True, walk.records, None, None, tuple(walk.torn), None, len(files), walk.keyed)
