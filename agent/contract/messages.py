"""Messages the agent publishes, as pydantic models: the documented schema of the contract.

Field names and shapes follow docs/protocol.md (version 1) exactly; `edge-agent schema`
prints their JSON Schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent import clock

Box = Annotated[
    tuple[float, float, float, float], Field(description="[x, y, w, h] normalised to 0..1 of the frame")
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


class DetectedObject(Message):
    label: str
    score: float = Field(ge=0.0, le=1.0)
    box: Box


class Event(Message):
    """One phase of a motion or object event; one event_id runs start → update* → end."""

    event_id: str
    camera: str
    kind: Literal["motion", "object"]
    phase: Literal["start", "update", "end"]
    started_at: str
    ts: str
    ended_at: str | None = None
    regions: list[Box] = Field(default_factory=list)
    objects: list[DetectedObject] = Field(default_factory=list)
    score: float = Field(ge=0.0, le=1.0)
    clip_id: str | None = None
    clock_unsynced: bool | None = Field(
        default_factory=clock.unsynced_mark,
        exclude_if=lambda v: v is None,
        description=(
            "Only present, true, when the gateway's clock was not synchronised (NTP) as this phase was"
            " stamped, e.g. before its first sync after boot: its times may be far off"
        ),
    )


class GatewayStatus(Message):
    """Retained on {root}/status; the Last Will carries state offline, reason lost."""

    state: Literal["online", "offline"]
    reason: str | None = None
    agent_version: str
    started_at: str
    cameras: list[str]
    clock_synced: bool | None = Field(
        default_factory=clock.clock_synced,
        exclude_if=lambda v: v is None,
        description="Whether the gateway's clock is synchronised (as timedatectl says); absent if unknown",
    )


class CameraPtz(Message):
    """Whether a PTZ camera is turning; no motion or object events come from it meanwhile."""

    moving: bool
    commanded: bool = Field(
        description="Whether the agent moved it; false: its PTZ status reported a move nobody sent"
    )
    by: str | None = Field(description="Agency whose command moved it; null: not an agency's command")
    preset: str | None = Field(description="Preset token it is going to or is at; null: elsewhere")


class CameraStatus(Message):
    """Retained on {root}/cam/{camera}/status, published on every change."""

    state: Literal["ok", "connecting", "failed", "disabled"]
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    last_frame_at: str | None = None
    error: str | None = None
    ptz: CameraPtz | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="ONVIF PTZ cameras, once moved since the agent started: the latest move",
    )
