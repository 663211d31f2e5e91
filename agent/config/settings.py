"""Runtime-adjustable settings: what `config.get` reports and `config.set` may change.

The config file gives the starting values; changes made by the platform are validated as a
whole, persisted atomically under data_dir (so they survive a restart) and overlaid on the file's
values at the next start. Privacy masks are reported but can only be changed in the config file
(by hand or through the commissioning console, `file_changed`): no request from the platform may
weaken them.

settings.json is read and written through agent.files: never through a symbolic link (a link is
refused and moved aside), created 0600 whatever the umask.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from agent.config import (
    AgentConfig,
    DetectionSettings,
    MotionSettings,
    Polygon,
    StreamSettings,
    Strict,
    format_errors,
)
from agent.errors import ConfigError
from agent.files import read_bytes, set_aside, write_atomic

log = logging.getLogger(__name__)


class CameraSettings(Strict):
    motion: MotionSettings = Field(description="Motion detection settings")
    detection: DetectionSettings = Field(description="Object detection settings")
    privacy_masks: list[Polygon] = Field(description="Privacy masks (read-only here; set in the file)")


class RuntimeSettings(Strict):
    cameras: dict[str, CameraSettings] = Field(description="Per camera, by id")
    streams: StreamSettings = Field(description="Live stream limits of the gateway")


def from_config(cfg: AgentConfig) -> RuntimeSettings:
    return RuntimeSettings(
        cameras={
            c.id: CameraSettings(motion=c.motion, detection=c.detection, privacy_masks=c.privacy_masks)
            for c in cfg.cameras
        },
        streams=cfg.streams,
    )


def _merge(base: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `partial` into a copy of `base`; unknown keys are kept for validation to name."""
    out = copy.deepcopy(base)
    for key, value in partial.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class SettingsStore:
    """Holds the settings in force; `apply` validates, persists and returns the new settings.

    `_lock` serialises apply() calls and guards `_current`.
    """

    def __init__(self, cfg: AgentConfig, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file_settings = from_config(cfg)
        self._current = self._file_settings
        self._load()

    @property
    def current(self) -> RuntimeSettings:
        with self._lock:
            return self._current

    def as_dict(self) -> dict[str, Any]:
        return self.current.model_dump(mode="json")

    def _load(self) -> None:
        try:
            raw = read_bytes(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # LinkRefused: a link, or a folder
                self._set_aside(f"it {exc.strerror or 'is not a regular file'}")
                return
            log.error("cannot read persisted settings %s: %s; using the config file's", self.path, exc)
            return
        try:
            saved = json.loads(raw)
            if not isinstance(saved, dict):
                raise TypeError("not a JSON object")
            # Cameras removed from the config file since are dropped; new ones keep file values.
            saved_cams = saved.get("cameras", {})
            if isinstance(saved_cams, dict):
                saved["cameras"] = {k: v for k, v in saved_cams.items() if k in self._file_settings.cameras}
            self._current = self._validate(saved, self._file_settings)
            log.info("runtime settings restored from %s", self.path)
        except (ValueError, TypeError, ConfigError) as exc:
            self._set_aside(str(exc))

    def _set_aside(self, reason: str) -> None:
        """Move the file (a link itself, never its target) aside; the config file's values rule."""
        try:
            aside = set_aside(self.path)
        except OSError as exc:
            log.error(
                "persisted settings %s are unusable (%s) and cannot be moved aside (%s); using the"
                " config file's",
                self.path,
                reason,
                exc.strerror or exc,
            )
            return
        log.error("persisted settings %s are unusable (%s); moved to %s", self.path, reason, aside.name)

    def _validate(self, partial: dict[str, Any], base: RuntimeSettings) -> RuntimeSettings:
        merged = _merge(base.model_dump(mode="json"), partial)
        cams = merged.get("cameras")
        for cam_id in cams if isinstance(cams, dict) else {}:
            if cam_id not in self._file_settings.cameras:
                raise ConfigError("settings", [f"cameras.{cam_id}: no such camera"])
        try:
            # Strict, as JSON: the platform's "30" is not silently taken for 30.
            new = RuntimeSettings.model_validate_json(json.dumps(merged), strict=True)
        except ValidationError as exc:
            raise ConfigError("settings", format_errors(exc)) from None
        for cam_id, cam in new.cameras.items():
            if cam.privacy_masks != self._file_settings.cameras[cam_id].privacy_masks:
                raise ConfigError(
                    "settings", [f"cameras.{cam_id}.privacy_masks: can only be changed in the config file"]
                )
        return new

    def apply(
        self, partial: dict[str, Any], check: Callable[[RuntimeSettings], None] | None = None
    ) -> RuntimeSettings:
        """Validate `partial` merged over the current settings, persist, and make it current.

        `check` may refuse the validated result (raising ConfigError) before anything is persisted:
        the runtime uses it for what only the loaded model knows, such as its labels.
        """
        if not isinstance(partial, dict):
            raise ConfigError("settings", ["<root>: expected an object"])
        with self._lock:
            new = self._validate(partial, self._current)
            if check is not None:
                check(new)
            self._persist(new)
            self._current = new
            return new

    def file_changed(self, camera: str, masks: CameraSettings) -> RuntimeSettings:
        """The config file now holds `masks`' three mask lists for `camera` (the console wrote
        them): they become the file's values and the ones in force, other settings unchanged.
        Persisted only where earlier `config.set` changes are persisted, so that a gateway
        without them keeps reading the file at its next start."""
        with self._lock:

            def with_masks(cam: CameraSettings) -> CameraSettings:
                return CameraSettings(
                    motion=cam.motion.model_copy(update={"masks": masks.motion.masks}),
                    detection=cam.detection.model_copy(update={"masks": masks.detection.masks}),
                    privacy_masks=masks.privacy_masks,
                )

            file_cams = dict(self._file_settings.cameras)
            file_cams[camera] = with_masks(file_cams[camera])
            self._file_settings = self._file_settings.model_copy(update={"cameras": file_cams})
            cams = dict(self._current.cameras)
            cams[camera] = with_masks(cams[camera])
            new = self._current.model_copy(update={"cameras": cams})
            if self.path.exists():
                self._persist(new)
            self._current = new
            return new

    def _persist(self, settings: RuntimeSettings) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, settings.model_dump_json(indent=2).encode())
