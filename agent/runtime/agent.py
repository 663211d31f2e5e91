"""The running agent: owns the MQTT link, the camera workers and the telemetry timer.

`Agent.run()` is the main loop. It blocks until SIGTERM/SIGINT, pings systemd's watchdog from
the main thread (so a hung loop gets the service restarted), and on the way out ends every
open event, publishes the retained `offline`/`shutdown` status and disconnects, within 5 s.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt

from agent import __version__
from agent.analysis.events import EventPhase
from agent.analysis.objects.service import DetectionService, load_detection_service
from agent.analysis.objects.stage import ObjectStage
from agent.capture.source import Frame
from agent.clock import iso
from agent.commands.audit import AuditLog
from agent.commands.dispatcher import DEFAULT_MAX_PAYLOAD, Dispatcher, reply_error, valid_reply_topic
from agent.commands.gateway import ClipStore
from agent.commands.streams import StreamLimits, StreamManager
from agent.config import AgentConfig, DetectionSettings
from agent.config.settings import RuntimeSettings, SettingsStore
from agent.contract.messages import CameraStatus, GatewayStatus
from agent.errors import AgentError
from agent.footage.access import Footage
from agent.footage.images import SNAPSHOT_QUALITY, encode_outgoing
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.recorder import ClipRecorder, ClipSettings
from agent.footage.retention import Retention
from agent.footage.store import ClipStore as ClipFiles
from agent.mqtt import MemoryOutbox, MqttLink, OutboxLike, Topics
from agent.mqtt.outbox import Kind, Outbox
from agent.runtime.camera import CameraWorker
from agent.runtime.health import GatewayHealth
from agent.runtime.open_events import OpenEvents
from agent.runtime.systemd import notify, watchdog_interval_s

log = logging.getLogger(__name__)

COMMAND_QUEUE = 256
COMMAND_WORKERS = 2


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
        self.settings = SettingsStore(cfg, self.data_dir / "settings.json")
        self.buffers = {
            cam.id: PreEventBuffer(
                seconds=cam.buffer.pre_event_s,
                max_bytes=cam.buffer.max_bytes,
                jpeg_quality=cam.buffer.jpeg_quality,
                max_width=cam.buffer.max_width,
                fps=cam.buffer.fps,
            )
            for cam in cfg.cameras
        }
        self.cameras = {
            cam.id: CameraWorker(
                cam,
                on_status=self._camera_status,
                on_phase=self._phase,
                on_frame=self._frame,
                frame_fps=cam.buffer.fps,  # frames neither the buffer nor detection needs are skipped
            )
            for cam in cfg.cameras
        }
        self.open_events = OpenEvents(self.data_dir / "open_events.json")
        self.clip_store, self.retention, self.recorder = self._open_clips()
        self.footage = (
            Footage(self.clip_store, self.buffers, lambda: self.cfg) if self.clip_store is not None else None
        )
        self.detector: DetectionService | None = None
        self.detection_error: str | None = None
        self._running = False
        self._apply_runtime(self.settings.current)
        self.streams = StreamManager(self, limits=self._stream_limits(self.settings.current))
        self.dispatcher = Dispatcher(self, AuditLog.in_data_dir(self.data_dir), streams=self.streams)
        self.link.on_connect(self._report_settings)
        self.link.subscribe(self.topics.cmd, self._on_command)
        self._commands: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- setup -----------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        """data_dir must be writable: the audit log and the outbox live there, so without it the
        agent would hand out imagery unaudited. Stop with a clear error instead."""
        probe = self.data_dir / ".write-test"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise AgentError(
                f"gateway.data_dir {str(self.data_dir)!r} is not a writable directory: {exc.strerror or exc}"
            ) from None

    def _ensure_detection(self, camera: str, settings: DetectionSettings) -> None:
        """Give `camera` an object stage when its settings enable detection and it has none.

        The shared detector is loaded on first need, so enabling detection with config.set
        works without a restart. A missing interpreter or a bad model is logged and kept in
        `detection_error` (telemetry shows it); motion events carry on without objects.
        """
        worker = self.cameras[camera]
        if not settings.enabled or not worker.cfg.enabled:
            return
        if any(isinstance(stage, ObjectStage) for stage in worker.pipeline.stages):
            return
        try:
            if self.detector is None:
                self.detector = load_detection_service(self.cfg.detector)
                if self._running:
                    self.detector.start()
            worker.pipeline.add_stage(ObjectStage(camera, settings, self.detector))
            self.detection_error = None
        except AgentError as exc:
            self.detection_error = str(exc)
            log.error("camera %s: object detection disabled: %s", camera, exc)

    def _open_outbox(self) -> OutboxLike:
        """The durable outbox; it sets a corrupt file aside itself and never refuses to start."""
        storage = self.cfg.storage
        try:
            outbox = Outbox(
                self.data_dir / "outbox.db", storage.outbox_max_messages, storage.outbox_max_bytes
            )
        except Exception:  # the agent must publish events even if SQLite itself is broken
            log.exception("outbox unusable; keeping messages in memory only")
            return MemoryOutbox()
        if outbox.discarded is not None:
            log.error(
                "outbox was unreadable (%s) and was moved to %s; a fresh one was started",
                outbox.discarded.reason,
                outbox.discarded.moved_to,
            )
        return outbox

    def _open_clips(self) -> tuple[ClipFiles | None, Retention | None, ClipRecorder | None]:
        """Clip store, retention and recorder; without a writable store events still flow."""
        try:
            store = ClipFiles(self.data_dir / "clips", verify_sha256=False)
        except (OSError, ValueError) as exc:
            log.error("clips disabled: cannot use %s: %s", self.data_dir / "clips", exc)
            return None, None, None
        storage = self.cfg.storage
        retention = Retention(store, storage.clips_quota_bytes, storage.min_free_bytes)
        recorder = ClipRecorder(store, self.buffers, self._clip_settings, retention=retention)
        return store, retention, recorder

    def _clip_settings(self, camera: str) -> ClipSettings | None:
        cam = self.cfg.camera(camera)
        return ClipSettings.from_camera(cam) if cam is not None and cam.clips.enabled else None

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

    def _frame(self, camera: str, frame: Frame) -> bool:
        return self.buffers[camera].push(frame) is not None  # False: the camera converts the next

    def _phase(self, camera: str, phase: EventPhase) -> None:
        if self.recorder is not None:
            try:
                phase = self.recorder.on_phase(phase)  # the end phase gets its clip_id
            except Exception:
                log.exception("camera %s: clip recorder failed on an event phase", camera)
        event = phase.event
        self.link.publish(self.topics.event(camera), event.to_json(), kind="event", camera=camera)
        self.open_events.note(event)
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
        cam = self.cfg.camera(camera)
        assert phase.frame is not None
        try:
            return encode_outgoing(
                phase.frame, cam.privacy_masks if cam else [], quality=SNAPSHOT_QUALITY
            ).data
        except ValueError:
            log.exception("camera %s: event snapshot could not be encoded", camera)
            return None

    # -- commands ----------------------------------------------------------------------------

    def _on_command(self, message: mqtt.MQTTMessage) -> None:
        """paho's thread: queue the request for a command worker, or answer busy when full."""
        try:
            self._commands.put_nowait(message)
        except queue.Full:
            topic, corr = self._reply_address(message)
            if topic is None:
                topic = self._reply_to(bytes(message.payload))
            if topic is not None:
                self.link.reply(topic, reply_error(None, "busy", "command queue full; retry"), corr)

    @staticmethod
    def _reply_address(message: mqtt.MQTTMessage) -> tuple[str | None, bytes | None]:
        props = message.properties
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        return topic, corr

    @staticmethod
    def _reply_to(payload: bytes) -> str | None:
        """The `reply_to` of an MQTT 3.1.1 request, read only when it must be refused as busy."""
        if len(payload) > DEFAULT_MAX_PAYLOAD:
            return None
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        return valid_reply_topic(obj.get("reply_to")) if isinstance(obj, dict) else None

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._commands.get(timeout=0.2)
            except queue.Empty:
                continue
            topic, corr = self._reply_address(message)
            out = self.dispatcher.handle(bytes(message.payload), topic, corr)
            if out is not None:
                self.link.reply(out[0], out[1], out[2])

    # -- the Gateway protocol of agent.commands ------------------------------------------------

    @property
    def config(self) -> AgentConfig:
        return self.cfg

    @property
    def topic_root(self) -> str:
        return self.topics.root

    @property
    def agent_version(self) -> str:
        return __version__

    @property
    def clips(self) -> ClipStore | None:
        return self.footage

    def uptime_s(self) -> float:
        return time.time() - self.started_at

    def camera_ids(self) -> list[str]:
        return list(self.cameras)

    def camera_state(self, camera: str) -> CameraStatus | None:
        worker = self.cameras.get(camera)
        if worker is None:
            return None
        status = worker.status
        if status.state == "ok":
            status = status.model_copy(update={"fps": round(worker.stats.fps, 2)})
        return status

    def latest_frame(self, camera: str) -> Frame | None:
        worker = self.cameras.get(camera)
        return worker.latest_frame() if worker else None

    def frame_at(self, camera: str, ts: float) -> Frame | None:
        buffer = self.buffers.get(camera)
        if buffer is None:
            return None
        fps = buffer.fps or 10.0
        kept = buffer.nearest(ts, max_gap_s=max(0.2, 1.5 / fps))
        if kept is None:
            return None
        try:
            image = kept.decode()
        except ValueError:
            return None
        return Frame(image=image, ts=kept.ts, pts=0.0, seq=kept.seq)

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: dict[str, str] | None
    ) -> None:
        kind: Kind = "clip" if "/clips/" in topic else "audit" if topic.endswith("/audit") else "snapshot"
        self.link.publish(topic, payload, qos=qos, retain=retain, kind=kind, properties=properties)

    def get_settings(self) -> dict[str, Any]:
        return self.settings.as_dict()

    def apply_settings(self, partial: dict[str, Any]) -> dict[str, Any]:
        new = self.settings.apply(partial)
        self._apply_runtime(new)
        self.streams.set_limits(self._stream_limits(new))
        self._report_settings()
        return new.model_dump(mode="json")

    def _apply_runtime(self, settings: RuntimeSettings) -> None:
        for cam_id, cam in settings.cameras.items():
            worker = self.cameras[cam_id]
            worker.update_motion(cam.motion)
            self._ensure_detection(cam_id, cam.detection)
            for stage in worker.pipeline.stages:
                if isinstance(stage, ObjectStage):
                    stage.update_settings(cam.detection)

    @staticmethod
    def _stream_limits(settings: RuntimeSettings) -> StreamLimits:
        return StreamLimits(
            max_sessions=settings.streams.max_sessions, max_bytes_per_s=settings.streams.max_bytes_per_s
        )

    def _report_settings(self) -> None:
        payload = json.dumps(self.settings.as_dict(), separators=(",", ":")).encode()
        self.link.publish(self.topics.config_reported, payload, retain=True, kind="config")

    # -- telemetry ---------------------------------------------------------------------------

    def telemetry(self) -> dict[str, Any]:
        body = self.health.sample()
        body["ts"] = iso()
        body["outbox_depth"] = self.outbox.depth()
        if isinstance(self.outbox, Outbox):
            body["outbox"] = {
                "durable": self.outbox.durable,
                "bytes": self.outbox.bytes_used(),
                "dropped": self.outbox.dropped(),
                "discarded": None
                if self.outbox.discarded is None
                else {
                    "reason": self.outbox.discarded.reason,
                    "moved_to": str(self.outbox.discarded.moved_to),
                },
            }
        if self.retention is not None:
            report = self.retention.enforce()
            body["storage"] = report.telemetry()
            note = f"disk full: clips paused ({report.reason})" if report.disk_full else None
            for worker in self.cameras.values():
                worker.set_note(note)
        if self.recorder is not None:
            rs = self.recorder.stats()
            body["clips"] = {
                "written": rs.written,
                "failed": rs.failed,
                "skipped_disk_full": rs.skipped_disk_full,
                "skipped_busy": rs.skipped_busy,
                "last_error": rs.last_error,
            }
        if self.detector is not None or self.detection_error is not None:
            stats = self.detector.stats() if self.detector is not None else None
            body["detection"] = {
                "error": self.detection_error,
                "inferences": stats.inferences if stats else 0,
                "dropped_rate_limit": stats.dropped_rate_limit if stats else 0,
                "dropped_queue_full": stats.dropped_queue_full if stats else 0,
            }
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
                "skipped_frames": w.stats.skipped,
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
        log.info("agent %s starting: %s, %d camera(s)", __version__, self.cfg.topic_root, len(self.cameras))
        for end in self.open_events.ends_for_orphans():
            log.warning(
                "ending event %s of camera %s, left open by the previous run", end.event_id, end.camera
            )
            self.link.publish(self.topics.event(end.camera), end.to_json(), kind="event", camera=end.camera)
        self.link.start()
        for worker in self.cameras.values():
            worker.start()
        self.streams.start()
        self._running = True
        if self.recorder is not None:
            self.recorder.start()
        if self.detector is not None:
            self.detector.start()
        self._threads.append(threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True))
        self._threads += [
            threading.Thread(target=self._command_loop, name=f"commands.{i}", daemon=True)
            for i in range(COMMAND_WORKERS)
        ]
        for t in self._threads:
            t.start()
        self.link.wait_connected(5.0)
        notify("READY=1")
        tick = watchdog_interval_s() or 1.0
        while not self._stop.wait(min(tick, 1.0)):
            if self._healthy():
                notify("WATCHDOG=1")
        self.shutdown()
        return 0

    def _healthy(self) -> bool:
        """Whether every thread the agent owns still runs; if not, systemd's watchdog restarts us."""
        dead = [w.id for w in self.cameras.values() if not w.alive()]
        dead += [t.name for t in self._threads if not t.is_alive()]
        if not self.link.alive():
            dead.append("mqtt.pump")
        if dead:
            log.error("threads died: %s; withholding the watchdog ping", ", ".join(dead))
        return not dead

    def shutdown(self) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        t0 = time.monotonic()
        self.streams.stop(timeout=0.5)
        for worker in self.cameras.values():
            worker.request_stop()
        deadline = time.monotonic() + 1.5
        for worker in self.cameras.values():
            worker.stop(timeout=max(0.1, deadline - time.monotonic()))
        for t in self._threads:
            t.join(timeout=0.5)
        if self.detector is not None:
            self.detector.stop(timeout=0.5)
        if self.recorder is not None:
            self.recorder.stop(timeout_s=1.0)
        self.link.stop(final=(self.topics.status, self._status("offline", "shutdown")), timeout=1.5)
        log.info("stopped in %.2f s", time.monotonic() - t0)
