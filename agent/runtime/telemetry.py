"""The `telemetry` topic: what an operator needs to see that a gateway and its cameras are well.

Sampling only reads: counters of the outbox, link, recorder, detector and cameras, and the last
retention report (retention itself runs on its own timer, agent.runtime.housekeeping). Published
at QoS 0 every `gateway.telemetry_interval_s` by a `Ticker` the agent owns; docs/protocol.md lists every
section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.clock import iso
from agent.footage.packet_ring import PacketRing
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.recording import Recorder
from agent.footage.retention import Retention
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import Topics
from agent.runtime.camera import CameraWorker
from agent.runtime.clock_sync import ClockWatch
from agent.runtime.health import GatewayHealth
from agent.runtime.settings import SharedDetector


class Telemetry:
    """`sample()` builds one message body; the agent runs `publish` on a `Ticker` named `telemetry`."""

    def __init__(
        self,
        *,
        link: MqttLink,
        topics: Topics,
        health: GatewayHealth,
        outbox: Outbox,
        cameras: Iterable[CameraWorker],
        detector: SharedDetector,
        recorder: Recorder | None = None,
        retention: Retention | None = None,
        commands: Callable[[], dict[str, Any]] | None = None,
        rings: Mapping[str, PacketRing] | None = None,
        buffers: Mapping[str, PreEventBuffer] | None = None,
        clock: ClockWatch | None = None,
    ) -> None:
        self._link = link
        self._topics = topics
        self._health = health
        self._outbox = outbox
        self._cameras = list(cameras)
        self._detector = detector
        self._recorder = recorder
        self._retention = retention
        self._commands = commands
        self._rings: Mapping[str, PacketRing] = rings or {}
        self._buffers: Mapping[str, PreEventBuffer] = buffers or {}
        self._clock = clock

    def publish(self) -> None:
        """Sample and publish once (QoS 0: a lost sample is replaced by the next)."""
        payload = json.dumps(self.sample()).encode()
        self._link.publish(self._topics.telemetry, payload, qos=0, kind="telemetry")

    def sample(self) -> dict[str, Any]:
        body = self._health.sample()
        body["ts"] = iso()
        body["outbox_depth"] = self._outbox.depth()
        if self._clock is not None:
            body["clock"] = self._clock.telemetry()
            body["clock_synced"] = body["clock"]["synced"]
        body["outbox"] = self._outbox_section()
        report = self._retention.last if self._retention is not None else None
        if report is not None:
            body["storage"] = report.telemetry()
        if self._recorder is not None:
            rs = self._recorder.stats()
            body["clips"] = {
                "written": rs.written,
                "failed": rs.failed,
                "skipped_disk_full": rs.skipped_disk_full,
                "skipped_busy": rs.skipped_busy,
                "last_error": rs.last_error,
            }
        detection = self._detector.telemetry()
        if detection is not None:
            body["detection"] = detection
        if self._commands is not None:
            body["commands"] = self._commands()
        body["mqtt"] = self._link.telemetry()
        body["cameras"] = {
            w.id: {
                "state": w.status.state,
                "fps": round(w.stats.fps, 2),
                "frames": w.stats.frames,
                "dropped_frames": w.stats.dropped,
                "skipped_frames": w.stats.skipped,
                "reconnects": w.stats.reconnects,
                "footage": self._footage(w.id),
            }
            for w in self._cameras
        }
        return body

    def _footage(self, camera: str) -> dict[str, Any] | None:
        """What the camera's pre-event buffer holds: packets (as sent) or JPEG frames (pixel path)."""
        ring = self._rings.get(camera)
        if ring is not None:
            r = ring.stats()
            return {"kept": "packets", "bytes": r.bytes_used, "span_s": round(r.span_s, 2)}
        buffer = self._buffers.get(camera)
        if buffer is not None:
            b = buffer.stats()
            return {"kept": "jpeg", "bytes": b.bytes_used, "span_s": round(b.span_s, 2)}
        return None

    def _outbox_section(self) -> dict[str, Any]:
        box = self._outbox
        discarded = box.discarded
        return {
            "durable": box.durable,
            "bytes": box.bytes_used(),
            "dropped": box.dropped(),
            "discarded": None
            if discarded is None
            else {"reason": discarded.reason, "moved_to": str(discarded.moved_to)},
        }
