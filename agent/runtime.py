"""The running agent: owns the MQTT link, the camera workers and the telemetry timer.

`Agent.run()` is the main loop. It blocks until SIGTERM/SIGINT, pings systemd's watchdog from
the main thread (so a hung loop gets the service restarted), and on the way out ends every
open event, publishes the retained `offline`/`shutdown` status and disconnects, within 5 s.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import cv2

from agent import __version__
from agent.camera import CameraWorker
from agent.clock import iso
from agent.config import AgentConfig
from agent.events import EventPhase
from agent.messages import CameraStatus, GatewayStatus
from agent.mqtt import MemoryOutbox, MqttLink, OutboxLike, Topics
from agent.systemd import notify, watchdog_interval_s
from agent.telemetry import GatewayHealth

log = logging.getLogger(__name__)

SNAPSHOT_QUALITY = 85


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.topic_root)
        self.started_at = time.time()
        self.data_dir = cfg.gateway.data_dir
        self._prepare_data_dir()
        self.outbox = self._open_outbox()
        self.link = MqttLink(
            cfg.mqtt,
            client_id=cfg.mqtt.client_id or f"edge-{cfg.gateway.district}-{cfg.gateway.id}",
            outbox=self.outbox,
            will_topic=self.topics.status,
            will_payload=self._status("offline", "lost"),
        )
        self.link.set_online_message(self.topics.status, self._status("online", None))
        self.link.on_connect(self._republish_camera_status)
        self.health = GatewayHealth(self.data_dir)
        self.cameras = {
            cam.id: CameraWorker(cam, on_status=self._camera_status, on_phase=self._phase)
            for cam in cfg.cameras
        }
        self._stop = threading.Event()
        self._telemetry_thread: threading.Thread | None = None

    # -- setup -----------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot create data_dir %s: %s; state will not persist", self.data_dir, exc)

    def _open_outbox(self) -> OutboxLike:
        return MemoryOutbox()

    def _status(self, state: str, reason: str | None) -> bytes:
        return GatewayStatus.model_validate(
            {
                "state": state,
                "reason": reason,
                "agent_version": __version__,
                "started_at": iso(self.started_at),
                "cameras": [c.id for c in self.cfg.cameras],
            }
        ).to_json()

    # -- sinks called from camera threads ----------------------------------------------------

    def _camera_status(self, camera: str, status: CameraStatus) -> None:
        self.link.publish(
            self.topics.camera_status(camera), status.to_json(), retain=True, kind="status", camera=camera
        )

    def _republish_camera_status(self) -> None:
        for worker in self.cameras.values():
            self._camera_status(worker.id, worker.status)

    def _phase(self, camera: str, phase: EventPhase) -> None:
        event = phase.event
        self.link.publish(self.topics.event(camera), event.to_json(), kind="event", camera=camera)
        if phase.frame is not None:
            jpeg = self._encode_snapshot(camera, phase)
            if jpeg is not None:
                self.link.publish(
                    self.topics.snapshot(camera),
                    jpeg,
                    retain=True,
                    kind="snapshot",
                    camera=camera,
                    properties={"event_id": event.event_id, "ts": event.ts},
                )

    def _encode_snapshot(self, camera: str, phase: EventPhase) -> bytes | None:
        from agent.privacy import apply_privacy_masks

        cam = self.cfg.camera(camera)
        assert phase.frame is not None
        image = apply_privacy_masks(phase.frame, cam.privacy_masks if cam else [])
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
        return bytes(buf) if ok else None

    # -- telemetry ---------------------------------------------------------------------------

    def telemetry(self) -> dict[str, Any]:
        body = self.health.sample()
        body["ts"] = iso()
        body["outbox_depth"] = self.outbox.depth()
        body["mqtt"] = {
            "connected": self.link.connected,
            "connects": self.link.stats.connects,
            "disconnects": self.link.stats.disconnects,
            "qos0_dropped": self.link.stats.qos0_dropped,
        }
        body["cameras"] = {
            w.id: {
                "state": w.status.state,
                "fps": round(w.stats.fps, 2),
                "frames": w.stats.frames,
                "dropped_frames": w.stats.dropped,
                "reconnects": w.stats.reconnects,
            }
            for w in self.cameras.values()
        }
        return body

    def _telemetry_loop(self) -> None:
        interval = self.cfg.gateway.telemetry_interval_s
        while not self._stop.wait(interval):
            try:
                payload = json.dumps(self.telemetry()).encode()
                self.link.publish(self.topics.telemetry, payload, qos=0, kind="telemetry")
            except Exception:
                log.exception("telemetry failed")

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info(
            "agent %s starting: %s, %d camera(s)", __version__, self.cfg.topic_root, len(self.cameras)
        )
        self.link.start()
        for worker in self.cameras.values():
            worker.start()
        self._telemetry_thread = threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True)
        self._telemetry_thread.start()
        self.link.wait_connected(5.0)
        notify("READY=1")
        tick = watchdog_interval_s() or 1.0
        while not self._stop.wait(min(tick, 1.0)):
            notify("WATCHDOG=1")
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        t0 = time.monotonic()
        for worker in self.cameras.values():
            worker.request_stop()
        deadline = time.monotonic() + 1.5
        for worker in self.cameras.values():
            worker.stop(timeout=max(0.1, deadline - time.monotonic()))
        self.link.stop(final=(self.topics.status, self._status("offline", "shutdown")), timeout=2.0)
        log.info("stopped in %.2f s", time.monotonic() - t0)

