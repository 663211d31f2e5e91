"""The camera pipeline's object stage: motion regions in, object events out.

`CameraPipeline` creates it once a camera's detection is enabled and passes it later settings.
It submits each moving frame's regions, the boxes of tracked objects due for a check and, every
`full_frame_s`, tiles of the whole frame to the gateway's shared `DetectionService`, and takes the
results back through a small per-camera queue, so the tracker is only ever touched by the
camera's own thread; results that pile up (a stalled camera thread) are dropped oldest first.

Inference is the gateway's scarcest resource: with `known_motion_fps` set, motion that is already
accounted for (an object with its event open or parked, or a spot looked at a moment ago) waits
for it, and only motion on objects that may still start an event, and new motion, is looked at
at once. Without it, the same thinning at PRESSED_KNOWN_FPS comes on by itself while the service
is over the gateway's budget (`DetectionService.pressed`): the service would otherwise drop
whole frames as they come, new objects' looks with the rest. `counts` says where the inferences
went.
"""

from __future__ import annotations

import contextlib
import queue
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.analysis.events import EventPhase
from agent.analysis.objects.regions import Crop, NormBox, plan_crops, tile_crops
from agent.analysis.objects.service import MAX_CROPS, DetectionResult, DetectionService
from agent.analysis.objects.tracker import CheckReason, ObjectTracker
from agent.config import DetectionSettings

if TYPE_CHECKING:  # the pipeline imports this module to build the stage
    from agent.analysis.pipeline import FrameContext


@dataclass(slots=True)
class InferenceCounts:
    """Model runs (one per crop or tile) by why they ran, to see where an inference budget goes.

    A crop that holds a motion region counts as `motion` even when a check rode along in it."""

    motion: int = 0
    stationary: int = 0  # periodic looks at parked objects
    recheck: int = 0  # looks at moving tracks unseen for end_delay_s
    full_frame: int = 0  # tiles of the full-frame pass

    @property
    def total(self) -> int:
        return self.motion + self.stationary + self.recheck + self.full_frame


Tagged = tuple[CheckReason | None, NormBox]  # None: a motion region
PRESSED_KNOWN_FPS = 2.0  # known_motion_fps in force while the gateway is over its inference budget


def _count(
    counts: InferenceCounts,
    crops: Sequence[Crop],
    tiles: bool,
    regions: Sequence[Tagged],
    size: tuple[int, int],
) -> None:
    """Add `crops` to `counts`: each under the first reason of motion, recheck, stationary
    whose region's centre it holds."""
    if tiles:
        counts.full_frame += len(crops)
        return
    width, height = size
    for c in crops:
        held: set[CheckReason | None] = set()
        for reason, (x, y, w, h) in regions:
            cx, cy = (x + w / 2) * width, (y + h / 2) * height
            if c.x <= cx <= c.x + c.side and c.y <= cy <= c.y + c.side:
                held.add(reason)
        if None in held or not held:
            counts.motion += 1
        elif "recheck" in held:
            counts.recheck += 1
        else:
            counts.stationary += 1


def _holds(boxes: Sequence[NormBox], x: float, y: float) -> bool:
    return any(bx <= x <= bx + bw and by <= y <= by + bh for bx, by, bw, bh in boxes)


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
        self.counts = InferenceCounts()  # model runs asked for, by reason
        self._looked: deque[tuple[float, NormBox]] = deque(maxlen=64)  # (frame ts, crop) of recent looks
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
        tagged: list[Tagged] = []
        rate = self.tracker.settings.motion_fps
        moving = list(motion.regions) if motion is not None and motion.motion else []
        known_fps = self.tracker.settings.known_motion_fps
        if known_fps is None and not self.synchronous and self.service.pressed():
            known_fps = PRESSED_KNOWN_FPS  # over the gateway's budget: thin what is followed first
        if moving and known_fps is not None:
            moving = self._unexplained(moving, frame.ts, 1.0 / known_fps)
        if moving and (self._next_motion is None or frame.ts >= self._next_motion):
            tagged = [(None, r) for r in moving]  # at most motion_fps: between two, tracks predict
            self._next_motion = None if rate is None else frame.ts + 1.0 / rate - 1e-6
        tagged += self.tracker.due(frame.ts)
        regions = [box for _, box in tagged]
        tiles: list[Crop] = []
        every = self.tracker.settings.full_frame_s
        height, width = frame.image.shape[:2]
        if every > 0 and (self._next_sweep is None or frame.ts >= self._next_sweep):
            tiles = tile_crops((width, height), self.service.input_side)
            self._next_sweep = frame.ts + every
        if regions or tiles:
            if self.synchronous:
                result = self.service.detect_now(self.camera_id, frame, regions, tiles=tiles)
                if result is not None:
                    _count(self.counts, result.crops, bool(tiles), tagged, (width, height))
                    phases.extend(self._feed(result))
            else:
                if self.service.submit(self.camera_id, frame, regions):
                    crops = plan_crops(regions, (width, height), self.service.input_side, max_crops=MAX_CROPS)
                    _count(self.counts, crops, False, tagged, (width, height))
                if tiles and self.service.submit_tiles(self.camera_id, frame, tiles):
                    _count(self.counts, tiles, True, [], (width, height))
        phases.extend(self.tracker.tick(frame.ts, frame.pts))
        return phases

    def _unexplained(self, regions: Sequence[NormBox], ts: float, within_s: float) -> list[NormBox]:
        """The motion regions that need a detection now (see `DetectionSettings.known_motion_fps`).

        Motion on a track that may still start an event (a moving object before its event, a
        new one) is looked at on every frame, so its event starts as soon as with detection on
        every frame. Motion on a confirmed track, or where a detection looked within `within_s`,
        waits `within_s`: between two looks the tracker predicts the object, or the model found
        nothing there a moment ago (leaves, shadows, a light)."""
        known, pending = self.tracker.motion_cover(ts, within_s)
        while self._looked and ts - self._looked[0][0] >= within_s - 1e-6:
            self._looked.popleft()
        looked = [box for _, box in self._looked]
        out: list[NormBox] = []
        for region in regions:
            cx, cy = region[0] + region[2] / 2, region[1] + region[3] / 2
            if _holds(pending, cx, cy) or not (_holds(known, cx, cy) or _holds(looked, cx, cy)):
                out.append(region)
        return out

    def _feed(self, result: DetectionResult) -> list[EventPhase]:
        """Give a result to the tracker with where it looked (its crops, normalised)."""
        self.inferences += len(result.crops)
        height, width = result.frame.image.shape[:2]
        looked = [(c.x / width, c.y / height, c.side / width, c.side / height) for c in result.crops]
        self._looked.extend((result.frame.ts, box) for box in looked)
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
