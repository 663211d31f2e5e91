"""The shared detection service: real model, real worker thread, bounded queue, rate cap."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import cast

import cv2
import numpy as np
import pytest
import skimage.data

from agent.analysis.objects import DetectionModel, DetectionResult, DetectionService
from agent.analysis.objects.service import TokenBucket
from agent.capture.source import Frame, Image
from agent.config import DetectionSettings, parse_config
from agent.errors import ConfigError

# The astronaut's box in the 512x512 photo as [x, y, w, h] normalised (see test_detect_model).
PERSON = (20 / 512, 12 / 512, 345 / 512, 500 / 512)
ON = DetectionSettings(enabled=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def astronaut_frame(seq: int = 0, width: int = 1280) -> Frame:
    """The astronaut pasted into a wider grey frame, so the box must map back to a new place."""
    photo = cv2.cvtColor(cast(Image, getattr(skimage.data, "astronaut")()), cv2.COLOR_RGB2BGR)  # noqa: B009
    image = np.full((720, width, 3), 110, np.uint8)
    image[100:612, 600:1112] = photo
    return Frame(image=image, ts=1000.0 + seq, pts=float(seq), seq=seq)


def person_in_frame(width: int = 1280) -> tuple[float, float, float, float]:
    x, y, w, h = PERSON
    return ((600 + x * 512) / width, (100 + y * 512) / 720, w * 512 / width, h * 512 / 720)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return DetectionModel.load(threads=1)


@pytest.fixture
def service(model: DetectionModel) -> Iterator[DetectionService]:
    svc = DetectionService(model, max_inferences_per_s=1000.0, queue_size=2)
    svc.start()
    yield svc
    svc.stop()


def wait_for(results: queue.Queue[DetectionResult], count: int) -> list[DetectionResult]:
    """Collect `count` results; a bounded wait (30 s) so that a hung worker fails the test."""
    return [results.get(timeout=30.0) for _ in range(count)]


def test_motion_crop_result_maps_the_person_back_onto_the_full_frame(service: DetectionService) -> None:
    results: queue.Queue[DetectionResult] = queue.Queue()
    service.add_camera("cam-1", ON, results.put)
    motion = (0.55, 0.2, 0.25, 0.6)  # where something moved: part of the astronaut
    assert service.submit("cam-1", astronaut_frame(), [motion])
    (result,) = wait_for(results, 1)
    assert result.camera_id == "cam-1"
    people = [o for o in result.objects if o.label == "person"]
    assert people
    assert iou(max(people, key=lambda o: o.score).box, person_in_frame()) >= 0.6
    assert all(o.score >= ON.score_threshold for o in result.objects)
    assert service.stats().inferences == len(result.crops) >= 1


def test_camera_filters_labels_size_and_masks(service: DetectionService) -> None:
    results: queue.Queue[DetectionResult] = queue.Queue()
    foot = person_in_frame()
    foot_x, foot_y = foot[0] + foot[2] / 2, min(foot[1] + foot[3], 1.0)
    mask = [(foot_x - 0.05, foot_y - 0.05), (foot_x + 0.05, foot_y - 0.05), (foot_x, 1.0)]
    cases = {
        "cars-only": DetectionSettings(enabled=True, labels=["car"]),
        "big-only": DetectionSettings(enabled=True, min_box_area=0.5),
        "masked": DetectionSettings(enabled=True, masks=[mask]),
        "plain": ON,
    }
    for cam, settings in cases.items():
        service.add_camera(cam, settings, results.put)
    found: dict[str, set[str]] = {}
    for cam in cases:  # one at a time: the queue holds two, and the worker's speed must not matter
        assert service.submit(cam, astronaut_frame(), [(0.45, 0.1, 0.45, 0.8)])
        (res,) = wait_for(results, 1)
        found[res.camera_id] = {o.label for o in res.objects}
    assert "person" in found["plain"]
    assert "person" not in found["cars-only"]
    assert "person" not in found["big-only"]
    assert "person" not in found["masked"]


def test_submit_never_blocks_when_the_worker_is_stuck_and_drops_are_counted(
    service: DetectionService,
) -> None:
    release = threading.Event()
    delivered: list[DetectionResult] = []

    def slow_consumer(result: DetectionResult) -> None:
        delivered.append(result)
        release.wait(30.0)  # holds the worker, as a stalled consumer would

    service.add_camera("cam-1", ON, slow_consumer)
    frame = astronaut_frame()
    accepted = 0
    done = threading.Event()

    def capture() -> None:
        nonlocal accepted
        for _ in range(50):
            accepted += service.submit("cam-1", frame, [(0.5, 0.2, 0.2, 0.2)])
        done.set()

    thread = threading.Thread(target=capture, name="test.capture")
    thread.start()
    finished = done.wait(30.0)
    release.set()
    thread.join(30.0)
    assert finished, "submit blocked"
    stats = service.stats()
    assert stats.submitted == 50
    assert stats.dropped_queue_full == 50 - accepted
    assert accepted <= 3  # one in the worker's hands, two in the queue
    assert stats.dropped_queue_full >= 47
    service.stop()
    assert len(delivered) <= accepted


def test_inferences_per_second_cap_drops_excess_frames(model: DetectionModel) -> None:
    clock = Clock()
    svc = DetectionService(model, max_inferences_per_s=2.0, queue_size=100, clock=clock)
    svc.add_camera("cam-1", ON, lambda _r: None)
    svc.start()
    try:
        region = [(0.5, 0.2, 0.1, 0.1)]  # one crop per frame
        accepted = sum(svc.submit("cam-1", astronaut_frame(i), region) for i in range(20))
        assert accepted == 4  # the burst allowance: MAX_CROPS tokens
        clock.now += 1.0  # a second later two more tokens
        accepted = sum(svc.submit("cam-1", astronaut_frame(i), region) for i in range(20))
        assert accepted == 2
        assert svc.stats().dropped_rate_limit == 34
    finally:
        svc.stop()


def test_token_bucket_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=5.0, burst=5.0, clock=clock)
    assert bucket.try_take(5)
    assert not bucket.try_take(1)
    clock.now += 0.2
    assert bucket.try_take(1)
    assert not bucket.try_take(1)
    clock.now += 100.0
    assert not bucket.try_take(6)  # never more than the burst
    assert bucket.try_take(5)


def test_nothing_to_do_is_not_queued(service: DetectionService) -> None:
    service.add_camera("off", DetectionSettings(enabled=False), lambda _r: None)
    service.add_camera("on", ON, lambda _r: None)
    assert not service.submit("on", astronaut_frame(), [])
    assert not service.submit("off", astronaut_frame(), [(0.1, 0.1, 0.2, 0.2)])
    assert not service.submit("unknown", astronaut_frame(), [(0.1, 0.1, 0.2, 0.2)])
    assert service.stats().submitted == 0


def test_unknown_label_in_a_camera_filter_is_a_config_error(service: DetectionService) -> None:
    with pytest.raises(ConfigError, match="persn") as info:
        service.add_camera("cam-1", DetectionSettings(enabled=True, labels=["persn", "car"]), lambda _r: None)
    assert info.value.source == "cameras[cam-1].detection.labels"


def test_a_failing_result_handler_does_not_stop_the_worker(service: DetectionService) -> None:
    results: queue.Queue[DetectionResult] = queue.Queue()

    def broken(_result: DetectionResult) -> None:
        raise RuntimeError("handler bug")

    service.add_camera("bad", ON, broken)
    service.add_camera("good", ON, results.put)
    assert service.submit("bad", astronaut_frame(), [(0.5, 0.2, 0.2, 0.2)])
    assert service.submit("good", astronaut_frame(), [(0.5, 0.2, 0.2, 0.2)])
    wait_for(results, 1)
    assert service.stats().errors == 1
    assert service.running


def test_stop_is_clean_and_idempotent_and_later_submits_are_refused(model: DetectionModel) -> None:
    svc = DetectionService(model, queue_size=2)
    svc.add_camera("cam-1", ON, lambda _r: None)
    svc.start()
    svc.stop()
    svc.stop()
    assert not svc.running
    assert not any(t.name == "detect.worker" and t.is_alive() for t in threading.enumerate())
    assert not svc.submit("cam-1", astronaut_frame(), [(0.5, 0.2, 0.2, 0.2)])


def test_the_submitted_frame_is_copied_so_the_caller_may_reuse_its_buffer(service: DetectionService) -> None:
    results: queue.Queue[DetectionResult] = queue.Queue()
    service.add_camera("cam-1", ON, results.put)
    frame = astronaut_frame()
    assert service.submit("cam-1", frame, [(0.5, 0.2, 0.2, 0.2)])
    frame.image[:] = 0  # the capture loop reuses its buffer
    (result,) = wait_for(results, 1)
    assert result.frame.image.any()


def test_detection_config_defaults_and_cross_checks() -> None:
    base = {"gateway": {"district": "d1", "id": "gw1"}}
    cfg = parse_config({**base, "cameras": [{"id": "c1", "source": "usb:0"}]})
    det = cfg.cameras[0].detection
    assert det.enabled is False
    assert det.labels == ["person", "car", "bus", "truck", "motorcycle", "bicycle"]
    assert cfg.detector is None
    with pytest.raises(ConfigError, match="labels_path is required"):
        parse_config({**base, "detector": {"model_path": "/opt/yolo.tflite"}})
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.detection\.score_threshold"):
        parse_config(
            {**base, "cameras": [{"id": "c1", "source": "usb:0", "detection": {"score_threshold": 2}}]}
        )
    with pytest.raises(ConfigError, match=r"detector\.layout"):
        parse_config({**base, "detector": {"layout": "rcnn"}})
