"""One detector per gateway: a worker thread that runs the model on motion crops of all cameras.

Capture must never wait for inference, so `submit` only plans the crops, takes tokens from a
gateway-wide bucket (the inferences-per-second cap) and puts the job on a small bounded queue;
whatever does not fit is dropped and counted. One interpreter is shared by all cameras because
a gateway's cores are the limit, not the number of models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from agent.analysis.objects.interpreter import BACKENDS
from agent.analysis.objects.model import DetectionModel, nms
from agent.analysis.objects.regions import Crop, NormBox, extract, plan_crops
from agent.capture.source import Frame, Image
from agent.config import AgentConfig, DetectionSettings, DetectorConfig
from agent.contract.messages import DetectedObject
from agent.errors import ConfigError

log = logging.getLogger(__name__)

MAX_CROPS = 4  # per frame; more motion regions than this become one crop
PRESSED_S = 5.0  # after a submission is dropped, the service counts as over its budget this long
TILE_NMS_IOU = 0.5  # overlap at which two boxes from overlapping tiles are one object


@dataclass(frozen=True, slots=True)
class DetectionResult:
    """Objects found in one submitted frame, boxes normalised to the full frame."""

    camera_id: str
    frame: Frame
    objects: list[DetectedObject]
    crops: list[Crop]


ResultCallback = Callable[[DetectionResult], None]


class TokenBucket:
    """Allows `rate` takes per second on average and bursts up to `burst`. Not thread-safe."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._at = clock()

    def try_take(self, n: int) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    def give_back(self, n: int) -> None:
        self._tokens = min(self.burst, self._tokens + n)


@dataclass(slots=True)
class _Camera:
    settings: DetectionSettings
    on_result: ResultCallback
    masks: list[npt.NDArray[np.float32]] = field(default_factory=list)

    @classmethod
    def make(cls, settings: DetectionSettings, on_result: ResultCallback) -> _Camera:
        masks = [np.array(poly, dtype=np.float32).reshape(-1, 1, 2) for poly in settings.masks]
        return cls(settings, on_result, masks)

    def keeps(self, label: str, score: float, box: NormBox) -> bool:
        """Per-camera filters: label, score, size, and masks tested at the box's bottom centre
        (where the object stands, so a person walking in front of a masked area still counts)."""
        s = self.settings
        if label not in s.labels or score < s.score_threshold or box[2] * box[3] < s.min_box_area:
            return False
        foot = (box[0] + box[2] / 2, box[1] + box[3])
        return not any(cv2.pointPolygonTest(m, foot, False) >= 0 for m in self.masks)


@dataclass(frozen=True, slots=True)
class _Job:
    camera_id: str
    frame: Frame
    crops: list[Crop]


@dataclass(slots=True)
class DetectionStats:
    """Counters since start; read a copy through `DetectionService.stats()`."""

    submitted: int = 0
    dropped_queue_full: int = 0
    dropped_rate_limit: int = 0
    frames_done: int = 0
    inferences: int = 0
    errors: int = 0


