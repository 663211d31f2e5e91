"""Remembers the reply to each request for a while, so a repeated request is answered, not re-run.

A request is known by a key the dispatcher builds from the requester's agency and the request
`id`: another agency reusing an id is another request and never sees the first one's reply.

Each entry lives `window_s` from when it was first claimed (a repeat does not extend it). Entries
are counted per window (the dispatcher uses one per rate-limit account, agent.commands.limits).
A window holds at most `capacity` entries and, when full, refuses new keys (`Claim.full`) instead
of forgetting old ones: no key is forgotten inside its window, and one window's flood never
touches another's. The dispatcher sizes `capacity` from the account's request rate limit, so a
window can only fill when a restart has refilled the limiter's buckets within one window.

A second request with the same key that arrives while the first is still executing waits for the
first one's reply (at most `wait_s`).

Storage: SQLite, WAL, synchronous=NORMAL, so that a repeat after a restart gets the stored reply:
a reply is committed before it is sent and survives a crash or kill of the agent; a power cut may
lose the last few (those requests would run again if repeated). The file is created 0600 in a
0700 folder, never through a symlink. A file that cannot be used is set aside as
`<name>.corrupt-<UTC time>` with one warning and a fresh one started; when not even that works,
or with `path=None`, replies are kept in memory (`durable` False). Neither the constructor nor any
method raises for I/O or SQLite errors: the command plane keeps answering without the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from agent.files import state_dir

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    window TEXT NOT NULL,
    expires REAL NOT NULL,
    reply BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_by_expiry ON replies (expires);
"""
_PURGE_EVERY_S = 1.0


