"""A camera the agent is turning (PTZ) raises no motion event; the same motion on a still camera does,
and once the camera is still again motion re-learns the new view instead of reporting it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.analysis.events import EventPhase
from agent.capture.synthetic import write_scene_video
from agent.config import CameraConfig, MotionSettings
from agent.config.models import DetectionSettings
from agent.contract.messages import CameraStatus
from agent.runtime.camera import CameraWorker


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ptz") / "cross.mp4"
    write_scene_video(path, "cross", seconds=12.0, fps=10, size=(320, 180), seed=3)
    return path


def run_camera(video: Path, moving: threading.Event, seconds: float) -> list[EventPhase]:
    cfg = CameraConfig(
        id="cam-1", source=f"file://{video}", motion=MotionSettings(min_duration_s=0.2, end_delay_s=0.5)
    )
    phases: list[EventPhase] = []

    def on_status(_camera: str, _status: CameraStatus) -> None:
        pass

    worker = CameraWorker(cfg, on_status, lambda _c, p: phases.append(p), moving=moving.is_set)
    worker.apply(cfg.motion, DetectionSettings(), None)
    worker.start()
    time.sleep(seconds)
    worker.stop()
    return phases


def test_motion_while_the_camera_is_turned_raises_no_event_and_the_same_motion_still_does(
    crossing: Path,
) -> None:
    turning = threading.Event()
    turning.set()
    during_move = run_camera(crossing, turning, 8.0)
    assert [p for p in during_move if p.event.phase == "start"] == []

    still = threading.Event()
    on_still = run_camera(crossing, still, 8.0)
    assert [p for p in on_still if p.event.phase == "start"], "the crossing must raise an event"
