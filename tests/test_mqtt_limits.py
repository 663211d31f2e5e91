"""What the broker announces in its MQTT 5 CONNACK, honoured: Receive Maximum caps the link's
in-flight window (Mosquitto tolerates more, EMQX and HiveMQ disconnect), and a message larger than
the Maximum Packet Size is refused with an ERROR instead of costing the connection forever."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import MqttConfig
from agent.mqtt import MqttLink, Outbox
from tests.conftest import start_mosquitto, stop_mosquitto
from tests.harness import Subscriber

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
