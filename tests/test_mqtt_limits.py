"""What the broker announces in its MQTT 5 CONNACK, honoured: Receive Maximum caps the link's
in-flight window (Mosquitto tolerates more, EMQX and HiveMQ disconnect), a message larger than
the Maximum Packet Size is refused with an ERROR instead of costing the connection forever (and
under MQTT 3.1.1, which announces nothing, set aside after the broker dropped the connection for
it a few times), clip chunks are sized to fit, Retain Available 0 means publishing unretained,
and Topic Alias Maximum 0 costs nothing (the agent sends no aliases). Each against a Mosquitto
configured to announce the limit."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pytest

from agent.clock import iso
from agent.config import MqttConfig, parse_config
from agent.mqtt import MqttLink, Outbox
from agent.mqtt.outbox import Kind
from tests.conftest import Broker, start_mosquitto, stop_mosquitto
from tests.harness import Subscriber
from tests.test_commands_dispatcher import NOW, Env, req
from tests.test_commands_gateway import T0, ClipsAdapter, FakeGateway, base_config

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_small_receive_maximum_is_honoured(tmp_path: Path, protocol: str) -> None:
    broker = start_mosquitto(tmp_path / "broker", extra="max_inflight_messages 5\n")
    sub = Subscriber(broker.host, broker.port, "limits/#")
    cfg = MqttConfig.model_validate({"host": broker.host, "port": broker.port, "protocol": protocol})
    outbox = Outbox(tmp_path / "outbox.db")
    link = MqttLink(cfg, "gw-limits", outbox, "limits/status", b"{}")
    try:
        link.start()
        assert link.wait_connected(10)
        for i in range(500):
            link.publish(f"limits/cam/c/event/{i}", b"x" * 200, kind="event")
        assert sub.wait_for(lambda ms: len(ms) >= 500, 30), len(sub.messages)
    finally:
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    assert link.stats.connects == 1  # no connection was lost on the way
    assert sorted(int(m.topic.rsplit("/", 1)[1]) for m in sub.messages) == list(range(500))


def test_a_message_larger_than_the_maximum_packet_size_is_refused_clearly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = start_mosquitto(tmp_path / "broker", extra="max_packet_size 4000\n")
    sub = Subscriber(broker.host, broker.port, "big/#")
    cfg = MqttConfig.model_validate({"host": broker.host, "port": broker.port, "protocol": "5"})
    outbox = Outbox(tmp_path / "outbox.db")
    link = MqttLink(cfg, "gw-big", outbox, "big/status", b"{}")
    try:
        link.start()
        assert link.wait_connected(10)
        limit = link.max_payload("big/cam/c/snapshot")
        assert limit is not None and 3800 < limit < 4000
        link.publish("big/cam/c/snapshot", b"j" * 10_000, kind="snapshot", retain=True)
        link.publish("big/cam/c/event", b"{}", kind="event")
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), 10)
    finally:
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    assert [m.topic for m in sub.messages] == ["big/cam/c/event"]
    assert link.stats.connects == 1 and link.stats.too_large == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "big/cam/c/snapshot" in error and "10000 bytes" in error and "Maximum Packet Size is 4000" in error


def _link(
    tmp_path: Path, broker: Broker, protocol: str, name: str, **mqtt: object
) -> tuple[MqttLink, Outbox]:
    cfg = MqttConfig.model_validate({"host": broker.host, "port": broker.port, "protocol": protocol, **mqtt})
    outbox = Outbox(tmp_path / f"{name}.db")
    return MqttLink(cfg, name, outbox, f"{name}/status", b'{"state":"offline"}'), outbox


def test_under_3_1_1_a_message_the_broker_drops_the_connection_for_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 3.1.1 announces no limit: Mosquitto just closes the connection on an oversized
    PUBLISH. The message is set aside after a few drops, and what was queued after it flows."""
    caplog.set_level(logging.INFO)
    broker = start_mosquitto(tmp_path / "broker", extra="max_packet_size 4000\n")
    sub = Subscriber(broker.host, broker.port, "poison/#")
    link, outbox = _link(tmp_path, broker, "3.1.1", "poison")
    secret = b"PAYLOAD-NEVER-LOGGED" * 500  # 10,000 bytes
    try:
        link.publish("poison/cam/c/event/0", b"{}", kind="event")  # stored before the link starts
        link.publish("poison/cam/c/snapshot", secret, kind="snapshot", retain=True)
        for i in range(1, 10):
            link.publish(f"poison/cam/c/event/{i}", b"{}", kind="event")
        link.start()
        assert sub.wait_for(lambda ms: len([m for m in ms if "/event/" in m.topic]) >= 10, 30), sub.messages
        link.publish("poison/cam/c/event/10", b"{}", kind="event")  # and the link stays up
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/event/10") for m in ms), 10)
        assert outbox.depth() == 0  # nothing left to retry, on disk either
    finally:
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    assert not [m for m in sub.messages if m.topic.endswith("/snapshot")]
    events = [int(m.topic.rsplit("/", 1)[1]) for m in sub.messages if "/event/" in m.topic]
    assert sorted(set(events)) == list(range(11))  # at least once, all of them
    assert link.stats.set_aside == 1 and link.stats.takeovers == 0
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "poison/cam/c/snapshot" in error and "10000 bytes" in error and "3 times in a row" in error
    assert "NEVER-LOGGED" not in caplog.text


