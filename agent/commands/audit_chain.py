"""The audit log's format, shared by the writer (`audit.AuditLog`) and the checker (`audit_verify`).

A record is one line of canonical JSON (sorted keys, no spaces, UTF-8; a lone surrogate, which
UTF-8 cannot carry, is written as its `\\uXXXX` escape) with `prev`, the `hash` of the record
before it (64 zeros for the first), and `hash`: the SHA-256 of the record's canonical JSON
without `hash` (unkeyed), or HMAC-SHA256 with the gateway's audit key over the same bytes (keyed).

Lines are parsed only after their length and nesting are checked, so a hostile line costs a
bounded amount of work and never a RecursionError.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from agent.errors import ConfigError

GENESIS = "0" * 64
CHAIN_KEYED = "hmac-sha256"  # the `chain` field of the record that starts a keyed chain
MAX_RECORD_BYTES = 16 * 1024  # a record is < 2 KiB; a longer line is not one
MAX_NESTING = 16  # a record nests 2 deep ({"requester": {...}})
MIN_KEY_BYTES = 32
_MAX_KEY_FILE_BYTES = 4096

Scheme = Literal["hmac", "sha256"]


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are hashed and written: sorted keys, no whitespace, UTF-8."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")  # only lone surrogates need it: "\ud800"


def _body(record: dict[str, Any]) -> bytes:
    return canonical({k: v for k, v in record.items() if k != "hash"})


def record_hash(record: dict[str, Any], key: bytes | None = None) -> str:
    """The `hash` of a record (hex): SHA-256, or HMAC-SHA256 under `key`, of its canonical JSON
    without `hash`."""
    body = _body(record)
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def scheme_of(record: dict[str, Any], key: bytes | None) -> Scheme | None:
    """Which hash the record's `hash` is: keyed with `key`, plain SHA-256, or neither (damaged)."""
    body = _body(record)
    claimed = str(record["hash"])
    if key is not None and hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), claimed):
        return "hmac"
    if hashlib.sha256(body).hexdigest() == claimed:
        return "sha256"
    return None


def key_id(key: bytes) -> str:
    """A short public name of a key (written in the record that starts a keyed chain), from
    which the key cannot be found; lets `verify` say "another key" rather than "modified"."""
    return hashlib.sha256(b"edge-agent audit key id\x00" + key).hexdigest()[:16]


def _nesting(line: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_line(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(record, "") or (None, why not); bounded work whatever the line holds."""
    if len(line) > MAX_RECORD_BYTES:
        return None, "unreadable record (longer than any audit record)"
    # Counting brackets is cheap and bounds the depth; only a line with many is scanned exactly.
    if line.count(b"[") + line.count(b"{") > MAX_NESTING and _nesting(line) > MAX_NESTING:
        return None, "unreadable record (nested deeper than any audit record)"
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None, "unreadable record"
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("hash", "prev")):
        return None, "not an audit record"
    return obj, ""


# -- the file set: audit.log (newest), audit.log.1, audit.log.2, ... (oldest) ------------------


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def rotated_indices(path: Path) -> list[int]:
    """The N of every existing `{path}.N`, ascending (newest first)."""
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]{0,5})")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := pattern.fullmatch(n)))


def log_files(path: Path) -> list[Path]:
    """The files of the log at `path`, oldest first; `path` itself last if it exists."""
    files = [rotated_name(path, i) for i in reversed(rotated_indices(path))]
    if os.path.lexists(path):
        files.append(path)
    return files


def is_rotated(path: Path) -> bool:
    """A file that rotation made (`audit.log.3`): its first record may follow one since deleted."""
    return re.fullmatch(r".+\.[1-9][0-9]{0,5}", path.name) is not None


# -- the key -----------------------------------------------------------------------------------


def load_key(path: Path, *, private: bool = True, source: str = "gateway.audit_key_file") -> bytes:
    """The audit key in `path` (surrounding whitespace stripped). With `private`, a file other
    users may read or write is refused, as ssh refuses an open private key. The key itself never
    appears in an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            raw = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read {path}: {exc.strerror or exc}"]) from None
    if private and mode & 0o007:
        raise ConfigError(
            source,
            [f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}): make it 0600 or 0640"],
        )
    key = raw.strip()
    if len(raw) > _MAX_KEY_FILE_BYTES or len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            source,
            [
                f"{path} must hold a secret of at least {MIN_KEY_BYTES} and at most "
                f"{_MAX_KEY_FILE_BYTES} bytes, e.g. from `openssl rand -hex 32`"
            ],
        )
    return key
