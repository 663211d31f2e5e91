"""Replay of video files through the camera pipeline, and the pipeline's frame skipping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import EPOCH, replay
from agent.capture.source import Frame
from agent.capture.synthetic import Scene, SceneOptions, write_scene_video
from agent.clock import parse_iso
from agent.config import CameraConfig, MotionSettings
from agent.contract.messages import Event
from agent.errors import SourceError


@pytest.fixture(scope="module")
def cross_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float]]]:
    path = tmp_path_factory.mktemp("replay") / "cross.mp4"
    truth = write_scene_video(path, "cross", seconds=16, fps=25, seed=4)
    return path, truth


def _camera(path: Path, **kw: object) -> CameraConfig:
    return CameraConfig(id="cam-1", source=f"file://{path}", **kw)  # type: ignore[arg-type]


def test_replay_yields_protocol_events_with_offsets(
    cross_video: tuple[Path, list[tuple[float, float]]],
) -> None:
    path, truth = cross_video
    rows = list(replay(path, _camera(path)))
    assert next(r["phase"] for r in rows) == "start"
    assert [r["phase"] for r in rows][-1] == "end"
    assert len({r["event_id"] for r in rows}) == 1
    for r in rows:
        offset = r.pop("offset_s")
        Event.model_validate(r)
        assert parse_iso(r["ts"]) == pytest.approx(EPOCH + offset, abs=0.002)
    start = rows[0]
    (gt_start, gt_end) = truth[0]
    assert gt_start - 0.5 <= parse_iso(start["started_at"]) - EPOCH <= gt_start + 1.0
    assert gt_end - 1.0 <= parse_iso(rows[-1]["ended_at"]) - EPOCH <= gt_end + 1.0


def test_replay_is_reproducible(cross_video: tuple[Path, list[tuple[float, float]]]) -> None:
    path, _ = cross_video
    first = [(r["phase"], r["ts"], r["offset_s"]) for r in replay(path, _camera(path))]
    second = [(r["phase"], r["ts"], r["offset_s"]) for r in replay(path, _camera(path))]
    assert first == second


def test_replay_closes_an_event_open_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    write_scene_video(path, "cross", seconds=5, fps=10, seed=4)  # the person is still walking at 5 s
    rows = list(replay(path, _camera(path)))
    assert [r["phase"] for r in rows][-1] == "end"
    assert rows[-1]["offset_s"] == pytest.approx(4.9)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        replay(tmp_path / "nope.mp4", _camera(tmp_path / "nope.mp4"))


def test_text_file_named_mp4_is_a_source_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(SourceError, match=r"fake\.mp4"):
        replay(fake, _camera(fake))


def test_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a file"):
        replay(tmp_path, _camera(tmp_path))


def test_pipeline_skips_to_detect_fps() -> None:
    pipeline = CameraPipeline(CameraConfig(id="cam-1", source="synthetic:street", detect_fps=10))
    scene = Scene(SceneOptions(kind="street", width=160, height=90))
    wanted = 0
    for i in range(250):  # 10 s at 25 fps
        pts = i / 25
        if pipeline.wants(pts):
            wanted += 1
            pipeline.process(Frame(image=scene.render(i), ts=1000.0 + pts, pts=pts, seq=i))
    assert wanted == pipeline.analysed == 100
    # A frame the pipeline does not want is counted as skipped, not analysed.
    pipeline.process(Frame(image=scene.render(0), ts=1010.0, pts=9.99, seq=250))
    assert pipeline.skipped == 1
    # A source that starts over (loop, reconnect) is followed at once.
    assert pipeline.wants(0.0)


def test_pipeline_settings_update_applies(cross_video: tuple[Path, list[tuple[float, float]]]) -> None:
    path, _ = cross_video
    camera = _camera(path)
    pipeline = CameraPipeline(camera)
    pipeline.reconfigure(MotionSettings(enabled=False), camera.detection, None)
    assert list(replay(path, camera, pipeline=pipeline)) == []


def test_a_file_cut_short_is_replayed_up_to_the_cut_and_said(
    cross_video: tuple[Path, list[tuple[float, float]]], tmp_path: Path
) -> None:
    """A copy cut off in transfer (its header still says 16 s): the events up to the cut come
    out, and stderr says the file ended early; the whole file says nothing of the kind."""
    path, _ = cross_video
    whole = tmp_path / "whole.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", "-movflags", "+faststart", str(whole)],
        check=True,
    )
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])

    def run(video: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "replay", str(video)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run(cut)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows and rows[-1]["phase"] == "end"
    assert f"{cut} ended after" in done.stderr and "cut short" in done.stderr
    full = run(whole)
    assert full.returncode == 0 and "cut short" not in full.stderr
