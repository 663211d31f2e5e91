"""One camera's analysis pipeline: frames thinned to `detect_fps`, then motion, then objects.

Each stage sees a `FrameContext` that earlier stages may enrich: the motion stage leaves its
`MotionResult` there, and the object stage (present once detection was enabled with a service)
looks only at the moving regions. The pipeline owns its stages: settings reach them only through
`reconfigure`, which the caller runs on the thread that calls `process`, between two frames, so
a frame never sees half of a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.analysis.events import EventPhase
from agent.analysis.motion import MotionDetector, MotionResult
from agent.analysis.motion_events import MotionEventTracker
from agent.analysis.objects.service import DetectionService
from agent.analysis.objects.stage import InferenceCounts, ObjectStage
from agent.analysis.objects.tracker import TrackView
from agent.capture.cadence import Cadence
from agent.capture.source import Frame, Image
from agent.config import CameraConfig, DetectionSettings, MotionSettings


@dataclass(slots=True)
class FrameContext:
    """One analysed frame and what the stages found in it so far."""

    frame: Frame
    motion: MotionResult | None = None


class Stage(Protocol):
    """A step of the pipeline; returns the event phases this frame completed."""

    def process(self, ctx: FrameContext) -> list[EventPhase]: ...

    def close(self, ts: float, offset_s: float) -> list[EventPhase]: ...


class MotionDetecting(Protocol):
    """What the motion stage needs of a motion detector (lets a bench swap in a reference one
    and a test watch what each frame saw)."""

    def detect(self, image: Image, ts: float) -> MotionResult: ...

    def update_settings(self, settings: MotionSettings) -> None: ...

    def reset(self) -> None: ...


class MotionStage:
    """Motion detector plus motion event tracker; with `publish_events` off it still finds the
    regions that steer object detection, and its events are not published."""

    def __init__(
        self, camera_id: str, settings: MotionSettings, motion_detector: MotionDetecting | None = None
    ) -> None:
        self.motion_detector: MotionDetecting = (
            motion_detector if motion_detector is not None else MotionDetector(settings)
        )
        self.tracker = MotionEventTracker(camera_id, settings)
        self._publish = settings.publish_events
        self._open: set[str] = set()  # published events not yet ended

    def process(self, ctx: FrameContext) -> list[EventPhase]:
        frame = ctx.frame
        result = self.motion_detector.detect(frame.image, frame.ts)
        ctx.motion = result
        return self._published(self.tracker.feed(result, frame.ts, frame.image, frame.pts))

    def close(self, ts: float, offset_s: float) -> list[EventPhase]:
        return self._published(self.tracker.close(ts, offset_s))

    def update_settings(self, settings: MotionSettings) -> None:
        self.motion_detector.update_settings(settings)
        self.tracker.update_settings(settings)
        self._publish = settings.publish_events

    def _published(self, phases: list[EventPhase]) -> list[EventPhase]:
        """Phases of events that started while `publish_events` was on: switching it either way
        never leaves the platform an event without its start or its end."""
        out = []
        for p in phases:
            eid = p.event.event_id
            if p.event.phase == "start" and self._publish:
                self._open.add(eid)
            if eid in self._open:
                out.append(p)
                if p.event.phase == "end":
                    self._open.discard(eid)
        return out


class CameraPipeline:
    """Analyses the frames of one camera at up to `camera.detect_fps`.

    Not thread-safe by design: `process`, `reconfigure` and `close` belong to one thread (the
    camera's detect thread, or the caller of replay). `objects` is the shared detection service
    when the camera's detection is on; `objects_inline` detects on the calling thread (replay).
    """

    def __init__(
        self,
        camera: CameraConfig,
        motion_detector: MotionDetecting | None = None,
        *,
        objects: DetectionService | None = None,
        objects_inline: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        """`state_dir` (under data_dir) keeps what must outlive a restart: stationary objects."""
        self.camera_id = camera.id
        self._state_dir = state_dir
        self._motion = MotionStage(camera.id, camera.motion, motion_detector)
        self._objects: ObjectStage | None = None
        self._objects_inline = objects_inline
        self._stages: list[Stage] = [self._motion]
        self._cadence = Cadence(camera.detect_fps)
        self.analysed = 0
        self.skipped = 0
        self.last: FrameContext | None = None  # the last analysed frame and what the stages found
        self._add_objects(camera.detection, objects)

    def reconfigure(
        self, motion: MotionSettings, detection: DetectionSettings, objects: DetectionService | None
    ) -> None:
        """Apply a camera's full runtime settings from the next frame on, without a restart.

        The object stage is created when `detection` is enabled and `objects` is given and there
        is none yet; an existing one takes `detection` (when disabled it submits nothing more, so its
        open tracks end by themselves).
        Raises ConfigError (labels the model lacks) before anything has changed.
        """
        if self._objects is not None:
            self._objects.update_settings(detection)
        else:
            self._add_objects(detection, objects)
        self._motion.update_settings(motion)

    def _add_objects(self, detection: DetectionSettings, objects: DetectionService | None) -> None:
        if detection.enabled and objects is not None and self._objects is None:
            state = None if self._state_dir is None else self._state_dir / f"objects-{self.camera_id}.json"
            stage = ObjectStage(
                self.camera_id, detection, objects, synchronous=self._objects_inline, state_path=state
            )
            self._objects = stage
            self._stages.append(stage)

    def wants(self, pts: float) -> bool:
        """Whether the frame at `pts` will be analysed; skipped frames need not be decoded."""
        return self._cadence.wants(pts)

    def process(self, frame: Frame) -> list[EventPhase]:
        """Run the stages on `frame` if it is due, else skip it; return completed event phases."""
        if not self._cadence.take(frame.pts):
            self.skipped += 1
            return []
        self.analysed += 1
        ctx = FrameContext(frame)
        self.last = ctx
        phases: list[EventPhase] = []
        for stage in self._stages:
            phases.extend(stage.process(ctx))
        return phases

    def tracks(self) -> list[TrackView]:
        """The object tracks as they stand after the last analysed frame (none without detection)."""
        return [] if self._objects is None else self._objects.tracker.tracks()

    @property
    def inferences(self) -> int:
        """Model runs this pipeline's object stage caused (a crop or a tile is one)."""
        return 0 if self._objects is None else self._objects.inferences

    @property
    def inference_counts(self) -> InferenceCounts:
        """Model runs the object stage asked for, by reason (all zero without detection)."""
        return InferenceCounts() if self._objects is None else self._objects.counts

    def camera_moved(self) -> None:
        """The view itself changed (a PTZ move): motion re-learns its background from the next
        frame instead of reading the whole new view as movement."""
        self._motion.motion_detector.reset()

    def close(self, ts: float, offset_s: float) -> list[EventPhase]:
        """End every open event (shutdown, end of a video)."""
        phases: list[EventPhase] = []
        for stage in self._stages:
            phases.extend(stage.close(ts, offset_s))
        return phases
