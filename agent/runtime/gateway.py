"""The running gateway as the command handlers see it: agent.commands.gateway.Gateway, implemented.

Reads only (camera state, frames, buffers), plus three ways to act, each owned elsewhere:
publishing goes to the link's outbox, settings to the `SettingsApplier` (which hands them to the
cameras' own threads), clips to the footage access. Safe to call from any command worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from agent import __version__
from agent.capture.source import Frame
from agent.commands.gateway import ClipAccess, PtzAccess
from agent.config import AgentConfig
from agent.contract.messages import CameraStatus
from agent.footage.packet_frames import decode_nearest
from agent.footage.packet_ring import PacketRing
from agent.footage.prebuffer import PreEventBuffer
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Kind
from agent.mqtt.topics import Topics
from agent.runtime.camera import CameraWorker
from agent.runtime.settings import SettingsApplier


class GatewayFacade:
    """Implements the commands' `Gateway` Protocol over the agent's parts."""

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        *,
        topics: Topics,
        started_at: float,
        link: MqttLink,
        cameras: Mapping[str, CameraWorker],
        buffers: Mapping[str, PreEventBuffer],
        rings: Mapping[str, PacketRing] | None = None,
        settings: SettingsApplier,
        clips: ClipAccess | None,
        ptz: PtzAccess | None = None,
    ) -> None:
        self._config = config  # the config in force: the console may replace it
        self._topics = topics
        self._started_at = started_at
        self._link = link
        self._cameras = cameras
        self._buffers = buffers
        self._rings: Mapping[str, PacketRing] = rings or {}
        self._settings = settings
        self._clips = clips
        self._ptz = ptz

    @property
    def config(self) -> AgentConfig:
        return self._config()

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def topic_root(self) -> str:
        return self._topics.root

    @property
    def agent_version(self) -> str:
        return __version__

    @property
    def clips(self) -> ClipAccess | None:
        return self._clips

    def ptz(self) -> PtzAccess | None:
        """PTZ control of the ONVIF cameras (agent.commands.gateway.PtzGateway); None without any."""
        return self._ptz

    def uptime_s(self) -> float:
        return time.time() - self._started_at

    def camera_state(self, camera: str) -> CameraStatus | None:
        worker = self._cameras.get(camera)
        if worker is None:
            return None
        status = worker.status
        if status.state == "ok":
            status = status.model_copy(update={"fps": round(worker.stats.fps, 2)})
        return status

    def latest_frame(self, camera: str, fps: float | None = None) -> Frame | None:
        worker = self._cameras.get(camera)
        return worker.latest_frame(fps) if worker else None

    def packets(self, camera: str) -> PacketRing | None:
        return self._rings.get(camera)

    def frame_at(self, camera: str, ts: float) -> Frame | None:
        ring = self._rings.get(camera)
        if ring is not None:
            return decode_nearest([p for _, p in ring.since(ts)], ts, max_gap_s=0.2)
        buffer = self._buffers.get(camera)
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
        self,
        topic: str,
        payload: bytes,
        *,
        kind: Kind,
        qos: int = 1,
        retain: bool = False,
        properties: dict[str, str] | None = None,
    ) -> None:
        self._link.publish(topic, payload, qos=qos, retain=retain, kind=kind, properties=properties)

    def max_payload(self, topic: str, properties: dict[str, str] | None = None) -> int | None:
        """What the broker accepts on `topic` (agent.commands.handlers.PayloadLimited): clip
        chunks are cut to fit it."""
        return self._link.max_payload(topic, properties)

    def get_settings(self) -> dict[str, Any]:
        return self._settings.as_dict()

    def apply_settings(self, partial: dict[str, Any]) -> dict[str, Any]:
        return self._settings.apply(partial)
