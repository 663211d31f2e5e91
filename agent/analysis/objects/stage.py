"""The camera pipeline's object stage: motion regions in, object events out.

`CameraPipeline` creates it once a camera's detection is enabled and passes it later settings.
It submits each moving frame's regions, the boxes of tracked objects due for a check and, every
`full_frame_s`, tiles of the whole frame to the gateway's shared `DetectionService`, and takes the
results back through a small per-camera queue, so the tracker is only ever touched by the
camera's own thread; results that pile up (a stalled camera thread) are dropped oldest first.
"""

from __future__ import annotations

import contextlib
import queue
from pathlib import Path
from typing import TYPE_CHECKING

from agent.analysis.events import EventPhase
from agent.analysis.objects.regions import Crop, NormBox, tile_crops
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
        state_path: Path | None = None,
    ) -> None:
        """`synchronous` detects on the camera's own thread (replay); else via the shared worker.
        `state_path` keeps the camera's stationary objects across restarts."""
        self.camera_id = camera_id
        self.synchronous = synchronous
        self.service = service
        self.tracker = ObjectTracker(camera_id, settings, state_path=state_path)
        self._next_sweep: float | None = None  # the first frame gets a full-frame pass
        self._next_motion: float | None = None  # earliest frame whose motion regions are detected on
        self.dropped_results = 0
        self.inferences = 0  # model runs (crops, tiles) behind the results fed to the tracker
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
            phases.extend(self._feed(result))
        return phases

    def process(self, ctx: FrameContext) -> list[EventPhase]:
        phases = self.drain()
        frame, motion = ctx.frame, ctx.motion
        regions: list[NormBox] = []
        rate = self.tracker.settings.motion_fps
        if (
            motion is not None
            and motion.motion
            and (self._next_motion is None or frame.ts >= self._next_motion)
        ):
            regions = list(motion.regions)  # at most motion_fps: between two, tracks predict
            self._next_motion = None if rate is None else frame.ts + 1.0 / rate - 1e-6
        regions += self.tracker.due_checks(frame.ts)
        tiles: list[Crop] = []
        every = self.tracker.settings.full_frame_s
        if every > 0 and (self._next_sweep is None or frame.ts >= self._next_sweep):
            height, width = frame.image.shape[:2]
            tiles = tile_crops((width, height), self.service.input_side)
            self._next_sweep = frame.ts + every
        if regions or tiles:
            if self.synchronous:
                result = self.service.detect_now(self.camera_id, frame, regions, tiles=tiles)
                if result is not None:
                    phases.extend(self._feed(result))
            else:
                self.service.submit(self.camera_id, frame, regions)
                if tiles:
                    self.service.submit_tiles(self.camera_id, frame, tiles)
        phases.extend(self.tracker.tick(frame.ts, frame.pts))
        return phases

    def _feed(self, result: DetectionResult) -> list[EventPhase]:
        """Give a result to the tracker with where it looked (its crops, normalised)."""
        self.inferences += len(result.crops)
        height, width = result.frame.image.shape[:2]
        looked = [(c.x / width, c.y / height, c.side / width, c.side / height) for c in result.crops]
        return self.tracker.update(result.objects, result.frame, looked)

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