def test_under_3_1_1_an_event_is_never_set_aside(tmp_path: Path) -> None:
    """Events are what the gateway exists for: even one the broker keeps dropping the connection
    for stays in the outbox (no broker refuses a few kB by size; a flaky uplink must not cost one)."""
    broker = start_mosquitto(tmp_path / "broker", extra="max_packet_size 4000\n")
    link, outbox = _link(tmp_path, broker, "3.1.1", "keep", reconnect_min_s=0.2, reconnect_max_s=0.5)
    try:
        link.publish("keep/cam/c/event/big", b"e" * 10_000, kind="event")
        link.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and link.stats.connects < MqttLink.POISON_STRIKES:
            time.sleep(0.2)
        assert link.stats.connects >= MqttLink.POISON_STRIKES, "the broker should have dropped it repeatedly"
        time.sleep(1.0)  # past the third drop
        assert link.stats.set_aside == 0 and outbox.depth() == 1
    finally:
        link.stop()
        outbox.close()
        stop_mosquitto(broker)


def test_a_connection_lost_with_nothing_in_flight_sets_nothing_aside(tmp_path: Path) -> None:
    """Broker restarts while the queue is idle: no suspect, no message lost, all delivered."""
    broker = start_mosquitto(tmp_path / "broker")
    link, outbox = _link(tmp_path, broker, "3.1.1", "idle", reconnect_spread_s=0, reconnect_max_s=1)
    try:
        link.start()
        assert link.wait_connected(10)
        for _ in range(3):
            stop_mosquitto(broker)
            link.publish("idle/cam/c/event", b"{}", kind="event")
            time.sleep(1.5)  # a refused attempt or two: an outage, not a twin taking the session
            broker = start_mosquitto(tmp_path / "broker", port=broker.port)
            assert link.wait_connected(15)
        deadline = time.monotonic() + 10
        while outbox.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.depth() == 0
    finally:
        link.stop()
        outbox.close()
        stop_mosquitto(broker)
    assert link.stats.set_aside == 0 and link.stats.too_large == 0


def test_a_broker_killed_with_messages_in_flight_again_and_again_sets_nothing_aside(tmp_path: Path) -> None:
    """SIGKILL while a backlog is in flight, three times: each time a refused attempt comes before
    the broker is back, so an outage never looks like a message the broker chokes on."""
    broker = start_mosquitto(tmp_path / "broker")
    link, outbox = _link(tmp_path, broker, "3.1.1", "killed", reconnect_spread_s=0, reconnect_max_s=1)
    try:
        link.start()
        assert link.wait_connected(10)
        for round_ in range(3):
            for i in range(300):
                link.publish(f"killed/cam/c/event/{round_}/{i}", b"e" * 2000, kind="event")
            broker.process.kill()
            broker.process.wait(5)
            time.sleep(1.5)
            broker = start_mosquitto(tmp_path / "broker", port=broker.port)
            assert link.wait_connected(15)
        deadline = time.monotonic() + 20
        while outbox.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.depth() == 0
    finally:
        link.stop()
        outbox.close()
        stop_mosquitto(broker)
    assert link.stats.set_aside == 0 and link.stats.takeovers == 0


