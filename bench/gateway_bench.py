"""Many cameras per gateway: CPU per camera-frame, real-time headroom, memory, event latency, start-up.

Every figure comes from `edge-agent run` subprocesses against a private Mosquitto on loopback,
with file cameras (generated street scenes, transcoded to H.264 like a camera's stream, looped
and paced in real time). Sections, in the order they run (`--sections` picks some):

- `scale`: N = 1, 2, 4, 8, 16 cameras at 640x360 10 fps and at 1920x1080 25 fps (detect_fps 10,
  pre-event buffer 10 s at 10 fps). After a warm-up, a fixed window measures the agent's CPU time
  (psutil, including ffmpeg children) and each camera's frames and dropped frames from the
  agent's own telemetry. "held" means every camera delivered >= 95 % of its frames and dropped
  none. RSS is read at the end, when every pre-event buffer is full.
- `procs`: the same N split over 2 agent processes (one gateway id each), to compare with the
  threads of one process (the `scale` rows) at equal load.
- `substream`: 1080p 25 fps main streams with a 640x360 10 fps `detect_source`, against the main
  stream alone.
- `skip`: one camera in this process (CameraWorker + PreEventBuffer as the runtime wires them) at
  1080p 25 and 30 fps, with and without `skip()`: share of frames converted, CPU per frame.
- `gil`: the camera's work (read, motion on every frame, buffer) flat out in 1 thread, 2 threads
  and 2 processes: if 2 threads do as much as 2 processes, the GIL is not what limits a gateway.
- `latency`: 8 cameras at 640x360 10 fps, then 4 at 1080p 25 fps, `min_duration_s = 0`; per event start,
  (arrival on a subscriber) - `started_at` (the capture time of the frame in which motion was
  first seen). With the default debounce the start waits `min_duration_s` longer by design.
- `startup`: process start (Popen) to the retained `online` status, and to the first camera
  `ok`, for 1 and 8 cameras.

Bounded in time: the default run takes about 8-9 minutes on a 2-core machine (no section starts
after 9 minutes), `--quick` about 2.

    .venv/bin/python bench/gateway_bench.py [--quick] [--sections scale,procs,latency,startup]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.analysis.pipeline import CameraPipeline
from agent.capture.opencv import OpenCVSource
from agent.capture.source import Frame, FrameSource
from agent.capture.synthetic import write_scene_video
from agent.config import CameraConfig
from agent.footage.prebuffer import PreEventBuffer
from agent.runtime.camera import CameraWorker
from tests.conftest import Broker, start_mosquitto, stop_mosquitto

DISTRICT = "bench"
REALTIME_SHARE = 0.95  # a camera that delivered fewer of its frames in the window fell behind
BUDGET_S = 540.0  # no section starts after this: the whole run stays under 10 minutes


# -- videos ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    path: Path
    width: int
    height: int
    fps: float

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}@{self.fps:g}"


def make_video(work: Path, size: tuple[int, int], fps: float, seconds: float, seed: int) -> Video:
    """A street scene as H.264 (IPPP, GOP 2 s, like a camera); mp4v when ffmpeg lacks libx264."""
    raw = work / f"street-{size[0]}x{size[1]}-{fps:g}-{seed}.mp4v.mp4"
    write_scene_video(raw, "street", seconds, fps=fps, size=size, seed=seed)
    out = raw.with_name(raw.name.replace(".mp4v", ".h264"))
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return Video(raw, size[0], size[1], fps)
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(raw),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        str(round(2 * fps)),
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        str(out),
    ]
    done = subprocess.run(cmd, check=False, timeout=300)
    return Video(out if done.returncode == 0 else raw, size[0], size[1], fps)


# -- the platform's view ---------------------------------------------------------------------------


@dataclass
class Seen:
    """What the bench saw of one gateway: its latest telemetry and event-start latencies."""

    online_at: float | None = None  # time.monotonic() of the retained online status
    first_ok_at: float | None = None
    telemetry: dict[str, Any] | None = None
    telemetry_at: float = 0.0
    telemetry_count: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class Watcher:
    """One MQTT subscriber on cctv/v1/bench/#, sorting what arrives by gateway."""

    def __init__(self, broker: Broker) -> None:
        self._lock = threading.Lock()  # scope: _seen
        self._seen: dict[str, Seen] = {}
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"cctv/v1/{DISTRICT}/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("bench subscriber got no SUBACK")

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        wall, mono = time.time(), time.monotonic()
        parts = msg.topic.split("/")
        if len(parts) < 5:
            return
        gateway, rest = parts[3], parts[4:]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            seen = self._seen.setdefault(gateway, Seen())
            if rest == ["status"] and body.get("state") == "online" and seen.online_at is None:
                seen.online_at = mono
            elif rest == ["telemetry"]:
                seen.telemetry, seen.telemetry_at = body, mono
                seen.telemetry_count += 1
            elif len(rest) == 3 and rest[2] == "status" and body.get("state") == "ok":
                seen.first_ok_at = seen.first_ok_at or mono
            elif len(rest) == 3 and rest[2] == "event" and body.get("phase") == "start":
                started = datetime.fromisoformat(body["started_at"].replace("Z", "+00:00")).timestamp()
                seen.latencies_ms.append((wall - started) * 1000.0)

    def seen(self, gateway: str) -> Seen:
        with self._lock:
            s = self._seen.setdefault(gateway, Seen())
            return Seen(
                s.online_at,
                s.first_ok_at,
                s.telemetry,
                s.telemetry_at,
                s.telemetry_count,
                list(s.latencies_ms),
            )

    def forget(self, gateway: str) -> None:
        with self._lock:
            self._seen.pop(gateway, None)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- agents ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cam:
    source: Video
    detect: Video | None = None
    min_duration_s: float | None = None


