"""Pictures of a replay for tuning a camera: an annotated video, and the best frame of each event.

An operator tuning thresholds, masks or labels learns more by looking than by reading JSON lines.
`AnnotatedVideo` writes the replayed video, every frame of it at its size and rate, with what the
pipeline saw drawn on it: motion regions, object tracks (label, track id, score; thick while the
track has an open event, thin when the last detection missed it, grey when stationary), the
events open now, and a timeline of event spans along the bottom. `EventSnapshots` writes the
best frame of each event as a JPEG. Both are replay observers
(`agent.analysis.replay.ReplayObserver`) and write local files only; `prepare` (the CLI passes
the camera's privacy masks) runs on each picture before anything is drawn on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from agent.analysis.events import EventPhase
from agent.analysis.objects.tracker import TrackView, label_group
from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import EPOCH, VideoInfo
from agent.capture.source import Frame, Image
from agent.clock import parse_iso
from agent.contract.messages import Event
from agent.errors import AgentError

Prepare = Callable[[Image], Image]
NormBox = tuple[float, float, float, float]
Colour = tuple[int, int, int]

MOTION: Colour = (0, 220, 255)  # BGR: amber
COLOURS: dict[str, Colour] = {
    "person": (80, 220, 60),
    "vehicle": (255, 150, 40),
    "bicycle": (220, 80, 220),
    "motorcycle": (220, 80, 220),
}
OTHER: Colour = (230, 230, 230)
STATIONARY: Colour = (150, 150, 150)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _colour(label: str) -> Colour:
    return COLOURS.get(label_group(label), OTHER)


def _scale(height: int) -> float:
    """Text scale that stays legible from 240p to 4K."""
    return max(0.35, height / 720 * 0.55)


def _px(box: NormBox, width: int, height: int) -> tuple[int, int, int, int]:
    x, y, w, h = box
    x0 = min(max(round(x * width), 0), width - 1)
    y0 = min(max(round(y * height), 0), height - 1)
    x1 = min(max(round((x + w) * width), 0), width - 1)
    y1 = min(max(round((y + h) * height), 0), height - 1)
    return x0, y0, x1, y1


def _tag(image: Image, text: str, at: tuple[int, int], colour: Colour, scale: float) -> None:
    """Text on a filled box of `colour` at `at` (top left), kept inside the picture."""
    height, width = image.shape[:2]
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    x = min(max(at[0], 0), max(width - tw - 4, 0))
    y = min(max(at[1], 0), max(height - th - base - 4, 0))
    cv2.rectangle(image, (x, y), (x + tw + 4, y + th + base + 4), colour, -1)
    luma = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
    ink = (0, 0, 0) if luma > 128 else (255, 255, 255)
    cv2.putText(image, text, (x + 2, y + th + 2), _FONT, scale, ink, thickness, cv2.LINE_AA)


def draw_box(image: Image, box: NormBox, colour: Colour, text: str, *, thickness: int = 2) -> None:
    """Outline `box` (normalised) on `image` in place, with `text` above it (inside when at the top)."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _px(box, width, height)
    cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness)
    if text:
        scale = _scale(height)
        th = cv2.getTextSize(text, _FONT, scale, max(1, round(scale * 2)))[0][1] + 8
        _tag(image, text, (x0, y0 - th if y0 >= th else y0 + thickness), colour, scale)


@dataclass(slots=True)
class _Span:
    kind: str
    label: str
    start_s: float
    end_s: float | None = None


