"""One agency floods refused commands while another pings: does the flood cost anyone but the flooder?

Against a private Mosquitto (`set_tcp_nodelay true`) and a real `edge-agent run`, agency `fire`
publishes `--rate` snapshot requests a second for a camera it may not see (each one refused:
`forbidden`, or `rate_limited` once its refusal budget is spent) for `--seconds`, while `police`
pings every 50 ms through agent.sdk.client. Printed: police's ping round trip (p50/p99), how much
the audit log grew, the agent's RSS at the start and end of the flood, and how fire's requests
were answered. Goals (issue 13): ping p99 <= 50 ms, audit growth < 1 MB, RSS flat.

    .venv/bin/python bench/command_flood.py [--rate 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.clock import iso
from agent.sdk.client import PlatformClient
from tests.conftest import start_mosquitto, stop_mosquitto
from tests.harness import AgentProcess, wait_answering, wait_frames, write_config

CAMERAS = """
[[cameras]]
id = "cam-1"
source = "synthetic:street?fps=10&width=320&height=180"
allowed_agencies = ["police"]

[[cameras]]
id = "cam-2"
source = "synthetic:street?fps=5&width=320&height=180&seed=2"
allowed_agencies = ["police", "fire"]
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def audit_bytes(data_dir: Path) -> int:
    """All audit files together (the log may rotate)."""
    return sum(p.stat().st_size for p in (data_dir / "audit").glob("audit.log*") if p.is_file())


class Flooder:
    """Fire's raw MQTT 5 client: publishes refused requests at a steady rate, counts the answers."""

    def __init__(self, host: str, port: int, root: str) -> None:
        self.root = root
        self.reply_topic = f"{root}/reply/flood-{uuid.uuid4().hex[:8]}"
        self.codes: Counter[str] = Counter()
        self.sent = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        assert done.wait(5), "no SUBACK"

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        code = "ok" if body.get("ok") else str(body["error"]["code"])
        with self._lock:
            self.codes[code] += 1

    def run(self, rate: float, seconds: float, stop: threading.Event) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        start = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                return
            due = int(elapsed * rate) + 1
            while self.sent < due:
                body = {
                    "id": f"fl-{self.sent}",
                    "cmd": "snapshot",
                    "args": {"camera": "cam-1"},
                    "issued_at": iso(),
                    "requester": {"agency": "fire", "operator": "flood"},
                }
                self.client.publish(f"{self.root}/cmd", json.dumps(body).encode(), qos=0, properties=props)
                self.sent += 1
            time.sleep(0.005)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="refused requests per second from fire")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long fire floods")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(work / "mosquitto", extra="set_tcp_nodelay true\n")
        data = work / "data"
        cfg = write_config(
            work / "agent.toml", district="bench", gateway="gw-flood", port=broker.port,
            data_dir=data, cameras=CAMERAS,
        )  # fmt: skip
        agent = AgentProcess(cfg, work / "agent.log", log_level="warning")
        root = "cctv/v1/bench/gw-flood"
        try:
            with PlatformClient(broker.host, broker.port, root, agency="police", operator="bench") as police:
                wait_answering(police)
                wait_frames(police, "cam-1")
                proc = psutil.Process(agent.proc.pid)
                flooder = Flooder(broker.host, broker.port, root)
                stop = threading.Event()
                flood = threading.Thread(target=flooder.run, args=(args.rate, args.seconds, stop))
                audit0, rss0 = audit_bytes(data), proc.memory_info().rss
                rtts: list[float] = []
                failures: Counter[str] = Counter()
                flood.start()
                t_end = time.monotonic() + args.seconds
                try:
                    while time.monotonic() < t_end:
                        t0 = time.monotonic()
                        try:
                            police.ping()
                            rtts.append(time.monotonic() - t0)
                        except Exception as exc:  # counted, shown in the table
                            failures[type(exc).__name__] += 1
                        time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
                finally:
                    stop.set()
                    flood.join()
                time.sleep(2.0)  # the last answers arrive
                rss1 = proc.memory_info().rss
                audit1 = audit_bytes(data)
                flooder.close()
            alive = agent.proc.poll() is None
        finally:
            agent.close()
            stop_mosquitto(broker)
    answered = sum(flooder.codes.values())
    rows = [
        ("fire: requests sent", f"{flooder.sent:,} ({flooder.sent / args.seconds:,.0f}/s)", ""),
        ("fire: answered", f"{answered:,}", ", ".join(f"{k} {v:,}" for k, v in flooder.codes.most_common())),
        ("fire: rate_limited", f"{flooder.codes['rate_limited']:,}", ""),
        (
            "police: pings",
            f"{len(rtts):,}",
            ", ".join(f"{k} {v}" for k, v in failures.items()) or "all answered",
        ),
        ("police: ping p50", f"{pct(rtts, 0.5) * 1000:.1f} ms" if rtts else "-", ""),
        ("police: ping p99", f"{pct(rtts, 0.99) * 1000:.1f} ms" if rtts else "-", "goal <= 50 ms"),
        ("audit log growth", f"{(audit1 - audit0) / 1024:,.1f} KiB", "goal < 1 MB"),
        ("agent RSS start -> end", f"{rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB", "goal: flat"),
        ("agent alive at the end", str(alive), ""),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"\ncommand flood: fire {args.rate:g}/s refused for {args.seconds:g} s, police pings every 50 ms\n")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {note}")


if __name__ == "__main__":
    main()
