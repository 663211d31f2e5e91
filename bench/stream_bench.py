"""Live stream bandwidth and first-frame latency at 1280x720: JPEG vs fmp4 (copied, encoded).

A 1280x720 25 fps H.264 camera (bikes.mp4 scaled, keyframe every second, made with ffmpeg into
a temporary folder) feeds a real `PacketRing` at its own pace; the StreamManager runs each kind
of session for `--seconds` and the bytes it publishes are counted:

- jpeg: today's stream, 25 fps, quality 75, at 1280 wide (decoded frames, masked, JPEG-encoded);
- fmp4 copy: the camera's own packets remuxed (a packet-path camera);
- fmp4 encoded: the same pictures through the pixel path (masks, libx264 ultrafast, CRF 28).

First frame: from stream.start to the first message that shows a picture (JPEG; for fmp4 the
first fragment, which the copy path takes from the newest keyframe already in the ring).
CPU: process CPU seconds per second of stream (the feeder's share is negligible).

    .venv/bin/python bench/stream_bench.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture.source import Frame
from agent.commands.streams import StreamFormat, StreamLimits, StreamManager
from agent.footage.packet_ring import PacketRing
from tests.test_streams_fmp4 import Feeder, PacketGateway, Source, _make_source, packet_config, packets_of


def run(
    source: Source, tmp: Path, *, fmt: StreamFormat, copy: bool, seconds: float
) -> tuple[float, float, float, int]:
    """(bytes/s, first-frame latency s, CPU s per stream-second, messages) of one session."""
    ring = PacketRing(seconds=4.0, max_bytes=16_000_000)
    feeder = Feeder(ring, packets_of(source, time.time() - 1.5, session=1))
    gw = PacketGateway(packet_config(tmp), {"cam-3": ring} if copy else {})
    with av.open(str(source.path)) as c:
        images = [
            np.ascontiguousarray(f.to_ndarray(format="bgr24"), np.uint8)
            for _, f in zip(range(50), c.decode(video=0), strict=False)
        ]
    gw.frames["cam-3"] = [Frame(image=img, ts=0.0, pts=0.0, seq=i) for i, img in enumerate(images)]
    gw.live = True
    feeder.start(preload_s=1.5)
    sm = StreamManager(gw, limits=StreamLimits(max_sessions=4, max_bytes_per_s=50_000_000))
    sm.start()
    try:
        cpu0, t0 = time.process_time(), time.monotonic()
        info = sm.open(
            "cam-3", owner="police", fps=25, max_width=None if copy else 1280, quality=75,
            duration_s=seconds + 5, format=fmt,
        )  # fmt: skip
        first = None
        while first is None and time.monotonic() - t0 < 5:
            msgs = gw.on(info.session)
            if any((m.properties or {}).get("part", "frame") != "init" for m in msgs):
                first = time.monotonic() - t0
            time.sleep(0.001)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        took, cpu = time.monotonic() - t0, time.process_time() - cpu0
        msgs = gw.on(info.session)
    finally:
        sm.stop()
        feeder.stop()
    return sum(len(m.payload) for m in msgs) / took, first or float("nan"), cpu / took, len(msgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source = _make_source(tmp, "main720", 1280, args.seconds + 8)
        rows = [
            ("jpeg q75", run(source, tmp, fmt="jpeg", copy=False, seconds=args.seconds)),
            ("fmp4 copy", run(source, tmp, fmt="fmp4", copy=True, seconds=args.seconds)),
            ("fmp4 encoded", run(source, tmp, fmt="fmp4", copy=False, seconds=args.seconds)),
        ]
    base = rows[0][1][0]
    print(f"live stream at {source.width}x{source.height}, 25 fps, {args.seconds:g} s each")
    print("| stream | kB/s | Mbit/s | vs jpeg | first frame ms | CPU s/s | messages |")
    print("|---|---|---|---|---|---|---|")
    for name, (rate, first, cpu, count) in rows:
        print(
            f"| {name} | {rate / 1000:.0f} | {rate * 8 / 1e6:.2f} | {rate / base:.2f} | "
            f"{first * 1000:.0f} | {cpu:.3f} | {count} |"
        )


if __name__ == "__main__":
    main()
