"""Where the detector's inferences go: motion already accounted for is looked at at most
`known_motion_fps` times a second, new motion at once, and the events stay what detection on
every frame gives. Real imagery (tests/scenes.py) through the vendored model."""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.analysis.events import EventPhase
from agent.analysis.objects.regions import tile_crops
from agent.analysis.objects.service import MAX_CROPS, PRESSED_S, DetectionService, load_detection_service
from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import ReplayStats, replay
from agent.capture.source import Frame, Image
from agent.config import CameraConfig, DetectionSettings, load_config
from agent.errors import ConfigError
from tests.scenes import street_background, write_crossing
from tests.test_detect_video import settle


def write_swaying(path: Path, seconds: float = 10.0, fps: float = 10.0) -> Path:
    """The street with a leafy patch swaying to and fro (a period of 2 s) and nobody in it."""
    background = street_background()
    rng = np.random.default_rng(7)
    leaves = np.zeros((90, 90, 3), np.uint8)
    leaves[..., 1] = rng.integers(60, 200, (90, 90))  # green, with texture the motion detector sees
    leaves[..., 2] = rng.integers(0, 60, (90, 90))
    height, width = background.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    try:
        for i in range(round(seconds * fps)):
            frame = background.copy()
            x = round(200 + 60 * math.sin(math.pi * i / fps))
            frame[20:110, x : x + 90] = leaves
            writer.write(frame)
    finally:
        writer.release()
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("budget")
    return {"crossing": write_crossing(d / "crossing.mp4").path, "swaying": write_swaying(d / "swaying.mp4")}


def run(video: Path, **detection: object) -> tuple[list[tuple[str, str]], ReplayStats, CameraPipeline]:
    """Replay `video` with detection on; (phase, label) of each object phase but updates."""
    camera = CameraConfig(
        id="cam",
        source=f"file://{video}",
        detection=DetectionSettings(enabled=True, **detection),  # type: ignore[arg-type]
    )
    pipeline = CameraPipeline(camera, objects=load_detection_service(None), objects_inline=True)
    stats = ReplayStats()
    rows = list(replay(video, camera, pipeline=pipeline, stats=stats))
    phases = [
        (r["phase"], r["objects"][0]["label"])
        for r in rows
        if r["kind"] == "object" and r["phase"] != "update"
    ]
    return phases, stats, pipeline


def test_known_motion_keeps_the_events_of_every_frame_detection_for_fewer_inferences(
    scenes: dict[str, Path],
) -> None:
    every, every_stats, _ = run(scenes["crossing"])  # the default: every analysed frame
    fewer, stats, pipeline = run(scenes["crossing"], known_motion_fps=2.0)
    assert every == fewer == [("start", "person"), ("end", "person"), ("start", "car"), ("end", "car")]
    assert stats.analysed == every_stats.analysed
    assert stats.inferences <= 0.6 * every_stats.inferences, (stats.inferences, every_stats.inferences)
    counts = pipeline.inference_counts
    assert counts.total == stats.inferences
    assert counts.motion > 0 and counts.stationary == 0
    width, height = 640, 272  # the scenes' size
    passes = 2  # 13 s at full_frame_s 10: at 0 s and 10 s
    assert counts.full_frame == passes * len(tile_crops((width, height), 300))


def test_motion_where_the_model_finds_nothing_is_looked_at_at_the_known_rate(
    scenes: dict[str, Path],
) -> None:
    """A swaying tree is motion on every frame and no object: a look, then one per 1/rate s."""
    phases, every, _ = run(scenes["swaying"], full_frame_s=0.0)
    assert phases == []
    assert every.inferences >= 0.8 * every.analysed  # every analysed frame with motion
    phases, capped, pipeline = run(scenes["swaying"], known_motion_fps=1.0, full_frame_s=0.0)
    assert phases == []
    counts = pipeline.inference_counts
    assert counts.full_frame == counts.stationary == counts.recheck == 0
    assert 0 < counts.motion == capped.inferences <= 10 + 1, counts  # 10 s at 1 a second