@dataclass(slots=True)
class _Pending:
    window: str
    expires: float
    reply: bytes | None = None  # set by complete(), for duplicates that waited
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of `IdempotencyCache.claim`: a reply to repeat, or the right to execute, or neither."""

    key: str
    replay: bytes | None  # the first reply when this key was seen before; None: see below
    timed_out: bool = False  # the first request with this key is still running after wait_s
    full: bool = False  # the window holds `capacity` keys: the caller must not execute

    @property
    def granted(self) -> bool:
        """The caller executes and then must call `complete` or `release`."""
        return self.replay is None and not self.timed_out and not self.full


class IdempotencyCache:
    """Thread-safe map of request keys to reply bytes, bounded per window, persisted in SQLite."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        window_s: float = 600.0,
        capacity: int = 10_000,
        wait_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError("window_s and capacity must be positive")
        self.path = path
        self._window_s = window_s
        self._capacity = capacity
        self._wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()  # guards the connection, _pending, _rows, _next_purge
        self._pending: dict[str, _Pending] = {}  # claimed, not completed: at most one per worker
        self._rows: dict[str, int] = {}  # stored replies per window
        self._next_purge = 0.0
        self._conn, self.durable = _open(path)
        self._load()

    def __len__(self) -> int:
        with self._lock:
            return sum(self._rows.values()) + len(self._pending)

    def lookup(self, key: str) -> bytes | None:
        """The stored reply for `key`, without claiming it."""
        now = self._clock()
        with self._lock:
            return self._stored(key, now)

    def claim(self, window: str, key: str) -> Claim:
        """The stored reply for `key`; else reserve `key` (the caller then calls `complete` or
        `release`); else, when `window` is full, `full`."""
        now = self._clock()
        with self._lock:
            self._purge(now)
            pending = self._pending.get(key)
            if pending is None:
                stored = self._stored(key, now)
                if stored is not None:
                    return Claim(key, stored)
                in_flight = sum(1 for p in self._pending.values() if p.window == window)
                if self._rows.get(window, 0) + in_flight >= self._capacity:
                    return Claim(key, None, full=True)
                self._pending[key] = _Pending(window, now + self._window_s)
                return Claim(key, None)
        # The first request with this key is still running: wait for its reply outside the lock.
        if pending.done.wait(self._wait_s) and pending.reply is not None:
            return Claim(key, pending.reply)
        return Claim(key, None, timed_out=True)

    def complete(self, key: str, reply: bytes) -> None:
        """Store the reply for a claimed key (durably, before the caller sends it); wake waiters."""
        with self._lock:
            pending = self._pending.pop(key, None)
            if pending is None:
                return
            pending.reply = reply
            stored = self._db(
                "store a reply",
                lambda: self._conn.execute(
                    "INSERT OR REPLACE INTO replies (key, window, expires, reply) VALUES (?, ?, ?, ?)",
                    (key, pending.window, pending.expires, reply),
                ),
            )
            if stored is not None:
                self._rows[pending.window] = self._rows.get(pending.window, 0) + 1
        pending.done.set()

    def release(self, key: str) -> None:
        """Forget a claimed key without a reply, so a later repeat executes."""
        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is not None:
            pending.done.set()

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    # -- under the lock ----------------------------------------------------------------------

    def _stored(self, key: str, now: float) -> bytes | None:
        row = self._db(
            "look up a reply",
            lambda: self._conn.execute(
                "SELECT window, expires, reply FROM replies WHERE key = ?", (key,)
            ).fetchone(),
        )
        if row is None:
            return None
        window, expires, reply = row
        if float(expires) > now:
            return bytes(reply)
        # Expired but not purged yet: drop it now so that its replacement is counted once.
        if self._db("drop a reply", lambda: self._conn.execute("DELETE FROM replies WHERE key = ?", (key,))):
            self._uncount(str(window), 1)
        return None

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_EVERY_S

        def purge() -> list[tuple[str, int]]:
            rows = self._conn.execute(
                "SELECT window, COUNT(*) FROM replies WHERE expires <= ? GROUP BY window", (now,)
            ).fetchall()
            self._conn.execute("DELETE FROM replies WHERE expires <= ?", (now,))
            return [(str(w), int(n)) for w, n in rows]

        for window, n in self._db("forget expired replies", purge) or []:
            self._uncount(window, n)

    def _uncount(self, window: str, n: int) -> None:
        left = self._rows.get(window, 0) - n
        if left > 0:
            self._rows[window] = left
        else:
            self._rows.pop(window, None)

    def _load(self) -> None:
        with self._lock:
            self._purge(self._clock())
            rows = self._db(
                "count stored replies",
                lambda: self._conn.execute("SELECT window, COUNT(*) FROM replies GROUP BY window").fetchall(),
            )
            self._rows = {str(w): int(n) for w, n in rows or []}

    def _db(self, what: str, fn: Callable[[], _T]) -> _T | None:
        """Run one statement; None when SQLite fails (a corrupt file is set aside and replaced)."""
        try:
            return fn()
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                log.error("reply store: cannot %s (%s); starting a fresh store", what, exc)
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                if self.path is not None:
                    _set_aside(self.path, f"{type(exc).__name__}: {exc}")
                self._conn, durable = _open(self.path)
                self.durable = self.durable and durable
                self._rows = {}
            else:
                log.error("reply store: cannot %s: %s", what, exc)
            return None


def _open(path: Path | None) -> tuple[sqlite3.Connection, bool]:
    """A usable connection and whether it is backed by `path`; see the module docstring."""
    if path is None:
        return _connect(":memory:"), False
    try:
        _prepare(path)
        try:
            return _connect(path), True
        except sqlite3.Error as exc:
            _set_aside(path, f"{type(exc).__name__}: {exc}")
            _prepare(path)
            return _connect(path), True
    except (OSError, sqlite3.Error) as exc:
        log.error("reply store %s cannot be used (%s): replies are kept in memory only", path, exc)
        return _connect(":memory:"), False


def _prepare(path: Path) -> None:
    """The folder 0700, the file 0600 and created here: neither is ever a symlink's target (a
    linked folder raises LinkRefused; a file where the folder goes is set aside)."""
    state_dir(path.parent, parents=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        _set_aside(path, "not a regular file (a symlink?)")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _connect(target: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=2.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check failed: {row[0] if row else 'no result'}")
        conn.executescript(_SCHEMA)
        conn.execute("SELECT key, window, expires, reply FROM replies LIMIT 1").fetchall()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _set_aside(path: Path, reason: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    log.warning("reply store %s is unusable (%s): moved to %s, starting afresh", path, reason, aside.name)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
