"""A camera's section, `[[cameras]]`: its source and place, and the per-camera motion, detection,
pre-event buffer and clip settings (those `config.set` may change at runtime start from here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from agent.config.base import Ident, Polygon, Strict, read_small
from agent.config.redact import redact
from agent.config.urls import url_problem
from agent.errors import ConfigError

FootagePath = Literal["auto", "packets", "pixels"]
PACKET_SCHEMES = ("rtsp://", "rtsps://")
"""Sources whose packets are kept as sent (PyAV demuxes them); the others go through pixels."""


class GeoConfig(Strict):
    lat: float = Field(ge=-90.0, le=90.0, description="Latitude, WGS84 degrees")
    lon: float = Field(ge=-180.0, le=180.0, description="Longitude, WGS84 degrees")
    heading_deg: float = Field(ge=0.0, lt=360.0, description="Direction the camera faces, from north")
    fov_deg: float = Field(gt=0.0, le=360.0, description="Horizontal field of view")
    range_m: float = Field(gt=0.0, le=10000.0, description="How far the camera usefully sees")


class MotionSettings(Strict):
    """Per-camera motion detection settings (runtime-adjustable)."""

    enabled: bool = Field(default=True, description="Detect motion on this camera")
    threshold: int = Field(
        default=25, ge=1, le=255, description="Minimum brightness change of a pixel, in grey levels"
    )
    min_area: float = Field(
        default=0.0008, ge=0.0, le=1.0, description="Smallest moving region, as a share of the frame"
    )
    end_delay_s: float = Field(
        default=2.0, ge=0.0, le=300.0, description="Seconds without motion before an event ends"
    )
    min_duration_s: float = Field(
        default=0.3, ge=0.0, le=30.0, description="Motion must persist this long before an event starts"
    )
    update_interval_s: float = Field(
        default=1.0, ge=0.1, le=3600.0, description="Seconds between update phases of a running event"
    )
    max_event_s: float = Field(
        default=600.0, ge=5.0, le=86400.0, description="A longer event is ended and a new one started"
    )
    masks: list[Polygon] = Field(
        default_factory=list, description="Normalised polygons where motion is ignored"
    )
    publish_events: bool = Field(
        default=True,
        description=(
            "Publish motion events; false keeps motion detection only to steer object detection"
            " (a camera that reports objects without a motion event for every swaying tree)"
        ),
    )


DEFAULT_OBJECT_LABELS = ["person", "car", "bus", "truck", "motorcycle", "bicycle"]


class DetectionSettings(Strict):
    """Per-camera object detection settings (runtime-adjustable).

    Inference runs on motion regions, on the boxes of tracked objects due for a check, and on the
    whole frame every `full_frame_s`."""

    enabled: bool = Field(default=False, description="Detect objects in this camera's motion regions")
    labels: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]] = Field(
        default_factory=lambda: list(DEFAULT_OBJECT_LABELS),
        min_length=1,
        description="Object labels that raise events; names from the model's label map",
    )
    score_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Detections scoring below this are ignored"
    )
    min_box_area: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Smallest object box, as a share of the frame"
    )
    masks: list[Polygon] = Field(
        default_factory=list,
        description="Normalised polygons where objects are ignored (tested at the box's bottom centre)",
    )
    motion_fps: float | None = Field(
        default=None,
        gt=0.0,
        le=60.0,
        description=(
            "Most detections per second on motion regions (checks and full-frame passes come on top),"
            " tracks predicted between them; null: every analysed frame with motion"
        ),
    )
    known_motion_fps: float | None = Field(
        default=None,
        gt=0.0,
        le=60.0,
        description=(
            "Most detections per second on motion already accounted for: on a confirmed track (its event"
            " open, or stationary; the tracker predicts it between looks) or inside a crop looked at"
            " within 1/this s. Motion on a track that may still start an event, and new motion, is"
            " looked at on the next analysed frame; null: every analysed frame with motion, and 2 a"
            " second while the gateway is over detector.max_inferences_per_s"
        ),
    )
    min_hits: int = Field(
        default=3, ge=1, le=100, description="Detections of a track before its event starts"
    )
    end_delay_s: float = Field(
        default=3.0,
        ge=0.0,
        le=300.0,
        description=(
            "Seconds a track may go unseen before its event ends; a person still in view twice"
            " this (the detector misses small people for longer)"
        ),
    )
    min_duration_s: float = Field(
        default=0.5,
        ge=0.0,
        le=60.0,
        description=(
            "Seconds a moving object must have been tracked before its event starts, so that no event is"
            " shorter (a glimpse raises nothing)"
        ),
    )
    person_min_duration_s: float = Field(
        default=2.0,
        ge=0.0,
        le=60.0,
        description=(
            "Seconds a person must have been tracked before its event starts, if longer than"
            " min_duration_s (started_at is still when it was first seen): the model's boxes on small"
            " people come and go, and a second track on one person gets this long to rejoin the"
            " first instead of raising an event of its own"
        ),
    )
    update_interval_s: float = Field(
        default=1.0, ge=0.1, le=3600.0, description="Seconds between update phases of a running event"
    )
    stationary_s: float = Field(
        default=10.0,
        ge=1.0,
        le=3600.0,
        description="A box that hardly moves for this long is stationary and raises no new events",
    )
    stationary_check_s: float = Field(
        default=10.0,
        ge=1.0,
        le=3600.0,
        description="Seconds between detections on a stationary object's box that check it is still there",
    )
    full_frame_s: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description=(
            "Seconds between detection passes over the whole frame (in tiles) that find what motion"
            " missed, such as vehicles parked before the start; 0: only motion and checks"
        ),
    )


class BufferSettings(Strict):
    """Per-camera pre-event buffer: the last seconds kept so a clip starts before its event, as the
    camera's packets (cut at keyframes) or, on the pixel path, as JPEG frames."""

    pre_event_s: float = Field(
        default=10.0, gt=0.0, le=120.0, description="Seconds of video kept before the present moment"
    )
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        le=4 * 1024 * 1024 * 1024,
        description="Memory budget of the buffer in bytes; it covers fewer seconds when this bites",
    )
    jpeg_quality: int = Field(default=75, ge=10, le=100, description="JPEG quality of buffered frames")
    max_width: int | None = Field(
        default=None, ge=160, le=7680, description="Frames wider than this are downscaled; null: full size"
    )
    fps: float | None = Field(
        default=10.0, gt=0.0, le=60.0, description="Most frames per second kept; null keeps every frame"
    )


