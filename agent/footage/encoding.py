"""Clip encoding: which frames go into a clip, decoded lazily in time order, masked, then encoded.

A clip is planned as a list of items (buffered JPEGs, frames of recorded clips) resampled to a
constant rate (each output slot shows the newest frame at or before it, so a clip plays at true
speed even when the buffer kept frames irregularly), then encoded as H.264 (libx264, `+faststart`
so players can start before the whole file arrives) through the ffmpeg CLI when it has libx264,
else OpenCV's `mp4v`. Privacy masks are burnt into every frame here.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from agent.capture.source import Image
from agent.capture.video_file import VideoFile, open_video_file
from agent.clock import iso
from agent.files import FILE_MODE, is_regular, open_read
from agent.footage.clips import RECORDED, ClipError, ClipInfo, JpegFrame
from agent.footage.privacy import PolygonLike, apply_privacy_masks

MAX_FPS = 30
ENCODE_TIMEOUT_S = 120.0
"""An encoder still running after this (plus 0.5 s per frame) is killed and the clip fails."""

Encoder = Literal["auto", "ffmpeg", "opencv"]


class PlanItem(Protocol):
    ts: float

    def image(self) -> Image: ...


@dataclass(slots=True)
class JpegItem:
    ts: float
    jpeg: bytes

    def image(self) -> Image:
        img = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ClipError("internal", f"a buffered frame at {iso(self.ts)} is not a decodable JPEG")
        return np.asarray(img, dtype=np.uint8)


class SequentialReader:
    """Decodes a recorded clip front to back; items ask for frame numbers in increasing order.

    The decoder is released as soon as frame `last` has been read, so a long export that walks
    through many recordings holds one decoder at a time, not one per recording.
    """

    def __init__(self, path: Path, last: int) -> None:
        self.path = path
        self.last = last
        self._cap: VideoFile | None = None
        self._pos = -1
        self._last: Image | None = None

    def frame(self, index: int) -> Image:
        if self._cap is None and self._pos < index:
            if not is_regular(self.path):  # replaced by a link since the store indexed it
                raise ClipError("internal", f"recorded clip {self.path.name} is no longer a regular file")
            # A camera's own stream (maybe interlaced) is recorded only by a gateway with packet
            # cameras, which has PyAV loaded; any other recording was encoded here, progressive.
            self._cap = open_video_file(str(self.path), probe="av" in sys.modules)
        while self._cap is not None and self._pos < index:
            ok, img = self._cap.read()
            if not ok:
                break
            self._pos += 1
            self._last = np.asarray(img, dtype=np.uint8)
        if self._pos >= self.last:
            self.close()
        if self._last is None:
            raise ClipError("internal", f"recorded clip {self.path.name} cannot be decoded")
        return self._last

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@dataclass(slots=True)
class RecordedItem:
    ts: float
    reader: SequentialReader
    index: int

    def image(self) -> Image:
        return self.reader.frame(self.index)


def plan_frames(
    root: Path, clips: Sequence[ClipInfo], start: float, end: float, frames: Sequence[JpegFrame]
) -> tuple[list[PlanItem], list[SequentialReader]]:
    """The frames of [start, end] in time order, each instant once: recordings (under `root`) up
    to the buffer, then the buffered `frames`; the readers must be closed by the caller.

    Only recordings (`RECORDED` sources) are read, never earlier exports, so the same span and
    buffer always give the same frames. Where recordings overlap (an event's pre-roll over the
    last one's post-roll), the earlier one supplies the overlap.
    """
    buffered: list[PlanItem] = sorted(
        (JpegItem(f.ts, f.jpeg) for f in frames if start <= f.ts <= end), key=lambda i: i.ts
    )
    first_buffered = buffered[0].ts if buffered else math.inf
    readers: list[SequentialReader] = []
    items: list[PlanItem] = []
    covered = -math.inf  # time of the last recorded frame taken
    recordings = sorted(
        (c for c in clips if c.source in RECORDED), key=lambda c: (c.start, c.source != "event", c.clip_id)
    )
    for rec in recordings:
        if rec.end < start or rec.start > min(end, first_buffered) or rec.end <= covered:
            continue
        half = 0.5 / rec.fps
        wanted = [
            (k, ts)
            for k in range(rec.frames)
            if start <= (ts := rec.start + k / rec.fps) <= end and covered + half < ts < first_buffered - half
        ]
        path = root / f"{rec.clip_id}.mp4"
        if not wanted or not is_regular(path):
            continue
        reader = SequentialReader(path, last=wanted[-1][0])
        readers.append(reader)
        items.extend(RecordedItem(ts, reader, k) for k, ts in wanted)
        covered = wanted[-1][1]
    items.extend(buffered)
    return items, readers


def constant_rate(items: Sequence[PlanItem]) -> tuple[float, list[int]]:
    """Pick a frame rate from the median gap and map each output slot to an input item."""
    if len(items) == 1:
        return 1.0, [0]
    gaps = sorted(b.ts - a.ts for a, b in itertools.pairwise(items) if b.ts > a.ts)
    median = gaps[len(gaps) // 2] if gaps else 1.0
    fps = float(min(MAX_FPS, max(1, round(1.0 / median))))
    span = items[-1].ts - items[0].ts
    slots = math.floor(span * fps + 0.5) + 1
    picks: list[int] = []
    j = 0
    for k in range(slots):
        t = items[0].ts + k / fps + 0.5 / fps
        while j + 1 < len(items) and items[j + 1].ts <= t:
            j += 1
        picks.append(j)
    return fps, picks


@functools.cache
def ffmpeg_has_x264() -> bool:
    """Whether ffmpeg on PATH can encode H.264 (asked once per process)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return False
    try:
        out = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return b" libx264 " in out


def _frames(items: Sequence[PlanItem], picks: Sequence[int], masks: Sequence[PolygonLike]) -> Iterator[Image]:
    """Decoded, masked frames for each output slot, all at the first frame's (even) size."""
    cache: tuple[int, Image] | None = None
    size: tuple[int, int] | None = None
    for j in picks:
        if cache is None or cache[0] != j:
            img = items[j].image()
            if size is None:
                h, w = img.shape[:2]
                size = (w - w % 2, h - h % 2)  # yuv420p needs even dimensions
                if size[0] < 2 or size[1] < 2:
                    raise ClipError("internal", f"frame of {w}x{h} is too small for a video")
            h, w = img.shape[:2]
            if (w - w % 2, h - h % 2) == size:
                img = img[: size[1], : size[0]]
            else:  # the source changed resolution mid-clip
                img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
            cache = (j, np.ascontiguousarray(apply_privacy_masks(img, masks)))
        yield cache[1]


def encode_clip(
    items: Sequence[PlanItem],
    picks: Sequence[int],
    fps: float,
    masks: Sequence[PolygonLike],
    out: Path,
    *,
    encoder: Encoder,
    ffmpeg_threads: int,
) -> tuple[int, int, str]:
    """Encode the planned frames (masks burnt in) to `out` and fsync it; (width, height, codec).

    `out` should exist already (created 0600): both encoders truncate it and keep its mode.
    """
    frames = _frames(items, picks, masks)
    first = next(frames)
    height, width = first.shape[:2]
    if encoder == "ffmpeg":
        _encode_ffmpeg(first, frames, count=len(picks), fps=fps, out=out, threads=ffmpeg_threads)
        codec = "h264"
    else:
        _encode_opencv(first, frames, fps, out)
        codec = "mp4v"
    fd = open_read(out)
    try:
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return width, height, codec


def _encode_ffmpeg(
    first: Image, rest: Iterator[Image], *, count: int, fps: float, out: Path, threads: int
) -> None:
    height, width = first.shape[:2]
    exe = shutil.which("ffmpeg") or "ffmpeg"
    cmd = [
        exe, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-framerate", f"{fps:g}",
        "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p",
        "-threads", str(threads), "-movflags", "+faststart", "-f", "mp4", str(out),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        killer = threading.Timer(ENCODE_TIMEOUT_S + 0.5 * count, proc.kill)
        killer.name = "clips.encode-watchdog"
        killer.daemon = True
        killer.start()
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(first.tobytes())
                for img in rest:
                    proc.stdin.write(img.tobytes())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg died; its exit status and stderr say why
            except BaseException:
                proc.kill()
                raise
            code = proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # a killed ffmpeg leaves buffered bytes that cannot be flushed
        if code != 0:
            errors.seek(0)
            detail = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise ClipError("internal", f"ffmpeg failed ({code}): {detail[-1] if detail else 'killed'}")


def _encode_opencv(first: Image, rest: Iterator[Image], fps: float, out: Path) -> None:
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ClipError("internal", f"OpenCV cannot write {out.name}")
    try:
        writer.write(first)
        for img in rest:
            writer.write(img)
    finally:
        writer.release()
