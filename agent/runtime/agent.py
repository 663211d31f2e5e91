"""The running agent: wiring and lifecycle, nothing else.

`Agent` builds every part and hands each what it needs; the work is done by the parts:
cameras (`CameraWorker`: capture and analysis threads), `EventPublisher` (status, events,
snapshots), `CommandServer` (the command queues and workers) and its `Dispatcher`, `SettingsApplier`
(config.set, handed to the cameras' threads), `Telemetry`, rate-limit summaries and `Housekeeping`
(jobs on `Ticker` timers), the clip recorder, the MQTT link with its durable outbox and, when
`[console]` enables it, the commissioning console's server (`ConsoleServer`, through
`ConsoleBridge`), whose mask saves `apply_camera` puts in force.

A frame's path: capture thread → 2-deep queue → detect thread (pipeline: motion, objects) →
`EventPublisher.phase` → recorder (clip_id), outbox (event), open-events file, snapshot.
A command's path: paho's thread → `CommandServer.submit` → the agency's bounded queue → a command
worker → `Dispatcher` (envelope, signature, reply topic, idempotency, rate limit, time, access,
audit) → handler → `GatewayFacade` → reply.

`run()` blocks until SIGTERM/SIGINT and pings systemd's watchdog only while every owned thread
lives; `start()`/`stop()` are the same lifecycle without signals, for in-process use. Stop order:
console, streams, cameras (each ends its open events), command workers (then the dispatcher's reply store
and last summaries) and timers, detector, recorder, link (retained offline/shutdown), outbox
(checkpointed); within 5 s.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent import __version__
from agent.capture.source import Frame, FrameSource
from agent.commands.audit import AuditLog
from agent.commands.dispatcher import Dispatcher
from agent.commands.limits import RateLimits
from agent.commands.server import CommandServer
from agent.commands.streams import StreamLimits, StreamManager
from agent.commands.verifying import CommandVerifier, load_verifier
from agent.config import AgentConfig, CameraConfig, StorageConfig
from agent.config.settings import CameraSettings, RuntimeSettings, SettingsStore
from agent.errors import AgentError
from agent.files import create_private, private_dir
from agent.footage.access import Footage
from agent.footage.packet_recorder import PacketRecorder
from agent.footage.packet_ring import PacketRing
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.privacy import PolygonLike
from agent.footage.recorder import ClipRecorder, ClipSettings
from agent.footage.recording import Recorders
from agent.footage.retention import Retention
from agent.footage.store import ClipStore
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import Topics
from agent.onvif import PtzService
from agent.runtime.camera import CameraWorker
from agent.runtime.clock_sync import CHECK_INTERVAL_S, ClockWatch
from agent.runtime.console_bridge import ConsoleBridge
from agent.runtime.gateway import GatewayFacade
from agent.runtime.health import GatewayHealth
from agent.runtime.housekeeping import RETENTION_INTERVAL_S, Housekeeping
from agent.runtime.open_events import OpenEvents
from agent.runtime.publishing import EventPublisher, gateway_status
from agent.runtime.recent_events import RecentEvents
from agent.runtime.settings import SettingsApplier, SharedDetector
from agent.runtime.systemd import notify, watchdog_interval_s
from agent.runtime.telemetry import Telemetry
from agent.runtime.ticker import Ticker

if TYPE_CHECKING:
    from agent.console.server import ConsoleServer

log = logging.getLogger(__name__)


class Agent:
    """Builds the gateway's parts from `cfg`; `run()` (or `start()`/`stop()`) is their lifecycle."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        source_factory: Callable[[str], FrameSource] | None = None,
        config_path: Path | None = None,
    ) -> None:
        """`config_path`: the file `cfg` came from, which the console may edit (None: read-only)."""
        # The config in force. Replaced whole (one reference swap, under _reload_lock) when the
        # console saves a camera's masks; every part reads it through self.cfg or `self.config`.
        self.cfg = cfg
        self._reload_lock = threading.Lock()
        self._source_factory = source_factory
        self.topics = Topics(cfg.topic_root)
        self.started_at = time.time()
        data_dir = cfg.gateway.data_dir
        verifier = load_verifier(cfg)  # key files first: a bad one stops the agent before it opens anything
        prepare_data_dir(data_dir)
        audit = self.audit = open_audit_log(cfg)
        self.outbox = open_outbox(data_dir, cfg.storage)
        self.clock = ClockWatch(on_change=self._clock_changed)
        self.clock.check()  # before the first status and the Will: they carry clock_synced
        self.link = MqttLink(
            cfg.mqtt,
            client_id=cfg.mqtt.client_id or f"edge-{cfg.gateway.district}-{cfg.gateway.id}",
            outbox=self.outbox,
            will_topic=self.topics.status,
            will_payload=self._status("offline", "lost"),
        )
        self.link.set_online_message(self.topics.status, self._status("online", None))
        # Each camera keeps its recent footage one way: its own packets, or JPEG frames (pixel path).
        self.rings = {cam.id: PacketRing.for_camera(cam) for cam in cfg.cameras if cam.records_packets}
        self.buffers = {
            cam.id: PreEventBuffer.for_camera(cam) for cam in cfg.cameras if not cam.records_packets
        }
        self.clip_store, self.retention, self.recorder = open_clips(
            data_dir, self.config, self.buffers, self.rings
        )
        open_events = OpenEvents(data_dir / "open_events.json")
        self.recent = RecentEvents()
        self.events = EventPublisher(
            self.link, self.topics, open_events, self._privacy_masks, self.recorder, self.recent
        )
        self.ptz = PtzService.from_config(cfg.cameras, cfg.gateway.admin_agencies)
        self.cameras = {cam.id: self._camera_worker(cam) for cam in cfg.cameras}
        if self.ptz is not None:
            self.ptz.on_change(lambda camera, ptz: self.cameras[camera].set_ptz(ptz))
        self.detector = SharedDetector(cfg.detector)
        self.settings = SettingsApplier(
            SettingsStore(cfg, data_dir / "settings.json"), self.cameras, self.detector, self._report_settings
        )
        self.settings.apply_current()
        self.streams, self.dispatcher, self.commands = self._command_plane(audit, verifier)
        self.telemetry, self.timers = self._timers(data_dir)
        self.link.on_connect(self._republish_camera_status)
        self.link.on_connect(self.settings.report)
        self.link.subscribe(self.topics.cmd, self.commands.submit)
        self.console = self._console(config_path)
        self._stop = threading.Event()
        self._stopped = False

    def config(self) -> AgentConfig:
        """The config in force (the parts that outlive a console save look it up through this)."""
        return self.cfg

    def _camera_worker(self, cam: CameraConfig) -> CameraWorker:
        return CameraWorker(
            cam,
            on_status=self.events.camera_status,
            on_phase=self.events.phase,
            on_frame=self._buffer_frame if cam.id in self.buffers else None,
            on_packet=self.rings[cam.id].push if cam.id in self.rings else None,
            source_factory=self._source_factory,
            frame_fps=cam.buffer.fps,  # frames neither the buffer nor detection needs are skipped
            state_dir=self.cfg.gateway.data_dir / "analysis",
            moving=self._moving_check(cam.id),
            resolve=self._stream_lookup(cam),
            keep_overlay=self.cfg.console.enabled,
        )

    def _console(self, config_path: Path | None) -> ConsoleServer | None:
        """The commissioning page, when `[console]` enables it (its module loads only then)."""
        if not self.cfg.console.enabled:
            return None
        from agent.console.server import ConsoleServer

        bridge = ConsoleBridge(self.config, self.cameras, self.recent, self.audit, self.apply_camera)
        return ConsoleServer(self.cfg.console, bridge, config_path)

    def _timers(self, data_dir: Path) -> tuple[Telemetry, list[Ticker]]:
        """Telemetry, rate-limit summaries and housekeeping, each a job on a Ticker the agent owns."""
        telemetry = Telemetry(
            link=self.link,
            topics=self.topics,
            health=GatewayHealth(data_dir),
            outbox=self.outbox,
            cameras=self.cameras.values(),
            detector=self.detector,
            recorder=self.recorder,
            retention=self.retention,
            commands=self.dispatcher.stats,
            rings=self.rings,
            buffers=self.buffers,
            clock=self.clock,
        )
        timers = [
            Ticker("telemetry", self.cfg.gateway.telemetry_interval_s, telemetry.publish),
            Ticker("clock", CHECK_INTERVAL_S, self.clock.check),
            Ticker("commands.summaries", RateLimits().summary_interval_s, self.dispatcher.flush_summaries),
        ]
        if self.retention is not None:
            housekeeping = Housekeeping(self.retention, self.cameras.values())
            timers.append(
                Ticker("housekeeping", RETENTION_INTERVAL_S, housekeeping.run_once, run_at_start=True)
            )
        return telemetry, timers

    def _command_plane(
        self, audit: AuditLog, verifier: CommandVerifier | None
    ) -> tuple[StreamManager, Dispatcher, CommandServer]:
        """The commands' view of the gateway, live streams, and the server that runs commands."""
        cfg = self.cfg
        clips = (
            Footage(self.clip_store, self.buffers, self.config, rings=self.rings) if self.clip_store else None
        )
        gateway = GatewayFacade(
            self.config,
            topics=self.topics,
            started_at=self.started_at,
            link=self.link,
            cameras=self.cameras,
            buffers=self.buffers,
            rings=self.rings,
            settings=self.settings,
            clips=clips,
            ptz=self.ptz,
        )
        streams = StreamManager(gateway, limits=stream_limits(self.settings.current))
        self.settings.add_listener(lambda new: streams.set_limits(stream_limits(new)))
        dispatcher = Dispatcher(
            gateway, audit, streams=streams, verifier=verifier, state_dir=cfg.gateway.data_dir / "commands"
        )
        server = CommandServer(dispatcher, self.link.reply)
        return streams, dispatcher, server

    # -- callbacks ---------------------------------------------------------------------------

    def _status(self, state: str, reason: str | None) -> bytes:
        return gateway_status(
            state, reason, started_at=self.started_at, cameras=[c.id for c in self.cfg.cameras]
        )

    def _privacy_masks(self, camera: str) -> Sequence[PolygonLike]:
        cam = self.cfg.camera(camera)
        return cam.privacy_masks if cam is not None else []

    def _moving_check(self, camera: str) -> Callable[[], bool] | None:
        """Whether the agent is turning `camera` (PTZ), for its detect thread; None without PTZ."""
        ptz = self.ptz
        if ptz is None:
            return None
        return lambda: ptz.moving(camera)

    def _stream_lookup(self, cam: CameraConfig) -> Callable[[threading.Event], tuple[str, str | None]] | None:
        """Asks the camera (ONVIF) for its stream URIs when its config leaves `source` out."""
        ptz = self.ptz
        if ptz is None or not cam.streams_from_onvif:
            return None
        return lambda stopping: ptz.stream_uris(cam.id, stopping)

    def _buffer_frame(self, camera: str, frame: Frame) -> bool:
        return self.buffers[camera].push(frame) is not None  # False: the camera converts the next

    def _republish_camera_status(self) -> None:
        for worker in self.cameras.values():
            worker.republish_status()

    def _clock_changed(self, synced: bool) -> None:
        """The retained status says whether the clock is synchronised: republish it."""
        self.link.set_online_message(self.topics.status, self._status("online", None))

    def _report_settings(self, payload: bytes) -> None:
        self.link.publish(self.topics.config_reported, payload, retain=True, kind="config")

    # -- console saves ------------------------------------------------------------------------

    def apply_camera(self, new: AgentConfig, camera: str) -> None:
        """Put the masks `new` gives `camera` in force, without a restart; the console calls this
        after writing them to the config file (other changes in the file wait for a restart).

        Privacy masks hold for every image that leaves from the moment the config in force is
        swapped. A camera on the packet path that gets its first privacy mask is moved to the pixel
        path: its capture is stopped first (its open events end and their clips are finished from
        the packets it had), its packet ring is dropped (those packets cannot be masked), and it is
        started again with a JPEG buffer that burns the masks in.
        """
        fresh = new.camera(camera)
        with self._reload_lock:
            old = self.cfg.camera(camera)
            if fresh is None or old is None:
                raise AgentError(f"camera {camera!r} is not in both the old and the new config")
            updated = old.model_copy(
                update={
                    "privacy_masks": fresh.privacy_masks,
                    "motion": old.motion.model_copy(update={"masks": fresh.motion.masks}),
                    "detection": old.detection.model_copy(update={"masks": fresh.detection.masks}),
                }
            )
            to_pixels = camera in self.rings and not updated.records_packets
            if to_pixels:
                self._stop_packet_camera(camera)
            self.cfg = self.cfg.model_copy(
                update={"cameras": [updated if c.id == camera else c for c in self.cfg.cameras]}
            )
            buffer = self.buffers.get(camera)
            if buffer is not None:
                buffer.set_masks(updated.privacy_masks)
            elif to_pixels:
                self.buffers[camera] = PreEventBuffer.for_camera(updated)
                self.cameras[camera] = self._camera_worker(updated)
            self.settings.file_changed(
                camera,
                CameraSettings(
                    motion=updated.motion, detection=updated.detection, privacy_masks=updated.privacy_masks
                ),
            )
            if to_pixels and not self._stopped:
                self.cameras[camera].start()
            log.info(
                "camera %s: masks in force (%d privacy, %d motion, %d detection)%s",
                camera,
                len(updated.privacy_masks),
                len(updated.motion.masks),
                len(updated.detection.masks),
                "; moved to the pixel path" if to_pixels else "",
            )
            if old.privacy_masks and updated.records_packets:
                log.info("camera %s: no privacy masks left; it keeps packets from the next start", camera)

    def _stop_packet_camera(self, camera: str) -> None:
        """Stop a packet camera's capture and finish its clips, then drop its ring."""
        self.cameras[camera].stop(timeout=2.0)
        if self.recorder is not None:
            self.recorder.finish_camera(camera)
        self.rings.pop(camera, None)

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run(self) -> int:
        """Start, keep systemd's watchdog fed while healthy, and stop on SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        tick = watchdog_interval_s() or 1.0
        while not self._stop.wait(min(tick, 1.0)):
            dead = self.dead_threads()
            if dead:
                log.error("threads died: %s; withholding the watchdog ping", ", ".join(dead))
            else:
                notify("WATCHDOG=1")
        self.stop()
        return 0

    def start(self) -> None:
        log.info("agent %s starting: %s, %d camera(s)", __version__, self.cfg.topic_root, len(self.cameras))
        self.events.end_orphans(self.outbox.holds)
        self.link.start()
        if self.ptz is not None:
            self.ptz.start()  # before the cameras: those without `source` ask it for their URIs
        for worker in self.cameras.values():
            worker.start()
        self.streams.start()
        self.detector.start()
        if self.recorder is not None:
            self.recorder.start()
        for timer in self.timers:
            timer.start()
        self.commands.start()
        if self.console is not None:
            self.console.start()
        self.link.wait_connected(5.0)
        notify("READY=1")

    def dead_threads(self) -> list[str]:
        """Names of owned threads that died; while any has, systemd's watchdog restarts the agent."""
        dead = [w.id for w in self.cameras.values() if not w.alive()]
        dead += self.commands.dead_threads()
        dead += [timer.name for timer in self.timers if not timer.alive()]
        if not self.link.alive():
            dead.append("mqtt.pump")
        if self.console is not None and not self.console.alive():
            dead.append("console")
        return dead

    def stop(self) -> None:
        """Stop every part in reverse dependency order; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        notify("STOPPING=1")
        log.info("stopping")
        t0 = time.monotonic()
        if self.console is not None:
            self.console.stop(timeout=0.5)
        self.streams.stop(timeout=0.5)
        with self._reload_lock:  # no console save may start a camera now
            workers = list(self.cameras.values())
        for worker in workers:
            worker.request_stop()
        for timer in self.timers:
            timer.request_stop()
        deadline = time.monotonic() + 1.5
        for worker in workers:
            worker.stop(timeout=max(0.1, deadline - time.monotonic()))
        self.commands.stop(timeout=0.5)
        if self.ptz is not None:
            self.ptz.stop(timeout=0.5)
        self.dispatcher.close()  # writes the last rate-limit summaries, closes the reply store
        for timer in self.timers:
            timer.stop(timeout=0.2)
        self.detector.stop(timeout=0.5)
        if self.recorder is not None:
            # What is left of the 5 s, keeping 1.5 s for the link: a clip not finished in time is
            # kept on disk (pixel path) and written at the next start.
            self.recorder.stop(timeout_s=max(1.0, 3.3 - (time.monotonic() - t0)))
        self.link.stop(final=(self.topics.status, self._status("offline", "shutdown")), timeout=1.5)
        self.outbox.close()
        self.clock.close()
        log.info("stopped in %.2f s", time.monotonic() - t0)


def stream_limits(settings: RuntimeSettings) -> StreamLimits:
    return StreamLimits(
        max_sessions=settings.streams.max_sessions, max_bytes_per_s=settings.streams.max_bytes_per_s
    )


def open_audit_log(cfg: AgentConfig) -> AuditLog:
    """The audit log, or AgentError naming why it cannot be opened (a folder where the log goes,
    a file where its folder goes): imagery must not go out unaudited, so the agent stops."""
    try:
        return AuditLog.from_config(cfg)
    except OSError as exc:
        if exc.filename is None:  # the log's own message (a symbolic link refused)
            raise AgentError(f"the audit log cannot be opened: {exc.strerror or exc}") from None
        where = Path(exc.filename)
        if where.is_dir() and not where.is_symlink() and isinstance(exc, IsADirectoryError):
            why = "it is a folder, where the log file goes"
        elif isinstance(exc, FileExistsError) and not where.is_dir():
            why = "it is a file, where the log's folder goes"
        else:
            why = exc.strerror or str(exc)
        raise AgentError(
            f"the audit log cannot be opened: {where}: {why}; move it away and start again"
        ) from None


def prepare_data_dir(data_dir: Path) -> None:
    """data_dir must be writable: the audit log and the outbox live there, so without it the agent
    would hand out imagery unaudited. Stop with a clear error instead.

    A data_dir the agent creates is 0700 (an existing one keeps the mode its installer gave it).
    The probe is created O_EXCL without following links: a planted `.write-test` link is removed,
    never written through.
    """
    probe = data_dir / ".write-test"
    try:
        if not data_dir.is_dir():
            private_dir(data_dir, parents=True)
        os.close(create_private(probe))
        probe.unlink()
    except OSError as exc:
        raise AgentError(
            f"gateway.data_dir {str(data_dir)!r} is not a writable directory: {exc.strerror or exc}"
        ) from None


def open_outbox(data_dir: Path, storage: StorageConfig) -> Outbox:
    """The durable outbox; it sets a corrupt file aside itself and never refuses to start."""
    outbox = Outbox(data_dir / "outbox.db", storage.outbox_max_messages, storage.outbox_max_bytes)
    if outbox.discarded is not None:
        log.error(
            "outbox was unreadable (%s) and was moved to %s; a fresh one was started",
            outbox.discarded.reason,
            outbox.discarded.moved_to,
        )
    return outbox


def open_clips(
    data_dir: Path,
    config: Callable[[], AgentConfig],
    buffers: dict[str, PreEventBuffer],
    rings: dict[str, PacketRing],
) -> tuple[ClipStore | None, Retention | None, Recorders | None]:
    """Clip store, retention and recorder; without a writable store events still flow."""
    try:
        store = ClipStore(data_dir / "clips", verify_sha256=False)
    except (OSError, ValueError) as exc:
        log.error("clips disabled: cannot use %s: %s", data_dir / "clips", exc)
        return None, None, None
    storage = config().storage
    retention = Retention(store, storage.clips_quota_bytes, storage.min_free_bytes)

    def clip_settings(camera: str) -> ClipSettings | None:
        cam = config().camera(camera)
        return ClipSettings.from_camera(cam) if cam is not None and cam.clips.enabled else None

    packets = PacketRecorder(store, rings, clip_settings, retention=retention)
    pixels = ClipRecorder(store, buffers, clip_settings, retention=retention)
    return store, retention, Recorders(packets, pixels)
