"""The durable outbox: every QoS 1 message waits here until the broker has acknowledged it.

Storage is one SQLite file in WAL mode, and `put` commits before it returns: a stored message
survives a crash or kill of the agent, a power cut may lose the last few. The file itself (schema,
durability trade, what a corrupt, locked or impossible file turns into) is agent.mqtt.outbox_file;
this module is what is stored in it and in which order it leaves.

Delivery cycle, as the MQTT link drives it::

    outbox.put(OutboxMessage(topic, payload, kind=...))   # any thread; returns the row id
    batch = outbox.next_batch(window - in_flight)   # unsent, oldest first
    outbox.mark_inflight([m.id for m in batch])    # mark BEFORE publishing, so an ack finds it
    for m in batch: client.publish(...)            # remember mid -> m.id
    on PUBACK: outbox.ack(id)                      # deleted for good
    at shutdown: link.stop(); outbox.close()       # WAL folded into the file

Within one process the link does not requeue on a disconnect: paho keeps every QoS 1 message it
accepted and resends it, under the same mid, after the reconnect. paho may run on_publish
(network thread) before `publish` returns its mid, and holds its own locks while it runs
callbacks, so agent.mqtt.link only queues acknowledged mids there and its pump thread, the sole
owner of the mid -> id map, applies them. bench/outbox_bench.py, through the link itself: its
window of 200 replays > 3,000 msg/s on loopback while live QoS 0 messages wait ~20 ms at most.

In-flight state lives in memory only: after a restart everything stored is unsent again, which
is exactly what at-least-once delivery needs (the platform deduplicates by event_id+phase+ts).
Order: `next_batch` returns messages in global insertion order, so per-camera order is kept
across outages and restarts. Replay does not starve live traffic as long as the link keeps a
bounded window of outbox messages in flight and hands QoS 0 traffic (telemetry, stream frames) and
command replies (QoS 1, not stored) to paho directly: those interleave with the replay instead of
queueing behind it.

Bounds and eviction: past `max_messages` or `max_bytes` the oldest message of the least important
kind is dropped, the just-stored one included (a telemetry message never displaces an event):
telemetry first, then snapshots and clip chunks, then status/config, events and audit records
last. In-flight messages are never dropped; the bound may be exceeded by at most what is in
flight, whose acks are about to make room. Drops are counted per kind in the file itself
(`dropped()`), so they survive restarts.
A retained status or config/reported message supersedes any older one for the same topic that is
still waiting: only the newest retained state matters, and replaying stale ones would delay
fresh traffic. Superseded messages are counted separately from drops.

A bad file is set aside and a fresh one started, at open or while running (`discarded` says what
happened); an impossible one means SQLite `:memory:` (`durable` is False). The constructor never
raises for I/O or SQLite errors, so the agent never refuses to start because of its outbox.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, get_args

from agent.errors import AgentError
from agent.mqtt.outbox_file import COLUMNS, DiscardedOutbox, open_outbox_file, reopen_after_corruption

__all__ = ["KINDS", "DiscardedOutbox", "Kind", "Outbox", "OutboxError", "OutboxMessage"]

log = logging.getLogger(__name__)

Kind = Literal["event", "status", "snapshot", "audit", "config", "clip", "telemetry"]
KINDS: tuple[Kind, ...] = get_args(Kind)

# Eviction rank: lower is dropped first. Events and audit records are what the platform cannot
# recreate; snapshots and clip chunks can be fetched again; status/config are retained state.
PRIORITY: dict[Kind, int] = {
    "telemetry": 0,
    "snapshot": 1,
    "clip": 1,
    "status": 2,
    "config": 2,
    "audit": 3,
    "event": 3,
}
_T = TypeVar("_T")

SUPERSEDING_KINDS: frozenset[Kind] = frozenset({"status", "config"})


class OutboxError(AgentError):
    """The outbox could not store or read a message (disk full, I/O error)."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message waiting for the broker: stored by the outbox (QoS 1) or queued in memory (QoS 0).

    Checked on construction, so a bad message fails in the thread that made it and never in the
    MQTT pump. `id` and `created_at` are 0 until the outbox has stored the message.
    """

    topic: str
    payload: bytes
    _: KW_ONLY
    kind: Kind
    qos: int = 1
    retain: bool = False
    camera: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    id: int = 0
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in PRIORITY:
            raise ValueError(f"unknown outbox kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos!r}")
        payload: object = self.payload
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        if not isinstance(payload, bytes):
            object.__setattr__(self, "payload", bytes(payload))
        if not self.topic or "+" in self.topic or "#" in self.topic:
            raise ValueError(f"cannot publish to topic {self.topic!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.properties.items()):
            raise ValueError("user properties must map str to str")


class Outbox:
    """A bounded, durable FIFO of messages awaiting PUBACK; see the module docstring for the cycle.

    Thread-safety: one SQLite connection, used only under `self._lock`. The lock covers every
    statement and the in-memory bookkeeping (`_inflight`, `_count`, `_bytes`) so they always agree
    with the file; callers are any publishing thread (`put`), the link's pump (`next_batch`,
    `mark_inflight`, `ack`) and its owner (`requeue_inflight` on start, `close` after stop). No
    callback or I/O other than SQLite runs under it.

    Never raises for I/O or SQLite errors when opened (see the module docstring: a bad file is
    set aside, an impossible one means `:memory:`); only bounds below 1 are a ValueError.
    """

    def __init__(
        self,
        path: Path,
        max_messages: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        *,
        busy_timeout_s: float = 2.0,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if max_bytes < 1:
            raise ValueError(f"outbox max_bytes must be >= 1, got {max_bytes}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # id -> size, insertion-ordered
        self._superseded = 0
        self._closed = False
        opened = open_outbox_file(self.path, busy_timeout_s)
        self._conn = opened.conn
        self.durable = opened.durable
        self.discarded: DiscardedOutbox | None = opened.discarded
        self._count, self._bytes = self._totals()

    # -- recovery ------------------------------------------------------------------------------

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """The file went bad while running: set it aside and carry on with a fresh one."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._inflight.clear()
        opened = reopen_after_corruption(self.path, exc, self._busy_timeout_s)
        self._conn = opened.conn
        self.durable = self.durable and opened.durable
        if opened.discarded is not None:
            self.discarded = opened.discarded
        self._count, self._bytes = self._totals()

    def _totals(self) -> tuple[int, int]:
        row = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        return int(row[0]), int(row[1])

    def _run(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run one locked operation; recover from a corrupt file once, report other failures."""
        if self._closed:
            # Checked first: sqlite3 reports a closed connection as a DatabaseError, which
            # would otherwise be taken for corruption and set the sound file aside.
            raise OutboxError(f"outbox {what} failed: the outbox {self.path} is closed")
        try:
            return fn()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                self._rollback()
                raise OutboxError(f"outbox {what} failed: {exc}") from None
            self._rollback()
            self._recover(exc)
            return fn()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    # -- public API ----------------------------------------------------------------------------

    def put(self, message: OutboxMessage) -> int:
        """Store a message durably and return its id (the message's own `id` is ignored).

        If the outbox is full of more important messages, the new one may itself be the one
        evicted (counted in `dropped()`); its id is still returned and `ack` on it is harmless.
        Raises OutboxError when the disk fails or the outbox is closed.
        """
        m = message
        props = json.dumps(m.properties, separators=(",", ":")) if m.properties else None
        size = len(m.payload) + len(m.topic) + (len(props) if props else 0)
        if size > self.max_bytes:
            raise ValueError(f"message of {size} bytes exceeds the outbox's max_bytes {self.max_bytes}")

        def op() -> int:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            if m.retain and m.kind in SUPERSEDING_KINDS:
                self._supersede(m.topic)
            cur = conn.execute(
                "INSERT INTO messages (topic, payload, qos, retain, kind, priority, camera, properties,"
                " size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    m.topic,
                    m.payload,
                    m.qos,
                    int(m.retain),
                    m.kind,
                    PRIORITY[m.kind],
                    m.camera,
                    props,
                    size,
                    time.time(),
                ),
            )
            new_id = cur.lastrowid
            assert new_id is not None
            self._count += 1
            self._bytes += size
            if self._count > self.max_messages or self._bytes > self.max_bytes:
                self._evict(new_id)
            conn.execute("COMMIT")
            return new_id

        with self._lock:
            count, nbytes = self._count, self._bytes
            try:
                return self._run("put", op)
            except OutboxError:
                self._count, self._bytes = count, nbytes
                raise

    def _supersede(self, topic: str) -> None:
        """Delete older retained messages for `topic` that are not in flight (lock held)."""
        rows = self._conn.execute(
            "SELECT id, size FROM messages WHERE topic = ? AND retain = 1", (topic,)
        ).fetchall()
        stale = [(i, s) for i, s in rows if i not in self._inflight]
        if stale:
            self._conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i, _ in stale])
            self._count -= len(stale)
            self._bytes -= sum(s for _, s in stale)
            self._superseded += len(stale)

    def _evict(self, new_id: int) -> None:
        """Drop least-important, oldest messages until within bounds (lock held, in a transaction).

        In-flight messages are skipped: they are probably delivered already and will be acked. When
        the next victim would be the new message itself, the bound may be exceeded by what is in
        flight instead, since those acks will make room; never by more.
        """
        drops: dict[str, int] = {}
        while self._count > self.max_messages or self._bytes > self.max_bytes:
            rows = self._conn.execute(
                "SELECT id, kind, size FROM messages ORDER BY priority, id LIMIT ?",
                (256 + len(self._inflight),),
            ).fetchall()
            victims = [(i, k, s) for i, k, s in rows if i not in self._inflight]
            if not victims:
                break  # everything left is in flight; the bound is exceeded until acks arrive
            doomed = []
            for i, k, s in victims:
                if self._count <= self.max_messages and self._bytes <= self.max_bytes:
                    break
                if i == new_id and self._within_inflight_allowance():
                    break
                doomed.append((i,))
                drops[k] = drops.get(k, 0) + 1
                self._count -= 1
                self._bytes -= s
            self._conn.executemany("DELETE FROM messages WHERE id = ?", doomed)
            if len(doomed) < len(victims) or not doomed:
                break
        for k, n in drops.items():
            self._conn.execute(
                "INSERT INTO drops (kind, count) VALUES (?, ?)"
                " ON CONFLICT(kind) DO UPDATE SET count = count + excluded.count",
                (k, n),
            )
        if drops:
            log.warning("outbox full: dropped %s", ", ".join(f"{n} {k}" for k, n in sorted(drops.items())))

    def _within_inflight_allowance(self) -> bool:
        """Over the bound by no more than what is in flight (and about to be acked)."""
        return self._count <= self.max_messages + len(self._inflight) and self._bytes <= self.max_bytes + sum(
            self._inflight.values()
        )

    def next_batch(self, limit: int) -> list[OutboxMessage]:
        """Up to `limit` unsent (stored, not in flight) messages, in insertion order."""
        if limit <= 0:
            return []

        def op() -> list[OutboxMessage]:
            ids = [
                r[0]
                for r in self._conn.execute(
                    "SELECT id FROM messages ORDER BY id LIMIT ?", (limit + len(self._inflight),)
                )
                if r[0] not in self._inflight
            ][:limit]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = self._conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE id IN ({marks}) ORDER BY id",  # noqa: S608
                ids,
            ).fetchall()
            return [
                OutboxMessage(
                    r[1],
                    bytes(r[2]),
                    kind=r[5],
                    qos=r[3],
                    retain=bool(r[4]),
                    camera=r[6],
                    properties=json.loads(r[7]) if r[7] else {},
                    id=r[0],
                    created_at=r[8],
                )
                for r in rows
            ]

        with self._lock:
            return self._run("read", op)

    def mark_inflight(self, ids: Iterable[int]) -> None:
        """Mark messages as handed to the client; call before publishing them."""
        wanted = list(ids)

        def op() -> None:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for i, size in self._conn.execute(
                    f"SELECT id, size FROM messages WHERE id IN ({marks})",  # noqa: S608
                    chunk,
                ):
                    self._inflight[i] = size

        with self._lock:
            self._run("mark", op)

    def ack(self, message_id: int) -> None:
        """The broker acknowledged the message: delete it. Unknown ids are ignored."""

        def op() -> None:
            cur = self._conn.execute("DELETE FROM messages WHERE id = ? RETURNING size", (message_id,))
            row = cur.fetchone()
            cur.close()
            self._inflight.pop(message_id, None)
            if row is not None:
                self._count -= 1
                self._bytes -= int(row[0])

        with self._lock:
            self._run("ack", op)

    def requeue_inflight(self) -> int:
        """Everything in flight is unsent again (it keeps its place in order); returns how many.

        For a new client session that will not resend what an earlier one was handed (the link
        calls it on start); paho itself resends across reconnects of one client.
        """
        with self._lock:
            n = len(self._inflight)
            self._inflight.clear()
            return n

    def inflight(self) -> int:
        """How many messages are handed to the client and not yet acknowledged."""
        with self._lock:
            return len(self._inflight)

    def depth(self) -> int:
        """Messages stored and not yet acknowledged (in flight included)."""
        with self._lock:
            return self._count

    def bytes_used(self) -> int:
        """Bytes accounted to stored messages (payload + topic + properties)."""
        with self._lock:
            return self._bytes

    def dropped(self) -> dict[str, int]:
        """Messages evicted because the outbox was full, per kind, since the file was created."""

        def op() -> dict[str, int]:
            return {k: int(n) for k, n in self._conn.execute("SELECT kind, count FROM drops ORDER BY kind")}

        with self._lock:
            return self._run("read", op)

    def holds(self, topic: str, payload: bytes) -> bool:
        """Whether a message with exactly this topic and payload still waits for its PUBACK."""

        def op() -> bool:
            row = self._conn.execute(
                "SELECT 1 FROM messages WHERE topic = ? AND payload = ? LIMIT 1", (topic, payload)
            ).fetchone()
            return row is not None

        with self._lock:
            return self._run("read", op)

    def superseded(self) -> int:
        """Retained status/config messages replaced by a newer one before delivery (this run)."""
        with self._lock:
            return self._superseded

    def close(self) -> None:
        """Fold the WAL into the file (truncating it) and close; safe to call twice.

        Stop the MQTT link first: it reads and acks here. Afterwards every call that touches
        SQLite (`put`, `next_batch`, `mark_inflight`, `ack`, `dropped`) raises OutboxError.
        Undelivered rows stay in the file for the next start.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inflight.clear()
            conn = self._conn
            try:
                row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if self.durable and row is not None and row[0]:
                    log.warning("outbox %s: WAL not emptied on close: another connection reads it", self.path)
            except sqlite3.Error as exc:
                log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                conn.close()