class ClipsSettings(Strict):
    """Per-camera event clips: an MP4 per event from start - pre_roll_s to end + post_roll_s."""

    enabled: bool = Field(default=True, description="Record a clip for each event of this camera")
    pre_roll_s: float = Field(
        default=5.0, ge=0.0, le=120.0, description="Seconds before the event's start included in its clip"
    )
    post_roll_s: float = Field(
        default=5.0, ge=0.0, le=120.0, description="Seconds after the event's end included in its clip"
    )


ONVIF_DEVICE_PATH = "/onvif/device_service"


class OnvifConfig(Strict):
    """Where a camera's ONVIF device service is and how to log in. The password lives in a file
    (first line), like the MQTT password, so it is never in the config, a log or a reply."""

    url: str = Field(
        max_length=2048,
        description=(
            "Device service: http://host[:port]/onvif/device_service (the path ONVIF defines; the"
            " client takes the other services' addresses from the device)"
        ),
    )
    username: str | None = Field(default=None, min_length=1, max_length=64, description="ONVIF user")
    password_file: Path | None = Field(
        default=None, description="File whose first line is the ONVIF user's password"
    )
    timeout_s: float = Field(
        default=5.0, gt=0.0, le=60.0, description="Longest wait for one ONVIF request before it fails"
    )
    rtsp_login: bool = Field(
        default=True,
        description=(
            "Stream URIs the agent asks the camera for (no `source`) get this username and password,"
            " since cameras check the same accounts for RTSP; false: used as the camera gives them"
        ),
    )

    @field_validator("url")
    @classmethod
    def _device_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"onvif url {redact(value)!r} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"onvif url {redact(value)!r} must be http(s)://host[:port]{ONVIF_DEVICE_PATH}")
        if parts.username or parts.password:
            raise ValueError("onvif url must not carry credentials: give username and password_file")
        if parts.path not in ("", "/", ONVIF_DEVICE_PATH) or parts.query:
            raise ValueError(
                f"onvif url {redact(value)!r}: the device service must be at {ONVIF_DEVICE_PATH}"
            )
        return value

    @model_validator(mode="after")
    def _login_pairs(self) -> OnvifConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("onvif.password_file needs onvif.username")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def resolved_password(self) -> str | None:
        """The password from `password_file` (None without one); ConfigError naming the file."""
        if self.password_file is None:
            return None
        try:
            lines = read_small(self.password_file).decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ConfigError("onvif.password_file", [f"cannot read {self.password_file}: {why}"]) from None
        if not lines or not lines[0]:
            raise ConfigError(
                "onvif.password_file", [f"{self.password_file} is empty (its first line is the password)"]
            )
        return lines[0]

    def file_problems(self) -> list[str]:
        """What `run` would refuse about the password file (for check-config)."""
        try:
            self.resolved_password()
        except ConfigError as exc:
            return exc.problems
        return []


