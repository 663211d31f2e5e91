"""The platform client (agent.sdk.client) and the ctl helpers, against the real dispatcher on a real broker.

The responder here is the agent's own command stack (CommandServer, Dispatcher, StreamManager,
the real clip store) over the in-process `FakeGateway` of test_commands_gateway, wired to the
session broker with paho: what the client sees is what a gateway sends. Unlike the agent subprocess, it lets a
test lose or damage chunks on the way, which is how resuming and checksum checks are exercised.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import iso, parse_iso
from agent.commands import COMMANDS, CommandServer, CommandSpec, Dispatcher, StreamManager
from agent.commands.audit import AuditLog
from agent.commands.models import NoArgs
from agent.config import parse_config
from agent.mqtt.outbox import Kind
from agent.sdk.client import ClientError, CommandFailed, ConnectFailed, NoReply, PlatformClient
from agent.sdk.ctl import UsageError, parse_assignments, parse_time
from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto
from tests.test_commands_gateway import T0, ClipsAdapter, FakeGateway, base_config


class Responder:
    """The agent's command stack over `FakeGateway`, answering on `{root}/cmd` via the broker."""

    def __init__(self, broker: Broker, tmp: Path) -> None:
        gateway_id = "gw-" + uuid.uuid4().hex[:10]
        self.gw = _BrokerGateway(parse_config(base_config(tmp, id=gateway_id)), self)
        self.gw.clips = ClipsAdapter(tmp / "clips", self.gw)
        self.root = self.gw.topic_root
        self.seen: list[tuple[dict[str, Any] | None, str | None, bytes | None]] = []  # request, resp, corr
        self.drop_chunks: set[int] = set()  # chunk indexes to lose, once each
        self.corrupt_chunk: int | None = None  # chunk index to damage, once
        self.audit = AuditLog.in_data_dir(tmp)
        self.streams = StreamManager(self.gw)
        self.streams.start()
        slow = CommandSpec("sleep", NoArgs, _sleep, "any", audited=False)
        self.dispatcher = Dispatcher(
            self.gw, self.audit, streams=self.streams, commands={**COMMANDS, "sleep": slow}
        )
        # More workers than the agent's two: tests run several slow commands side by side.
        self.server = CommandServer(self.dispatcher, self._reply, workers=4)
        self.server.start()
        self.mqtt = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.subscribed = threading.Event()
        cmd = self.gw.topics.cmd
        self.mqtt.on_connect = lambda c, *a: c.subscribe(cmd, qos=1)  # again on reconnects
        self.mqtt.on_subscribe = lambda *a: self.subscribed.set()
        self.mqtt.message_callback_add(cmd, self._on_cmd)
        self.mqtt.reconnect_delay_set(1, 2)
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.loop_start()
        assert self.subscribed.wait(5)

    def _on_cmd(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        response_topic = getattr(msg.properties, "ResponseTopic", None)
        corr = getattr(msg.properties, "CorrelationData", None)
        try:
            request = json.loads(msg.payload)
        except ValueError:
            request = None
        self.seen.append((request, response_topic, corr))
        self.server.submit(msg)

    def _reply(self, topic: str, payload: bytes, corr: bytes | None) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if corr is not None:
            props.CorrelationData = corr
        self.mqtt.publish(topic, payload, qos=1, properties=props)

    def send(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: dict[str, str] | None
    ) -> None:
        index = int(properties["index"]) if properties and "index" in properties else None
        if index is not None and index in self.drop_chunks:
            self.drop_chunks.discard(index)
            return
        if index is not None and index == self.corrupt_chunk:
            self.corrupt_chunk = None
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if properties:
            props.UserProperty = list(properties.items())
        self.mqtt.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def close(self) -> None:
        self.streams.stop()
        self.server.stop(timeout=5)
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        self.audit.close()


def _sleep(ctx: Any, args: NoArgs) -> dict[str, Any]:
    time.sleep(0.6)
    return {"slept": True}


class _BrokerGateway(FakeGateway):
    """FakeGateway whose publishes also go out to the broker through the responder."""

    def __init__(self, config: Any, responder: Responder) -> None:
        super().__init__(config)
        self._responder = responder

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: Kind,
        qos: int = 1,
        retain: bool = False,
        properties: dict[str, str] | None = None,
    ) -> None:
        super().publish(topic, payload, kind=kind, qos=qos, retain=retain, properties=properties)
        self._responder.send(topic, payload, qos, retain, properties)


@pytest.fixture
def responder(broker: Broker, tmp_path: Path) -> Iterator[Responder]:
    r = Responder(broker, tmp_path)
    yield r
    r.close()


def make_client(broker: Broker, root: str, protocol: str = "5", agency: str = "police") -> PlatformClient:
    proto: Any = protocol
    return PlatformClient(broker.host, broker.port, root, agency=agency, operator="op-1", protocol=proto)