@pytest.mark.parametrize("protocol", ["auto", "5"])
def test_a_broker_without_retained_messages_gets_them_unretained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """Mosquitto `retain_available false`: it refuses a retained Will in CONNACK (0x9A) and
    disconnects a retained PUBLISH. The link drops the flag, says so once, and keeps working."""
    caplog.set_level(logging.INFO)
    broker = start_mosquitto(tmp_path / "broker", extra="retain_available false\n")
    sub = Subscriber(broker.host, broker.port, "noretain/#")
    link, outbox = _link(tmp_path, broker, protocol, "noretain")
    link.set_online_message("noretain/status", b'{"state":"online"}')
    try:
        link.start()
        assert link.wait_connected(10)
        link.publish("noretain/cam/c/status", b'{"state":"ok"}', kind="status", retain=True)
        link.publish("noretain/config/reported", b"{}", kind="config", retain=True)
        link.publish("noretain/cam/c/snapshot", b"\xff\xd8jpeg", kind="snapshot", retain=True)
        link.publish("noretain/cam/c/event", b"{}", kind="event")
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), 10)
        time.sleep(0.3)
    finally:
        link.stop(final=("noretain/status", b'{"state":"offline"}'))
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    topics = [m.topic for m in sub.messages]
    assert topics == [
        "noretain/status",
        "noretain/cam/c/status",
        "noretain/config/reported",
        "noretain/cam/c/snapshot",
        "noretain/cam/c/event",
        "noretain/status",
    ]
    assert sub.messages[-1].payload == b'{"state":"offline"}'
    assert link.stats.connects == 1 and link.stats.disconnects == 1  # only the clean stop
    assert link.stats.retain_available is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "does not keep retained messages" in w]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_broker_that_drops_retained_publishes_without_saying_so_in_connack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that announces nothing but disconnects a retained PUBLISH with 0x9A (Mosquitto
    does when retain is switched off while the gateway is connected, by a restart): the link
    resends the message unretained on its next connection."""
    caplog.set_level(logging.INFO)
    broker = start_mosquitto(tmp_path / "broker")
    sub = Subscriber(broker.host, broker.port, "flip/#")
    link, outbox = _link(tmp_path, broker, "5", "flip", reconnect_spread_s=0, reconnect_max_s=1)
    try:
        link.start()
        assert link.wait_connected(10)
        stop_mosquitto(broker)
        broker = start_mosquitto(tmp_path / "broker", port=broker.port, extra="retain_available false\n")
        sub.close()
        sub = Subscriber(broker.host, broker.port, "flip/#")
        link.publish("flip/cam/c/status", b'{"state":"ok"}', kind="status", retain=True)
        link.publish("flip/cam/c/event", b"{}", kind="event")
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), 20), sub.messages
    finally:
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    assert [m.topic for m in sub.messages if m.topic.startswith("flip/cam")] == [
        "flip/cam/c/status",
        "flip/cam/c/event",
    ]
    assert "does not keep retained messages" in caplog.text


def test_the_agent_sends_no_topic_aliases_so_a_broker_allowing_none_is_fine(tmp_path: Path) -> None:
    """Mosquitto `max_topic_alias 0` announces Topic Alias Maximum 0: the link never uses one
    (a client sending an alias then is disconnected), so everything arrives on one connection."""
    broker = start_mosquitto(tmp_path / "broker", extra="max_topic_alias 0\n")
    sub = Subscriber(broker.host, broker.port, "alias/#")
    link, outbox = _link(tmp_path, broker, "5", "alias")
    link.set_online_message("alias/status", b'{"state":"online"}')
    try:
        link.start()
        assert link.wait_connected(10)
        for i in range(100):  # the same long topics again and again: where aliases would apply
            link.publish("alias/cam/c/event", json.dumps({"n": i}).encode(), kind="event")
            link.publish("alias/telemetry", b"{}", kind="telemetry", qos=0)
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/event")]) >= 100, 20)
    finally:
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    assert link.stats.connects == 1 and link.stats.disconnects == 1
    events = [json.loads(m.payload)["n"] for m in sub.messages if m.topic.endswith("/event")]
    assert events == list(range(100))


class _LinkedGateway(FakeGateway):
    """The commands' test gateway, publishing through a real link to a real broker."""

    def __init__(self, tmp_path: Path, link: MqttLink) -> None:
        super().__init__(parse_config(base_config(tmp_path)))
        self.link = link

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
        self.link.publish(topic, payload, kind=kind, qos=qos, retain=retain, properties=properties)

    def max_payload(self, topic: str, properties: dict[str, str] | None = None) -> int | None:
        return self.link.max_payload(topic, properties)


