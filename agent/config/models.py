"""The agent's configuration: a TOML file read into typed, strict pydantic models.

Every model forbids unknown keys so that a typo is an error rather than a silently ignored
setting, and `load_config` turns pydantic's errors into one line per fault naming the key path
and the bad value, except that values under secret-looking keys are never shown and URL
passwords are masked (agent.config.redact): these lines reach logs and terminals.

This module holds the whole file (`AgentConfig`) and its loading; the sections live beside it,
one module per family (`gateway`: gateway, mqtt, tls; `cameras`: each camera and its settings;
`resources`: detector, streams, storage; `console`: the commissioning page; `base`: what they
share), and are re-exported here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from agent.config.base import ID_PATTERN, Polygon, Strict, lax_problems, read_small
from agent.config.cameras import (
    DEFAULT_OBJECT_LABELS,
    BufferSettings,
    CameraConfig,
    ClipsSettings,
    DetectionSettings,
    GeoConfig,
    MotionSettings,
)
from agent.config.console import ConsoleConfig, ConsoleUser
from agent.config.gateway import GatewayConfig, MqttConfig, TlsConfig
from agent.config.redact import MASK, is_secret_name, redact
from agent.config.resources import DetectorConfig, StorageConfig, StreamSettings
from agent.errors import ConfigError

__all__ = [
    "DEFAULT_OBJECT_LABELS",
    "ID_PATTERN",
    "AgentConfig",
    "BufferSettings",
    "CameraConfig",
    "ClipsSettings",
    "ConsoleConfig",
    "ConsoleUser",
    "DetectionSettings",
    "DetectorConfig",
    "GatewayConfig",
    "GeoConfig",
    "MotionSettings",
    "MqttConfig",
    "Polygon",
    "StorageConfig",
    "StreamSettings",
    "Strict",
    "TlsConfig",
    "format_errors",
    "load_config",
    "parse_config",
]


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
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, description="The commissioning web page (off by default)"
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


CONFIG_BYTES = 16 << 20  # a config of 1000 cameras is under 1 MB


def parse_config(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    problems = lax_problems(AgentConfig, data)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, problems + format_errors(exc)) from None
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; raise ConfigError naming every problem."""
    p = Path(path)
    try:
        raw = read_small(p, CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8").removeprefix("\ufeff"))  # a BOM some editors write
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"TOML syntax error: {exc}"]) from None
    return parse_config(data, str(p))
