"""The agent's configuration: a TOML file read into typed, strict pydantic models.

Every model forbids unknown keys so that a typo is an error rather than a silently ignored
setting, and `load_config` turns pydantic's errors into one line per fault naming the key path
and the bad value, except that values under secret-looking keys are never shown and URL
passwords are masked (agent.config.redact): these lines reach logs and terminals.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.config.redact import MASK, is_secret_name, redact
from agent.errors import ConfigError

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Ident = Annotated[str, Field(pattern=ID_PATTERN, description="An id matching " + ID_PATTERN)]
Point = Annotated[
    tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]],
    Field(description="A point [x, y] normalised to 0..1 of the frame"),
]
Polygon = Annotated[
    list[Point], Field(min_length=3, max_length=64, description="A polygon of 3 to 64 normalised points")
]


class Strict(BaseModel):
    """Base of all config models: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GatewayConfig(Strict):
    district: Ident = Field(description="District this gateway belongs to, e.g. gangnam")
    id: Ident = Field(description="Gateway id, unique within the district")
    data_dir: Path = Field(
        default=Path("/var/lib/edge-agent"), description="Directory holding all the agent's state"
    )
    topic_prefix: str = Field(
        default="cctv/v1",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Topic prefix before {district}/{gateway}",
    )
    name: str = Field(default="", max_length=128, description="Human-readable gateway name")
    telemetry_interval_s: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="Seconds between telemetry messages"
    )
    admin_agencies: list[Ident] = Field(
        default_factory=lambda: ["admin"], description="Agencies allowed to change settings"
    )
    audit_key_file: Path | None = Field(
        default=None,
        description=(
            "File holding this gateway's audit key (at least 32 bytes, e.g. `openssl rand -hex 32`;"
            " mode 0600 or 0640, never published): the audit chain is HMAC-SHA256 under it."
            " Absent: plain SHA-256, which whoever can write data_dir can re-chain"
        ),
    )
    platform_keys: list[Path] = Field(
        default_factory=list,
        max_length=2,
        description=(
            "Files holding the platform's Ed25519 public keys (PEM or base64); commands must be signed"
            " by one of them. Two during a key rotation; none: commands are not authenticated"
        ),
    )
    reply_prefixes: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Topic prefixes besides {root}/reply under which command replies may go; a request"
            " naming any other reply topic is refused, audited and answered nowhere"
        ),
    )


class TlsConfig(Strict):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="Client private key (PEM)")
    insecure: bool = Field(default=False, description="Skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    def file_problems(self, prefix: str = "mqtt.tls") -> list[str]:
        """What loading these files for the connection would fail on, one line per key.

        The model only checks that paths are given; `run` reads them when it connects. This reads
        them the same way (PEM, through `ssl`), so check-config can refuse what `run` would.
        """
        import ssl

        problems = []
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is not None and (why := _unreadable(path)):
                problems.append(f"{prefix}.{name}: {why}")
        if problems:
            return problems
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca_file))
            except (ssl.SSLError, ValueError) as exc:
                problems.append(f"{prefix}.ca_file: {self.ca_file} holds no PEM CA certificate ({exc})")
        if self.cert_file is not None and self.key_file is not None:
            problems += _cert_key_problems(self.cert_file, self.key_file, prefix)
        return problems


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be read as a file, or None."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _cert_key_problems(cert: Path, key: Path, prefix: str) -> list[str]:
    """Faults of a client certificate and its key: not PEM, an encrypted key (the agent has no
    passphrase to give), or a key that is not the certificate's."""
    import ssl

    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    problems = []
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except ValueError:
        problems.append(f"{prefix}.cert_file: {cert} holds no PEM certificate")
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except TypeError:
        problems.append(f"{prefix}.key_file: {key} is encrypted; the agent needs an unencrypted key")
    except (ValueError, UnsupportedAlgorithm):
        problems.append(f"{prefix}.key_file: {key} holds no PEM private key")
    if problems:
        return problems
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        problems.append(f"{prefix}.key_file: {key} is not the private key of {cert} ({exc.reason or exc})")
    return problems


