"""Runtime settings reach a running camera on its own thread, between two frames, whole.

A real CameraWorker reads a gated test source (pixels from the synthetic street or a real photo)
and analyses with the real motion detector, watched through the pipeline's `motion_detector`
seam; object detection runs the vendored TFLite model. Meanwhile other threads call `apply()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import pytest
import skimage.data

from agent.analysis.events import EventPhase
from agent.analysis.motion import MotionDetector, MotionResult, Region
from agent.analysis.objects import DetectionModel, DetectionService
from agent.analysis.objects.regions import NormBox
from agent.analysis.objects.service import ResultCallback
from agent.capture.source import Frame, Image
from agent.capture.synthetic import Scene, SceneOptions
from agent.config import CameraConfig, DetectionSettings, MotionSettings
from agent.contract.messages import CameraStatus
from agent.errors import SourceError
from agent.runtime.camera import CameraWorker

T0 = 1_800_000_000.0
DETECT_THREAD = "camera[cam-1].detect"
LEFT = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
RIGHT = [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@dataclass(frozen=True)
class SettingsSet:
    """One complete runtime settings set of a camera."""

    motion: MotionSettings
    detection: DetectionSettings

    def apply_to(self, worker: CameraWorker, service: DetectionService | None) -> None:
        worker.apply(self.motion, self.detection, service if self.detection.enabled else None)


A = SettingsSet(
    MotionSettings(threshold=20, min_area=0.001, masks=[LEFT]),
    DetectionSettings(enabled=True, score_threshold=0.3),
)
B = SettingsSet(
    MotionSettings(threshold=80, min_area=0.01, masks=[RIGHT]),
    DetectionSettings(enabled=False, score_threshold=0.7),
)


class GatedSource:
    """A FrameSource that delivers `image_of(seq)` while `gate` is set, at `fps` in pts."""

    def __init__(self, image_of: Callable[[int], Image], fps: float, interval_s: float) -> None:
        self.uri = "test:gated"
        self.gate = threading.Event()
        self.gate.set()
        self.closed = threading.Event()
        self.held = threading.Event()  # set while read() waits at the closed gate
        self.delivered = 0
        self._image_of = image_of
        self._fps = fps
        self._interval_s = interval_s
        self._size = image_of(0).shape[1::-1]

    def open(self) -> None:
        pass

    def read(self) -> Frame:
        while not self.gate.wait(0.02):
            self.held.set()
            if self.closed.is_set():
                raise SourceError("test source closed")
        self.held.clear()
        time.sleep(self._interval_s)
        seq = self.delivered
        self.delivered += 1
        return Frame(image=self._image_of(seq), ts=T0 + seq / self._fps, pts=seq / self._fps, seq=seq)

    def close(self) -> None:
        pass

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return (int(self._size[0]), int(self._size[1]))


class WatchedMotion:
    """The real motion detector, watched: which settings each frame met and which thread changed
    them. With `moving` it then reports that region as moving, so every frame reaches objects."""

    def __init__(self, settings: MotionSettings, moving: Callable[[float], Region] | None = None) -> None:
        self._real = MotionDetector(settings)
        self._settings = settings
        self._moving = moving
        self._lock = threading.Lock()
        self.frames: list[tuple[float, MotionSettings]] = []  # (ts, settings in force)
        self.changes: list[tuple[str, MotionSettings]] = []  # (thread, new settings)

    def detect(self, image: Image, ts: float) -> MotionResult:
        result = self._real.detect(image, ts)  # raises if a frame met a half-built mask
        with self._lock:
            self.frames.append((ts, self._settings))
        if self._moving is None:
            return result
        return MotionResult(motion=True, regions=[self._moving(ts)], score=0.5)

    def reset(self) -> None:
        self._real.reset()

    def update_settings(self, settings: MotionSettings) -> None:
        self._real.update_settings(settings)
        self._settings = settings
        with self._lock:
            self.changes.append((threading.current_thread().name, settings))

    def seen(self) -> list[tuple[float, MotionSettings]]:
        with self._lock:
            return list(self.frames)

    def changed(self) -> list[tuple[str, MotionSettings]]:
        with self._lock:
            return list(self.changes)


class WatchedService(DetectionService):
    """The real detection service, noting the camera's settings in force at each submitted frame."""

    def __init__(self, model: DetectionModel) -> None:
        super().__init__(model, max_inferences_per_s=1000.0)
        self._now: DetectionSettings | None = None
        self.submitted: dict[float, DetectionSettings | None] = {}  # frame ts -> settings

    def add_camera(self, camera_id: str, settings: DetectionSettings, on_result: ResultCallback) -> None:
        super().add_camera(camera_id, settings, on_result)
        self._now = settings

    def update_settings(self, camera_id: str, settings: DetectionSettings) -> None:
        super().update_settings(camera_id, settings)
        self._now = settings

    def submit(self, camera_id: str, frame: Frame, regions: Sequence[NormBox]) -> bool:
        self.submitted[frame.ts] = self._now
        return super().submit(camera_id, frame, regions)


