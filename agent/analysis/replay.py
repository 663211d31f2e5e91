"""Replay a video file through a camera pipeline as fast as it decodes, yielding event phases.

Timestamps are a fixed epoch plus the frame's position in the video, so a replay of the same file
with the same settings prints the same events (except the random event ids). Frames the pipeline
would skip are only grabbed, not converted to BGR, which keeps replay close to bare decode speed,
unless an observer (`--annotate`, `--snapshot-dir`) wants every frame's pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import cv2
import numpy as np

from agent.analysis.events import EventPhase
from agent.analysis.pipeline import CameraPipeline
from agent.capture.opencv import skip_damage
from agent.capture.source import Frame, Image
from agent.capture.video_file import VideoFile, open_video_file
from agent.config import CameraConfig, DetectorConfig
from agent.errors import SourceError

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: wall clock of a replayed video's first frame
_DEFAULT_FPS = 10.0
MAX_GAP_S = 3600.0  # a jump in a file's timestamps longer than this is a broken clock, not time


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What replay learnt opening the file; `duration_s` is None when the container does not say."""

    fps: float
    width: int
    height: int
    duration_s: float | None


class ReplayObserver(Protocol):
    """Sees every frame of a replay (decoded, in order) after the pipeline handled it.

    `begin` comes once before the first frame; `frame` once per frame of the file, with the
    phases that frame completed (`analysed` is False for frames the pipeline skipped, whose
    pipeline state is the last analysed frame's); `end` once with the phases closing the replay,
    also when it stopped early. Errors raised here stop the replay."""

    def begin(self, info: VideoInfo) -> None: ...

    def frame(
        self, frame: Frame, analysed: bool, pipeline: CameraPipeline, phases: Sequence[EventPhase]
    ) -> None: ...

    def end(self, phases: Sequence[EventPhase]) -> None: ...


Progress = Callable[[float, float | None], None]  # (position s, duration s or None), every frame


@dataclass(slots=True)
class ReplayStats:
    """What a replay cost, filled in as it runs: frames read from the file, frames the pipeline
    analysed, and model inferences (one per crop or tile) of its object stage; and the length
    the file's header gives, to tell a file cut short (`cut_short`)."""

    frames: int = 0
    analysed: int = 0
    inferences: int = 0
    video_s: float = 0.0
    header_s: float | None = None  # the length the file's header gives, when it gives one
    skipped: int = 0  # frames of a damaged stretch that would not decode, skipped to read on


def cut_short(stats: ReplayStats) -> bool:
    """The file ended well before the length its header gives: a copy cut off in transfer, or
    a recording whose writer died, whose events after the cut are missing."""
    return stats.header_s is not None and stats.video_s < 0.95 * stats.header_s - 1.0


