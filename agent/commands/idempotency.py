"""Remembers the reply to each request id for a while, so a repeated id is answered, not re-run.

The contract: a repeated `id` within 10 minutes gets the first reply again and is not executed
twice. Entries expire a fixed time after they were first seen (a repeat does not extend them)
and the cache is bounded both in entries and in reply bytes; past either bound the oldest entry
goes first. Because `ttl_s` is capped at the window, an id that was forgotten by age belongs to
a request that has expired anyway; only a flood of more than `max_entries` distinct ids inside
the window can make an old id forgettable early.

A second request with the same id that arrives while the first is still executing waits for the
first one's reply (bounded by `wait_s`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Entry:
    expires: float
    reply: bytes | None = None  # None while the first request is executing
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of `IdempotencyCache.claim`: either a reply to repeat, or the right to execute."""

    key: str
    replay: bytes | None  # the first reply when this id was seen before; None: caller executes
    timed_out: bool = False  # the first request with this id is still running after wait_s


class IdempotencyCache:
    """Thread-safe TTL + LRU map from request id to reply bytes."""

    def __init__(
        self,
        *,
        ttl_s: float = 600.0,
        max_entries: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        wait_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_entries < 1 or max_bytes < 1:
            raise ValueError("ttl_s, max_entries and max_bytes must be positive")
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()  # guards _entries and _bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def claim(self, key: str) -> Claim:
        """Return the stored reply for `key`, or reserve `key` for the caller, who must then call
        `complete` (or `release` on failure)."""
        with self._lock:
            self._expire(self._clock())
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(expires=self._clock() + self._ttl_s)
                self._evict()
                return Claim(key, None)
            if entry.reply is not None:
                return Claim(key, entry.reply)
        # The first request with this id is still running: wait for its reply outside the lock.
        if entry.done.wait(self._wait_s) and entry.reply is not None:
            return Claim(key, entry.reply)
        return Claim(key, None, timed_out=True)

    def complete(self, key: str, reply: bytes) -> None:
        """Store the reply for a claimed key and wake anyone waiting for it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:  # evicted while executing: remember it afresh
                entry = _Entry(expires=self._clock() + self._ttl_s)
                self._entries[key] = entry
            elif entry.reply is not None:
                self._bytes -= len(entry.reply)
            entry.reply = reply
            self._bytes += len(reply)
            self._evict()
        entry.done.set()

    def release(self, key: str) -> None:
        """Forget a claimed key without a reply, so a later repeat executes."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and entry.reply is not None:
                self._bytes -= len(entry.reply)
        if entry is not None:
            entry.done.set()

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            self._drop(key)

    def _evict(self) -> None:
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        if entry.reply is not None:
            self._bytes -= len(entry.reply)
        entry.done.set()
