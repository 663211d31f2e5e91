"""See a gateway as the platform does: subscribe to its topic root and print what arrives."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.mqtt.topics import Topics


def describe_message(root: str, msg: mqtt.MQTTMessage) -> str:
    """One readable line: the topic below the root, then compact JSON or the binary size."""
    topic = msg.topic[len(root) + 1 :] if msg.topic.startswith(root + "/") else msg.topic
    flags = " (retained)" if msg.retain else ""
    try:
        body: Any = json.loads(msg.payload)
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    except (UnicodeDecodeError, ValueError):
        props = getattr(msg.properties, "UserProperty", None) or []
        extra = " ".join(f"{k}={v}" for k, v in props)
        text = f"<{len(msg.payload)} bytes{' ' + extra if extra else ''}>"
    return f"{topic}{flags}: {text}"


def watch(
    host: str,
    port: int,
    root: str,
    out: TextIO,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Print every message under `root/#` until `stop` is set."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(Topics(root).everything, qos=1)
        if on_ready is not None:
            on_ready()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        print(describe_message(root, msg), file=out, flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect_async(host, port)
    client.loop_start()
    try:
        stop.wait()
    finally:
        client.disconnect()
        client.loop_stop()
