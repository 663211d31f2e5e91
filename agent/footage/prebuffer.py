"""The pre-event buffer: the last few seconds of one camera, kept so a clip can start before its event.

Frames are stored JPEG-encoded (optionally downscaled first): a 1080p BGR frame is 6 MB raw but
about 0.2-0.4 MB as a JPEG, so 10 s at 10 fps fits in tens of megabytes instead of 600 MB. Encoding
costs CPU on the frame thread, so `fps` can cap how many frames are kept (the detector may run
faster than a clip needs) and `max_width` bounds the cost per frame; bench/buffer_bench.py measures
both. The ring is bounded by time (`seconds`) and by bytes (`max_bytes`): when the byte budget bites
first the buffer covers less than `seconds`, which `stats().evicted_for_bytes` makes visible.

A camera with privacy masks has them burnt in before its frames are encoded (`masks`): its
unmasked pixels are never kept, and a clip saved to disk at a stop needs no decode and re-mask.
Every consumer (clips, snapshots) still masks what it sends with `agent.footage.privacy`, which on
masked frames changes nothing.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agent.capture.source import Frame, Image
from agent.config import CameraConfig
from agent.footage.images import encode_jpeg
from agent.footage.privacy import PolygonLike, apply_privacy_masks

__all__ = ["BufferStats", "BufferedFrame", "PreEventBuffer"]


@dataclass(frozen=True, slots=True)
class BufferedFrame:
    """One kept frame: capture time, sequence number and its JPEG bytes at (width, height)."""

    ts: float
    seq: int
    jpeg: bytes
    width: int
    height: int

    def decode(self) -> Image:
        """Decode the JPEG back to BGR pixels; raise ValueError if the bytes are not a JPEG."""
        img = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"buffered frame seq={self.seq} is not a decodable JPEG")
        return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Figures for telemetry: what the buffer holds and what it had to give up."""

    frames: int
    bytes_used: int
    span_s: float
    pushed: int
    skipped_for_rate: int
    evicted_for_bytes: int