class DetectionService:
    """Owns one model and one worker thread (`detect.worker`); start() and stop() are its life."""

    def __init__(
        self,
        model: DetectionModel,
        *,
        max_inferences_per_s: float = 20.0,
        queue_size: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.model = model
        self.input_side = max(model.input_size)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        # _lock guards _cameras, _bucket and _stats; never held while the model runs or a callback runs.
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        self._bucket = TokenBucket(max_inferences_per_s, max(max_inferences_per_s, MAX_CROPS), clock)
        self._clock = clock
        self._dropped_at: float | None = None  # when a submission was last dropped
        self._stats = DetectionStats()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- cameras --------------------------------------------------------------------------------

    def add_camera(self, camera_id: str, settings: DetectionSettings, on_result: ResultCallback) -> None:
        """Register a camera; `on_result` runs on the worker thread and must return quickly."""
        self.check_labels(camera_id, settings)
        with self._lock:
            self._cameras[camera_id] = _Camera.make(settings, on_result)

    def update_settings(self, camera_id: str, settings: DetectionSettings) -> None:
        """Apply new settings (e.g. from config.set) from the next submitted frame on."""
        self.check_labels(camera_id, settings)
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                raise KeyError(f"camera {camera_id!r} is not registered for detection")
            self._cameras[camera_id] = _Camera.make(settings, cam.on_result)

    def remove_camera(self, camera_id: str) -> None:
        with self._lock:
            self._cameras.pop(camera_id, None)

    def check_labels(self, camera_id: str, settings: DetectionSettings) -> None:
        """Raise ConfigError naming every label of `settings` that the model does not have."""
        known = {name for name in self.model.labels if name}
        unknown = [name for name in settings.labels if name not in known]
        if unknown:
            raise ConfigError(
                f"cameras[{camera_id}].detection.labels",
                [f"{name!r} is not a label of the detection model {self.model.source}" for name in unknown],
            )

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("DetectionService already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="detect.worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after the job in hand; queued jobs are dropped. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        for _ in range(self._queue.maxsize + 1):  # make room for the wake-up sentinel
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("detect.worker did not stop within %.1f s", timeout)
        for _ in range(self._queue.maxsize + 1):  # drop what was still queued
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> DetectionStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    def pressed(self) -> bool:
        """Whether a submission was dropped (rate cap or full queue) within PRESSED_S: the
        cameras are asking for more than the gateway's budget, and should ask for less."""
        with self._lock:
            return self._dropped_at is not None and self._clock() - self._dropped_at < PRESSED_S

    # -- the hot path ---------------------------------------------------------------------------

    def submit(self, camera_id: str, frame: Frame, regions: Sequence[NormBox]) -> bool:
        """Queue a frame's motion regions for detection; never blocks.

        Return True when queued, False when there is nothing to do (no regions, detection off
        for the camera, service not running) or the frame was dropped (rate cap or full queue,
        both counted). Only frames that will be inferred are copied.
        """
        return self._submit(camera_id, frame, regions, ())

    def submit_tiles(self, camera_id: str, frame: Frame, tiles: Sequence[Crop]) -> bool:
        """Queue a frame for detection on `tiles` (crops taken as they are, see `tile_crops`),
        as `submit` does for regions."""
        return self._submit(camera_id, frame, (), tiles)

    def _submit(
        self, camera_id: str, frame: Frame, regions: Sequence[NormBox], tiles: Sequence[Crop]
    ) -> bool:
        if not (regions or tiles) or not self.running:
            return False
        with self._lock:
            cam = self._cameras.get(camera_id)
        if cam is None or not cam.settings.enabled:
            return False
        crops = self._crops(frame, regions, tiles)
        if not crops or not self._admit(len(crops)):
            return False
        # A private copy: the caller may reuse its buffer, and the result's frame becomes a snapshot.
        private = dataclasses.replace(frame, image=frame.image.copy())
        try:
            self._queue.put_nowait(_Job(camera_id, private, crops))
        except queue.Full:  # another camera filled the last slot meanwhile
            with self._lock:
                self._bucket.give_back(len(crops))
                self._stats.dropped_queue_full += 1
                self._dropped_at = self._clock()
            return False
        return True

    def detect_now(
        self, camera_id: str, frame: Frame, regions: Sequence[NormBox], *, tiles: Sequence[Crop] = ()
    ) -> DetectionResult | None:
        """Detect on the caller's thread, without the rate cap: for replay, where every frame
        counts and results must not depend on timing. None when there is nothing to do."""
        with self._lock:
            cam = self._cameras.get(camera_id)
        if not (regions or tiles) or cam is None or not cam.settings.enabled:
            return None
        crops = self._crops(frame, regions, tiles)
        if not crops:
            return None
        private = dataclasses.replace(frame, image=frame.image.copy())
        return self._detect(_Job(camera_id, private, crops), cam)

    def _crops(self, frame: Frame, regions: Sequence[NormBox], tiles: Sequence[Crop]) -> list[Crop]:
        """Tiles cover the whole frame already: regions are planned only without them."""
        if tiles:
            return list(tiles)
        height, width = frame.image.shape[:2]
        return plan_crops(regions, (width, height), self.input_side, max_crops=MAX_CROPS)

    def _admit(self, inferences: int) -> bool:
        """Count a submission; take its tokens if the queue has room and the cap allows."""
        with self._lock:
            self._stats.submitted += 1
            if self._queue.full():
                self._stats.dropped_queue_full += 1
                self._dropped_at = self._clock()
                return False
            if not self._bucket.try_take(inferences):
                self._stats.dropped_rate_limit += 1
                self._dropped_at = self._clock()
                return False
            return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            job = self._queue.get()
            if job is None:
                break
            with self._lock:
                cam = self._cameras.get(job.camera_id)
            if cam is None:
                continue
            try:
                result = self._detect(job, cam)
            except Exception:
                log.exception("detection failed on camera %s", job.camera_id)
                with self._lock:
                    self._stats.errors += 1
                continue
            try:
                cam.on_result(result)
            except Exception:
                log.exception("detection result handler of camera %s failed", job.camera_id)
                with self._lock:
                    self._stats.errors += 1

    def _detect(self, job: _Job, cam: _Camera) -> DetectionResult:
        image = job.frame.image
        height, width = image.shape[:2]
        objects: list[DetectedObject] = []
        for crop in job.crops:
            rgb = cast(Image, cv2.cvtColor(extract(image, crop, self.input_side), cv2.COLOR_BGR2RGB))
            found = self.model.detect(rgb, min_score=cam.settings.score_threshold)
            for det in found:
                box = crop.to_frame(det.box, (width, height))
                if box is not None and cam.keeps(det.label, det.score, box):
                    objects.append(DetectedObject(label=det.label, score=round(det.score, 4), box=box))
        if len(job.crops) > 1:  # tiles overlap: one object may be found in two
            ids = {label: i for i, label in enumerate(sorted({o.label for o in objects}))}
            classes = [ids[o.label] for o in objects]
            kept = nms([o.box for o in objects], [o.score for o in objects], classes, TILE_NMS_IOU)
            objects = [objects[i] for i in sorted(kept)]
        with self._lock:
            self._stats.inferences += len(job.crops)
            self._stats.frames_done += 1
        return DetectionResult(job.camera_id, job.frame, objects, job.crops)


def build_detection_service(
    config: AgentConfig, *, backends: Sequence[str] = BACKENDS
) -> DetectionService | None:
    """The gateway's detection service, or None when no camera has detection enabled.

    Without an interpreter package this raises DetectorUnavailableError only when some camera
    enables detection, so motion-only gateways never need one. Cameras are registered by the
    caller with `add_camera`, which checks their labels against the model.
    """
    if not any(cam.detection.enabled for cam in config.cameras):
        return None
    return load_detection_service(config.detector, backends=backends)


def load_detection_service(
    detector: DetectorConfig | None, *, backends: Sequence[str] = BACKENDS
) -> DetectionService:
    """Load the model that `detector` names (default: the vendored one) into a service."""
    det = detector or DetectorConfig()
    model = DetectionModel.load(
        det.model_path,
        det.labels_path,
        layout=det.layout,
        input_size=det.input_size,
        threads=det.threads,
        nms_iou=det.nms_iou,
        backends=backends,
    )
    return DetectionService(model, max_inferences_per_s=det.max_inferences_per_s)
