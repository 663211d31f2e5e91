"""Replay places each frame at the file's own timestamp, not at its index over the frame rate.

NVR exports are often of variable rate: few frames while nothing moves, all of them while
something does, gaps between recordings. Motion, tracks and event offsets depend on the frames'
true times. The input is a synthetic street scene whose mover enters at a known time, re-encoded
by the ffmpeg CLI as such an export (2.5 frames a second before the mover, 25 after).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.capture.synthetic import write_scene_video

SECONDS = 20


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A variable-rate video and the time its mover enters."""
    root = tmp_path_factory.mktemp("vfr")
    steady = root / "steady.mp4"
    [(enters, _leaves)] = write_scene_video(steady, "street", SECONDS, fps=25, size=(320, 180), seed=1)
    quiet_until = int(enters * 25) - 5  # frames before this one are thinned to 1 in 10
    out = root / "export.mp4"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", str(steady)),
            *("-vf", f"select='gte(n\\,{quiet_until})+not(mod(n\\,10))'", "-fps_mode", "vfr"),
            *("-c:v", "libx264", "-preset", "ultrafast", str(out)),
        ],
        check=True,
        timeout=120,
    )
    return out, enters


def replay(video: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`edge-agent replay --stats`: its event rows and its stats."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(video), "--stats"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return rows, json.loads(done.stderr.strip().splitlines()[-1])


def test_events_start_when_the_mover_enters_in_a_variable_rate_export(export: tuple[Path, float]) -> None:
    video, enters = export
    rows, stats = replay(video)
    assert stats["video_s"] == pytest.approx(SECONDS, abs=0.2)
    assert stats["frames"] < 25 * SECONDS * 0.9, "the export is thinned before the mover"
    starts = [row["offset_s"] for row in rows if row["phase"] == "start"]
    assert starts, rows[:3]
    assert enters - 0.5 <= starts[0] <= enters + 1.5, (
        f"motion starts at {starts[0]} s, the mover enters at {enters:.2f} s"
    )


def make_unstamped(kind: str, steady: Path, root: Path) -> Path:
    """Raw H.264 (no timestamps at all), or two MPEG-TS files joined end to end (the clock
    starts again at the join)."""
    if kind == "raw-h264":
        out = root / "raw.h264"
        encode = ["-c:v", "libx264", "-preset", "ultrafast", "-f", "h264"]
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(steady), *encode, str(out)], check=True, timeout=120
        )
        return out
    part = root / "part.ts"
    encode = ["-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts"]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(steady), *encode, str(part)], check=True, timeout=120
    )
    out = root / "joined.ts"
    out.write_bytes(part.read_bytes() * 2)
    return out


@pytest.mark.parametrize("kind", ["raw-h264", "joined-ts"])
def test_files_without_usable_timestamps_replay_at_their_frame_rate(tmp_path: Path, kind: str) -> None:
    steady = tmp_path / "steady.mp4"
    write_scene_video(steady, "street", 8, fps=25, size=(320, 180), seed=1)
    rows, stats = replay(make_unstamped(kind, steady, tmp_path))
    assert stats["video_s"] == pytest.approx(stats["frames"] / 25, abs=0.1)
    assert stats["analysed"] == pytest.approx(stats["video_s"] * 10, abs=2)
    offsets = [row["offset_s"] for row in rows]
    assert offsets and offsets == sorted(offsets)
