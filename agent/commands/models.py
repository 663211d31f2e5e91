"""The command side of the contract as pydantic models: these classes ARE the documented schema.

Requests arrive on `{root}/cmd` as JSON objects (see docs/protocol.md, "Commands"). Every
model is strict (no string-to-number coercion, no bools for integers) and forbids unknown keys,
so a typo such as `"ttl": 30` is answered `bad_request` naming the key rather than ignored.

Choices where the contract is silent (also written in docs/protocol.md):
- A request `id` is 1..64 characters of `A-Za-z0-9._:-`, starting with a letter or digit and
  without two dots in a row (`REQUEST_ID_PATTERN`): UUIDs, ULIDs and `req-42` pass; ids that are
  path- or topic-like (`a..b`, `a/b`, `+`, `#`) are refused, because the id becomes a topic level
  in `{root}/cam/{camera}/snapshot/{id}`.
- `ttl_s` may be up to a day, but a request older than 600 s (the idempotency window) is
  expired whatever its ttl, so a request that the cache has forgotten can never run twice.
- `reply_to` must be a plain topic: 1..256 characters, no `+`, `#` or NUL.
- `requester.agency` is an id like every other id; `operator` (1..128 printable characters) and
  `incident` are optional, recorded in the audit record when given.
- `sig` carries the platform's signature (agent.commands.signing); the dispatcher only hands the
  envelope to its verifier, if it has one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from agent.clock import parse_iso
from agent.config import ID_PATTERN, GeoConfig
from agent.errors import AgentError

# Up to 64 characters (a separate length limit): a dot is never followed by another dot. Written
# without look-arounds, which JSON Schema validators (and pydantic's regex engine) may not support.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_:-])*\.?$"
MAX_ID_CHARS = 64
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
MAX_TTL_S = 600.0  # the longest a request stays valid: the idempotency window
MAX_TTL_ACCEPTED_S = 86400.0  # larger ttl_s values are accepted and capped at MAX_TTL_S
MAX_TOPIC_CHARS = 256  # of a request's reply_to
MAX_REQUEST_BYTES = 64 * 1024  # larger requests are bad_request, unparsed
DEFAULT_CHUNK_BYTES = 256 * 1024  # clip.fetch without chunk_bytes

ErrorCode = Literal[
    "bad_request",
    "unknown_command",
    "not_found",
    "forbidden",
    "expired",
    "busy",
    "internal",
    "rate_limited",
    "unauthenticated",
]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)
"""The contract's seven codes, then the two this agent adds (docs/protocol.md, "Error codes")."""
Outcome = Literal[
    "ok",
    "bad_request",
    "unknown_command",
    "not_found",
    "forbidden",
    "expired",
    "busy",
    "internal",
    "rate_limited",
    "unauthenticated",
]
SIG_PATTERN = r"^[A-Za-z0-9+/]+={0,2}$"
MAX_SIG_CHARS = 128  # base64 of a 64-byte Ed25519 signature is 88


class CommandError(AgentError):
    """A command failed in a way the platform is told about: becomes `{"ok":false,"error":…}`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code: ErrorCode = code
        self.message = message
        super().__init__(f"{code}: {message}")


def _parseable_time(value: str) -> str:
    try:
        parse_iso(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid RFC 3339 time") from None
    return value


def _plain_topic(value: str) -> str:
    if any(c in value for c in "+#\x00"):
        raise ValueError("must be a plain topic without wildcards (+, #) or NUL")
    return value


Timestamp = Annotated[
    str,
    Field(pattern=RFC3339_PATTERN, description="RFC 3339 time with offset, e.g. 2026-11-24T10:00:00.123Z"),
    AfterValidator(_parseable_time),
]
Ident = Annotated[str, Field(pattern=ID_PATTERN, description="A camera or agency id, " + ID_PATTERN)]
Token = Annotated[
    str,
    Field(
        max_length=MAX_ID_CHARS,
        pattern=REQUEST_ID_PATTERN,
        description="An opaque id: 1..64 of A-Za-z0-9._:- from a letter or digit, no `..`",
    ),
]
Topic = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TOPIC_CHARS, description="A plain MQTT topic (no wildcards)"),
    AfterValidator(_plain_topic),
]


class Model(BaseModel):
    """Base of every command model: strict types, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- envelope


