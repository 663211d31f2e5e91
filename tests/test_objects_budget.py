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

from agent.analysis.objects.regions import tile_crops
from agent.analysis.objects.service import load_detection_service
from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import ReplayStats, replay
from agent.capture.source import Frame
from agent.config import CameraConfig, DetectionSettings, load_config
from agent.errors import ConfigError
from tests.scenes import street_background, write_crossing


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
        time.sleep(0.5)  # the last job finishes
    finally:
        service.stop()
    ran = service.stats()
    counts = pipeline.inference_counts
    assert counts.motion > 0 and counts.full_frame > 0
    assert counts.total == ran.inferences, (counts, ran)
