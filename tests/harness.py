"""Test harness playing the platform: a recording subscriber and an agent subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.sdk.client import CommandFailed, NoReply, PlatformClient


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    user_properties: dict[str, str]
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Subscribes to `topic` and records every message, for assertions on what arrives."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("subscriber did not get its SUBACK")

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        props = dict(getattr(msg.properties, "UserProperty", None) or [])
        with self._lock:
            received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), props, time.monotonic())
            self.messages.append(received)

    def on(self, suffix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_config(
    path: Path,
    *,
    district: str,
    gateway: str,
    port: int,
    data_dir: Path,
    cameras: str,
    extra: str = "",
    protocol: str = "5",
) -> Path:
    path.write_text(
        f"""
[gateway]
district = "{district}"
id = "{gateway}"
data_dir = "{data_dir}"
telemetry_interval_s = 1

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "{protocol}"
reconnect_min_s = 0.5
reconnect_max_s = 2
{extra}
{cameras}
""",
        encoding="utf-8",
    )
    return path


class AgentProcess:
    """`edge-agent run --config FILE` as a subprocess, stopped by SIGTERM (or SIGKILL)."""

    def __init__(self, config: Path, log_path: Path, log_level: str = "debug") -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), "--log-level", log_level],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_answering(client: PlatformClient, timeout: float = 20.0) -> dict[str, Any]:
    """Ping until the agent answers (it subscribes to {root}/cmd after its CONNACK); its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.ping(timeout=0.5)
        except NoReply:
            if time.monotonic() > deadline:
                raise


def settled(count: Callable[[], int], quiet_s: float = 0.5, timeout: float = 3.0) -> int:
    """`count()` once it has not changed for `quiet_s` (or at `timeout`): messages still in
    flight (QoS 0 stream frames a loaded machine delivers late) are in it."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last


def wait_frames(client: PlatformClient, camera: str, timeout: float = 20.0) -> None:
    """Wait until `camera` has produced a frame (snapshot stops answering not_found)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.snapshot(camera, max_width=64, timeout=5.0)
        except NoReply:  # a loaded machine, just after the agent started: ask again
            if time.monotonic() > deadline:
                raise
        except CommandFailed as exc:
            if exc.code != "not_found" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return


class GatewayRun:
    """One `edge-agent run` on a broker, with the platform's subscriber on its topic root."""

    def __init__(
        self,
        tmp: Path,
        broker_host: str,
        broker_port: int,
        district: str,
        gateway: str,
        cameras: str,
        extra: str = "",
    ) -> None:
        self.root = f"cctv/v1/{district}/{gateway}"
        self.sub = Subscriber(broker_host, broker_port, self.root + "/#")
        cfg = write_config(
            tmp / "agent.toml",
            district=district,
            gateway=gateway,
            port=broker_port,
            data_dir=tmp / "data",
            cameras=cameras,
            extra=extra,
        )
        self.agent = AgentProcess(cfg, tmp / "agent.log")

    def statuses(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on(self.root + "/status")]

    def events(self, cam: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on(f"/cam/{cam}/event")]

    def close(self) -> None:
        self.agent.close()
        self.sub.close()
