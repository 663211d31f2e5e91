"""One camera's analysis pipeline: frame skipping to `detect_fps`, then a list of stages.

Each stage sees a `FrameContext` that earlier stages may enrich (the motion stage leaves its
`MotionResult` there), so an object-detection stage can later be appended that looks only at
moving regions, without this module changing shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.analysis.events import EventPhase
from agent.analysis.motion import MotionDetector, MotionResult
from agent.analysis.motion_events import MotionEventTracker
from agent.capture.source import Frame, Image
from agent.config import CameraConfig, MotionSettings


@dataclass(slots=True)
class FrameContext:
    """One analysed frame and what the stages found in it so far."""

    frame: Frame
    motion: MotionResult | None = None


class Stage(Protocol):
    """A step of the pipeline; returns the event phases this frame completed."""

    def process(self, ctx: FrameContext) -> list[EventPhase]: ...

    def close(self, ts: float, offset_s: float) -> list[EventPhase]: ...


class Detector(Protocol):
    """What the motion stage needs of a detector (lets a bench swap in a reference one)."""

    def detect(self, image: Image, ts: float) -> MotionResult: ...

    def update_settings(self, settings: MotionSettings) -> None: ...


class MotionStage:
    """Motion detector plus motion event tracker."""

    def __init__(self, camera_id: str, settings: MotionSettings, detector: Detector | None = None) -> None:
        self.detector: Detector = detector if detector is not None else MotionDetector(settings)
        self.tracker = MotionEventTracker(camera_id, settings)

    def process(self, ctx: FrameContext) -> list[EventPhase]:
        frame = ctx.frame
        result = self.detector.detect(frame.image, frame.ts)
        ctx.motion = result
        return self.tracker.feed(result, frame.ts, frame.image, frame.pts)

    def close(self, ts: float, offset_s: float) -> list[EventPhase]:
        return self.tracker.close(ts, offset_s)

    def update_settings(self, settings: MotionSettings) -> None:
        self.detector.update_settings(settings)
        self.tracker.update_settings(settings)


class CameraPipeline:
    """Analyses the frames of one camera at up to `camera.detect_fps`."""

    def __init__(self, camera: CameraConfig, detector: Detector | None = None) -> None:
        self.camera = camera
        self.motion = MotionStage(camera.id, camera.motion, detector)
        self.stages: list[Stage] = [self.motion]
        self._interval = 1.0 / camera.detect_fps
        self._due: float | None = None  # pts from which the next frame is wanted
        self.analysed = 0
        self.skipped = 0

    def add_stage(self, stage: Stage) -> None:
        """Append a stage (e.g. object detection) that runs after motion on each analysed frame."""
        self.stages.append(stage)

    def wants(self, pts: float) -> bool:
        """Whether the frame at `pts` will be analysed; skipped frames need not be decoded."""
        if self._due is None or pts < self._due - 3 * self._interval:
            return True  # first frame, or the source jumped back (loop, reconnect)
        return pts >= self._due - 1e-3 * self._interval

    def process(self, frame: Frame) -> list[EventPhase]:
        """Run the stages on `frame` if it is due, else skip it; return completed event phases."""
        if not self.wants(frame.pts):
            self.skipped += 1
            return []
        pts, step = frame.pts, self._interval
        if self._due is None or pts < self._due - 3 * step or pts >= self._due + step:
            self._due = pts + step  # (re)start the grid: first frame, a jump back, or a gap
        else:
            self._due += step  # stay on the grid, so e.g. 25 fps in gives exactly 10 fps out
        self.analysed += 1
        ctx = FrameContext(frame)
        phases: list[EventPhase] = []
        for stage in self.stages:
            phases.extend(stage.process(ctx))
        return phases

    def close(self, ts: float, offset_s: float) -> list[EventPhase]:
        """End every open event (shutdown, end of a video)."""
        phases: list[EventPhase] = []
        for stage in self.stages:
            phases.extend(stage.close(ts, offset_s))
        return phases

    def update_settings(self, motion: MotionSettings) -> None:
        """Apply new motion settings without a restart."""
        self.camera = self.camera.model_copy(update={"motion": motion})
        self.motion.update_settings(motion)
