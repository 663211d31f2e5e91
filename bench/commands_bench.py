"""Command path speed: `edge-agent run` and a private Mosquitto on loopback, driven by agent.sdk.client.

Measures what an operator feels:
- ping round trip (request published -> reply received), p50/p99 over --pings;
- stream.start -> first frame on the session topic, p50/p99 over --starts (target p99 <= 300 ms);
- achieved fps and frame width against the asked fps (5, 10, 15) over --seconds each;
- stream bytes/s against the bandwidth cap: sessions are started until the agent answers busy,
  then the frames of all admitted sessions are counted.

The camera is the synthetic street at 1280x720, 20 fps; streams ask for max_width 640.

Mosquitto's default leaves Nagle's algorithm on for its sockets: a reply written right after the
broker's PUBACK to the same client then waits for that client's delayed ACK (~40 ms on Linux).
`--broker-nodelay` sets `set_tcp_nodelay true`, which gateways' brokers should use.

    .venv/bin/python bench/commands_bench.py [--pings 500] [--starts 30] [--seconds 5]
        [--cap 1500000] [--broker-nodelay]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sdk.client import CommandFailed, NoReply, PlatformClient
from tests.conftest import start_mosquitto, stop_mosquitto

CAMERA = "synthetic:street?fps=20&width=1280&height=720&seed=4"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def config(work: Path, port: int, cap: int) -> Path:
    path = work / "agent.toml"
    path.write_text(
        f"""
[gateway]
district = "bench"
id = "gw-1"
data_dir = "{work / "data"}"
telemetry_interval_s = 60

[mqtt]
port = {port}

[streams]
max_sessions = 16
max_bytes_per_s = {cap}

[[cameras]]
id = "cam-1"
source = "{CAMERA}"
allowed_agencies = ["police"]
""",
        encoding="utf-8",
    )
    return path


class FirstFrames:
    """Arrival time of the first frame and the frame/byte counts per stream topic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # scope: all three dicts
        self.first: dict[str, float] = {}
        self.frames: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.width: dict[str, int] = {}

    def on_frame(self, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        with self.lock:
            self.first.setdefault(msg.topic, now)
            self.frames[msg.topic] = self.frames.get(msg.topic, 0) + 1
            self.bytes[msg.topic] = self.bytes.get(msg.topic, 0) + len(msg.payload)
            if msg.topic not in self.width:
                img = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_UNCHANGED)
                self.width[msg.topic] = int(img.shape[1]) if img is not None else -1

    def wait_first(self, topic: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if topic in self.first:
                    return self.first[topic]
            time.sleep(0.001)
        return None


def bench_ping(client: PlatformClient, count: int) -> list[float]:
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        client.ping()
        rtts.append((time.perf_counter() - t0) * 1000)
    return rtts


def start(client: PlatformClient, fps: float, duration: float, quality: int = 75) -> dict[str, str]:
    args = {"camera": "cam-1", "fps": fps, "max_width": 640, "quality": quality, "duration_s": duration}
    return {k: str(v) for k, v in client.request("stream.start", args).items()}


def bench_first_frame(client: PlatformClient, frames: FirstFrames, count: int) -> list[float]:
    delays = []
    for _ in range(count):
        t0 = time.perf_counter()
        session = start(client, 5.0, 10.0)
        first = frames.wait_first(session["topic"], 5.0)
        client.request("stream.stop", {"session": session["session"]})
        if first is not None:
            delays.append((first - t0) * 1000)
    return delays


def bench_fps(
    client: PlatformClient, frames: FirstFrames, fps: float, seconds: float
) -> tuple[float, int, int]:
    session = start(client, fps, seconds + 5)
    time.sleep(seconds)
    client.request("stream.stop", {"session": session["session"]})
    time.sleep(0.2)
    with frames.lock:
        n = frames.frames.get(session["topic"], 0)
        size = frames.bytes.get(session["topic"], 0)
        width = frames.width.get(session["topic"], -1)
    return n / seconds, width, size // max(n, 1)


def bench_cap(client: PlatformClient, frames: FirstFrames, seconds: float) -> tuple[int, float, str]:
    sessions: list[dict[str, str]] = []
    refusal = ""
    try:
        for _ in range(16):
            try:
                sessions.append(start(client, 10.0, seconds + 10))
            except CommandFailed as exc:
                refusal = exc.message
                break
        with frames.lock:
            before = sum(frames.bytes.get(s["topic"], 0) for s in sessions)
        time.sleep(seconds)
        with frames.lock:
            after = sum(frames.bytes.get(s["topic"], 0) for s in sessions)
    finally:
        for s in sessions:
            client.request("stream.stop", {"session": s["session"]})
    return len(sessions), (after - before) / seconds, refusal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=500)
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cap", type=int, default=1_500_000, help="streams.max_bytes_per_s for the cap run")
    ap.add_argument("--broker-nodelay", action="store_true", help="mosquitto set_tcp_nodelay true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="commands-bench-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(
            work / "broker", extra="set_tcp_nodelay true\n" if args.broker_nodelay else ""
        )
        log = (work / "agent.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config(work, broker.port, args.cap)),
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            client = PlatformClient(
                broker.host, broker.port, "cctv/v1/bench/gw-1", agency="police", operator="b"
            )
            with client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        client.snapshot("cam-1", max_width=64, timeout=1)
                        break
                    except (NoReply, CommandFailed):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                time.sleep(1.0)  # camera fps settles
                camera_fps = client.describe()["cameras"][0]["fps"]
                frames = FirstFrames()
                client.subscribe(client.topics.stream_filter("cam-1"), frames.on_frame, timeout=5)

                rtts = bench_ping(client, args.pings)
                delays = bench_first_frame(client, frames, args.starts)
                fps_rows = [
                    (asked, *bench_fps(client, frames, asked, args.seconds)) for asked in (5.0, 10.0, 15.0)
                ]
                admitted, rate, refusal = bench_cap(client, frames, args.seconds)
        finally:
            agent.terminate()
            agent.wait(10)
            log.close()
            stop_mosquitto(broker)

    nodelay = "set_tcp_nodelay true" if args.broker_nodelay else "default config (Nagle on)"
    print(f"commands over MQTT 5, mosquitto on loopback, {nodelay}; camera {CAMERA} at {camera_fps} fps")
    print()
    print("| measure | n | p50 | p99 | max | target |")
    print("|---|---:|---:|---:|---:|---|")
    ping = f"{pct(rtts, 0.5):.2f} | {pct(rtts, 0.99):.2f} | {max(rtts):.2f}"
    print(f"| ping round trip (ms) | {len(rtts)} | {ping} | |")
    if delays:
        print(
            f"| stream.start -> first frame (ms) | {len(delays)} | {pct(delays, 0.5):.1f} | "
            f"{pct(delays, 0.99):.1f} | {max(delays):.1f} | p99 <= 300 |"
        )
    print()
    print("| asked fps | achieved fps | frame width | mean JPEG bytes |")
    print("|---:|---:|---:|---:|")
    for asked, achieved, width, size in fps_rows:
        print(f"| {asked:g} | {achieved:.2f} | {width} | {size} |")
    print()
    print("| cap (bytes/s) | sessions admitted (10 fps, q75, 640 px) | measured bytes/s | share of cap |")
    print("|---:|---:|---:|---:|")
    print(f"| {args.cap} | {admitted} | {rate:.0f} | {rate / args.cap:.0%} |")
    if refusal:
        print(f"\nnext stream.start answered busy: {refusal}")


if __name__ == "__main__":
    main()
