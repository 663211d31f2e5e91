"""One simulated gateway: the agent's MQTT face without cameras behind it.

It is built on the agent's own `MqttLink` and `Outbox`, so it connects, falls back to 3.1.1,
reconnects and keeps QoS 1 messages across outages exactly as a gateway does: retained `online`
status with a Last Will `offline`/`lost`, retained camera statuses on every connect, telemetry
(QoS 0), events through the durable outbox, and answers to `ping` and `describe` on its `cmd`
topic. Every other command is answered `unknown_command` naming the simulator, so a platform
under test sees a reply, never silence. It has no thread of its own: the fleet's scheduler calls
`event`, `end_event` and `telemetry`, and paho's thread calls the command handler.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from agent import __version__
from agent.clock import iso, parse_iso
from agent.commands import models as m
from agent.commands.replies import ReplyTopics, choose_address, reply_error, reply_ok, response_properties
from agent.config import MqttConfig
from agent.contract.messages import CameraStatus, Event, GatewayStatus
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

SIM_VERSION = f"{__version__}+sim"
WIDTH, HEIGHT, FPS = 1280, 720, 10.0
OFFLINE_IDS_KEPT = 10_000  # event phases produced while offline, for the bench's delivery check
CONNECTS_KEPT = 64  # wall-clock times of the latest connections, for the bench's reconnect figures


@dataclass
class GatewayCounts:
    """What one simulated gateway did, for the summary and the bench."""

    events: int = 0  # events started (each is a start and an end message)
    commands: int = 0  # requests answered


class SimGateway:
    """A gateway's MQTT traffic; `start()` / `stop()` are the lifecycle of its link."""

    OUTBOX_MESSAGES = 20_000

    def __init__(
        self, cfg: MqttConfig, prefix: str, district: str, gateway: str, cameras: int, data_dir: Path
    ) -> None:
        self.district, self.id = district, gateway
        self.topics = Topics.of_gateway(prefix, district, gateway)
        self.cameras = [f"cam-{i + 1}" for i in range(cameras)]
        self.started_at = time.time()
        self.counts = GatewayCounts()
        self.offline_events: deque[str] = deque(maxlen=OFFLINE_IDS_KEPT)  # "{event_id}/{phase}"
        self.connected_at: deque[float] = deque(maxlen=CONNECTS_KEPT)
        self._open: dict[str, Event] = {}  # event id -> its start phase, until its end
        self._lock = threading.Lock()  # _open and counts: the scheduler and paho's thread
        self._replies = ReplyTopics.of(self.topics.reply_prefix)
        self.outbox = Outbox(data_dir / f"{gateway}.db", max_messages=self.OUTBOX_MESSAGES)
        self.link = MqttLink(
            cfg, f"sim-{district}-{gateway}", self.outbox, self.topics.status, self._status("offline", "lost")
        )
        self.link.set_online_message(self.topics.status, self._status("online", None))
        self.link.on_connect(lambda: self.connected_at.append(time.time()))
        self.link.on_connect(self._camera_statuses)
        self.link.subscribe(self.topics.cmd, self._on_command)

    def _status(self, state: str, reason: str | None) -> bytes:
        return GatewayStatus.model_validate(
            {
                "state": state,
                "reason": reason,
                "agent_version": SIM_VERSION,
                "started_at": iso(self.started_at),
                "cameras": self.cameras,
            }
        ).to_json()

    def start(self) -> None:
        self.link.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Publish `offline`/`shutdown` if connected, disconnect, close the outbox."""
        try:
            self.link.stop(final=(self.topics.status, self._status("offline", "shutdown")), timeout=timeout)
        finally:
            self.outbox.close()

    # -- traffic (the fleet's scheduler thread) ---------------------------------------------------

    def event(self, camera: str, score: float, region: tuple[float, float, float, float]) -> str:
        """Publish an event's `start` phase; its id, for `end_event`."""
        now = iso()
        start = Event(
            event_id=str(uuid.uuid4()),
            camera=camera,
            kind="motion",
            phase="start",
            started_at=now,
            ts=now,
            regions=[region],
            score=score,
        )
        with self._lock:
            self._open[start.event_id] = start
            self.counts.events += 1
        self._publish_event(start)
        return start.event_id

    def end_event(self, event_id: str) -> None:
        with self._lock:
            start = self._open.pop(event_id, None)
        if start is None:
            return
        now = iso()
        end = start.model_copy(update={"phase": "end", "ts": now, "ended_at": now})
        self._publish_event(end)

    def _publish_event(self, event: Event) -> None:
        if not self.link.connected:
            self.offline_events.append(f"{event.event_id}/{event.phase}")
        self.link.publish(
            self.topics.event(event.camera),
            event.to_json(),
            kind="event",
            camera=event.camera,
            properties={"event_id": event.event_id, "ts": event.ts},
        )

    def telemetry(self) -> None:
        """QoS 0, the agent's shape where it applies (no CPU or disk of a real machine)."""
        body = {
            "ts": iso(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "simulated": True,
            "outbox_depth": self.outbox.depth(),
            "mqtt": self.link.telemetry(),
            "cameras": {
                c: {
                    "state": "ok",
                    "fps": FPS,
                    "frames": 0,
                    "dropped_frames": 0,
                    "skipped_frames": 0,
                    "reconnects": 0,
                }
                for c in self.cameras
            },
        }
        self.link.publish(self.topics.telemetry, json.dumps(body).encode(), qos=0, kind="telemetry")

    # -- paho's thread ----------------------------------------------------------------------------

    def _camera_statuses(self) -> None:
        for camera in self.cameras:
            status = CameraStatus(state="ok", fps=FPS, width=WIDTH, height=HEIGHT, last_frame_at=iso())
            self.link.publish(
                self.topics.camera_status(camera), status.to_json(), retain=True, kind="status", camera=camera
            )

    def _on_command(self, message: mqtt.MQTTMessage) -> None:
        response_topic, corr = response_properties(message)
        payload = bytes(message.payload)
        request_id: str | None = None
        reply_to: object = None
        try:
            if len(payload) > m.MAX_REQUEST_BYTES:
                raise _RefusedError("bad_request", f"request larger than {m.MAX_REQUEST_BYTES} bytes")
            try:
                raw = json.loads(payload)
            except (ValueError, RecursionError):
                raise _RefusedError("bad_request", "request is not JSON") from None
            if isinstance(raw, dict):
                reply_to = raw.get("reply_to")
                request_id = raw["id"] if isinstance(raw.get("id"), str) else None
            try:
                request = m.Request.model_validate(raw)
            except ValidationError as exc:
                raise _RefusedError("bad_request", f"invalid request: {exc.errors()[0]['msg']}") from None
            body = reply_ok(request.id, self._execute(request))
        except _RefusedError as refused:
            body = reply_error(request_id, refused.code, refused.message)
        topic = choose_address(self._replies, response_topic, reply_to).topic
        if topic is not None:
            self.link.reply(topic, body, corr)
            with self._lock:
                self.counts.commands += 1

    def _execute(self, request: m.Request) -> dict[str, object]:
        issued = parse_iso(request.issued_at)
        now = time.time()
        if now > issued + min(request.ttl_s, m.MAX_TTL_S):
            raise _RefusedError("expired", "request expired (issued_at + ttl_s)")
        uptime = round(time.time() - self.started_at, 3)
        if request.cmd == "ping":
            return m.PingResult(agent_version=SIM_VERSION, uptime_s=uptime).model_dump()
        if request.cmd == "describe":
            gateway = m.GatewayInfo(
                district=self.district,
                id=self.id,
                name=f"simulated gateway {self.id}",
                topic_root=self.topics.root,
                agent_version=SIM_VERSION,
                uptime_s=uptime,
            )
            cams = [
                m.CameraInfo(
                    id=c,
                    name=f"simulated {c}",
                    state="ok",
                    resolution=m.Resolution(width=WIDTH, height=HEIGHT),
                    fps=FPS,
                    geo=None,
                )
                for c in self.cameras
            ]
            return m.DescribeResult(gateway=gateway, cameras=cams).model_dump()
        raise _RefusedError(
            "unknown_command", f"{request.cmd!r}: a simulated gateway answers only ping and describe"
        )


class _RefusedError(Exception):
    def __init__(self, code: m.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
