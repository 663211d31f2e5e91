"""The gateway's append-only, hash-chained audit log (one JSON record per line), rotated by size.

The command side writes `{"ts","id","cmd","camera","requester","outcome"}` records
(`agent.commands.models.AuditRecord`); this module only chains and stores them. The format (hash,
canonical JSON, bounded parsing) is in `audit_chain`, the check in `audit_verify`.

Keyed chain: with `gateway.audit_key_file` each `hash` is HMAC-SHA256 under that per-gateway
secret, so only the agent (and whoever holds the key) can re-chain records after an edit; without
it, plain SHA-256 as before, and the agent says so once when it opens the log. When a key is
configured and the chain's head is not keyed with it (a new log, or one written before the key),
the log first appends `{"ts","chain":"hmac-sha256","key_id","prev","hash"}`, keyed: records
before it are SHA-256, records from it on are HMAC. Such a record is the agent's own and is not
published. A chain never goes back to SHA-256: `verify` with the key refuses an unkeyed record
after a keyed one (the key was removed, or someone re-chained without it).

Rotation: when a record would take `audit.log` past `max_bytes`, the file becomes `audit.log.1`
(older ones shift up, those past `max_files` in all are deleted) and a new `audit.log` starts; its
first record chains to the last of the previous file.

A torn last line (power cut in the middle of a write) is the only fault a crash can leave; on
open the log cuts it off (it never was a record: `append` had not returned), reports it in
`AuditLog.recovered` and the log, and chains to the last good record. A damaged complete line is
kept as evidence and skipped. Recovery reads back from the end only as far as the last good record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from agent.clock import iso
from agent.commands.audit_chain import (
    CHAIN_KEYED,
    GENESIS,
    MAX_RECORD_BYTES,
    canonical,
    key_id,
    load_key,
    log_files,
    parse_line,
    record_hash,
    rotated_indices,
    rotated_name,
    scheme_of,
)
from agent.commands.audit_verify import VerifyResult, verify

if TYPE_CHECKING:
    from agent.config import AgentConfig

__all__ = [
    "GENESIS",
    "AuditLog",
    "VerifyResult",
    "canonical",
    "load_key",
    "log_files",
    "record_hash",
    "verify",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_FILES = 10  # audit.log and 9 rotated files: 80 MiB at most
_TAIL_BYTES = 256 * 1024  # how far back recovery looks for a good record before giving up
_CHUNK = 64 * 1024
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class AuditLog:
    """Appends chained records to `path`, fsyncing each; safe to share between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        key: bytes | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> None:
        if max_bytes < 4096 or max_files < 2:
            raise ValueError("an audit log needs max_bytes >= 4096 and max_files >= 2")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.recovered: str | None = None  # set when a torn tail was cut off at open
        self._key = key
        self._lock = threading.Lock()  # guards _fd, _size, _last_hash; held across write+fsync
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd: int | None = _open_private(self.path)
        self._size = os.fstat(self._fd).st_size
        try:
            last_hash, keyed = self._recover()
        except BaseException:
            self.close()
            raise
        self._last_hash = last_hash
        if key is None:
            log.warning(
                "audit log %s: the chain is unkeyed (plain SHA-256), so whoever can write data_dir can"
                " rewrite it undetected; set gateway.audit_key_file",
                self.path,
            )
        elif not keyed:
            self.append({"chain": CHAIN_KEYED, "key_id": key_id(key)})

    @classmethod
    def in_data_dir(
        cls,
        data_dir: str | Path,
        *,
        key: bytes | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> AuditLog:
        """The gateway's log: `{data_dir}/audit/audit.log` (and its rotated files)."""
        return cls(Path(data_dir) / "audit" / "audit.log", key=key, max_bytes=max_bytes, max_files=max_files)

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> AuditLog:
        """The gateway's log, keyed with `gateway.audit_key_file` when the config names one;
        raises ConfigError when that file is unreadable, open to other users or too short."""
        key_file = cfg.gateway.audit_key_file
        return cls.in_data_dir(cfg.gateway.data_dir, key=None if key_file is None else load_key(key_file))

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
            body["hash"] = record_hash(body, self._key)
            line = canonical(body) + b"\n"
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            _write_all(self._fd, line)
            os.fsync(self._fd)
            self._size += len(line)
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

    def _rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... ; the oldest beyond max_files go. On failure the log
        keeps appending to the file it has (a record is never lost to rotation)."""
        assert self._fd is not None
        try:
            for index in reversed(rotated_indices(self.path)):
                if index + 1 >= self.max_files:
                    os.unlink(rotated_name(self.path, index))
                else:
                    os.replace(rotated_name(self.path, index), rotated_name(self.path, index + 1))
            os.replace(self.path, rotated_name(self.path, 1))
            fd = _open_private(self.path)
        except OSError:
            log.exception("audit log %s: rotation failed; appending to the current file", self.path)
            return
        os.close(self._fd)
        self._fd = fd
        self._size = 0

    def _recover(self) -> tuple[str, bool]:
        """(hash of the last good record, whether it is keyed with our key). Cuts a torn tail off
        the current file; when that file holds no line at all, the head is in the newest rotated
        file (a crash between the two steps of a rotation)."""
        assert self._fd is not None
        found, any_line = self._last_good(self.path, fd=self._fd)
        if found is None and not any_line:
            for index in rotated_indices(self.path):
                found, any_line = self._last_good(rotated_name(self.path, index), fd=None)
                if found is not None or any_line:
                    break
        if found is None:
            if any_line:
                hint = "" if self._key is not None else " (a keyed log needs gateway.audit_key_file)"
                log.error("audit log %s: no good record near the end; a new chain starts%s", self.path, hint)
            return GENESIS, False
        return str(found["hash"]), scheme_of(found, self._key) == "hmac"

    def _last_good(self, path: Path, fd: int | None) -> tuple[dict[str, Any] | None, bool]:
        """(the last good record of `path` or None, whether `path` holds any complete line).
        With `fd` (the current file's), a torn last line is ended or cut off."""
        with _open_read(path) as f:
            size = os.fstat(f.fileno()).st_size
            end = _end_of_last_line(f, size)
            torn = size - end
            found: dict[str, Any] | None = None
            if torn:
                f.seek(end)
                candidate = self._good(f.read(min(torn, MAX_RECORD_BYTES + 1)))
                if fd is not None:
                    if candidate is not None:  # a whole record that only lacks its newline
                        _write_all(fd, b"\n")
                        self._size += 1
                    else:
                        os.ftruncate(fd, end)
                        self._size = end
                        self.recovered = f"torn last line of {torn} bytes removed"
                        log.warning(
                            "audit log %s: %s; chaining to the last good record", path, self.recovered
                        )
                    os.fsync(fd)
                found = candidate
            if found is not None:
                return found, True
            start = max(0, end - _TAIL_BYTES)
            f.seek(start)
            lines = f.read(end - start).split(b"\n")[:-1]  # the part after the last newline is b""
        if start > 0:
            lines = lines[1:]  # probably cut by the window
        for skipped, line in enumerate(reversed(lines)):
            found = self._good(line)
            if found is not None:
                if skipped:
                    log.error("audit log %s: last record is damaged; chaining to the last good one", path)
                return found, True
        return None, bool(lines) or start > 0

    def _good(self, line: bytes) -> dict[str, Any] | None:
        record, _ = parse_line(line)
        if record is None or scheme_of(record, self._key) is None:
            return None
        return record


def _open_private(path: Path) -> int:
    """Open for appending, never through a symbolic link; a new file is 0600 whatever the umask."""
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if path.is_symlink():
            raise OSError(exc.errno, f"audit log {path} is a symbolic link; refusing to follow it") from None
        raise
    if not existed:
        os.fchmod(fd, 0o600)
        _fsync_dir(path.parent)
    return fd


@contextlib.contextmanager
def _open_read(path: Path) -> Iterator[BinaryIO]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        yield f


def _end_of_last_line(f: BinaryIO, size: int) -> int:
    """Offset just after the last newline (0 if none), reading back in chunks from the end."""
    pos = size
    while pos > 0:
        start = max(0, pos - _CHUNK)
        f.seek(start)
        found = f.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


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
