"""The pre-event buffer of a network camera: its compressed packets, cut at keyframes.

A 1080p25 camera at 4 Mbit/s fills 10 s of pre-roll with about 5 MB of H.264, against 9 MiB of
JPEG at 10 fps for today's `PreEventBuffer` (which also costs a JPEG encode per kept frame). The
packets are kept exactly as the camera sent them, so a clip made from them
(agent.footage.remux) is the camera's own footage at its full rate.

A decoder can only start at a keyframe, so the ring only ever holds whole GOPs (a keyframe and
the packets that depend on it): it starts at a keyframe, drops packets until one arrives (at the
start and after `clear()`), and evicts the oldest GOP at once. Two bounds: time (`seconds`: keep
from the keyframe at or before newest.ts - seconds, so the ring covers at least `seconds` once
that much arrived) and bytes (`max_bytes`: drop the oldest GOPs; the newest is always kept whole,
unless it alone grows past `OVERSIZE` times the budget, as a stream that stops sending keyframes
would: then the ring empties and waits for the next keyframe, so memory stays bounded).

Wall time may jump: a reconnect, NTP stepping the clock back. The ring keeps every packet in
arrival order (packets of several sessions may sit side by side: consumers check `info`) and
orders keyframes by a monotonic "ring time": a step back of more than `BACKSTEP_S` is folded
away, so `since()` always returns one contiguous run in arrival order. `t0` passed to `since()`
is read on the newest packets' clock.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass

from agent.capture.packets import StreamPacket
from agent.config import CameraConfig

__all__ = ["BACKSTEP_S", "OVERSIZE", "PacketRing", "RingStats"]

log = logging.getLogger(__name__)

BACKSTEP_S = 3.0
"""A packet whose wall time is this much older than the previous one starts a new time line;
smaller steps back (B-frames in decode order, jitter) are ordinary."""
OVERSIZE = 4
"""The newest GOP alone may use this many times `max_bytes` before the ring gives it up."""


@dataclass(frozen=True, slots=True)
class RingStats:
    """Figures for telemetry. `evicted_for_bytes` counts packets dropped for the byte budget
    (the ring then covers less than `seconds`); `keyframes` is the GOPs held."""

    packets: int
    bytes_used: int
    span_s: float
    pushed: int
    evicted_for_bytes: int
    keyframes: int


class PacketRing:
    """A time- and byte-bounded ring of one camera's packets in whole GOPs; thread-safe.

    `push` runs on the capture thread; readers (clip recorder, exports) run on others. One lock
    guards everything; under it only deque operations and list copies happen.
    """

    def __init__(self, seconds: float, max_bytes: int) -> None:
        if not seconds > 0:
            raise ValueError(f"packet ring seconds must be > 0, got {seconds}")
        if max_bytes < 1:
            raise ValueError(f"packet ring max_bytes must be >= 1, got {max_bytes}")
        self.seconds = float(seconds)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        # Lock scope: everything below.
        self._items: deque[tuple[int, StreamPacket]] = deque()  # seqs are contiguous
        self._key_seqs: deque[int] = deque()  # seq of each held keyframe, oldest first
        self._key_times: deque[float] = deque()  # ring time of each held keyframe (monotonic)
        self._bytes = 0
        self._gop_bytes = 0  # bytes of the newest GOP
        self._next_seq = 0
        self._need_key = True
        self._shift = 0.0  # ring time = wall ts + shift; grows at each step back of the clock
        self._last_ts: float | None = None  # wall ts of the previous accepted packet
        self._last_rt = float("-inf")  # ring time of the previous accepted packet
        self._pushed = 0
        self._evicted_for_bytes = 0

    @classmethod
    def for_camera(cls, cam: CameraConfig) -> PacketRing:
        """The ring a camera's `[cameras.buffer]` section describes (pre_event_s, max_bytes)."""
        return cls(seconds=cam.buffer.pre_event_s, max_bytes=cam.buffer.max_bytes)

    def push(self, packet: StreamPacket) -> int:
        """Keep `packet`; its sequence number, or -1 when dropped while waiting for a keyframe."""
        with self._lock:
            self._pushed += 1
            if self._need_key and not packet.keyframe:
                return -1
            self._need_key = False
            if self._last_ts is not None and packet.ts < self._last_ts - BACKSTEP_S:
                self._shift += self._last_ts - packet.ts  # fold the step back away
            self._last_ts = packet.ts
            rt = max(packet.ts + self._shift, self._last_rt)
            self._last_rt = rt
            seq = self._next_seq
            self._next_seq += 1
            self._items.append((seq, packet))
            self._bytes += packet.size
            if packet.keyframe:
                self._key_seqs.append(seq)
                self._key_times.append(rt)
                self._gop_bytes = 0
            self._gop_bytes += packet.size
            self._evict(rt)
            return seq

    def _evict(self, newest_rt: float) -> None:
        """Drop whole GOPs from the front for the time and byte bounds (lock held)."""
        horizon = newest_rt - self.seconds
        # Keep from the keyframe at or before the horizon: drop GOPs wholly older than it.
        while len(self._key_times) > 1 and self._key_times[1] <= horizon:
            self._drop_gop()
        while self._bytes > self.max_bytes and len(self._key_seqs) > 1:
            self._evicted_for_bytes += self._drop_gop()
        if self._gop_bytes > OVERSIZE * self.max_bytes:
            log.warning(
                "packet ring: one GOP grew past %d bytes without a keyframe; emptied", self._gop_bytes
            )
            self._evicted_for_bytes += len(self._items)
            self._empty()

    def _drop_gop(self) -> int:
        """Drop the oldest GOP (lock held); the number of packets dropped."""
        self._key_seqs.popleft()
        self._key_times.popleft()
        stop = self._key_seqs[0]
        dropped = 0
        while self._items and self._items[0][0] < stop:
            self._bytes -= self._items.popleft()[1].size
            dropped += 1
        return dropped

    def _empty(self) -> None:
        self._items.clear()
        self._key_seqs.clear()
        self._key_times.clear()
        self._bytes = 0
        self._gop_bytes = 0
        self._need_key = True

    def since(self, t0: float) -> list[tuple[int, StreamPacket]]:
        """(seq, packet) from the keyframe at or before `t0` (or the oldest held, when `t0` is
        older) to the newest, in arrival order; empty while the ring is."""
        with self._lock:
            if not self._key_seqs:
                return []
            i = max(0, bisect.bisect_right(self._key_times, t0 + self._shift) - 1)
            first = self._key_seqs[i] - self._items[0][0]
            return list(itertools.islice(self._items, first, None))

    def after(self, seq: int) -> list[tuple[int, StreamPacket]]:
        """(seq, packet) newer than `seq`, in arrival order. When packets after `seq` were
        evicted already, the result starts later than seq + 1: callers can see the hole."""
        with self._lock:
            if not self._items:
                return []
            first = max(0, seq + 1 - self._items[0][0])
            return list(itertools.islice(self._items, first, None))

    def newest(self) -> StreamPacket | None:
        with self._lock:
            return self._items[-1][1] if self._items else None

    def oldest_ts(self) -> float | None:
        """Wall time of the oldest packet held (a keyframe), or None while empty."""
        with self._lock:
            return self._items[0][1].ts if self._items else None

    def stats(self) -> RingStats:
        """A consistent snapshot for telemetry; span_s is in ring time (steps back folded)."""
        with self._lock:
            span = self._last_rt - self._key_times[0] if self._key_times else 0.0
            return RingStats(
                packets=len(self._items),
                bytes_used=self._bytes,
                span_s=span,
                pushed=self._pushed,
                evicted_for_bytes=self._evicted_for_bytes,
                keyframes=len(self._key_seqs),
            )

    def clear(self) -> None:
        """Forget every packet; the next kept packet will be a keyframe. Sequence numbers go on."""
        with self._lock:
            self._empty()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
