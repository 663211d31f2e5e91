"""Configuration: the TOML file's typed, strict models, and the runtime overrides on top of them.

`models.py` holds the whole file and its loading (every section `extra="forbid"`, errors naming the
key path) and re-exports the sections, one module per family: `gateway.py` (gateway, mqtt, tls),
`cameras.py` (each camera with its motion, detection, buffer, clip and geo settings), `resources.py`
(detector, streams, storage), `console.py` (the commissioning page), on `base.py`'s strict model
and id and polygon types; all of it is re-exported here. `settings.py` holds what `config.get`
reports and `config.set` may change, persisted under data_dir. Nothing here starts threads or
touches the network.
"""

from agent.config.models import (
    DEFAULT_OBJECT_LABELS,
    ID_PATTERN,
    AgentConfig,
    BufferSettings,
    CameraConfig,
    ClipsSettings,
    ConsoleConfig,
    ConsoleUser,
    DetectionSettings,
    DetectorConfig,
    GatewayConfig,
    GeoConfig,
    MotionSettings,
    MqttConfig,
    Polygon,
    StorageConfig,
    StreamSettings,
    Strict,
    TlsConfig,
    format_errors,
    load_config,
    parse_config,
)

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