def camera_block(index: int, cam: Cam) -> str:
    lines = [
        "[[cameras]]",
        f'id = "cam-{index:02d}"',
        f'source = "file://{cam.source.path}"',
        "detect_fps = 10",
        'allowed_agencies = ["police"]',
    ]
    if cam.detect is not None:
        lines.append(f'detect_source = "file://{cam.detect.path}"')
    if cam.min_duration_s is not None:
        lines += ["[cameras.motion]", f"min_duration_s = {cam.min_duration_s}"]
    return "\n".join(lines) + "\n"


def write_config(work: Path, gateway: str, port: int, cams: Sequence[Cam]) -> Path:
    body = f"""
[gateway]
district = "{DISTRICT}"
id = "{gateway}"
data_dir = "{work / gateway}"
telemetry_interval_s = 1

[mqtt]
port = {port}

""" + "\n".join(camera_block(i + 1, c) for i, c in enumerate(cams))
    path = work / f"{gateway}.toml"
    path.write_text(body, encoding="utf-8")
    return path


class AgentProc:
    """`edge-agent run` as a subprocess; its log goes to a file the bench shows on failure."""

    def __init__(self, work: Path, gateway: str, port: int, cams: Sequence[Cam]) -> None:
        self.gateway = gateway
        self.log_path = work / f"{gateway}.log"
        config = write_config(work, gateway, port, cams)
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config), "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        """CPU seconds of the agent and of the children it runs (ffmpeg clip encoders)."""
        try:
            t = self.ps.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in self.ps.children(recursive=True):
                with suppress(psutil.NoSuchProcess):
                    ct = child.cpu_times()
                    total += ct.user + ct.system
            return float(total)
        except psutil.NoSuchProcess:
            return 0.0

    def rss_mb(self) -> float:
        try:
            return float(self.ps.memory_info().rss) / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 5) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def agents(
    work: Path, broker: Broker, watcher: Watcher, groups: Sequence[Sequence[Cam]], tag: str
) -> Iterator[list[AgentProc]]:
    procs = [AgentProc(work, f"{tag}-p{i}", broker.port, cams) for i, cams in enumerate(groups)]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        for p in procs:
            watcher.forget(p.gateway)


# -- scale -----------------------------------------------------------------------------------------


@dataclass
class ScaleRow:
    label: str
    n: int
    procs: int
    cpu_pct: float
    ms_per_frame: float
    min_share: float
    dropped: int
    rss_mb: float
    others_pct: float = 0.0
    note: str = ""

    @property
    def held(self) -> bool:
        return self.min_share >= REALTIME_SHARE and self.dropped == 0


def _counters(seen: Seen) -> dict[str, tuple[int, int]]:
    cams = (seen.telemetry or {}).get("cameras", {})
    return {cid: (int(c.get("frames", 0)), int(c.get("dropped_frames", 0))) for cid, c in cams.items()}


def _fresh_telemetry(watcher: Watcher, procs: Sequence[AgentProc], after: float, timeout: float) -> bool:
    return watcher.wait(lambda: all(watcher.seen(p.gateway).telemetry_at > after for p in procs), timeout)


def measure(
    work: Path,
    broker: Broker,
    watcher: Watcher,
    groups: Sequence[Sequence[Cam]],
    label: str,
    warmup: float,
    window: float,
    tag: str,
) -> ScaleRow:
    n = sum(len(g) for g in groups)
    with agents(work, broker, watcher, groups, tag) as procs:
        if not watcher.wait(lambda: all(watcher.seen(p.gateway).online_at for p in procs), 20):
            return ScaleRow(label, n, len(procs), 0, 0, 0, 0, 0, note="no online: " + procs[0].tail(2))
        time.sleep(warmup)
        t_mark = time.monotonic()
        if not _fresh_telemetry(watcher, procs, t_mark, 5):
            return ScaleRow(label, n, len(procs), 0, 0, 0, 0, 0, note="no telemetry")
        cpu0 = [p.cpu_s() for p in procs]
        busy0 = machine_busy_s()
        t0 = time.monotonic()
        before = [_counters(watcher.seen(p.gateway)) for p in procs]
        time.sleep(window)
        t_mark = time.monotonic()
        _fresh_telemetry(watcher, procs, t_mark, 5)
        cpu1 = [p.cpu_s() for p in procs]
        busy1 = machine_busy_s()
        t1 = time.monotonic()
        after = [_counters(watcher.seen(p.gateway)) for p in procs]
        rss = sum(p.rss_mb() for p in procs)
    elapsed = t1 - t0
    frames = dropped = 0
    shares: list[float] = []
    for group, b, a in zip(groups, before, after, strict=True):
        for i, cam in enumerate(group):
            cid = f"cam-{i + 1:02d}"
            f0, d0 = b.get(cid, (0, 0))
            f1, d1 = a.get(cid, (0, 0))
            frames += f1 - f0
            dropped += d1 - d0
            shares.append((f1 - f0) / (cam.source.fps * elapsed))
    cpu = sum(cpu1) - sum(cpu0)
    others = max(0.0, busy1 - busy0 - cpu)
    return ScaleRow(
        label,
        n,
        len(groups),
        100 * cpu / elapsed,
        1000 * cpu / max(frames, 1),
        min(shares) if shares else 0.0,
        dropped,
        rss,
        100 * others / elapsed,
    )


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used (the agents, the broker, neighbours)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def split(cams: Sequence[Cam], procs: int) -> list[list[Cam]]:
    return [list(cams[i::procs]) for i in range(procs)]


def print_scale(rows: Sequence[ScaleRow], title: str, base: dict[str, float]) -> None:
    """Print a table; `base` maps a stream label to its N=1 cost (filled from the first N=1 row)."""
    print(f"\n### {title}\n")
    print(
        "| stream | N | procs | CPU % (of 1 core) | ms CPU / camera-frame | vs N=1 | min fps share "
        "| dropped | held | RSS MB | others' CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.n == 1 and r.procs == 1:
            base.setdefault(r.label, r.ms_per_frame)
        ratio = r.ms_per_frame / base[r.label] if base.get(r.label) else float("nan")
        print(
            f"| {r.label} | {r.n} | {r.procs} | {r.cpu_pct:.0f} | {r.ms_per_frame:.2f} | {ratio:.2f} "
            f"| {r.min_share:.2f} | {r.dropped} | {'yes' if r.held else 'NO'} | {r.rss_mb:.0f} "
            f"| {r.others_pct:.0f} |" + (f" {r.note}" if r.note else "")
        )


# -- skip: one camera in-process, with and without skip() -------------------------------------------


class NoSkip:
    """An OpenCVSource behind the bare FrameSource protocol: every frame is converted."""

    def __init__(self, inner: OpenCVSource) -> None:
        self.inner, self.uri = inner, inner.uri

    def open(self) -> None:
        self.inner.open()

    def read(self) -> Frame:
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()

    @property
    def fps(self) -> float:
        return self.inner.fps

    @property
    def size(self) -> tuple[int, int]:
        return self.inner.size


def skip_round(video: Video, use_skip: bool, window: float) -> tuple[int, int, float, float, float]:
    """One camera for `window` s: (frames, skipped, analysed/s, kept/s, ms CPU per frame)."""
    cfg = CameraConfig(id="cam-1", source=video.path.as_uri(), detect_fps=10)
    buffer = PreEventBuffer(seconds=10, fps=10)

    def factory(uri: str) -> FrameSource:
        return OpenCVSource(uri) if use_skip else NoSkip(OpenCVSource(uri))

    def keep(camera: str, frame: Frame) -> bool:
        return buffer.push(frame) is not None

    worker = CameraWorker(
        cfg,
        on_status=lambda c, s: None,
        on_phase=lambda c, p: None,
        on_frame=keep,
        source_factory=factory,
        frame_fps=10.0,
    )
    worker.start()
    time.sleep(1.5)
    f0, s0, a0, k0 = _counts(worker, buffer)
    c0 = time.process_time()
    time.sleep(window)
    c1 = time.process_time()
    f1, s1, a1, k1 = _counts(worker, buffer)
    worker.stop()
    frames = max(f1 - f0, 1)
    return frames, s1 - s0, (a1 - a0) / window, (k1 - k0) / window, 1000 * (c1 - c0) / frames


def bench_skip(videos: Sequence[Video], window: float, rounds: int) -> None:
    """CameraWorker + PreEventBuffer as the runtime wires them; best of `rounds` interleaved runs."""
    print(
        f"\n### Decode less: frames passed with skip() (one camera in-process, detect_fps 10, "
        f"buffer fps 10; best of {rounds})\n"
    )
    print("| stream | skip() | frames | converted | analysed/s | buffer kept/s | ms CPU / camera-frame |")
    print("|---|---|---|---|---|---|---|")
    for video in videos:
        best: dict[bool, tuple[int, int, float, float, float]] = {}
        for _ in range(rounds):
            for use_skip in (False, True):
                got = skip_round(video, use_skip, window)
                if use_skip not in best or got[4] < best[use_skip][4]:
                    best[use_skip] = got
        for use_skip, (frames, skipped, analysed, kept, ms) in best.items():
            print(
                f"| {video.label} | {'yes' if use_skip else 'no'} | {frames} "
                f"| {100 * (frames - skipped) / frames:.0f} % | {analysed:.1f} | {kept:.1f} | {ms:.2f} |"
            )


def _counts(worker: CameraWorker, buffer: PreEventBuffer) -> tuple[int, int, int, int]:
    """Frames arrived, skipped, analysed, and kept by the buffer so far."""
    kept = buffer.stats().pushed - buffer.stats().skipped_for_rate
    return worker.stats.frames, worker.stats.skipped, worker.pipeline.analysed, kept


# -- gil: is the GIL the limit? the same work flat out in threads and in processes ----------------


def drain(path: str, seconds: float) -> int:
    """Read a file flat out through the camera's work (convert, motion at every frame, buffer at
    10 fps) for `seconds`; return the frames done. Runs in a thread or in a worker process."""
    cfg = CameraConfig(id="cam-1", source=Path(path).as_uri(), detect_fps=60)
    pipeline = CameraPipeline(cfg)
    buffer = PreEventBuffer(seconds=10, fps=10)
    source = OpenCVSource(Path(path).as_uri(), realtime=False, loop=True)
    source.open()
    done = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            frame = source.read()
            frame = Frame(frame.image, ts=frame.pts, pts=frame.pts, seq=frame.seq)
            pipeline.process(frame)
            buffer.push(frame)
            done += 1
    finally:
        source.close()
    return done


def bench_gil(videos: Sequence[Video], seconds: float, rounds: int) -> None:
    """Two workers flat out, as two threads of one process and as two processes, against one;
    best of `rounds` interleaved rounds (neighbours on a shared machine only ever slow a round)."""
    print(
        f"\n### GIL: the camera's work flat out (read, motion on every frame, buffer), frames per second; "
        f"x: against 1 thread; best of {rounds}\n"
    )
    print("| stream | 1 thread | 2 threads | 2 processes | threads x | processes x |")
    print("|---|---|---|---|---|---|")
    ctx = multiprocessing.get_context("spawn")
    with ThreadPoolExecutor(2) as threads, ProcessPoolExecutor(2, mp_context=ctx) as procs:
        list(procs.map(time.sleep, [0, 0]))  # the workers have started and imported
        for video in videos:
            path = str(video.path)
            one = two_threads = two_procs = 0.0
            for _ in range(rounds):
                one = max(one, drain(path, seconds) / seconds)
                two_threads = max(two_threads, sum(threads.map(drain, [path] * 2, [seconds] * 2)) / seconds)
                two_procs = max(two_procs, sum(procs.map(drain, [path] * 2, [seconds] * 2)) / seconds)
            print(
                f"| {video.label} | {one:.0f} | {two_threads:.0f} | {two_procs:.0f} "
                f"| {two_threads / one:.2f} | {two_procs / one:.2f} |"
            )


# -- latency and start-up --------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def bench_latency(
    work: Path, broker: Broker, watcher: Watcher, loads: Sequence[tuple[Video, int]], seconds: float
) -> None:
    print("\n### Event latency: frame of first motion -> event start on a subscriber (min_duration_s 0)\n")
    print("| load | samples | p50 ms | p99 ms | max ms | target p99 ms | agent CPU % |")
    print("|---|---|---|---|---|---|---|")
    for video, cams in loads:
        group = [Cam(video, min_duration_s=0.0) for _ in range(cams)]
        with agents(work, broker, watcher, [group], f"lat{video.width}") as procs:
            watcher.wait(lambda: watcher.seen(procs[0].gateway).online_at is not None, 20)
            c0, t0 = procs[0].cpu_s(), time.monotonic()
            time.sleep(seconds)
            cpu = 100 * (procs[0].cpu_s() - c0) / (time.monotonic() - t0)
            samples = watcher.seen(procs[0].gateway).latencies_ms
        target = 1000.0 / video.fps + 100.0
        print(
            f"| {cams} x {video.label} | {len(samples)} | {pct(samples, 0.5):.0f} "
            f"| {pct(samples, 0.99):.0f} | {max(samples, default=float('nan')):.0f} | {target:.0f} "
            f"| {cpu:.0f} |"
        )


def bench_startup(
    work: Path, broker: Broker, watcher: Watcher, video: Video, counts: Sequence[int], reps: int
) -> None:
    print("\n### Start-up: process start -> retained online / first camera ok\n")
    print("| cameras | runs | online p50 s | online max s | first ok p50 s | target s |")
    print("|---|---|---|---|---|---|")
    for n in counts:
        online: list[float] = []
        first_ok: list[float] = []
        for r in range(reps):
            with agents(work, broker, watcher, [[Cam(video)] * n], f"up{n}-{r}") as procs:
                gateway, t_start = procs[0].gateway, procs[0].started
                watcher.wait(lambda: watcher.seen(gateway).first_ok_at is not None, 20)  # noqa: B023
                seen = watcher.seen(gateway)
                if seen.online_at is not None:
                    online.append(seen.online_at - t_start)
                if seen.first_ok_at is not None:
                    first_ok.append(seen.first_ok_at - t_start)
        print(
            f"| {n} | {reps} | {statistics.median(online):.2f} | {max(online):.2f} "
            f"| {statistics.median(first_ok):.2f} | 2.00 |"
        )


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer N (a smoke run)")
    ap.add_argument("--sections", default="scale,procs,substream,skip,gil,latency,startup")
    ap.add_argument("--keep", type=Path, help="keep videos and logs in this folder")
    ap.add_argument("--counts", help="N of the scale section, comma-separated (default 1,2,4,8,16)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    def due(section: str) -> bool:
        """Whether to run `section`: asked for, and the whole run still within BUDGET_S."""
        if section not in sections:
            return False
        if time.monotonic() - started > BUDGET_S:
            print(f"\n(time budget of {BUDGET_S:.0f} s spent: section {section} skipped)")
            return False
        return True

    base: dict[str, float] = {}
    warmup, window = (3.0, 4.0) if args.quick else (4.0, 8.0)
    counts: tuple[int, ...] = (1, 4, 16) if args.quick else (1, 2, 4, 8, 16)
    if args.counts:
        counts = tuple(int(n) for n in args.counts.split(","))
    started = time.monotonic()
    print(
        f"# gateway bench: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    work = args.keep or Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = start_mosquitto(work / "broker")
    watcher = Watcher(broker)
    try:
        sd = [make_video(work, (640, 360), 10, 12, seed) for seed in (1, 2)]
        hd = [make_video(work, (1920, 1080), 25, 12, seed) for seed in (1,)]
        if due("scale"):
            rows = []
            for vids in (sd, hd):
                for n in counts:
                    cams = [Cam(vids[i % len(vids)]) for i in range(n)]
                    rows.append(
                        measure(
                            work,
                            broker,
                            watcher,
                            [cams],
                            vids[0].label,
                            warmup,
                            window,
                            f"s{vids[0].width}-{n}",
                        )
                    )
            print_scale(rows, "Threads: one agent process, N cameras", base)
        if due("procs"):
            rows = []
            for vids, ns in ((sd, (8, 16)), (hd, (4, 8))):
                for n in ns if not args.quick else ns[-1:]:
                    cams = [Cam(vids[i % len(vids)]) for i in range(n)]
                    for procs in (2,):  # one process: the scale table's row
                        rows.append(
                            measure(
                                work,
                                broker,
                                watcher,
                                split(cams, procs),
                                vids[0].label,
                                warmup,
                                window,
                                f"p{vids[0].width}-{n}-{procs}",
                            )
                        )
            print_scale(rows, "Processes: the same N split over 2 agent processes", base)
        if due("substream"):
            rows = []
            for n in (1, 8) if not args.quick else (4,):
                for detect in (None, sd[0]):
                    cams = [Cam(hd[0], detect) for _ in range(n)]
                    row = measure(
                        work,
                        broker,
                        watcher,
                        [cams],
                        hd[0].label,
                        warmup,
                        window,
                        f"sub-{n}-{int(detect is not None)}",
                    )
                    row.note = "detect_source 640x360@10" if detect else "main only"
                    rows.append(row)
            print_scale(rows, "Detect substream against main stream only", base)
        if due("skip"):
            bench_skip(
                [hd[0], make_video(work, (1920, 1080), 30, 12, 1)],
                3.0 if args.quick else 4.0,
                1 if args.quick else 3,
            )
        if due("gil"):
            bench_gil([sd[0], hd[0]], 3.0, 1 if args.quick else 3)
        if due("latency"):
            bench_latency(work, broker, watcher, [(sd[0], 8), (hd[0], 4)], 15.0 if args.quick else 40.0)
        if due("startup"):
            bench_startup(work, broker, watcher, sd[0], (1, 8), 2 if args.quick else 3)
    finally:
        watcher.close()
        stop_mosquitto(broker)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