class PreEventBuffer:
    """A time- and byte-bounded ring of JPEG frames for one camera; safe to share between threads.

    `push` runs on the camera's frame thread; readers (clip recorder, snapshot command) run on
    others. One lock guards the ring and the counters; JPEG encoding happens outside it so readers
    never wait for an encode.
    """

    def __init__(
        self,
        seconds: float = 10.0,
        max_bytes: int = 64 * 1024 * 1024,
        jpeg_quality: int = 75,
        max_width: int | None = None,
        fps: float | None = None,
        masks: Sequence[PolygonLike] = (),
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"pre-event buffer seconds must be > 0, got {seconds}")
        if max_bytes < 1:
            raise ValueError(f"pre-event buffer max_bytes must be >= 1, got {max_bytes}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        if max_width is not None and max_width < 16:
            raise ValueError(f"max_width must be >= 16 pixels, got {max_width}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.seconds = float(seconds)
        self.max_bytes = int(max_bytes)
        self.jpeg_quality = int(jpeg_quality)
        self.max_width = max_width
        self.fps = fps
        self.masks: tuple[PolygonLike, ...] = tuple(masks)
        # Lock scope: _frames, _ts (parallel list of timestamps for bisect), _bytes and the counters.
        self._lock = threading.Lock()
        self._frames: deque[BufferedFrame] = deque()
        self._ts: deque[float] = deque()
        self._bytes = 0
        self._last_kept_ts: float | None = None
        self._pushed = 0
        self._skipped_for_rate = 0
        self._evicted_for_bytes = 0

    @classmethod
    def for_camera(cls, cam: CameraConfig) -> PreEventBuffer:
        """The buffer a camera's `[cameras.buffer]` section describes."""
        b = cam.buffer
        return cls(
            seconds=b.pre_event_s,
            max_bytes=b.max_bytes,
            jpeg_quality=b.jpeg_quality,
            max_width=b.max_width,
            fps=b.fps,
            masks=[tuple((float(x), float(y)) for x, y in poly) for poly in cam.privacy_masks],
        )

    def set_masks(self, masks: Sequence[PolygonLike]) -> None:
        """Burn these masks into the frames pushed from now on (the console changed them); the
        frames already kept are masked again, with the masks in force, whenever they are cut."""
        self.masks = tuple(masks)  # one reference swap: push() reads it once per frame

    def _due(self, ts: float) -> bool:
        """Whether a frame at `ts` should be kept under the configured rate cap."""
        if self.fps is None or self._last_kept_ts is None:
            return True
        # 10 % slack so a 10 fps source is not thinned to 5 fps by capture jitter.
        return ts - self._last_kept_ts >= 0.9 / self.fps or ts < self._last_kept_ts

    def encode(self, image: Image) -> tuple[bytes, int, int]:
        """Mask, downscale (if wider than max_width) and JPEG-encode; returns (jpeg, width, height)."""
        masks = self.masks
        if masks:
            image = apply_privacy_masks(image, masks)
        jpeg = encode_jpeg(image, quality=self.jpeg_quality, max_width=self.max_width)
        return jpeg.data, jpeg.width, jpeg.height

    def push(self, frame: Frame) -> BufferedFrame | None:
        """Keep `frame` (encoded) unless the rate cap skips it; returns what was stored, or None."""
        with self._lock:
            self._pushed += 1
            if not self._due(frame.ts):
                self._skipped_for_rate += 1
                return None
            self._last_kept_ts = frame.ts
        jpeg, width, height = self.encode(frame.image)
        kept = BufferedFrame(frame.ts, frame.seq, jpeg, width, height)
        with self._lock:
            if self._ts and frame.ts < self._ts[-1]:
                # The clock stepped back (NTP, source restart): what is buffered no longer lines up.
                self._frames.clear()
                self._ts.clear()
                self._bytes = 0
            self._frames.append(kept)
            self._ts.append(kept.ts)
            self._bytes += len(jpeg)
            horizon = kept.ts - self.seconds
            while self._frames and self._ts[0] < horizon:
                self._drop_oldest()
            while self._bytes > self.max_bytes and len(self._frames) > 1:
                self._drop_oldest()
                self._evicted_for_bytes += 1
        return kept

    def _drop_oldest(self) -> None:
        old = self._frames.popleft()
        self._ts.popleft()
        self._bytes -= len(old.jpeg)

    def frames_between(self, t0: float, t1: float) -> list[BufferedFrame]:
        """Frames with t0 <= ts <= t1, oldest first (empty if none are still buffered)."""
        with self._lock:
            lo = bisect.bisect_left(self._ts, t0)
            hi = bisect.bisect_right(self._ts, t1)
            return [self._frames[i] for i in range(lo, hi)]

    def nearest(self, ts: float, max_gap_s: float) -> BufferedFrame | None:
        """The frame closest to `ts`, or None if none lies within `max_gap_s` of it."""
        with self._lock:
            if not self._frames:
                return None
            i = bisect.bisect_left(self._ts, ts)
            candidates = [j for j in (i - 1, i) if 0 <= j < len(self._frames)]
            best = min(candidates, key=lambda j: abs(self._ts[j] - ts))
            found = self._frames[best]
        return found if abs(found.ts - ts) <= max_gap_s else None

    def newest(self) -> BufferedFrame | None:
        """The most recent frame kept, or None while empty."""
        with self._lock:
            return self._frames[-1] if self._frames else None

    def oldest_ts(self) -> float | None:
        """Capture time of the oldest frame still held, or None while empty."""
        with self._lock:
            return self._ts[0] if self._ts else None

    def bytes_used(self) -> int:
        """JPEG bytes currently held (the buffer's own bookkeeping adds little beyond this)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def stats(self) -> BufferStats:
        """A consistent snapshot of the counters for telemetry."""
        with self._lock:
            span = self._ts[-1] - self._ts[0] if self._ts else 0.0
            return BufferStats(
                frames=len(self._frames),
                bytes_used=self._bytes,
                span_s=span,
                pushed=self._pushed,
                skipped_for_rate=self._skipped_for_rate,
                evicted_for_bytes=self._evicted_for_bytes,
            )

    def clear(self) -> None:
        """Forget every frame (e.g. when the camera's source restarts)."""
        with self._lock:
            self._frames.clear()
            self._ts.clear()
            self._bytes = 0
            self._last_kept_ts = None
