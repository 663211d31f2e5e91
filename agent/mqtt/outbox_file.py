"""The outbox's SQLite file: its schema, how it is opened, and what happens when it is unusable.

Storage is one SQLite file in WAL mode with `synchronous=NORMAL`: a commit survives a crash or
kill of the agent (the WAL is in the OS's hands), while a power cut can lose the last few commits
but never corrupts the file. Full `synchronous=FULL` would fsync on every message, which on an SD
card costs milliseconds each; losing a few hundred milliseconds of events on a power cut is the
documented trade.

Failure modes, and what each leaves behind:

- A file that cannot be opened as a sane outbox (garbage, truncated, not a database, locked by
  someone else, wrong schema) is renamed to `<name>.corrupt-<UTC timestamp>` with one warning
  line, its `-wal`, `-shm` and `-journal` files beside it, and a fresh outbox is started;
  `Opened.discarded` says what happened. SQLite deletes the `-wal` file when a connection that
  failed to open is closed, so a hard link taken first keeps its committed messages for the copy
  set aside.
- A file that goes bad while the agent runs is set aside the same way (`reopen_after_corruption`).
- When not even a fresh file can be created (read-only or missing data_dir), the messages are kept
  in SQLite `:memory:` instead (`Opened.durable` is False), with one error line.

Neither `open_outbox_file` nor `reopen_after_corruption` raises for I/O or SQLite errors, so the
agent never refuses to start because of its outbox. This module only opens files; what is stored
in them, and under which lock, is agent.mqtt.outbox's business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.files import FILE_MODE, create_or_open_private

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "DiscardedOutbox",
    "Opened",
    "open_outbox_file",
    "reopen_after_corruption",
]

# Logged under the outbox's name: these lines are the outbox's, and log filters select them by it.
log = logging.getLogger("agent.mqtt.outbox")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    camera TEXT,
    properties TEXT,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority, id);
CREATE INDEX IF NOT EXISTS messages_retained_by_topic ON messages (topic) WHERE retain = 1;
CREATE TABLE IF NOT EXISTS drops (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""
COLUMNS = "id, topic, payload, qos, retain, kind, camera, properties, created_at"
"""The columns a stored message is read back from, in `OutboxMessage` order."""


@dataclass(frozen=True, slots=True)
class DiscardedOutbox:
    """An outbox file that was moved aside instead of used, and why."""

    moved_to: Path
    reason: str


@dataclass(frozen=True, slots=True)
class Opened:
    """A usable connection, whether it is backed by the file, and any bad file set aside on the way."""

    conn: sqlite3.Connection
    durable: bool
    discarded: DiscardedOutbox | None


def open_outbox_file(path: Path, busy_timeout_s: float) -> Opened:
    """Open the outbox at `path`, setting an unusable file aside; `:memory:` when even that fails."""
    discarded: DiscardedOutbox | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_links(path)
        if path.exists() and not path.is_file():  # a folder: SQLite could never open it
            why = "it is a folder, not a file" if path.is_dir() else "not a regular file"
            discarded = _move_aside(path, why)
        keep = _keep_wal(path)
        try:
            return Opened(_connect_private(path, busy_timeout_s), durable=True, discarded=discarded)
        except sqlite3.Error as exc:
            discarded = _move_aside(path, f"{type(exc).__name__}: {exc}", kept_wal=keep)
            return Opened(_connect_private(path, busy_timeout_s), durable=True, discarded=discarded)
        finally:
            if keep is not None:
                with contextlib.suppress(OSError):
                    keep.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as exc:
        log.error(
            "outbox %s cannot be created (%s): messages are kept in memory only and will not"
            " survive a restart",
            path,
            exc,
        )
        return Opened(_connect(":memory:", busy_timeout_s), durable=False, discarded=discarded)


def reopen_after_corruption(path: Path, exc: sqlite3.DatabaseError, busy_timeout_s: float) -> Opened:
    """The file went bad while running (its connection already closed): set it aside, start afresh."""
    discarded: DiscardedOutbox | None = None
    try:
        discarded = _move_aside(path, f"{type(exc).__name__}: {exc}")
        return Opened(_connect_private(path, busy_timeout_s), durable=True, discarded=discarded)
    except (OSError, sqlite3.Error) as again:
        log.error("outbox %s cannot be recreated (%s): keeping messages in memory only", path, again)
        return Opened(_connect(":memory:", busy_timeout_s), durable=False, discarded=discarded)


def _refuse_links(path: Path) -> None:
    """Remove a symbolic link planted at the outbox or its companions (the link, never its target):
    SQLite would otherwise write the queue into whatever file it points at."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_symlink():
            log.warning("outbox: symbolic link refused and removed: %s", candidate)
            candidate.unlink()


def _connect_private(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """`_connect` to a file created 0600 beforehand, its WAL and shared memory made 0600 after:
    SQLite creates files with the umask's modes, and the queue holds events and snapshots."""
    os.close(create_or_open_private(path))
    conn = _connect(path, busy_timeout_s)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), FILE_MODE)
    return conn


def _connect(target: Path | str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open, check and if needed create the schema; any sqlite3.Error means 'not usable'."""
    conn = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check failed: {row[0] if row else 'no result'}")
        # BEGIN IMMEDIATE also proves nobody else holds the write lock.
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif version[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"unknown outbox schema version {version[0]!r}")
        # A schema from elsewhere with the same table names would fail here, not later.
        conn.execute(f"SELECT {COLUMNS}, priority, size FROM messages LIMIT 1").fetchall()  # noqa: S608
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _keep_wal(path: Path) -> Path | None:
    """Hard-link the -wal file before opening: a failed open deletes it, with its commits."""
    wal = path.with_name(path.name + "-wal")
    keep = path.with_name(path.name + "-wal.keep")
    keep.unlink(missing_ok=True)
    try:
        os.link(wal, keep)
    except OSError:
        return None
    return keep


def _move_aside(path: Path, reason: str, kept_wal: Path | None = None) -> DiscardedOutbox:
    """Rename the file and its companions to `<name>.corrupt-<UTC timestamp>*`, with one warning."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm", "-journal"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.replace(target.with_name(target.name + suffix))
    if kept_wal is not None and kept_wal.exists() and not target.with_name(target.name + "-wal").exists():
        kept_wal.replace(target.with_name(target.name + "-wal"))
    log.warning("outbox %s is unusable (%s): moved aside to %s, starting a fresh one", path, reason, target)
    return DiscardedOutbox(moved_to=target, reason=reason)
