"""End to end against Debian's RabbitMQ 3.10 (MQTT plugin, 3.1.1 only) with `mqtt.protocol = "auto"`.

What the platform sees: the retained gateway status on an exact-topic subscription (RabbitMQ does
not deliver retained messages to a new wildcard subscriber), camera status, events, commands
with replies, a clip fetch, and an outage (the broker stopped and started again) after which the
durable outbox delivers what the cameras produced meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.clock import iso, parse_iso
from agent.sdk.client import PlatformClient
from agent.sdk.fleet import FleetWatch, describe_sweep
from tests.harness import AgentProcess, wait_answering, wait_frames, write_config
from tests.rabbitmq import RabbitMQ, rabbitmq_fixture  # noqa: F401 - the `rabbitmq` fixture

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DISTRICT = "rabbit"
CAMERAS = """
[[cameras]]
id = "cam-1"
source = "synthetic:street?fps=10&seed=1&width=320&height=180"
allowed_agencies = ["police"]
buffer = { pre_event_s = 6.0, fps = 10.0 }
"""


class Recorder:
    """The platform's MQTT 3.1.1 subscriber with a persistent session (clean_session false), so
    RabbitMQ keeps queueing for it across the subscriber's and the broker's restarts."""

    def __init__(self, port: int, topics: list[str], client_id: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=False,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK from RabbitMQ"

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Gateway:
    def __init__(self, tmp: Path, node: RabbitMQ) -> None:
        self.id = "gw-" + uuid.uuid4().hex[:10]
        self.root = f"cctv/v1/{DISTRICT}/{self.id}"
        self.node = node
        self.events = Recorder(node.port, [self.root + "/cam/+/event", self.root + "/cam/+/status"], self.id)
        cfg = write_config(
            tmp / "agent.toml",
            district=DISTRICT,
            gateway=self.id,
            port=node.port,
            data_dir=tmp / "data",
            cameras=CAMERAS,
            protocol="auto",
        )
        self.agent = AgentProcess(cfg, tmp / "agent.log", log_level="info")

    def client(self) -> PlatformClient:
        return PlatformClient(
            "127.0.0.1", self.node.port, self.root, agency="police", operator="op-1", protocol="auto"
        ).connect()

    def close(self) -> None:
        self.agent.close()
        self.events.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, rabbitmq: RabbitMQ) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("rabbit-gw"), rabbitmq)
    time.sleep(1.0)
    assert gw.agent.proc.poll() is None, gw.agent.log()
    try:
        yield gw
    finally:
        gw.close()


def retained_status(node: RabbitMQ, root: str) -> dict[str, Any] | None:
    """The retained gateway status as a NEW exact-topic subscriber gets it (None if none came)."""
    rec = Recorder(node.port, [root + "/status"], "late-" + uuid.uuid4().hex[:8])
    try:
        rec.wait_for(lambda: bool(rec.on("/status")), 3)
        got = rec.on("/status")
    finally:
        rec.close()
    return got[-1] if got else None


def test_status_events_commands_and_a_clip_over_rabbitmq(gateway: Gateway, tmp_path: Path) -> None:
    gw = gateway
    with gw.client() as client:
        assert client.protocol == "3.1.1"  # auto fell back: RabbitMQ 3.10 closes MQTT 5 connections
        assert "agent_version" in wait_answering(client, 40)
        log = gw.agent.log()
        assert "refused MQTT 5" in log and "connected with MQTT 3.1.1" in log
        status = retained_status(gw.node, gw.root)
        assert status is not None and status["state"] == "online" and status["cameras"] == ["cam-1"]
        # The platform's fleet view: exact-topic statuses work here, and so does the sweep.
        with FleetWatch("127.0.0.1", gw.node.port, "cctv/v1", protocol="auto") as fleet:
            seen = fleet.statuses([gw.root, gw.root + "-unknown"])
        assert seen[gw.root] == status and seen[gw.root + "-unknown"] is None
        swept = describe_sweep(
            "127.0.0.1", gw.node.port, [gw.root], agency="police", operator="op-1", protocol="auto"
        )
        described_root = swept[gw.root]
        assert described_root is not None and described_root["gateway"]["id"] == gw.id
        assert gw.events.wait_for(
            lambda: any(s["state"] == "ok" for s in gw.events.on("/cam/cam-1/status")), 20
        )
        assert gw.events.wait_for(lambda: bool(gw.events.on("/cam/cam-1/event")), 60), gw.agent.log()[-3000:]

        described = client.describe()
        assert described["gateway"]["id"] == gw.id
        assert [c["id"] for c in described["cameras"]] == ["cam-1"]
        wait_frames(client, "cam-1")
        result, jpeg = client.snapshot("cam-1", max_width=160)
        assert jpeg[:2] == b"\xff\xd8" and result["width"] <= 160

        now = time.time()
        info = client.clip_export("cam-1", iso(now - 3), iso(now - 1), timeout=60)
        out = tmp_path / "clip.mp4"
        fetched = client.clip_fetch(info["clip_id"], out, chunk_bytes=16 * 1024, timeout=60)
        assert fetched["sha256"] == info["sha256"] and out.stat().st_size == info["bytes"]
        assert out.read_bytes()[4:8] == b"ftyp"


def test_an_outage_is_bridged_by_the_durable_outbox(gateway: Gateway) -> None:
    gw, node = gateway, gateway.node
    with gw.client() as client:
        wait_answering(client, 40)
    assert gw.events.wait_for(lambda: bool(gw.events.on("/cam/cam-1/event")), 60)
    down_at = time.time()
    node.stop()
    time.sleep(8.0)  # the synthetic street keeps producing events; the agent keeps them
    up_at = time.time()
    node.start()
    # Phases stamped while the broker was down arrive after it is back.
    assert gw.events.wait_for(
        lambda: any(down_at < parse_iso(e["ts"]) < up_at for e in gw.events.on("/cam/cam-1/event")), 60
    ), gw.agent.log()[-3000:]
    with gw.client() as client:
        wait_answering(client, 40)
        status = retained_status(node, gw.root)
        assert status is not None and status["state"] == "online"
    code, took = gw.agent.terminate()
    assert code == 0 and took < 5
    final = retained_status(node, gw.root)
    assert final is not None and (final["state"], final["reason"]) == ("offline", "shutdown")
    # Every event that started also ended, exactly once (deliveries may repeat: at least once).
    phases: dict[str, list[str]] = {}
    seen: set[tuple[str, str, str]] = set()
    for e in gw.events.on("/cam/cam-1/event"):
        key = (e["event_id"], e["phase"], e["ts"])
        if key not in seen:
            seen.add(key)
            phases.setdefault(e["event_id"], []).append(e["phase"])
    for seq in phases.values():
        assert seq[0] == "start" and seq[-1] == "end" and seq.count("end") == 1, seq
    log = gw.agent.log()
    assert " ERROR " not in log, log[-3000:]