class PtzConfig(Strict):
    """How the camera's ONVIF pan/tilt maps to the world (for ptz.look_at), and its leases.

    Pan: ONVIF pan `p` (generic space -1..1) faces compass heading
    `pan0_heading_deg + p * pan_deg_per_unit`. Tilt: ONVIF tilt `t` looks
    `tilt0_depression_deg + t * tilt_deg_per_unit` degrees below the horizon. Measure both once on
    site (two presets and a map are enough); the camera's own position is `geo`.
    """

    height_m: float = Field(
        default=6.0, gt=0.0, le=500.0, description="Height of the camera above the ground it looks at"
    )
    pan0_heading_deg: float = Field(
        default=0.0, ge=0.0, lt=360.0, description="Compass heading the camera faces at ONVIF pan 0"
    )
    pan_deg_per_unit: float = Field(
        default=180.0,
        ge=-360.0,
        le=360.0,
        description="Degrees turned clockwise per +1 of ONVIF pan (negative: the camera turns anticlockwise)",
    )
    tilt0_depression_deg: float = Field(
        default=45.0, ge=-90.0, le=90.0, description="Degrees below the horizon at ONVIF tilt 0"
    )
    tilt_deg_per_unit: float = Field(
        default=-45.0,
        ge=-180.0,
        le=180.0,
        description="Degrees further down per +1 of ONVIF tilt (negative: +tilt looks up)",
    )
    home_preset: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Preset the camera returns to after idle_return_s without PTZ commands; none: stays",
    )
    idle_return_s: float = Field(
        default=300.0, ge=5.0, le=86400.0, description="Seconds after the last PTZ command before going home"
    )
    status_poll_s: float = Field(
        default=2.0,
        ge=0.0,
        le=60.0,
        description=(
            "Seconds between PTZ GetStatus requests while no agency holds the camera, to notice moves"
            " the agent did not command (no events meanwhile); 0: never asked"
        ),
    )
    lease_s: float = Field(
        default=60.0,
        ge=5.0,
        le=3600.0,
        description="Seconds an agency keeps control after its last PTZ command; others get busy meanwhile",
    )

    @field_validator("pan_deg_per_unit", "tilt_deg_per_unit")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0.0:
            raise ValueError("must not be 0 (the camera would not turn)")
        return value


def _onvif_shorthand(value: Any) -> Any:
    """`onvif = "http://…"` is `onvif = { url = "http://…" }` (no credentials)."""
    return {"url": value} if isinstance(value, str) else value


