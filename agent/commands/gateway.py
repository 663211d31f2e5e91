"""What command handlers need from the running agent, as small Protocols the runtime implements.

Handlers never touch cameras, buffers or the MQTT client directly: they see a `Gateway`. That
keeps the command code testable with an in-process stand-in and leaves threading, buffering and
the broker link to the runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol, runtime_checkable

from agent.capture.source import Frame
from agent.config import AgentConfig
from agent.contract.messages import CameraStatus
from agent.footage.packet_ring import PacketRing
from agent.mqtt.outbox import Kind
from agent.mqtt.topics import Topics


class ClipSummary(Protocol):
    """What the clip commands report about a stored clip (agent.footage.clips.ClipInfo fits)."""

    @property
    def clip_id(self) -> str: ...
    @property
    def camera(self) -> str: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...


class HoldSummary(Protocol):
    """What clip.hold reports (agent.footage.clips.HoldResult fits)."""

    @property
    def clip_ids(self) -> tuple[str, ...]: ...


class ClipAccess(Protocol):
    """Clips as the clip.* commands use them (agent.footage.access.Footage implements it over
    agent.footage.store.ClipStore, binding the camera's buffered frames and masks to `export`).

    Failures the platform should see are raised as an `AgentError` carrying a protocol error
    code in `.code` (agent.footage.clips.ClipError, or CommandError): the dispatcher answers with it.
    """

    def export(self, camera: str, start: float, end: float) -> ClipSummary:
        """Cut [start, end] (epoch seconds) from what is buffered or recorded into a new clip."""

    def get(self, clip_id: str) -> ClipSummary:
        """The clip with this id; raise (code not_found) when unknown or deleted."""

    def chunks(self, clip_id: str, chunk_bytes: int) -> Iterator[tuple[int, int, bytes]]:
        """(index, count, data) for each chunk of the MP4, in order."""

    def hold(self, camera: str, start: float, end: float, until: float) -> HoldSummary:
        """Keep footage of `camera` in [start, end] from retention until `until` (evidence hold)."""


class Gateway(Protocol):
    """The runtime as seen by command handlers. All methods must be safe to call from any thread."""

    @property
    def config(self) -> AgentConfig:
        """The configuration as loaded at start; settings changed at runtime (config.set) are
        in `get_settings`, not here."""

    @property
    def topics(self) -> Topics:
        """The contract's topics under this gateway's root: build every topic from these."""

    @property
    def topic_root(self) -> str:
        """`{prefix}/{district}/{gateway}`."""

    @property
    def agent_version(self) -> str: ...

    @property
    def clips(self) -> ClipAccess | None:
        """The clip store, or None while the gateway has none (clip.* then answer not_found)."""

    def uptime_s(self) -> float:
        """Seconds since the agent started."""

    def camera_state(self, camera: str) -> CameraStatus | None:
        """Current state, fps and frame size of a camera; None for an unknown camera."""

    def latest_frame(self, camera: str, fps: float | None = None) -> Frame | None:
        """The newest captured frame, or None when the camera has produced none yet. `fps`: a
        live view asking on each of its ticks wants a new one this often (frames are then
        decoded at that rate, not only at detect_fps and the buffer's)."""

    def packets(self, camera: str) -> PacketRing | None:
        """The camera's kept packets (a packet-path camera: rtsp://, no privacy masks), which a
        live fmp4 stream copies; None for a camera on the pixel path or an unknown one."""

    def frame_at(self, camera: str, ts: float) -> Frame | None:
        """The buffered frame nearest to `ts` (epoch s); None when `ts` lies outside the buffer
        by more than one frame interval."""

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
        """Queue a message for the broker without blocking. `kind` is the outbox's class of the
        message (what is dropped first when it is full): "snapshot" for imagery, "clip" for clip
        chunks, "audit" for audit records. `properties` become MQTT 5 user properties (dropped on
        3.1.1)."""

    def get_settings(self) -> dict[str, Any]:
        """The runtime-adjustable settings, the shape of config.get's result."""

    def apply_settings(self, partial: dict[str, Any]) -> dict[str, Any]:
        """Validate `partial` merged into the current settings, apply without restart, persist,
        publish on `config/reported`, and return the new settings. Raise `ConfigError`,
        pydantic `ValidationError` or `ValueError` naming the fault when invalid; nothing is
        applied then. Privacy masks must not be removable this way."""


class PtzLease(Protocol):
    """Which agency controls a camera's PTZ, until when (agent.onvif.Lease fits)."""

    @property
    def agency(self) -> str: ...
    @property
    def until(self) -> float: ...


class PtzAccess(Protocol):
    """PTZ of the gateway's ONVIF cameras (agent.onvif.PtzService implements it).

    Access per agency is the handlers' (`ptz_agencies`); leases are this side's: a camera leased
    to another agency is `busy` unless `agency` is an admin agency. Failures carry a protocol code
    in `.code` (agent.onvif.OnvifError): not_found, busy, bad_request, internal. Calls block the
    command worker for at most the camera's `onvif.timeout_s` (plus a second).
    """

    def presets(self, camera: str) -> list[tuple[str, str]]:
        """(token, name) of each preset."""

    def move(
        self,
        camera: str,
        agency: str,
        *,
        mode: Literal["continuous", "relative"],
        pan: float,
        tilt: float,
        zoom: float,
        timeout_s: float,
    ) -> PtzLease: ...

    def absolute(self, camera: str, agency: str, *, pan: float, tilt: float, zoom: float | None) -> PtzLease:
        """Turn to a position in ONVIF's generic space."""

    def goto_preset(self, camera: str, agency: str, preset: str) -> PtzLease: ...

    def stop_camera(self, camera: str, agency: str, *, release: bool) -> PtzLease | None:
        """Stop moving; `release` ends the agency's lease (None then)."""


@runtime_checkable
class PtzGateway(Protocol):
    """A `Gateway` that controls PTZ cameras; one without (or a test stand-in) need not implement it,
    and ptz.* then answer not_found."""

    def ptz(self) -> PtzAccess | None:
        """The PTZ control, or None when no camera of the gateway has ONVIF."""
