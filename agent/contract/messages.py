"""Messages the agent publishes, as pydantic models: the documented schema of the contract.

Field names and shapes follow docs/protocol.md (version 1) exactly; `edge-agent schema`
prints their JSON Schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class GatewayStatus(Message):
    """Retained on {root}/status; the Last Will carries state offline, reason lost."""

    state: Literal["online", "offline"]
    reason: str | None = None
    agent_version: str
    started_at: str
    cameras: list[str]


class CameraStatus(Message):
    """Retained on {root}/cam/{camera}/status, published on every change."""

    state: Literal["ok", "connecting", "failed", "disabled"]
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    last_frame_at: str | None = None
    error: str | None = None