class Requester(Model):
    """Who asks: carried into every audit record."""

    agency: Ident = Field(description="Agency of the operator; checked against allowed_agencies")
    operator: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=PRINTABLE_PATTERN,
        description="Operator id or name",
    )
    incident: str | None = Field(
        default=None, max_length=128, pattern=PRINTABLE_PATTERN, description="Incident reference"
    )


class Request(Model):
    """A command on `{root}/cmd`."""

    id: Token = Field(
        description="Unique request id; a repeat by the same agency within 10 minutes gets the first reply"
    )
    cmd: str = Field(min_length=1, max_length=64, description="Command name, e.g. snapshot")
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the command")
    issued_at: Timestamp = Field(description="When the platform issued the request")
    ttl_s: float = Field(
        default=30.0,
        gt=0.0,
        le=MAX_TTL_ACCEPTED_S,
        description="Seconds after issued_at the request stays valid (at most 600 take effect)",
    )
    requester: Requester
    reply_to: Topic | None = Field(
        default=None, description="Reply topic for MQTT 3.1.1 clients; the MQTT 5 Response Topic wins"
    )
    sig: str | None = Field(
        default=None,
        max_length=MAX_SIG_CHARS,
        pattern=SIG_PATTERN,
        description="Base64 Ed25519 signature of the envelope without sig; required when the gateway"
        " holds platform keys",
    )


# --------------------------------------------------------------------------- arguments


class NoArgs(Model):
    """The command takes no arguments."""


class SnapshotArgs(Model):
    camera: Ident
    at: Timestamp | None = Field(default=None, description="Pick the nearest buffered frame to this time")
    max_width: int | None = Field(default=None, ge=16, le=7680, description="Downscale to at most this width")


class StreamStartArgs(Model):
    camera: Ident
    fps: float = Field(default=5.0, gt=0.0, le=30.0, description="Frames per second to send")
    max_width: int = Field(
        default=640,
        ge=16,
        le=7680,
        description="Downscale to at most this width; fmp4 without it: the camera's own size where possible",
    )
    quality: int = Field(
        default=75, ge=1, le=100, description="JPEG quality (fmp4 when encoded: x264 CRF 18..51)"
    )
    duration_s: float = Field(default=60.0, gt=0.0, le=600.0, description="Session length before it ends")
    format: Literal["jpeg", "fmp4"] = Field(
        default="jpeg",
        description="jpeg: one JPEG per message; fmp4: H.264 fragmented MP4, an init segment then fragments",
    )


class StreamRenewArgs(Model):
    session: Token
    duration_s: float = Field(gt=0.0, le=600.0, description="New session length, counted from now")


class StreamStopArgs(Model):
    session: Token


class _Span(Model):
    camera: Ident
    start: Timestamp
    end: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> _Span:
        if parse_iso(self.end) <= parse_iso(self.start):
            raise ValueError("end must be after start")
        return self


class ClipExportArgs(_Span):
    pass


class ClipFetchArgs(Model):
    clip_id: Token
    chunk_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=16 * 1024 * 1024,
        description=f"Chunk size; default {DEFAULT_CHUNK_BYTES // 1024} KiB",
    )


class ClipHoldArgs(_Span):
    until: Timestamp = Field(description="Keep the footage from retention until this time")

    @model_validator(mode="after")
    def _until_after_end(self) -> ClipHoldArgs:
        if parse_iso(self.until) <= parse_iso(self.end):
            raise ValueError("until must be after end")
        return self


class LocateArgs(Model):
    lat: float = Field(ge=-90.0, le=90.0, description="Latitude, WGS84 degrees")
    lon: float = Field(ge=-180.0, le=180.0, description="Longitude, WGS84 degrees")
    radius_m: float = Field(default=200.0, gt=0.0, le=10_000.0, description="Search radius around the point")
    at: Timestamp | None = Field(default=None, description="Snapshots nearest to this time")