class Phases:
    """Collects what the camera publishes (runs on its detect thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: list[EventPhase] = []

    def __call__(self, camera: str, phase: EventPhase) -> None:
        with self._lock:
            self._phases.append(phase)

    def objects(self) -> list[EventPhase]:
        with self._lock:
            return [p for p in self._phases if p.event.kind == "object"]


def no_status(camera: str, status: CameraStatus) -> None:
    pass


def make_worker(source: GatedSource, motion: WatchedMotion, on_phase: Phases, fps: float) -> CameraWorker:
    cfg = CameraConfig(id="cam-1", source="synthetic:street", detect_fps=fps)
    return CameraWorker(
        cfg,
        no_status,
        on_phase,
        source_factory=lambda _uri: source,
        backoff_max_s=0.5,
        motion_detector=motion,
    )


def stop(worker: CameraWorker, source: GatedSource) -> None:
    source.closed.set()
    source.gate.set()
    worker.stop(timeout=5.0)
    assert not worker.alive()


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return DetectionModel.load(threads=1)


@pytest.fixture(scope="module")
def street() -> list[Image]:
    scene = Scene(SceneOptions(kind="street", width=160, height=96, seed=3))
    return [scene.render(i).copy() for i in range(60)]


def test_settings_hammered_while_frames_flow_reach_each_frame_whole(
    model: DetectionModel, street: list[Image], caplog: pytest.LogCaptureFixture
) -> None:
    source = GatedSource(lambda seq: street[seq % len(street)], fps=60.0, interval_s=0.001)
    motion = WatchedMotion(B.motion, moving=lambda _ts: (0.25, 0.25, 0.5, 0.5))
    service = WatchedService(model)  # not started: submissions are noted, none is inferred
    worker = make_worker(source, motion, Phases(), fps=60.0)
    B.apply_to(worker, service)
    caplog.set_level(logging.ERROR, logger="agent.runtime.camera")
    worker.start()
    try:
        assert wait_until(lambda: len(motion.seen()) >= 5)
        before = len(motion.seen())
        started = time.monotonic()
        for i in range(2000):
            (A if i % 2 == 0 else B).apply_to(worker, service)
            time.sleep(0.001)
        took = time.monotonic() - started
        A.apply_to(worker, service)
        assert wait_until(lambda: len(motion.seen()) >= before + 20)
    finally:
        stop(worker, source)

    assert took < 10.0
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # no frame raised
    frames = motion.seen()
    assert worker.pipeline.analysed == len(frames)
    assert {thread for thread, _ in motion.changed()} == {DETECT_THREAD}
    kinds = [s for _, s in frames]
    first_a = kinds.index(A.motion)
    hammered = kinds[first_a:]
    assert hammered.count(A.motion) >= 3 and hammered.count(B.motion) >= 3, "both sets met frames"
    for index, (ts, seen) in enumerate(frames):
        assert seen in (A.motion, B.motion)
        if ts not in service.submitted:  # no object stage yet: only before detection was enabled
            assert index < first_a, index
            continue
        assert (seen, service.submitted[ts]) in ((A.motion, A.detection), (B.motion, B.detection)), index


def test_a_change_made_while_no_frames_flow_holds_from_the_next_frame(street: list[Image]) -> None:
    source = GatedSource(lambda seq: street[seq % len(street)], fps=10.0, interval_s=0.01)
    motion = WatchedMotion(MotionSettings())
    worker = make_worker(source, motion, Phases(), fps=10.0)
    A.apply_to(worker, None)  # before start: the first frame already meets A
    worker.start()
    try:
        assert wait_until(lambda: len(motion.seen()) >= 3)
        source.gate.clear()

        def drained() -> bool:
            p = worker.pipeline
            return source.held.is_set() and p.analysed + p.skipped + worker.stats.dropped == source.delivered

        assert wait_until(drained)
        idle = len(motion.seen())
        B.apply_to(worker, None)
        assert wait_until(lambda: motion.changed()[-1] == (DETECT_THREAD, B.motion), timeout=2.0)
        assert len(motion.seen()) == idle  # it landed while no frame flowed
        source.gate.set()
        assert wait_until(lambda: len(motion.seen()) > idle)
    finally:
        stop(worker, source)
    frames = [s for _, s in motion.seen()]
    assert frames[:idle] == [A.motion] * idle
    assert frames[idle] == B.motion


ASTRONAUT_Y = 100


def astronaut_x(seq: int) -> int:
    """The photo's left edge: it walks across the frame and back, 32 px a frame."""
    step = seq % 48
    return 32 * (step if step < 24 else 48 - step)


