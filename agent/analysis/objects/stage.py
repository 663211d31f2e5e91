"""The camera pipeline's object stage: motion regions in, object events out.

`CameraPipeline` creates it once a camera's detection is enabled and passes it later settings.
It submits each moving frame's regions to the gateway's shared `DetectionService` and takes the
results back through a small per-camera queue, so the tracker is only ever touched by the
camera's own thread; results that pile up (a stalled camera thread) are dropped oldest first.
"""

from __future__ import annotations

import contextlib
import queue
from typing import TYPE_CHECKING

from agent.analysis.events import EventPhase
from agent.analysis.objects.service import DetectionResult, DetectionService
from agent.analysis.objects.tracker import ObjectTracker
from agent.config import DetectionSettings

if TYPE_CHECKING:  # the pipeline imports this module to build the stage
    from agent.analysis.pipeline import FrameContext


class ObjectStage:
    """One camera's object detection stage (see `agent.analysis.pipeline.Stage`)."""

    def __init__(
        self,
        camera_id: str,
        settings: DetectionSettings,
        service: DetectionService,
        *,
        backlog: int = 8,
        synchronous: bool = False,
    ) -> None:
        """`synchronous` detects on the camera's own thread (replay); else via the shared worker."""
        self.camera_id = camera_id
        self.synchronous = synchronous
        self.service = service
        self.tracker = ObjectTracker(camera_id, settings)
        self.dropped_results = 0
        self._results: queue.Queue[DetectionResult] = queue.Queue(maxsize=backlog)
        service.add_camera(camera_id, settings, self._on_result)

    def _on_result(self, result: DetectionResult) -> None:
        """Runs on the detection worker: hand over without waiting."""
        for _ in range(2):  # at most one eviction is needed; a racing reader only makes room
            try:
                self._results.put_nowait(result)
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._results.get_nowait()
                    self.dropped_results += 1
            else:
                return

    def drain(self) -> list[EventPhase]:
        """Feed every result that has arrived to the tracker, oldest first."""
        phases: list[EventPhase] = []
        for _ in range(self._results.maxsize):
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            phases.extend(self.tracker.update(result.objects, result.frame))
        return phases

    def process(self, ctx: FrameContext) -> list[EventPhase]:
        phases = self.drain()
        motion = ctx.motion
        if motion is not None and motion.motion:
            if self.synchronous:
                result = self.service.detect_now(self.camera_id, ctx.frame, motion.regions)
                if result is not None:
                    phases.extend(self.tracker.update(result.objects, result.frame))
            else:
                self.service.submit(self.camera_id, ctx.frame, motion.regions)
        phases.extend(self.tracker.tick(ctx.frame.ts, ctx.frame.pts))
        return phases

    def close(self, ts: float, offset_s: float) -> list[EventPhase]:
        """Stop taking results for this camera and end its open events."""
        self.service.remove_camera(self.camera_id)
        phases = self.drain()
        phases.extend(self.tracker.close(ts, offset_s))
        return phases

    def update_settings(self, settings: DetectionSettings) -> None:
        """Raises ConfigError (labels the model lacks) before anything has changed."""
        self.service.update_settings(self.camera_id, settings)
        self.tracker.update_settings(settings)