PresetName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=PRINTABLE_PATTERN, description="A preset's token")
]
Generic = Annotated[float, Field(ge=-1.0, le=1.0)]


class PtzCameraArgs(Model):
    camera: Ident


class PtzMoveArgs(Model):
    camera: Ident
    mode: Literal["continuous", "relative"] = Field(
        default="continuous",
        description="continuous: pan/tilt/zoom are speeds, for timeout_s; relative: they are steps",
    )
    pan: Generic = Field(default=0.0, description="ONVIF generic space: speed or step, -1..1")
    tilt: Generic = Field(default=0.0, description="ONVIF generic space: speed or step, -1..1")
    zoom: Generic = Field(default=0.0, description="ONVIF generic space: speed or step, -1..1")
    timeout_s: float = Field(
        default=1.0, gt=0.0, le=60.0, description="continuous: the camera stops after this long"
    )

    @model_validator(mode="after")
    def _moves(self) -> PtzMoveArgs:
        if self.pan == 0.0 and self.tilt == 0.0 and self.zoom == 0.0:
            raise ValueError("give a non-zero pan, tilt or zoom (ptz.stop stops)")
        return self


class PtzStopArgs(Model):
    camera: Ident
    release: bool = Field(default=False, description="Also end this agency's lease of the camera")


class PtzGotoPresetArgs(Model):
    camera: Ident
    preset: PresetName


class PtzLookAtArgs(Model):
    camera: Ident
    lat: float = Field(ge=-90.0, le=90.0, description="Latitude of the point on the ground, WGS84 degrees")
    lon: float = Field(ge=-180.0, le=180.0, description="Longitude of the point on the ground, WGS84 degrees")
    zoom: float | None = Field(
        default=None, ge=0.0, le=1.0, description="ONVIF zoom position 0..1; absent: zoom unchanged"
    )


class ConfigSetArgs(BaseModel):
    """A partial of config.get's result; the runtime validates it as a whole before applying."""

    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- results


class PingResult(Model):
    agent_version: str
    uptime_s: float


class GatewayInfo(Model):
    district: str
    id: str
    name: str
    topic_root: str
    agent_version: str
    uptime_s: float


class Resolution(Model):
    width: int
    height: int


class CameraInfo(Model):
    id: str
    name: str
    state: Literal["ok", "connecting", "failed", "disabled"]
    resolution: Resolution | None = Field(description="Frame size, null before the first frame")
    fps: float | None
    geo: GeoConfig | None


class DescribeResult(Model):
    gateway: GatewayInfo
    cameras: list[CameraInfo]


class SnapshotResult(Model):
    topic: str = Field(description="Where the JPEG was published once: {root}/cam/{camera}/snapshot/{id}")
    ts: str = Field(description="Capture time of the frame")
    width: int
    height: int
    bytes: int = Field(description="Size of the JPEG")


class StreamStartResult(Model):
    session: str
    topic: str = Field(
        description="{root}/cam/{camera}/stream/{session}; QoS 0, user properties seq, ts (fmp4: and part)"
    )
    expires_at: str
    format: Literal["jpeg", "fmp4"] = Field(default="jpeg", description="What the messages carry")
    codec: str | None = Field(
        default=None,
        description='fmp4: MIME type for MediaSource, e.g. video/mp4; codecs="avc1.64001f"; null until known',
    )
    width: int | None = Field(default=None, description="fmp4: picture width; null until known")
    height: int | None = Field(default=None, description="fmp4: picture height; null until known")


class StreamRenewResult(Model):
    expires_at: str


class EmptyResult(Model):
    pass


class ClipExportResult(Model):
    clip_id: str
    duration_s: float
    bytes: int
    sha256: str


class ClipFetchResult(Model):
    topic: str = Field(description="{root}/clips/{clip_id}; QoS 1, user properties index, count")
    count: int
    bytes: int
    sha256: str


class ClipHoldResult(Model):
    camera: str
    start: str
    end: str
    until: str
    clip_ids: list[str] = Field(description="Stored clips the hold protects now (later ones are covered too)")


