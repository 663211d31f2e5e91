"""Outbox throughput: queue 10,000 events durably, then replay them through a real Mosquitto.

Replays through the agent's own MqttLink (its pump, in-flight window and ack path) with
paho-mqtt 2 over MQTT 5 on loopback, and while replaying publishes a "live" QoS 0 message every
50 ms through the same link to show replay does not starve live traffic (its latency to a
subscriber is reported). Target: >= 2,000 msg/s replay.

    .venv/bin/python bench/outbox_bench.py [--messages 10000] [--windows 20,100,500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import MqttConfig
from agent.mqtt import MqttLink, Outbox, OutboxMessage
from tests.conftest import start_mosquitto, stop_mosquitto

EVENT = {
    "event_id": "00000000-0000-4000-8000-000000000000",
    "camera": "cam-1",
    "kind": "motion",
    "phase": "update",
    "started_at": "2026-11-24T10:00:00.000Z",
    "ts": "2026-11-24T10:00:01.000Z",
    "ended_at": None,
    "regions": [[0.1, 0.2, 0.3, 0.4]],
    "objects": [],
    "score": 0.5,
    "clip_id": None,
}


def link_with_window(window: int) -> type[MqttLink]:
    """MqttLink with another in-flight window (paho's and the pump's share the class constant)."""
    return type(f"MqttLinkW{window}", (MqttLink,), {"INFLIGHT_WINDOW": window})


def run(workdir: Path, port: int, messages: int, window: int) -> dict[str, float]:
    root = f"bench/outbox/w{window}"
    box = Outbox(workdir / f"outbox-{window}.db", max_messages=messages * 2, max_bytes=1 << 30)
    payload = json.dumps(EVENT).encode()
    t0 = time.perf_counter()
    for i in range(messages):
        cam = f"cam-{i % 4}"
        box.put(OutboxMessage(f"{root}/cam/{cam}/event", payload, kind="event", camera=cam))
    put_s = time.perf_counter() - t0

    received = 0
    live_latency: list[float] = []
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal received
        if msg.topic.endswith("/live"):
            live_latency.append(time.perf_counter() - float(msg.payload))
            return
        received += 1
        if received >= messages:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{window}", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(f"{root}/#", qos=1)
    subscribed.wait(10)

    cfg = MqttConfig.model_validate({"host": "127.0.0.1", "port": port})
    link = link_with_window(window)(cfg, f"bench-pub-{window}", box, f"{root}/status", b"offline")
    stop_live = threading.Event()

    def live() -> None:
        while not stop_live.wait(0.05):
            link.publish(f"{root}/live", repr(time.perf_counter()).encode(), kind="telemetry", qos=0)

    live_thread = threading.Thread(target=live, name="bench.live")
    t0 = time.perf_counter()
    link.start()
    live_thread.start()
    deadline = time.monotonic() + 120
    while box.depth() > 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    replay_s = time.perf_counter() - t0
    done.wait(30)
    stop_live.set()
    live_thread.join(5)
    link.stop()
    sub.disconnect()
    sub.loop_stop()
    left = box.depth()
    box.close()
    lat = sorted(live_latency) or [float("nan")]
    return {
        "window": window,
        "put_per_s": messages / put_s,
        "replay_per_s": (messages - left) / replay_s,
        "received": received,
        "left": left,
        "live_n": len(live_latency),
        "live_p50_ms": statistics.median(lat) * 1000,
        "live_max_ms": lat[-1] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--windows", default="20,100,500", help="in-flight windows to try, comma-separated")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(work / "broker", extra="max_inflight_messages 0\n")
        try:
            rows = [run(work, broker.port, args.messages, int(w)) for w in args.windows.split(",")]
        finally:
            stop_mosquitto(broker)
    print(f"outbox replay of {args.messages} queued events, paho-mqtt 2 / MQTT 5 / mosquitto on loopback")
    print(
        "| window | durable put msg/s | replay msg/s (PUBACKed) | received | left | live QoS0 p50 / max ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['window']:.0f} | {r['put_per_s']:,.0f} | {r['replay_per_s']:,.0f} | {r['received']:.0f}"
            f" | {r['left']:.0f} | {r['live_p50_ms']:.1f} / {r['live_max_ms']:.1f} (n={r['live_n']:.0f}) |"
        )


if __name__ == "__main__":
    main()