class TerminalProgress:
    """Shows a replay's progress on one terminal line (redrawn with a carriage return), at most
    every `every_s`; meant for stderr when it is a terminal, so JSON lines on stdout stay clean."""

    def __init__(
        self, stream: TextIO, *, every_s: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream, self._every, self._clock = stream, every_s, clock
        self._t0 = clock()
        self._shown = -math.inf
        self._width = 0

    def __call__(self, position_s: float, duration_s: float | None) -> None:
        now = self._clock()
        if now - self._shown < self._every:
            return
        self._shown = now
        speed = position_s / max(now - self._t0, 1e-6)
        if duration_s:
            text = f"replay {position_s:7.1f} / {duration_s:.1f} s ({min(position_s / duration_s, 1.0):4.0%})"
        else:
            text = f"replay {position_s:7.1f} s"
        text += f", {speed:.1f}x real time"
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def done(self) -> None:
        """Clear the line, leaving the terminal as it was."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


class _Timeline:
    """Each frame's position in the video, from the file's own timestamps: a variable-rate export
    (an NVR recording fewer frames while nothing moves, gaps between recordings) replays at its
    true times, which motion, tracks and event offsets depend on. One frame interval on where a
    file has none (raw H.264), where they go backwards (files joined end to end) or jump by more
    than MAX_GAP_S; the file's clock is followed again from there."""

    def __init__(self, fps: float) -> None:
        self.step = 1.0 / fps
        self._origin: float | None = None  # the file's timestamp at position 0
        self.last = -self.step

    def next(self, stamp_ms: float) -> float:
        """The position of the frame whose timestamp (as the reader gives it) is `stamp_ms`."""
        stamp, guess = stamp_ms / 1000.0, self.last + self.step
        if not math.isfinite(stamp):
            at = guess
        elif self._origin is None:
            self._origin, at = stamp, max(guess, 0.0)
        else:
            at = stamp - self._origin
            if not self.last < at <= self.last + MAX_GAP_S:
                at = guess
                self._origin = stamp - at
        self.last = at
        return at


def _open(video: Path) -> tuple[VideoFile, float, Image]:
    """Open `video` and decode its first frame, so that any kind of bad file fails here."""
    if not video.exists():
        raise SourceError(f"video {video} does not exist")
    if not video.is_file():
        raise SourceError(f"video {video} is not a file")
    cap = open_video_file(str(video))
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {video}: not a video OpenCV can decode")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise SourceError(f"cannot decode {video}: no video frames")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or not 0.1 <= fps <= 1000.0:
        fps = _DEFAULT_FPS
    return cap, fps, np.asarray(first, np.uint8)


def _row(phase: EventPhase) -> dict[str, Any]:
    row = phase.event.model_dump()
    row["offset_s"] = round(phase.offset_s, 3)
    return row


def replay(
    video: Path,
    camera: CameraConfig,
    *,
    detector: DetectorConfig | None = None,
    pipeline: CameraPipeline | None = None,
    observers: Sequence[ReplayObserver] = (),
    progress: Progress | None = None,
    stats: ReplayStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield each event phase found in `video` as the protocol's event fields plus `offset_s`.

    When the camera enables object detection, objects are detected on this thread (no rate cap)
    with the TFLite model that `detector` (the config's `[detector]` section) names, as a live
    camera would: motion crops, checks of tracked objects, full-frame passes. `pipeline` replaces
    the default (benches pass one with another motion detector). `observers` see every frame
    (see ReplayObserver); `progress` is called with each frame's position; `stats` is filled in
    as the replay runs. Raises SourceError when the file is missing, unreadable or has no
    decodable frame, AgentError when the model cannot load.
    """
    video = Path(video)
    if pipeline is None:
        objects = None
        if camera.detection.enabled:
            from agent.analysis.objects.service import load_detection_service

            objects = load_detection_service(detector)
        pipeline = CameraPipeline(camera, objects=objects, objects_inline=True)
    cap, fps, first = _open(video)  # raise here, at the call, not at the first next()
    count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
    duration = count / fps if math.isfinite(count) and count > 0 else None
    info = VideoInfo(fps, int(first.shape[1]), int(first.shape[0]), duration)
    stats = stats or ReplayStats()
    stats.header_s = duration
    return _run(cap, info, first, pipeline, list(observers), progress, stats, count)


def _run(
    cap: VideoFile,
    info: VideoInfo,
    first: Image,
    pipeline: CameraPipeline,
    observers: list[ReplayObserver],
    progress: Progress | None,
    stats: ReplayStats,
    count: float,
) -> Iterator[dict[str, Any]]:
    closing: list[EventPhase] = []
    begun: list[ReplayObserver] = []
    try:
        for observer in observers:
            observer.begin(info)
            begun.append(observer)
        index = 0
        last_pts = 0.0
        timeline = _Timeline(info.fps)
        image: Image | None = first
        while True:
            if image is None and not cap.grab():  # each frame after the first; decoded if wanted
                skipped = skip_damage(cap, index, count)  # grabs the first frame past the damage
                if not skipped:
                    break
                index, stats.skipped = index + skipped, stats.skipped + skipped
            pts = timeline.next(cap.get(cv2.CAP_PROP_POS_MSEC))
            if image is not None or pipeline.wants(pts) or observers:
                if image is None:
                    ok, decoded = cap.retrieve()
                    if not ok or decoded is None:
                        break
                    image = np.asarray(decoded, np.uint8)  # no copy: already uint8
                frame = Frame(image=image, ts=EPOCH + pts, pts=pts, seq=index)
                image = None
                before = pipeline.analysed
                phases = pipeline.process(frame)
                for observer in observers:
                    observer.frame(frame, pipeline.analysed > before, pipeline, phases)
                for phase in phases:
                    yield _row(phase)
            if progress is not None:
                progress(pts, info.duration_s)
            last_pts = pts
            index += 1
            stats.frames, stats.video_s = index, pts + timeline.step
            stats.analysed, stats.inferences = pipeline.analysed, pipeline.inferences
        closing = pipeline.close(EPOCH + last_pts, last_pts)
        for phase in closing:
            yield _row(phase)
    finally:
        cap.release()
        _end(begun, closing)


def _end(observers: Sequence[ReplayObserver], phases: Sequence[EventPhase]) -> None:
    """End every observer, also when the reader stopped early (their files get finished); the
    first error is raised once all have had their turn."""
    error: BaseException | None = None
    for observer in observers:
        try:
            observer.end(phases)
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error