class LocateHit(Model):
    camera: str
    distance_m: float = Field(description="Geodesic (WGS84) distance from the camera to the point")
    bearing_deg: float = Field(description="Initial bearing from the camera to the point, from north")
    snapshot_topic: str | None = Field(description="Where a fresh snapshot went; null when no frame")


class LocateResult(Model):
    cameras: list[LocateHit] = Field(description="Cameras whose view covers the point, nearest first")


class PtzLeaseResult(Model):
    camera: str
    agency: str = Field(description="The agency holding the camera's PTZ lease (the requester)")
    lease_until: str = Field(description="Other agencies get busy until then, unless an admin takes over")


class PtzStopResult(Model):
    camera: str
    lease_until: str | None = Field(description="The requester's lease; null once released")


class PtzPreset(Model):
    token: str = Field(description="What ptz.goto_preset takes")
    name: str


class PtzPresetsResult(Model):
    camera: str
    presets: list[PtzPreset]


class PtzLookAtResult(PtzLeaseResult):
    pan: float = Field(description="ONVIF generic pan sent in AbsoluteMove, -1..1")
    tilt: float = Field(description="ONVIF generic tilt sent in AbsoluteMove, -1..1")
    bearing_deg: float = Field(description="From the camera to the point, from north")
    distance_m: float = Field(description="Geodesic (WGS84) distance from the camera to the point")
    depression_deg: float = Field(description="Angle below the horizon from the camera to the point")


class SettingsResult(BaseModel):
    """The runtime-adjustable settings (shape owned by the runtime, see docs/protocol.md)."""

    model_config = ConfigDict(extra="allow")


COMMAND_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "ping": (NoArgs, PingResult),
    "describe": (NoArgs, DescribeResult),
    "snapshot": (SnapshotArgs, SnapshotResult),
    "stream.start": (StreamStartArgs, StreamStartResult),
    "stream.renew": (StreamRenewArgs, StreamRenewResult),
    "stream.stop": (StreamStopArgs, EmptyResult),
    "clip.export": (ClipExportArgs, ClipExportResult),
    "clip.fetch": (ClipFetchArgs, ClipFetchResult),
    "clip.hold": (ClipHoldArgs, ClipHoldResult),
    "locate": (LocateArgs, LocateResult),
    "config.get": (NoArgs, SettingsResult),
    "config.set": (ConfigSetArgs, SettingsResult),
    "ptz.move": (PtzMoveArgs, PtzLeaseResult),
    "ptz.stop": (PtzStopArgs, PtzStopResult),
    "ptz.presets": (PtzCameraArgs, PtzPresetsResult),
    "ptz.goto_preset": (PtzGotoPresetArgs, PtzLeaseResult),
    "ptz.look_at": (PtzLookAtArgs, PtzLookAtResult),
}
"""Arguments and result model of every command, in the contract's order."""


# --------------------------------------------------------------------------- replies


class Reply(Model):
    """`{"id":…,"ok":true,"result":{…}}`"""

    id: str
    ok: Literal[True] = True
    result: dict[str, Any]


class ErrorBody(Model):
    code: ErrorCode
    message: str


class ErrorReply(Model):
    """`{"id":…,"ok":false,"error":{"code":…,"message":…}}`; id is null when it could not be read."""

    id: str | None
    ok: Literal[False] = False
    error: ErrorBody


class AuditRecord(Model):
    """One line of the audit log, also published on `{root}/audit`.

    `prev` is the `hash` of the record before it (64 zeros for the first); `hash` is the SHA-256 of
    the record's canonical JSON (sorted keys, no spaces, UTF-8) without the `hash` key. A summary
    of rate-limited requests has cmd and outcome `rate_limited` and the count in `refused`, a key
    no other record carries.
    """

    ts: str
    id: str
    cmd: str
    camera: str | None
    requester: Requester
    outcome: Outcome
    refused: int | None = Field(
        default=None,
        ge=1,
        description="Only in rate_limited summaries: requests of the agency refused since the last one",
    )
    prev: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