def decode(jpeg: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return np.asarray(img, np.uint8)


def export_clip(client: PlatformClient) -> dict[str, Any]:
    return client.clip_export("cam-1", iso(T0 - 1), iso(T0 + 1))


# -- requests and replies ----------------------------------------------------------------------------


@pytest.mark.broker
def test_request_reply_over_mqtt5(broker: Broker, responder: Responder) -> None:
    with make_client(broker, responder.root) as client:
        pong = client.ping()
        assert pong["agent_version"] == "9.9.9-test"
        request, response_topic, corr = responder.seen[-1]
        assert request is not None
        assert response_topic == client.reply_topic
        assert corr == request["id"].encode()
        assert request["requester"] == {"agency": "police", "operator": "op-1"}
        assert request["ttl_s"] == 30
        with pytest.raises(CommandFailed) as err:
            client.request("reboot")
        assert err.value.code == "unknown_command"
        assert err.value.request_id == responder.seen[-1][0]["id"]  # type: ignore[index]
        with pytest.raises(CommandFailed) as err:
            client.snapshot("cam-1", max_width=3)
        assert err.value.code == "bad_request"
        assert "max_width" in err.value.message


@pytest.mark.broker
def test_mqtt311_client_is_answered_through_reply_to(broker: Broker, responder: Responder) -> None:
    with make_client(broker, responder.root, protocol="3.1.1") as client:
        assert client.ping()["agent_version"] == "9.9.9-test"
        request, response_topic, corr = responder.seen[-1]
        assert response_topic is None
        assert corr is None
        assert request is not None
        assert request["reply_to"] == client.reply_topic
        with (
            make_client(broker, responder.root, agency="fire") as fire,
            pytest.raises(CommandFailed, match="forbidden"),
        ):
            fire.snapshot("cam-1")


@pytest.mark.broker
def test_garbled_request_answered_with_null_id_is_matched_by_correlation(
    broker: Broker, responder: Responder
) -> None:
    with make_client(broker, responder.root) as client:
        reply = client.send_raw(b"\x00 not json", "raw-1")
        assert reply["id"] is None
        assert reply["error"]["code"] == "bad_request"


@pytest.mark.broker
def test_no_reply_in_time_then_late_reply_is_ignored(broker: Broker, responder: Responder) -> None:
    with make_client(broker, responder.root) as client:
        with pytest.raises(NoReply):
            client.request("sleep", timeout=0.1)
        with pytest.raises(TimeoutError):  # NoReply is a TimeoutError too
            client.request("sleep", timeout=0.1)
        time.sleep(0.8)  # the late replies arrive and are dropped
        assert client.request("sleep", timeout=5) == {"slept": True}
        assert client.ping()["agent_version"] == "9.9.9-test"


@pytest.mark.broker
def test_threads_sharing_a_client_each_get_their_reply(broker: Broker, responder: Responder) -> None:
    got: list[tuple[int, dict[str, Any]]] = []
    failures: list[BaseException] = []

    with make_client(broker, responder.root) as client:

        def work(n: int) -> None:
            try:
                for _ in range(5):
                    r = client.request("sleep", timeout=10) if n == 0 else client.request("describe")
                    got.append((n, r))
            except ClientError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not failures
    assert len(got) == 25
    assert all(("slept" in r) == (n == 0) for n, r in got)


@pytest.mark.broker
def test_client_resubscribes_after_the_broker_restarts(tmp_path: Path) -> None:
    port = free_port()
    first = start_mosquitto(tmp_path / "b1", port)
    r = Responder(first, tmp_path)
    try:
        with make_client(first, r.root) as client:
            assert client.ping()["agent_version"] == "9.9.9-test"
            stop_mosquitto(first)
            r.subscribed.clear()
            second = start_mosquitto(tmp_path / "b2", port)
            try:
                assert r.subscribed.wait(15), "the responder did not reconnect"
                deadline = time.monotonic() + 15
                while not client.connected and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert client.connected
                # the reply topic was subscribed again: without it this would time out
                assert client.ping(timeout=5)["agent_version"] == "9.9.9-test"
            finally:
                client.close()
                stop_mosquitto(second)
    finally:
        r.close()


@pytest.mark.broker
def test_connect_failures_are_reported() -> None:
    with pytest.raises(ConnectFailed, match="cannot connect"):
        PlatformClient("127.0.0.1", free_port(), "cctv/v1/x/y", agency="a", operator="o").connect(timeout=2)


def test_constructor_rejects_bad_roots() -> None:
    for root in ("", "cctv/v1/+/gw", "cctv/#", "cctv/v1/d/gw/"):
        with pytest.raises(ValueError, match="root"):
            PlatformClient("127.0.0.1", 1883, root, agency="a", operator="o")


# -- imagery --------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_snapshot_returns_the_published_jpeg(broker: Broker, responder: Responder) -> None:
    with make_client(broker, responder.root) as client:
        result, jpeg = client.snapshot("cam-1", max_width=320)
    img = decode(jpeg)
    assert img.shape[1] == result["width"] == 320
    assert result["bytes"] == len(jpeg)
    sent = responder.gw.on(result["topic"].split(responder.root)[1])
    assert [p.payload for p in sent] == [jpeg]


@pytest.mark.broker
def test_stream_yields_frames_then_stops_the_session(broker: Broker, responder: Responder) -> None:
    responder.gw.live = True  # a new frame on every look
    with make_client(broker, responder.root) as client:
        live = client.stream("cam-2", 1.0, fps=10, max_width=160)
        frames = list(live)
        assert live.session
    assert len(frames) >= 4
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(f.ts is not None for f in frames)
    assert decode(frames[0].jpeg).shape[1] == 160
    assert responder.streams.sessions() == []  # stream.stop was sent
    assert any(r and r["cmd"] == "stream.stop" for r, _, _ in responder.seen)


# -- clips ----------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_clip_fetch_downloads_and_verifies(broker: Broker, responder: Responder, tmp_path: Path) -> None:
    out = tmp_path / "dl" / "clip.mp4"
    with make_client(broker, responder.root) as client:
        info = export_clip(client)
        result = client.clip_fetch(info["clip_id"], out, chunk_bytes=4096)
    data = out.read_bytes()
    assert result["count"] > 2
    assert hashlib.sha256(data).hexdigest() == info["sha256"] == result["sha256"]
    assert len(data) == info["bytes"]
    assert not out.with_name("clip.mp4.part").exists()
    assert not out.with_name("clip.mp4.part.json").exists()


@pytest.mark.broker
def test_clip_fetch_resumes_after_lost_chunks(broker: Broker, responder: Responder, tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with make_client(broker, responder.root) as client:
        info = export_clip(client)
        responder.drop_chunks = {1, 3}
        with pytest.raises(NoReply, match=r"2 of \d+ chunks did not arrive"):
            client.clip_fetch(info["clip_id"], out, chunk_bytes=4096, timeout=2)
        state = json.loads(out.with_name("clip.mp4.part.json").read_text())
        assert state["clip_id"] == info["clip_id"]
        assert 1 not in state["have"]
        assert 3 not in state["have"]
        assert 0 in state["have"]
        assert not out.exists()
        client.clip_fetch(info["clip_id"], out, chunk_bytes=4096)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == info["sha256"]
    assert not out.with_name("clip.mp4.part.json").exists()


@pytest.mark.broker
def test_clip_fetch_refuses_a_damaged_download(broker: Broker, responder: Responder, tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with make_client(broker, responder.root) as client:
        info = export_clip(client)
        responder.corrupt_chunk = 2
        with pytest.raises(ClientError, match="does not match"):
            client.clip_fetch(info["clip_id"], out, chunk_bytes=4096)
        assert not out.exists()
        assert not out.with_name("clip.mp4.part").exists()
        client.clip_fetch(info["clip_id"], out, chunk_bytes=4096)  # a clean retry succeeds
    assert hashlib.sha256(out.read_bytes()).hexdigest() == info["sha256"]


@pytest.mark.broker
def test_clip_fetch_of_an_unknown_clip(broker: Broker, responder: Responder, tmp_path: Path) -> None:
    with make_client(broker, responder.root) as client, pytest.raises(CommandFailed) as err:
        client.clip_fetch(str(uuid.uuid4()), tmp_path / "x.mp4")
    assert err.value.code == "not_found"


# -- ctl helpers ------------------------------------------------------------------------------------------


def test_parse_assignments_builds_one_nested_partial() -> None:
    partial = parse_assignments(
        [
            "cameras.cam-1.motion.threshold=30",
            "cameras.cam-1.motion.enabled=false",
            'cameras.cam-1.detection.labels=["person","car"]',
            "streams.max_sessions=2",
            "cameras.cam-2.motion.masks=[]",
            "gateway.name=Main gate",
        ]
    )
    assert partial == {
        "cameras": {
            "cam-1": {
                "motion": {"threshold": 30, "enabled": False},
                "detection": {"labels": ["person", "car"]},
            },
            "cam-2": {"motion": {"masks": []}},
        },
        "streams": {"max_sessions": 2},
        "gateway": {"name": "Main gate"},
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "a.=1"])
def test_parse_assignments_rejects_malformed_pairs(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_assignments([bad])


def test_parse_assignments_rejects_conflicts() -> None:
    with pytest.raises(UsageError, match="already"):
        parse_assignments(["a.b=1", "a.b.c=2"])
    with pytest.raises(UsageError, match="already"):
        parse_assignments(["a.b.c=2", "a.b=1"])


def test_parse_time_offsets_and_rfc3339() -> None:
    now = time.time()
    assert abs(parse_iso(parse_time("now")) - now) < 2
    assert abs(parse_iso(parse_time("now-90s")) - (now - 90)) < 2
    assert abs(parse_iso(parse_time("-5m")) - (now - 300)) < 2
    assert abs(parse_iso(parse_time("now+7d")) - (now + 7 * 86400)) < 2
    assert parse_time("2026-11-24T10:00:00.123Z") == "2026-11-24T10:00:00.123Z"
    with pytest.raises(UsageError, match="not a time"):
        parse_time("yesterday")