class AnnotatedVideo:
    """Writes the annotated copy of a replayed video to `path` (H.264; the extension names the
    container: .mp4, .mkv, .mov). Frame count, size and rate are the input's."""

    def __init__(self, path: Path, *, prepare: Prepare | None = None, crf: int = 23) -> None:
        self.path = Path(path)
        self._prepare = prepare
        self._crf = crf
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._info: VideoInfo | None = None
        self._time_base = Fraction(1, 25)
        self._index = 0
        self._regions: list[NormBox] = []
        self._tracks: list[TrackView] = []
        self._open: dict[str, _Span] = {}  # events open now, by event_id
        self._strip: Image | None = None  # the timeline with every ended span painted in

    def begin(self, info: VideoInfo) -> None:
        if not self.path.parent.is_dir():
            raise AgentError(
                f"cannot write the annotated video {self.path}: {self.path.parent} is not a directory"
            )
        if self.path.is_dir():
            raise AgentError(f"cannot write the annotated video {self.path}: it is a directory")
        try:
            container = av.open(str(self.path), "w")
        except ValueError as exc:  # PyAV's "Could not determine output format"
            raise AgentError(
                f"cannot write the annotated video {self.path}: its extension names no video format"
                " (use .mp4, .mkv or .mov)"
            ) from exc
        except (OSError, av.FFmpegError) as exc:
            raise AgentError(f"cannot write the annotated video {self.path}: {exc}") from exc
        rate = Fraction(info.fps).limit_denominator(1001)
        self._time_base = 1 / rate
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = info.width, info.height
        # 4:2:0 needs even sides; an odd-sized input keeps its size in 4:4:4.
        stream.pix_fmt = "yuv420p" if info.width % 2 == 0 and info.height % 2 == 0 else "yuv444p"
        stream.options = {"preset": "veryfast", "crf": str(self._crf)}
        self._container, self._stream, self._info = container, stream, info
        lane = max(4, info.height // 60)
        self._strip = np.zeros((2 * lane + 2, info.width, 3), np.uint8)

    def frame(
        self, frame: Frame, analysed: bool, pipeline: CameraPipeline, phases: Sequence[EventPhase]
    ) -> None:
        if analysed:
            last = pipeline.last
            motion = last.motion if last is not None else None
            self._regions = list(motion.regions) if motion is not None and motion.motion else []
            self._tracks = pipeline.tracks()
        self._spans(phases)
        self._write(self._draw(frame))

    def end(self, phases: Sequence[EventPhase]) -> None:
        """Finish the file (flush the encoder, write the index); the closing phases end the spans."""
        self._spans(phases)
        container, stream = self._container, self._stream
        self._container = self._stream = None
        if container is None or stream is None:
            return
        try:
            for packet in stream.encode(None):
                container.mux(packet)
        except (OSError, av.FFmpegError) as exc:
            raise AgentError(f"cannot write the annotated video {self.path}: {exc}") from exc
        finally:
            container.close()

    # -- drawing ---------------------------------------------------------------------------------

    def _spans(self, phases: Sequence[EventPhase]) -> None:
        for p in phases:
            ev = p.event
            span = self._open.get(ev.event_id)
            if span is None:
                label = ev.objects[0].label if ev.objects else ""
                span = _Span(ev.kind, label, parse_iso(ev.started_at) - EPOCH)
                self._open[ev.event_id] = span
            if ev.phase == "end":
                span.end_s = parse_iso(ev.ended_at or ev.ts) - EPOCH
                self._paint(self._strip, span, span.end_s)
                del self._open[ev.event_id]

    def _x(self, t: float, width: int) -> int:
        assert self._info is not None
        total = max(self._info.duration_s or 0.0, self._index / self._info.fps, 1e-3)
        return min(max(round(t / total * (width - 1)), 0), width - 1)

    def _paint(self, strip: Image | None, span: _Span, end_s: float) -> None:
        if strip is None:
            return
        lane = (strip.shape[0] - 2) // 2
        top = 1 if span.kind == "motion" else lane + 1
        colour = MOTION if span.kind == "motion" else _colour(span.label)
        x0, x1 = self._x(span.start_s, strip.shape[1]), self._x(end_s, strip.shape[1])
        strip[top : top + lane - 1, x0 : max(x1, x0 + 1) + 1] = colour

    def _draw(self, frame: Frame) -> Image:
        image = frame.image if self._prepare is None else self._prepare(frame.image)
        if image is frame.image:  # never draw on the pipeline's frame: a tracker may keep it
            image = frame.image.copy()
        height, width = image.shape[:2]
        scale = _scale(height)
        for region in self._regions:
            x0, y0, x1, y1 = _px(region, width, height)
            cv2.rectangle(image, (x0, y0), (x1, y1), MOTION, 1)
        for t in self._tracks:
            colour = STATIONARY if t.stationary else _colour(t.label)
            thick = 3 if t.event_id is not None else (2 if t.seen else 1)
            text = f"{t.label} #{t.track_id} {t.score:.2f}" + (" parked" if t.stationary else "")
            text += "" if t.seen else " ?"  # not found by the last detection
            draw_box(image, t.box, colour, text, thickness=thick)
        # Header: the time and the events open now.
        now = frame.pts
        names = [s.label or "motion" for s in self._open.values()]
        header = f"{now:7.2f} s" + (f"  events: {', '.join(sorted(names))}" if names else "")
        _tag(image, header, (0, 0), (30, 30, 30), scale)
        # Timeline: ended spans, open spans up to now, and a cursor.
        if self._strip is not None:
            strip = self._strip.copy()
            for span in self._open.values():
                self._paint(strip, span, now)
            strip[:, self._x(now, width)] = (255, 255, 255)
            band = image[height - strip.shape[0] :]
            painted = strip.any(axis=2)
            band //= 3
            band[painted] = strip[painted]
        return image

    def _write(self, image: Image) -> None:
        container, stream = self._container, self._stream
        if container is None or stream is None:
            raise AgentError(f"annotated video {self.path}: frame written before begin() or after end()")
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        out.pts = self._index
        out.time_base = self._time_base
        self._index += 1
        try:
            for packet in stream.encode(out):
                container.mux(packet)
        except (OSError, av.FFmpegError) as exc:
            raise AgentError(f"cannot write the annotated video {self.path}: {exc}") from exc


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class EventSnapshots:
    """Writes the best frame of each event to `folder` as `<start s>-<label>-<event id>.jpg`
    once the event ends (events open when the replay stops end with it): the picture the agent
    would retain as the event's snapshot, nothing drawn on it (the best frame may be older than
    the phase that carried it, so no box of a phase is sure to fit it)."""

    def __init__(self, folder: Path, *, prepare: Prepare | None = None, quality: int = 90) -> None:
        self.folder = Path(folder)
        self._prepare = prepare
        self._quality = quality
        self._best: dict[str, Image] = {}  # open events' best frames
        self.written = 0

    def begin(self, info: VideoInfo) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise AgentError(f"cannot write snapshots to {self.folder}: not a directory") from exc
        except OSError as exc:
            raise AgentError(f"cannot write snapshots to {self.folder}: {exc}") from exc

    def frame(
        self, frame: Frame, analysed: bool, pipeline: CameraPipeline, phases: Sequence[EventPhase]
    ) -> None:
        for phase in phases:
            self._take(phase)

    def end(self, phases: Sequence[EventPhase]) -> None:
        for phase in phases:
            self._take(phase)

    def _take(self, phase: EventPhase) -> None:
        ev = phase.event
        if phase.frame is not None:
            self._best[ev.event_id] = phase.frame
        if ev.phase != "end":
            return
        best = self._best.pop(ev.event_id, None)
        if best is not None:
            self._write(best, ev)

    def _write(self, image: Image, ev: Event) -> None:
        picture = image if self._prepare is None else self._prepare(image)
        label = ev.objects[0].label if ev.objects else ev.kind
        start = parse_iso(ev.started_at) - EPOCH
        start_text = f"{start:08.2f}" if math.isfinite(start) and start >= 0 else "start"
        path = self.folder / f"{start_text}s-{_UNSAFE.sub('_', label)}-{_UNSAFE.sub('_', ev.event_id)}.jpg"
        ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise AgentError(f"cannot encode the snapshot of event {ev.event_id} as JPEG")
        try:
            path.write_bytes(jpeg.tobytes())
        except OSError as exc:
            raise AgentError(f"cannot write snapshot {path}: {exc}") from exc
        self.written += 1
