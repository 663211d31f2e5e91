"""The motion detector on rendered scenes and generated videos: what it finds and what it ignores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.analysis.motion import MotionDetector, MotionResult
from agent.analysis.replay import replay
from agent.capture.synthetic import Scene, SceneOptions, write_scene_video
from agent.config import CameraConfig, MotionSettings


def _run(
    kind: str, seconds: float, size: tuple[int, int] = (640, 360), settings: MotionSettings | None = None
) -> tuple[Scene, list[MotionResult]]:
    scene = Scene(SceneOptions(kind=kind, seed=3, width=size[0], height=size[1]))
    det = MotionDetector(settings or MotionSettings())
    results = []
    for i in range(round(seconds * 10)):
        scene.seed_noise(i)
        results.append(det.detect(scene.render(i), i / 10))
    return scene, results


def _person_box(scene: Scene, t: float) -> tuple[float, float, float, float]:
    m = scene._movers[0]
    return (m.left(t) / scene.width, (m.y - m.h) / scene.height, m.w / scene.width, m.h / scene.height)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080)])
def test_crossing_person_is_found_where_it_is(size: tuple[int, int]) -> None:
    scene, results = _run("cross", 9, size)
    (start, end) = scene.truth(9)[0]
    inside = [(i, r) for i, r in enumerate(results) if start + 0.5 < i / 10 < min(end, 9) - 0.5]
    assert inside
    hits = [(i, r) for i, r in inside if r.motion]
    assert len(hits) >= 0.9 * len(inside)
    for i, r in hits:
        assert 0 < r.score <= 1
        assert all(0 <= v <= 1 for region in r.regions for v in region)
        assert _overlaps(r.regions[0], _person_box(scene, i / 10))
    assert not any(r.motion for r in results[: round(start * 10)])


def test_grey_input_works() -> None:
    scene = Scene(SceneOptions(kind="cross", seed=3))
    det = MotionDetector(MotionSettings())
    found = False
    for i in range(60):
        scene.seed_noise(i)
        grey = np.ascontiguousarray(scene.render(i)[:, :, 1])
        found |= det.detect(grey, i / 10).motion
    assert found


@pytest.mark.parametrize("kind", ["lightswitch", "ramp", "noise", "tiny"])
def test_no_event_without_a_real_mover(tmp_path: Path, kind: str) -> None:
    video = tmp_path / f"{kind}.mp4"
    write_scene_video(video, kind, seconds=40, seed=2)
    rows = list(replay(video, CameraConfig(id="cam", source=f"file://{video}")))
    assert rows == []


def test_night_pedestrian_is_found_despite_heavy_noise(tmp_path: Path) -> None:
    video = tmp_path / "night.mp4"
    truth = write_scene_video(video, "night", seconds=30, seed=1)
    rows = list(replay(video, CameraConfig(id="cam", source=f"file://{video}")))
    starts = [r["offset_s"] for r in rows if r["phase"] == "start"]
    assert len(starts) == len(truth)
    for (a, _), s in zip(truth, starts, strict=True):
        assert a - 0.5 <= s <= a + 1.5


def test_mask_suppresses_motion_only_inside_it() -> None:
    # The crossing person walks along the lower half of the frame.
    masked = MotionSettings(masks=[[(0.0, 0.4), (1.0, 0.4), (1.0, 1.0), (0.0, 1.0)]])
    _, results = _run("cross", 9, settings=masked)
    assert not any(r.motion for r in results)
    elsewhere = MotionSettings(masks=[[(0.0, 0.0), (1.0, 0.0), (1.0, 0.3), (0.0, 0.3)]])
    _, results = _run("cross", 9, settings=elsewhere)
    assert any(r.motion for r in results)


def test_overlapping_masks_suppress_motion_in_their_overlap_too() -> None:
    """Two masks drawn over each other (the console makes that easy) ignore motion in their
    overlap as well: filled in one OpenCV call, the overlap came out as a hole that saw motion."""
    overlapping = MotionSettings(
        masks=[
            [(0.0, 0.4), (0.7, 0.4), (0.7, 1.0), (0.0, 1.0)],
            [(0.3, 0.35), (1.0, 0.35), (1.0, 1.0), (0.3, 1.0)],
        ]
    )
    _, results = _run("cross", 9, settings=overlapping)
    assert not any(r.motion for r in results)


def test_min_area_rejects_small_regions() -> None:
    _, results = _run("cross", 9, settings=MotionSettings(min_area=0.2))
    assert not any(r.motion for r in results)


def test_update_settings_applies_without_restart() -> None:
    scene = Scene(SceneOptions(kind="cross", seed=3))
    det = MotionDetector(MotionSettings())
    seen: list[bool] = []
    for i in range(90):
        if i == 50:
            det.update_settings(MotionSettings(masks=[[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]]))
        if i == 70:
            det.update_settings(MotionSettings(enabled=False))
        scene.seed_noise(i)
        seen.append(det.detect(scene.render(i), i / 10).motion)
    assert any(seen[30:50])
    assert not any(seen[52:])


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4, 3), np.uint8), np.zeros((90, 160, 3), np.float32), np.zeros((2, 90, 160, 3), np.uint8)],
)
def test_bad_image_is_a_clear_error(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 image"):
        MotionDetector(MotionSettings()).detect(image, 0.0)
