"""What a stored clip is: its id, its sidecar, the holds on it, and the error clip requests raise."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.clock import iso, parse_iso
from agent.config import ID_PATTERN
from agent.errors import AgentError

__all__ = [
    "RECORDED",
    "ClipError",
    "ClipInfo",
    "ClipSource",
    "Discarded",
    "Hold",
    "HoldResult",
    "JpegFrame",
    "validate_clip_id",
]

CAMERA_RE = re.compile(ID_PATTERN)
CLIP_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

ErrorCode = Literal["bad_request", "not_found", "busy", "internal"]

ClipSource = Literal["event", "hold", "export"]
"""Who wrote a clip: the recorder for an event, clip.hold saving the buffer, or clip.export."""
RECORDED: frozenset[ClipSource] = frozenset({"event", "hold"})
"""Clips that are footage (copies of the buffer) and that an export may read; an export is not:
reading exports back would feed each export on the last (issue 13)."""


class ClipError(AgentError):
    """A clip request failed; `code` is the protocol error code to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code: ErrorCode = code
        super().__init__(message)


class JpegFrame(Protocol):
    """What a clip is made from: a capture time and JPEG bytes (e.g. prebuffer.BufferedFrame)."""

    @property
    def ts(self) -> float: ...

    @property
    def jpeg(self) -> bytes: ...


def validate_clip_id(clip_id: object) -> str:
    """Return the id if it is a canonical lowercase UUID; anything path-like is refused."""
    if not isinstance(clip_id, str) or not CLIP_ID_RE.fullmatch(clip_id):
        raise ClipError("bad_request", f"clip_id {clip_id!r:.80} is not a clip id (a lowercase UUID)")
    return clip_id


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """A stored clip as its sidecar describes it. start/end are the first/last frame's times."""

    clip_id: str
    camera: str
    start: float
    end: float
    event_id: str | None
    sha256: str
    bytes: int
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    created_at: float
    held_until: float | None = None
    source: ClipSource = "event"
    gaps: tuple[tuple[float, float], ...] = ()
    """Wall-clock spans cut out of a remuxed clip where the camera's stream restarted."""

    @property
    def duration_s(self) -> float:
        """Playing time of the MP4 (frames at the constant rate)."""
        return self.frames / self.fps

    def chunk_count(self, chunk_bytes: int) -> int:
        return max(1, math.ceil(self.bytes / chunk_bytes))

    def to_sidecar(self) -> dict[str, Any]:
        """The sidecar's JSON; `gaps` only when there are any, so older readers see no change."""
        out: dict[str, Any] = {
            "clip_id": self.clip_id,
            "camera": self.camera,
            "start": iso(self.start),
            "end": iso(self.end),
            "event_id": self.event_id,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "codec": self.codec,
            "created_at": iso(self.created_at),
            "held_until": iso(self.held_until) if self.held_until is not None else None,
            "source": self.source,
        }
        if self.gaps:
            out["gaps"] = [[iso(a), iso(b)] for a, b in self.gaps]
        return out

    @classmethod
    def from_sidecar(cls, data: object, expected_id: str | None = None) -> ClipInfo:
        """Parse a sidecar; raise ValueError or TypeError naming the first bad field.

        A sidecar without `source` was written before exports were told apart: it is an event's.
        """
        if not isinstance(data, dict):
            raise TypeError("sidecar is not a JSON object")

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"sidecar field {key!r} is missing or has the wrong type")
            return value

        def when(key: str) -> float:
            try:
                return parse_iso(need(key, str))
            except ValueError:
                raise ValueError(f"sidecar field {key!r} is not a timestamp") from None

        held = data.get("held_until")
        source = data.get("source", "event")
        gaps = data.get("gaps", [])
        if not isinstance(gaps, list) or not all(
            isinstance(g, list) and len(g) == 2 and all(isinstance(t, str) for t in g) for g in gaps
        ):
            raise TypeError("sidecar field 'gaps' is not a list of [start, end] timestamps")
        if source not in ("event", "hold", "export"):
            raise ValueError(f"sidecar field 'source' is {source!r:.40}, not event, hold or export")
        info = cls(
            clip_id=validate_clip_id(need("clip_id", str)),
            camera=need("camera", str),
            start=when("start"),
            end=when("end"),
            event_id=data.get("event_id") if isinstance(data.get("event_id"), str) else None,
            sha256=need("sha256", str),
            bytes=need("bytes", int),
            frames=need("frames", int),
            width=need("width", int),
            height=need("height", int),
            fps=float(need("fps", (int, float))),
            codec=need("codec", str),
            created_at=when("created_at"),
            held_until=when("held_until") if held is not None else None,
            source=source,
            gaps=tuple((parse_iso(a), parse_iso(b)) for a, b in gaps),
        )
        if expected_id is not None and info.clip_id != expected_id:
            raise ValueError(f"sidecar names clip {info.clip_id}, not {expected_id}")
        if not re.fullmatch(r"[0-9a-f]{64}", info.sha256):
            raise ValueError("sidecar field 'sha256' is not a hex digest")
        if info.bytes <= 0 or info.frames <= 0 or info.fps <= 0 or info.end < info.start:
            raise ValueError("sidecar has non-positive sizes or an inverted span")
        return info


@dataclass(frozen=True, slots=True)
class Hold:
    """Footage of `camera` overlapping [start, end] is kept from retention until `until`."""

    camera: str
    start: float
    end: float
    until: float

    def covers(self, camera: str, start: float, end: float) -> bool:
        return camera == self.camera and start <= self.end and end >= self.start


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold: Hold
    clip_ids: tuple[str, ...]

    def result(self) -> dict[str, Any]:
        """The `clip.hold` result (the protocol leaves it open; this is what we answer)."""
        return {
            "camera": self.hold.camera,
            "start": iso(self.hold.start),
            "end": iso(self.hold.end),
            "until": iso(self.hold.until),
            "clip_ids": list(self.clip_ids),
        }


@dataclass(frozen=True, slots=True)
class Discarded:
    """A file the scan removed or set aside, and why."""

    path: Path
    reason: str


def check_camera(camera: object) -> None:
    if not isinstance(camera, str) or not CAMERA_RE.fullmatch(camera):
        raise ClipError("bad_request", f"camera {camera!r:.80} is not a camera id")


def check_span(start: float, end: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ClipError("bad_request", "start and end must be finite times")
    if end <= start:
        raise ClipError("bad_request", f"end {iso(end)} is not after start {iso(start)}")