@pytest.mark.parametrize(
    ("value", "problem"), [("0.0", "greater than 0"), ("61.0", "less than or equal to 60")]
)
def test_a_bad_known_motion_fps_is_named(tmp_path: Path, value: str, problem: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[gateway]\ndistrict = "d"\nid = "gw"\n[[cameras]]\nid = "cam"\nsource = "synthetic:street"\n'
        f"[cameras.detection]\nknown_motion_fps = {value}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert any("cameras[0].detection.known_motion_fps" in p and problem in p for p in info.value.problems)


def test_a_live_camera_counts_what_the_shared_detector_ran(scenes: dict[str, Path]) -> None:
    """On the worker thread (rate cap, bounded queue), the counts are the inferences that ran."""
    service = load_detection_service(None)
    camera = CameraConfig(
        id="cam", source=f"file://{scenes['crossing']}", detection=DetectionSettings(enabled=True)
    )
    pipeline = CameraPipeline(camera, objects=service)
    service.start()
    try:
        cap = cv2.VideoCapture(str(scenes["crossing"]))
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            frame = Frame(image=np.asarray(image, np.uint8), ts=1e9 + index / 10, pts=index / 10, seq=index)
            pipeline.process(frame)
            index += 1
            time.sleep(0.02)  # faster than real time: some frames meet the rate cap
        cap.release()
        deadline = time.monotonic() + 15.0  # the queued jobs finish (slowly on a loaded machine)
        while service.stats().inferences < pipeline.inference_counts.total and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # any run beyond the counts would show now
    finally:
        service.stop()
    ran = service.stats()
    counts = pipeline.inference_counts
    assert counts.motion > 0 and counts.full_frame > 0
    assert counts.total == ran.inferences, (counts, ran)


class FrameClock:
    """The detection service's clock, set to the time of the frames being fed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_service_is_pressed_for_a_while_after_it_drops_a_submission() -> None:
    clock = FrameClock()
    model = load_detection_service(None).model
    service = DetectionService(model, max_inferences_per_s=1.0, queue_size=2 * MAX_CROPS, clock=clock)
    service.add_camera("cam", DetectionSettings(enabled=True), lambda result: None)
    service.start()
    try:
        frame = Frame(image=np.zeros((272, 640, 3), np.uint8), ts=1e9, pts=0.0, seq=0)
        assert not service.pressed()
        admitted = 0
        while service.submit("cam", frame, [(0.4, 0.3, 0.2, 0.4)]) and admitted < 10:
            admitted += 1  # the bucket's burst, at a standstill clock
        assert admitted == MAX_CROPS  # the burst is at least one frame of MAX_CROPS crops
        assert service.stats().dropped_rate_limit == 1
        assert service.pressed()
        clock.now = PRESSED_S - 0.1
        assert service.pressed()
        clock.now = PRESSED_S + 0.1
        assert not service.pressed()
    finally:
        service.stop()


Phases = dict[str, list[tuple[str, str]]]  # per camera, (phase, label) of its object phases


def live(videos: dict[str, Path], budget: float, *, thin: bool) -> tuple[Phases, int]:
    """Feed the videos as cameras of one gateway in simulated real time (the service's clock is
    the frames' time; each round waits for the worker), detection capped at `budget`/s; return
    each camera's (phase, label) of object phases but updates, and the submissions dropped."""
    clock = FrameClock()
    service = DetectionService(load_detection_service(None).model, max_inferences_per_s=budget, clock=clock)
    if not thin:
        service.pressed = lambda: False  # type: ignore[method-assign]
    pipelines = {
        name: CameraPipeline(
            CameraConfig(id=name, source=f"file://{path}", detection=DetectionSettings(enabled=True)),
            objects=service,
        )
        for name, path in videos.items()
    }
    images = {name: read_all(path) for name, path in videos.items()}
    phases: Phases = {name: [] for name in videos}

    def keep(found: list[EventPhase], name: str) -> None:
        phases[name] += [
            (p.event.phase, p.event.objects[0].label)
            for p in found
            if p.event.kind == "object" and p.event.phase != "update"
        ]

    service.start()
    try:
        count = min(len(v) for v in images.values())
        for i in range(count):
            clock.now = i / 10
            for name, pipeline in pipelines.items():
                keep(pipeline.process(Frame(image=images[name][i], ts=1e9 + i / 10, pts=i / 10, seq=i)), name)
            settle(service)
        for name, pipeline in pipelines.items():
            keep(pipeline.close(1e9 + count / 10, count / 10), name)
    finally:
        service.stop()
    stats = service.stats()
    return phases, stats.dropped_rate_limit + stats.dropped_queue_full


def read_all(path: Path) -> list[Image]:
    cap = cv2.VideoCapture(str(path))
    out: list[Image] = []
    try:
        while True:
            ok, image = cap.read()
            if not ok or image is None:
                return out
            out.append(np.asarray(image, np.uint8))
    finally:
        cap.release()


def test_cameras_over_the_budget_thin_what_they_follow_and_keep_their_events(
    scenes: dict[str, Path],
) -> None:
    """Two cameras (someone and then a car crossing; a swaying tree) on a budget of 6 runs a
    second, less than they ask for: thinning looks at followed motion keeps the crossing's
    events, and fewer submissions are dropped at random than without it."""
    videos = {"crossing": scenes["crossing"], "tree": scenes["swaying"]}
    thinned, thinned_drops = live(videos, 6.0, thin=True)
    _, random_drops = live(videos, 6.0, thin=False)
    assert thinned["crossing"] == [("start", "person"), ("end", "person"), ("start", "car"), ("end", "car")]
    assert thinned["tree"] == []
    assert thinned_drops < 0.7 * random_drops, (thinned_drops, random_drops)