def test_clip_chunks_fit_the_brokers_maximum_packet_size(tmp_path: Path) -> None:
    """clip.fetch without chunk_bytes sizes its chunks by what the broker announced; a chunk size
    the platform asked for that cannot fit is refused with the largest that does."""
    broker = start_mosquitto(tmp_path / "broker", extra="max_packet_size 8192\n")
    link, outbox = _link(tmp_path, broker, "5", "clipgw")
    gw = _LinkedGateway(tmp_path, link)
    sub = Subscriber(broker.host, broker.port, gw.topic_root + "/clips/#")
    env = Env(tmp_path, gw)
    try:
        link.start()
        assert link.wait_connected(10)
        adapter = ClipsAdapter(tmp_path / "clips", gw)
        gw.clips = adapter
        exported = env.call(req("clip.export", {"camera": "cam-1", "start": iso(T0 - 1), "end": iso(NOW)}))
        clip_id = exported["result"]["clip_id"]
        fetched = env.call(req("clip.fetch", {"clip_id": clip_id}, id="r-2"))["result"]
        assert fetched["count"] > 1
        assert sub.wait_for(lambda ms: len(ms) >= fetched["count"], 20), (len(sub.messages), fetched)
        too_big = env.error(
            req("clip.fetch", {"clip_id": clip_id, "chunk_bytes": 65536}, id="r-3"), "bad_request"
        )
    finally:
        env.close()
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    mp4 = b"".join(m.payload for m in sorted(sub.messages, key=lambda m: int(m.user_properties["index"])))
    assert mp4 == adapter.store.path(clip_id).read_bytes()
    assert hashlib.sha256(mp4).hexdigest() == fetched["sha256"]
    assert max(len(m.payload) for m in sub.messages) <= 8192
    assert link.stats.too_large == 0 and link.stats.connects == 1
    limit = int(too_big.rsplit(" ", 1)[1])
    assert "65536" in too_big and 7900 < limit < 8192


def test_a_snapshot_larger_than_the_brokers_limit_is_sent_smaller_not_lost(tmp_path: Path) -> None:
    """The broker takes 8 kB a message: the snapshot command answers with a picture that fits,
    saying its (smaller) size, and that picture is the one that arrives."""
    broker = start_mosquitto(tmp_path / "broker", extra="max_packet_size 8192\n")
    link, outbox = _link(tmp_path, broker, "5", "snapgw")
    gw = _LinkedGateway(tmp_path, link)
    sub = Subscriber(broker.host, broker.port, gw.topic_root + "/cam/#")
    env = Env(tmp_path, gw)
    try:
        link.start()
        assert link.wait_connected(10)
        full = gw.latest_frame("cam-1")
        assert full is not None
        result = env.call(req("snapshot", {"camera": "cam-1"}))["result"]
        assert sub.wait_for(lambda ms: any(m.topic == result["topic"] for m in ms), 10)
    finally:
        env.close()
        link.stop()
        outbox.close()
        sub.close()
        stop_mosquitto(broker)
    (arrived,) = [m for m in sub.messages if m.topic == result["topic"]]
    assert len(arrived.payload) == result["bytes"] <= 8192 and arrived.payload[:2] == b"\xff\xd8"
    assert result["width"] < full.image.shape[1]
    assert link.stats.too_large == 0
