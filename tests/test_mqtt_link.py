"""The MQTT link against a real Mosquitto: what the platform receives, and what survives a stop."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.mqtt import MqttLink, Outbox, OutboxError
from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto
from tests.harness import Received, Subscriber

pytestmark = pytest.mark.broker

WILL = b'{"state":"offline","reason":"connection lost"}'


def make_link(outbox: Outbox, host: str, port: int, client_id: str, protocol: str = "5") -> MqttLink:
    cfg = MqttConfig.model_validate({"host": host, "port": port, "protocol": protocol})
    return MqttLink(cfg, client_id, outbox, f"{client_id}/status", WILL)


@pytest.fixture
def subscriber(broker: Broker, unique_gateway: str) -> Iterator[Subscriber]:
    sub = Subscriber(broker.host, broker.port, f"{unique_gateway}/#")
    yield sub
    sub.close()


def arrived(sub: Subscriber, suffix: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
    assert sub.wait_for(lambda ms: sum(m.topic.endswith(suffix) for m in ms) >= count, timeout), (
        f"{suffix}: {[m.topic for m in sub.messages]}"
    )
    return sub.on(suffix)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_published_messages_reach_the_platform(
    broker: Broker, unique_gateway: str, subscriber: Subscriber, tmp_path: Path, protocol: str
) -> None:
    root = unique_gateway
    outbox = Outbox(tmp_path / "outbox.db")
    link = make_link(outbox, broker.host, broker.port, root, protocol)
    link.set_online_message(f"{root}/status", b'{"state":"online"}')
    link.start()
    try:
        assert link.wait_connected(10)
        link.publish(
            f"{root}/cam/cam-1/event", b'{"n":1}', kind="event", camera="cam-1", properties={"event_id": "e1"}
        )
        link.publish(f"{root}/cam/cam-1/snapshot", b"jpeg", kind="snapshot", camera="cam-1", retain=True)
        link.publish(f"{root}/telemetry", b'{"t":1}', kind="telemetry", qos=0)
        with pytest.raises(ValueError, match="topic"):
            link.publish(f"{root}/cam/+/event", b"{}", kind="event", qos=0)
        (event,) = arrived(subscriber, "/event")
        (snapshot,) = arrived(subscriber, "/snapshot")
        (telemetry,) = arrived(subscriber, "/telemetry")
    finally:
        link.stop(final=(f"{root}/status", b'{"state":"offline","reason":"shutdown"}'))
        outbox.close()
    assert event.payload == b'{"n":1}' and not event.retain
    assert event.user_properties == ({"event_id": "e1"} if protocol == "5" else {})
    assert snapshot.payload == b"jpeg"
    assert telemetry.payload == b'{"t":1}'
    statuses = [m.payload for m in arrived(subscriber, f"{root}/status", 2)]
    assert statuses == [b'{"state":"online"}', b'{"state":"offline","reason":"shutdown"}']
    reopened = Outbox(tmp_path / "outbox.db")
    assert reopened.next_batch(10) == [], "acknowledged messages are gone"
    reopened.close()


def test_a_data_dir_where_the_outbox_cannot_be_created_still_delivers(
    broker: Broker, unique_gateway: str, subscriber: Subscriber, tmp_path: Path
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    outbox = Outbox(blocker / "outbox.db", 100, 1 << 20)
    assert not outbox.durable
    link = make_link(outbox, broker.host, broker.port, unique_gateway)
    link.publish(f"{unique_gateway}/cam/cam-1/event", b'{"n":1}', kind="event", camera="cam-1")
    link.start()
    try:
        (event,) = arrived(subscriber, "/event")
    finally:
        link.stop()
        outbox.close()
    assert event.payload == b'{"n":1}'


def test_unacknowledged_messages_survive_stop_close_and_a_restart(
    broker: Broker, unique_gateway: str, subscriber: Subscriber, tmp_path: Path
) -> None:
    root = unique_gateway
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    offline = make_link(outbox, "127.0.0.1", free_port(), root)  # nothing listens there
    offline.start()
    for i in range(5):
        offline.publish(f"{root}/cam/cam-1/event", str(i).encode(), kind="event", camera="cam-1")
    offline.stop(final=(f"{root}/status", b"never sent"), timeout=0.5)
    outbox.close()
    wal = tmp_path / "outbox.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    with pytest.raises(OutboxError, match="closed"):
        offline.publish(f"{root}/cam/cam-1/event", b"late", kind="event", camera="cam-1")

    outbox = Outbox(path)
    link = make_link(outbox, broker.host, broker.port, root)
    link.start()
    try:
        events = arrived(subscriber, "/event", 5)
    finally:
        link.stop()
        outbox.close()
    assert [m.payload for m in events] == [str(i).encode() for i in range(5)]
    assert subscriber.on("/status") == []


def test_a_reply_goes_at_qos_1_with_the_correlation_data(
    broker: Broker, unique_gateway: str, tmp_path: Path
) -> None:
    topic = f"{unique_gateway}/reply/platform"
    got: list[tuple[int, bytes, bytes | None]] = []
    received = threading.Event()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.qos, bytes(msg.payload), getattr(msg.properties, "CorrelationData", None)))
        received.set()

    platform = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    platform.on_message = on_message
    platform.on_subscribe = lambda *a: subscribed.set()
    platform.connect(broker.host, broker.port)
    platform.loop_start()
    outbox = Outbox(tmp_path / "outbox.db")
    link = make_link(outbox, broker.host, broker.port, unique_gateway)
    link.start()
    try:
        platform.subscribe(topic, qos=1)
        assert subscribed.wait(10) and link.wait_connected(10)
        link.reply(topic, b'{"ok":true}', b"corr-1")
        assert received.wait(10)
    finally:
        link.stop()
        outbox.close()
        platform.disconnect()
        platform.loop_stop()
    assert got == [(1, b'{"ok":true}', b"corr-1")]


def test_a_full_qos0_queue_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    link = make_link(outbox, "127.0.0.1", free_port(), "gw-offline")
    started = time.monotonic()
    for i in range(MqttLink.QOS0_QUEUE + 10):
        link.publish("gw-offline/telemetry", str(i).encode(), kind="telemetry", qos=0)
    assert time.monotonic() - started < 1.0, "publishing never waits for the network"
    assert link.stats.qos0_dropped == 10
    assert outbox.depth() == 0, "QoS 0 never goes to the outbox"
    outbox.close()


def retained_status(broker: Broker, topic: str) -> bytes | None:
    """What a platform connecting now is given for the retained `topic` (None: nothing)."""
    late = Subscriber(broker.host, broker.port, topic)
    try:
        late.wait_for(bool, 2.0)
        return late.messages[-1].payload if late.messages else None
    finally:
        late.close()


def test_a_stop_while_the_connect_hooks_run_still_leaves_the_gateway_offline(
    broker: Broker, unique_gateway: str, tmp_path: Path
) -> None:
    """A systemd stop right after a CONNACK (a flapping broker): the clean DISCONNECT discards
    the Will, so the final status must still replace the retained online one."""
    root = unique_gateway
    outbox = Outbox(tmp_path / "outbox.db")
    link = make_link(outbox, broker.host, broker.port, root)
    link.set_online_message(f"{root}/status", b'{"state":"online"}')
    in_hook, release = threading.Event(), threading.Event()

    def slow_hook() -> None:  # camera statuses and settings are written to SQLite here
        in_hook.set()
        release.wait(5.0)

    link.on_connect(slow_hook)
    link.start()
    stopping = threading.Thread(
        target=link.stop, kwargs={"final": (f"{root}/status", b'{"state":"offline","reason":"shutdown"}')}
    )
    try:
        assert in_hook.wait(10)
        stopping.start()
        stopping.join(0.5)  # stop() decides about the final status while the hook still runs
    finally:
        release.set()
        stopping.join(10)
        outbox.close()
    assert not stopping.is_alive()
    assert retained_status(broker, f"{root}/status") == b'{"state":"offline","reason":"shutdown"}'


def test_an_online_status_changed_while_the_connect_hooks_run_is_the_one_retained(
    broker: Broker, unique_gateway: str, tmp_path: Path
) -> None:
    """The clock synchronises while the link reconnects: the new status is not lost to the copy
    the CONNACK sent a moment before."""
    root = unique_gateway
    outbox = Outbox(tmp_path / "outbox.db")
    link = make_link(outbox, broker.host, broker.port, root)
    link.set_online_message(f"{root}/status", b'{"state":"online","clock_synced":false}')
    in_hook, release = threading.Event(), threading.Event()

    def slow_hook() -> None:
        in_hook.set()
        release.wait(5.0)

    link.on_connect(slow_hook)
    link.start()
    try:
        assert in_hook.wait(10)
        link.set_online_message(f"{root}/status", b'{"state":"online","clock_synced":true}')
        release.set()
        assert link.wait_connected(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if retained_status(broker, f"{root}/status") == b'{"state":"online","clock_synced":true}':
                break
        assert retained_status(broker, f"{root}/status") == b'{"state":"online","clock_synced":true}'
    finally:
        release.set()
        link.stop()
        outbox.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_status_in_flight_when_the_broker_died_does_not_outlive_a_newer_one(
    unique_gateway: str, tmp_path: Path, protocol: str
) -> None:
    """The clock changes twice in one outage: one change was in flight (never acknowledged) when
    the broker died, the next came while the link was down. paho resends the older after the
    reconnect's copy of the newer; the broker must be left holding the newer."""
    root, port = unique_gateway, free_port()
    topic = f"{root}/status"
    first, second, third = (b'{"state":"online","clock_synced":%s}' % v for v in (b"true", b"false", b"null"))
    cfg = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "protocol": protocol,
            "reconnect_min_s": 0.1,
            "reconnect_spread_s": 0,
            "reconnect_max_s": 0.5,
        }
    )
    outbox = Outbox(tmp_path / "outbox.db")
    link = MqttLink(cfg, root, outbox, topic, WILL)
    frozen = start_mosquitto(tmp_path / "first", port)
    link.set_online_message(topic, first)
    link.start()
    revived: Broker | None = None
    try:
        assert link.wait_connected(10)
        assert retained_status(frozen, topic) == first
        os.kill(frozen.process.pid, signal.SIGSTOP)  # it reads nothing more, acknowledges nothing
        link.set_online_message(topic, second)  # handed to paho, in flight
        frozen.process.kill()
        frozen.process.wait(5)
        deadline = time.monotonic() + 10
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not link.connected
        link.set_online_message(topic, third)  # while the link is down
        revived = start_mosquitto(tmp_path / "second", port)
        assert link.wait_connected(10)
        time.sleep(1.0)  # past paho's resend of the older message (milliseconds after the CONNACK)
        deadline = time.monotonic() + 10  # the current one follows the older one's acknowledgement
        while retained_status(revived, topic) != third and time.monotonic() < deadline:
            time.sleep(0.2)
        assert retained_status(revived, topic) == third
    finally:
        link.stop()
        outbox.close()
        if revived is not None:
            stop_mosquitto(revived)
