"""A camera's section, `[[cameras]]`: its source and place, and the per-camera motion, detection,
pre-event buffer and clip settings (those `config.set` may change at runtime start from here).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from agent.config.base import Ident, Polygon, Strict
from agent.config.redact import redact

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


DEFAULT_OBJECT_LABELS = ["person", "car", "bus", "truck", "motorcycle", "bicycle"]


class DetectionSettings(Strict):
    """Per-camera object detection settings (runtime-adjustable); inference runs only on motion."""

    enabled: bool = Field(default=False, description="Detect objects in this camera's motion regions")
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
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
    min_hits: int = Field(
        default=3, ge=1, le=100, description="Detections of a track before its event starts"
    )
    end_delay_s: float = Field(
        default=3.0, ge=0.0, le=300.0, description="Seconds a track may go unseen before its event ends"
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


class CameraConfig(Strict):
    id: Ident = Field(description="Camera id, unique on this gateway")
    name: str = Field(default="", max_length=128, description="Human-readable camera name")
    source: str = Field(
        min_length=1,
        description="rtsp://…, file:///path.mp4, usb:N, picamera:N or synthetic:street",
    )
    detect_source: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Low-resolution substream used for detection; `source` stays the main stream for"
            " snapshots, streams and clips. Absent: detect on `source`"
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
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError as exc:
                raise ValueError(f"source {redact(value)!r} is not a valid URL: {exc}") from None
            if not parts.hostname:
                raise ValueError(f"source {redact(value)!r} has no host")
        return value

    @model_validator(mode="after")
    def _footage_path_allowed(self) -> CameraConfig:
        if self.footage != "packets":
            return self
        if not self.source.startswith(PACKET_SCHEMES):
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
        return self.source.startswith(PACKET_SCHEMES)

    @model_validator(mode="after")
    def _detect_source_differs(self) -> CameraConfig:
        if self.detect_source is not None and self.detect_source == self.source:
            raise ValueError("detect_source is the same as source: leave it out to detect on the main stream")
        return self