class MqttConfig(Strict):
    host: str = Field(default="127.0.0.1", min_length=1, description="Broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    client_id: str | None = Field(
        default=None, max_length=128, description="Client id; default edge-{district}-{gateway}"
    )
    username: str | None = Field(default=None, description="Username for the broker")
    password: str | None = Field(default=None, description="Password (prefer password_file)")
    password_file: Path | None = Field(default=None, description="File whose first line is the password")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds")
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60, description="First reconnect delay")
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600, description="Longest reconnect delay")
    tls: TlsConfig | None = Field(default=None, description="TLS settings; absent means plain TCP")

    @model_validator(mode="after")
    def _checks(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                lines = self.password_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
                raise ConfigError(
                    "mqtt.password_file", [f"cannot read {self.password_file}: {why}"]
                ) from None
            if not lines:
                raise ConfigError(
                    "mqtt.password_file", [f"{self.password_file} is empty (its first line is the password)"]
                )
            return lines[0]
        return self.password

    def file_problems(self) -> list[str]:
        """What `run` would refuse in the files this section names (password_file, TLS files)."""
        problems = []
        if self.password_file is not None:
            try:
                self.resolved_password()
            except ConfigError as exc:
                problems += [f"mqtt.password_file: {line}" for line in exc.problems]
        if self.tls is not None:
            problems += self.tls.file_problems()
        return problems


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
    """Per-camera pre-event buffer: the last seconds kept as JPEG so a clip starts before its event."""

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
        return value

    @model_validator(mode="after")
    def _detect_source_differs(self) -> CameraConfig:
        if self.detect_source is not None and self.detect_source == self.source:
            raise ValueError("detect_source is the same as source: leave it out to detect on the main stream")
        return self


class DetectorConfig(Strict):
    """The gateway's one object detector, shared by all cameras."""

    model_path: Path | None = Field(
        default=None, description="TFLite detection model; default the vendored SSD MobileNet v1 COCO"
    )
    labels_path: Path | None = Field(
        default=None, description="Label map, line N = class id N; required with model_path"
    )
    input_size: int | None = Field(
        default=None, ge=32, le=2048, description="Square input side in pixels; default the model's own"
    )
    layout: Literal["auto", "ssd", "yolo"] = Field(
        default="auto", description="Output layout: SSD post-processed boxes, or raw YOLO with NMS"
    )
    threads: int = Field(default=2, ge=1, le=16, description="Interpreter threads")
    max_inferences_per_s: float = Field(
        default=20.0, gt=0.0, le=1000.0, description="Gateway-wide cap on model invocations per second"
    )
    nms_iou: float = Field(
        default=0.45, gt=0.0, le=1.0, description="Overlap above which YOLO boxes of a class are merged"
    )

    @model_validator(mode="after")
    def _labels_with_model(self) -> DetectorConfig:
        if self.model_path is not None and self.labels_path is None:
            raise ValueError("labels_path is required when model_path is set")
        return self


class StreamSettings(Strict):
    """Limits on live streams, gateway-wide (runtime-adjustable)."""

    max_sessions: int = Field(default=4, ge=0, le=64, description="Concurrent stream sessions")
    max_bytes_per_s: int = Field(
        default=1_500_000, ge=10_000, le=1_000_000_000, description="Total stream bandwidth, bytes/s"
    )


class StorageConfig(Strict):
    """Disk and memory bounds of what the agent keeps under data_dir (outbox, clips)."""

    outbox_max_messages: int = Field(
        default=100_000, ge=100, le=10_000_000, description="Most messages the outbox holds awaiting PUBACK"
    )
    outbox_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024 * 1024 * 1024,
        description="Most bytes the outbox holds; past either bound telemetry is dropped first, events last",
    )
    clips_quota_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=0,
        description="Disk quota of data_dir/clips; the oldest unheld clips are deleted beyond it",
    )
    min_free_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="Free space kept on data_dir's filesystem; below it clips pause, events continue",
    )


class AgentConfig(Strict):
    gateway: GatewayConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras wired to this gateway")
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Outbox and clip storage bounds under data_dir"
    )
    streams: StreamSettings = Field(default_factory=StreamSettings, description="Live stream limits")
    detector: DetectorConfig | None = Field(
        default=None, description="Object detector settings; absent means the vendored default model"
    )

    @model_validator(mode="after")
    def _unique_cameras(self) -> AgentConfig:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} appears twice")
            seen.add(cam.id)
        return self

    @property
    def topic_root(self) -> str:
        return f"{self.gateway.topic_prefix}/{self.gateway.district}/{self.gateway.id}"

    def camera(self, camera_id: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.id == camera_id), None)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per fault: the key path, pydantic's message and the offending value.

    A value under a secret-looking key (`password`, a misspelt `pasword`, `*secret*`, `*key*`…)
    is shown as `***`; any other is redacted before it is cut to 80 characters, so that a cut
    cannot leave half a password behind the mask.
    """
    lines = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        value = err.get("input")
        if isinstance(value, dict) or err["type"] == "missing":
            shown = ""
        elif any(isinstance(part, str) and is_secret_name(part) for part in err["loc"]):
            shown = f" (got {MASK})"
        else:
            shown = f" (got {redact(repr(value)[:4096]):.80})"  # what is shown comes from the first KiB
        lines.append(redact(f"{path or '<root>'}: {msg}{shown}"))
    return lines


def parse_config(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; raise ConfigError naming every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"TOML syntax error: {exc}"]) from None
    return parse_config(data, str(p))