class CameraConfig(Strict):
    id: Ident = Field(description="Camera id, unique on this gateway")
    name: str = Field(default="", max_length=128, description="Human-readable camera name")
    source: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "rtsp://…, file:///path.mp4, usb:N, picamera:N or synthetic:street. May be left out for a"
            " camera with `onvif`: the agent then asks the camera for its largest profile's RTSP URI"
            " at start and after the camera reboots"
        ),
    )
    detect_source: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Low-resolution substream used for detection; `source` stays the main stream for"
            " snapshots, streams and clips. Absent: detect on `source`, or, when `source` comes from"
            " `onvif`, on the camera's smallest profile"
        ),
    )
    enabled: bool = Field(default=True, description="A disabled camera is reported and not opened")
    detect_fps: float = Field(
        default=10.0, gt=0.0, le=60.0, description="Frames per second analysed for motion"
    )
    allowed_agencies: list[Ident] = Field(
        default_factory=list, description="Agencies that may see this camera's imagery"
    )
    privacy_masks: list[Polygon] = Field(
        default_factory=list, description="Normalised polygons blanked in every image that leaves"
    )
    geo: GeoConfig | None = Field(default=None, description="Where the camera is and what it sees")
    motion: MotionSettings = Field(default_factory=MotionSettings, description="Motion detection")
    buffer: BufferSettings = Field(
        default_factory=BufferSettings, description="Pre-event buffer kept in memory for clips"
    )
    clips: ClipsSettings = Field(default_factory=ClipsSettings, description="Event clips")
    footage: FootagePath = Field(
        default="auto",
        description=(
            "How clips and the pre-event buffer keep video: 'packets' keeps the camera's own H.264/H.265"
            " (rtsp:// sources without privacy masks), 'pixels' decodes and re-encodes; 'auto' chooses"
            " packets where allowed"
        ),
    )
    decoder: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]{1,32}$",
        description=(
            "FFmpeg decoder for rtsp:// streams, e.g. h264_v4l2m2m on a Raspberry Pi; the software"
            " decoder is used when it is missing or fails"
        ),
    )

    @model_validator(mode="after")
    def _pre_roll_fits_buffer(self) -> CameraConfig:
        if self.clips.pre_roll_s > self.buffer.pre_event_s:
            raise ValueError(
                f"clips.pre_roll_s ({self.clips.pre_roll_s}) exceeds buffer.pre_event_s"
                f" ({self.buffer.pre_event_s}): the buffer cannot hold that much pre-roll"
            )
        return self

    detection: DetectionSettings = Field(
        default_factory=DetectionSettings, description="Object detection on motion regions"
    )

    @field_validator("source", "detect_source")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        schemes = ("rtsp://", "rtsps://", "http://", "https://", "file://", "usb:", "picamera:", "synthetic:")
        if value is not None and not value.startswith(schemes):
            raise ValueError(f"source {redact(value)!r} must start with one of {', '.join(schemes)}")
        if value is not None and value.startswith(("rtsp://", "rtsps://", "http://", "https://")):
            problem = url_problem(value)
            if problem is not None:
                raise ValueError(f"source {redact(value)!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _footage_path_allowed(self) -> CameraConfig:
        if self.footage != "packets":
            return self
        if self.source is not None and not self.source.startswith(PACKET_SCHEMES):
            raise ValueError(
                f"footage = 'packets' needs an rtsp:// or rtsps:// source, not {redact(self.source)!r}"
            )
        if self.privacy_masks:
            raise ValueError(
                "footage = 'packets' would store and send the camera's unmasked pixels: a camera with"
                " privacy_masks must use 'pixels' (or 'auto')"
            )
        return self

    @property
    def records_packets(self) -> bool:
        """Whether clips and the pre-event buffer keep the camera's packets (else decoded pixels).

        Masked cameras never do: masked pixels may not be stored, and masking needs decoded pixels.
        """
        if self.footage == "pixels" or self.privacy_masks:
            return False
        if self.source is None:
            return self.onvif is not None  # ONVIF gives RTSP URIs (GetStreamUri, RTP over RTSP)
        return self.source.startswith(PACKET_SCHEMES)

    @property
    def streams_from_onvif(self) -> bool:
        """Whether the agent asks the camera (ONVIF GetStreamUri) for its stream URIs."""
        return self.source is None and self.onvif is not None

    onvif: OnvifConfig | None = Field(
        default=None,
        description="The camera's ONVIF device service: PTZ control (ptz_agencies) and `edge-agent discover`",
    )
    ptz_agencies: list[Ident] = Field(
        default_factory=list,
        description="Agencies that may turn this camera (ptz.* commands); each must be in allowed_agencies",
    )
    ptz: PtzConfig | None = Field(
        default=None, description="PTZ calibration, home preset and lease; needs onvif (and geo for look_at)"
    )

    @field_validator("onvif", mode="before")
    @classmethod
    def _onvif_url_only(cls, value: Any) -> Any:
        return _onvif_shorthand(value)

    @model_validator(mode="after")
    def _source_or_onvif(self) -> CameraConfig:
        if self.source is None and self.onvif is None:
            raise ValueError("source is required (or onvif, to ask the camera for its stream URIs)")
        return self

    @model_validator(mode="after")
    def _ptz_needs_onvif(self) -> CameraConfig:
        if (self.ptz_agencies or self.ptz is not None) and self.onvif is None:
            raise ValueError("ptz_agencies and ptz need onvif (the camera's ONVIF device service)")
        outside = [a for a in self.ptz_agencies if a not in self.allowed_agencies]
        if outside:
            raise ValueError(
                f"ptz_agencies {outside} are not in allowed_agencies: an agency turning a camera must see it"
            )
        return self

    @property
    def ptz_settings(self) -> PtzConfig:
        """`ptz`, or the defaults when the table is absent."""
        return self.ptz if self.ptz is not None else PtzConfig()

    @model_validator(mode="after")
    def _detect_source_differs(self) -> CameraConfig:
        if self.detect_source is not None and self.detect_source == self.source:
            raise ValueError("detect_source is the same as source: leave it out to detect on the main stream")
        return self
