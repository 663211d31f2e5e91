"""The platform's fleet view on a real Mosquitto: statuses by exact topic, a describe sweep, and
events shared among workers of one group."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.sdk.errors import ClientError
from agent.sdk.fleet import FleetWatch, describe_sweep
from tests.conftest import Broker

pytestmark = pytest.mark.broker


def publisher(broker: Broker) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_statuses_by_exact_topic_and_none_for_an_unknown_gateway(broker: Broker) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    roots = [f"{prefix}/d1/gw-{i}" for i in range(3)]
    pub = publisher(broker)
    try:
        for i, root in enumerate(roots[:2]):
            body = {"state": "online" if i == 0 else "offline", "reason": None if i == 0 else "lost"}
            pub.publish(f"{root}/status", json.dumps(body), qos=1, retain=True).wait_for_publish(5)
        with FleetWatch(broker.host, broker.port, prefix) as fleet:
            got = fleet.statuses(roots, wait_s=1.0)
    finally:
        for root in roots[:2]:
            pub.publish(f"{root}/status", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
    assert got[roots[0]] == {"state": "online", "reason": None}
    second = got[roots[1]]
    assert second is not None and second["state"] == "offline"
    assert got[roots[2]] is None


def test_a_describe_sweep_answers_none_for_a_silent_gateway(broker: Broker) -> None:
    got = describe_sweep(
        broker.host, broker.port, [f"cctv/v1/nowhere/gw-{uuid.uuid4().hex[:8]}"],
        timeout=0.5, agency="police", operator="op",
    )  # fmt: skip
    assert list(got.values()) == [None]


def test_workers_of_one_group_share_the_events(broker: Broker) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    received: list[list[str]] = [[], []]
    lock = threading.Lock()
    workers = [FleetWatch(broker.host, broker.port, prefix).connect() for _ in range(2)]
    solo = FleetWatch(broker.host, broker.port, prefix).connect()
    everything: list[str] = []

    def keep(into: list[str]) -> Any:
        def handler(topic: str, event: dict[str, Any]) -> None:
            with lock:
                into.append(str(event["event_id"]))

        return handler

    pub = publisher(broker)
    try:
        for w, into in zip(workers, received, strict=True):
            w.events(keep(into), group="platform")
        solo.events(keep(everything))
        ids = [str(i) for i in range(40)]
        for i in ids:
            pub.publish(f"{prefix}/d{int(i) % 3}/gw-1/cam/cam-1/event", json.dumps({"event_id": i}), qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(received[0]) + len(received[1]) >= 40 and len(everything) >= 40:
                    break
            time.sleep(0.05)
    finally:
        pub.disconnect()
        pub.loop_stop()
        for c in (*workers, solo):
            c.close()
    assert sorted(received[0] + received[1], key=int) == ids  # each event to exactly one worker
    assert received[0] and received[1]  # and both workers got some
    assert sorted(everything, key=int) == ids  # a plain subscriber still gets them all


def test_a_shared_subscription_on_mqtt_311_is_refused_clearly(broker: Broker) -> None:
    with (
        FleetWatch(broker.host, broker.port, protocol="3.1.1") as fleet,
        pytest.raises(ClientError, match="MQTT 5"),
    ):
        fleet.events(lambda t, e: None, group="platform")
