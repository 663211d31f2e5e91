"""The platform's view of many gateways, on brokers with weak retained-message support too.

A platform usually learns which gateways are online from the retained `{root}/status` messages
a wildcard subscription (`cctv/v1/#`) delivers. RabbitMQ 3.10 delivers retained messages only
to exact-topic subscriptions, so `FleetWatch.statuses` subscribes to each known gateway's status
topic by name, and `describe_sweep` asks the gateways whose status did not come. Events can be
consumed through a shared subscription (`$share/{group}/…`, MQTT 5), so several platform
workers split them instead of each receiving all.

One `FleetWatch` is one MQTT connection (agent.sdk.connection); `describe_sweep` opens one short
connection per gateway it asks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

from agent.mqtt.topics import Topics
from agent.sdk.client import PlatformClient
from agent.sdk.connection import Connection
from agent.sdk.errors import ClientError

__all__ = ["FleetWatch", "describe_sweep"]


class FleetWatch(Connection):
    """Watches gateways under `prefix` (e.g. cctv/v1); arguments as `Connection`, without a root."""

    def __init__(self, host: str, port: int, prefix: str = "cctv/v1", **kw: Any) -> None:
        kw.setdefault("agency", "platform")
        kw.setdefault("operator", "fleet-watch")
        super().__init__(host, port, prefix, **kw)
        self.prefix = prefix

    def statuses(self, roots: Iterable[str], wait_s: float = 2.0) -> dict[str, dict[str, Any] | None]:
        """The retained status of each gateway root, by exact-topic subscriptions (which every
        broker answers with the retained message); None for a root with no status (never
        connected, or a broker that keeps none)."""
        roots = list(dict.fromkeys(roots))
        got: dict[str, dict[str, Any] | None] = dict.fromkeys(roots)
        lock = threading.Lock()

        def on_status(msg: mqtt.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(body, dict):
                with lock:
                    got[msg.topic.removesuffix("/status")] = body

        self.ensure_connected(max(1.0, wait_s))
        topics = [Topics(root).status for root in roots]
        try:
            for topic in topics:
                self.subscribe(topic, on_status, timeout=max(1.0, wait_s))
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                with lock:
                    if all(v is not None for v in got.values()):
                        break
                time.sleep(0.02)
        finally:
            for topic in topics:
                self.unsubscribe(topic)
        with lock:
            return dict(got)

    def events(
        self,
        handler: Callable[[str, dict[str, Any]], None],
        *,
        group: str | None = None,
        district: str = "+",
        timeout: float = 5.0,
    ) -> str:
        """Call `handler(topic, event)` for every event of the fleet (or of one district), on
        paho's thread; with `group`, through the shared subscription `$share/{group}/…` so that
        the workers using the same group each get a share (MQTT 5; ClientError on 3.1.1).
        Returns the topic filter (for `unsubscribe(filter, share=group)`)."""
        self.ensure_connected(timeout)
        topic_filter = f"{self.prefix}/{district}/+/cam/+/event"

        def on_event(msg: mqtt.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(body, dict):
                handler(msg.topic, body)

        self.subscribe(topic_filter, on_event, timeout, share=group)
        return topic_filter


def describe_sweep(
    host: str, port: int, roots: Iterable[str], *, timeout: float = 3.0, **kw: Any
) -> dict[str, dict[str, Any] | None]:
    """Ask each gateway `describe` (the `PlatformClient` arguments in `kw`: agency, operator,
    protocol, TLS, …); None for a gateway that does not answer in `timeout`. For the gateways
    whose retained status did not come: an answer means online, with its cameras."""
    out: dict[str, dict[str, Any] | None] = {}
    for root in dict.fromkeys(roots):
        try:
            with PlatformClient(host, port, root, **kw) as client:
                out[root] = client.describe(timeout=timeout)
        except ClientError:
            out[root] = None
    return out