def astronaut_frame(photo: Image, seq: int) -> Image:
    image = np.full((720, 1280, 3), 110, np.uint8)
    x = astronaut_x(seq)
    image[ASTRONAUT_Y : ASTRONAUT_Y + 512, x : x + 512] = photo
    return image


def test_enabling_detection_through_apply_adds_object_events_without_a_restart(model: DetectionModel) -> None:
    photo = cast(Image, cv2.cvtColor(getattr(skimage.data, "astronaut")(), cv2.COLOR_RGB2BGR))  # noqa: B009
    frames = [astronaut_frame(photo, seq) for seq in range(48)]
    source = GatedSource(lambda seq: frames[seq % len(frames)], fps=10.0, interval_s=0.05)

    def moving(ts: float) -> Region:
        x = astronaut_x(round((ts - T0) * 10.0))
        return (x / 1280, ASTRONAUT_Y / 720, 512 / 1280, 512 / 720)

    motion = WatchedMotion(MotionSettings(), moving=moving)
    phases = Phases()
    service = DetectionService(model, max_inferences_per_s=1000.0)
    worker = make_worker(source, motion, phases, fps=10.0)
    off = DetectionSettings(enabled=False, min_hits=1)
    worker.apply(MotionSettings(), off, None)
    service.start()
    worker.start()
    try:
        assert wait_until(lambda: len(motion.seen()) >= 5)
        assert phases.objects() == []
        assert service.stats().submitted == 0
        before = [t for t in threading.enumerate() if t.name.startswith("camera[cam-1]")]

        worker.apply(MotionSettings(), off.model_copy(update={"enabled": True}), service)
        assert wait_until(lambda: any(p.event.phase == "start" for p in phases.objects()), timeout=30.0)
        after = [t for t in threading.enumerate() if t.name.startswith("camera[cam-1]")]
        assert after == before and all(t.is_alive() for t in after)  # the same threads: no restart
    finally:
        stop(worker, source)
        service.stop()
    start = next(p for p in phases.objects() if p.event.phase == "start")
    assert start.event.objects[0].label == "person"
    assert start.frame is not None and start.frame.shape == (720, 1280, 3)
    assert phases.objects()[-1].event.phase == "end"  # stopping the camera ended it
