"""Runtime settings in force: validated and persisted by the store, handed to each camera's thread.

`config.set` arrives on a command worker. `SettingsApplier.apply` validates and persists the change
(agent.config.settings.SettingsStore), hands every camera its complete new settings through
`CameraWorker.apply` (the camera's detect thread takes them between two frames, so no frame sees
half of a change), tells the listeners (stream limits) and reports the result retained on
`config/reported`. `_lock` serialises whole applications, so two concurrent `config.set` reach the
cameras in the order they were persisted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent.analysis.objects.service import DetectionService, load_detection_service
from agent.config import DetectorConfig
from agent.config.settings import CameraSettings, RuntimeSettings, SettingsStore
from agent.errors import AgentError
from agent.runtime.camera import CameraWorker

log = logging.getLogger(__name__)


class SharedDetector:
    """The gateway's one TFLite detection service, loaded on first need.

    Loading lazily lets `config.set` enable detection on a camera without a restart, and keeps
    motion-only gateways free of the interpreter. A load failure is kept in `error` (telemetry
    shows it) and retried at the next need; motion events carry on without objects.
    `_lock` guards `_service`, `error` and `_running`.
    """

    def __init__(self, cfg: DetectorConfig | None) -> None:
        self._cfg = cfg
        self._lock = threading.Lock()
        self._service: DetectionService | None = None
        self._running = False
        self.error: str | None = None

    def get(self) -> DetectionService | None:
        """The service, loading (and, once started, starting) it on first call; None if it cannot load."""
        with self._lock:
            if self._service is None:
                try:
                    self._service = load_detection_service(self._cfg)
                except AgentError as exc:
                    self.error = str(exc)
                    log.error("object detection disabled: %s", exc)
                    return None
                if self._running:
                    self._service.start()
            self.error = None
            return self._service

    @property
    def service(self) -> DetectionService | None:
        with self._lock:
            return self._service

    def start(self) -> None:
        with self._lock:
            self._running = True
            if self._service is not None:
                self._service.start()

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._running = False
            service = self._service
        if service is not None:
            service.stop(timeout=timeout)

    def telemetry(self) -> dict[str, Any] | None:
        """The `detection` telemetry section, or None while detection was never wanted."""
        service, error = self.service, self.error
        if service is None and error is None:
            return None
        stats = service.stats() if service is not None else None
        return {
            "error": error,
            "inferences": stats.inferences if stats else 0,
            "dropped_rate_limit": stats.dropped_rate_limit if stats else 0,
            "dropped_queue_full": stats.dropped_queue_full if stats else 0,
            "pressed": service.pressed() if service is not None else False,
        }


class SettingsApplier:
    """Applies runtime settings: persisted by the store, taken by the cameras, reported to the platform."""

    def __init__(
        self,
        store: SettingsStore,
        cameras: Mapping[str, CameraWorker],
        detector: SharedDetector,
        report: Callable[[bytes], None],
    ) -> None:
        self._store = store
        self._cameras = cameras
        self._detector = detector
        self._report = report
        self._listeners: list[Callable[[RuntimeSettings], None]] = []
        self._lock = threading.Lock()
        # _report_lock: reports are read and published in one step, so an older one (a reconnect's)
        # never follows a newer one (a config.set's) onto the retained topic. Not _lock: that is
        # held while the detector's model loads, and reconnects report from paho's thread.
        self._report_lock = threading.Lock()

    @property
    def current(self) -> RuntimeSettings:
        return self._store.current

    def as_dict(self) -> dict[str, Any]:
        return self._store.as_dict()

    def add_listener(self, listener: Callable[[RuntimeSettings], None]) -> None:
        """Call `listener` with the new settings after every applied change (before the report)."""
        self._listeners.append(listener)

    def apply_current(self) -> None:
        """Hand the settings in force to every camera (at start, before the cameras' threads run)."""
        with self._lock:
            self._hand_to_cameras(self._store.current)

    def apply(self, partial: dict[str, Any]) -> dict[str, Any]:
        """Validate, persist and apply `partial`; raises ConfigError naming the fault (nothing applied)."""
        with self._lock:
            new = self._store.apply(partial, check=self._check_labels)
            self._in_force(new)
        self.report()
        return new.model_dump(mode="json")

    def file_changed(self, camera: str, masks: CameraSettings) -> None:
        """The console wrote the camera's masks to the config file: in force at once, reported."""
        with self._lock:
            self._in_force(self._store.file_changed(camera, masks))
        self.report()

    def report(self) -> None:
        """Publish the settings in force (retained on config/reported; also after every connect)."""
        with self._report_lock:
            self._report(json.dumps(self._store.as_dict(), separators=(",", ":")).encode())

    def _check_labels(self, settings: RuntimeSettings) -> None:
        """Refuse labels the model lacks before the change is persisted (the cameras would refuse it)."""
        for cam_id, cam in settings.cameras.items():
            if cam.detection.enabled and self._cameras[cam_id].cfg.enabled:
                service = self._detector.get()
                if service is not None:
                    service.check_labels(cam_id, cam.detection)

    def _in_force(self, new: RuntimeSettings) -> None:
        """Hand `new` to the cameras, then to the listeners (under `_lock`)."""
        self._hand_to_cameras(new)
        for listener in self._listeners:
            listener(new)

    def _hand_to_cameras(self, settings: RuntimeSettings) -> None:
        for cam_id, cam in settings.cameras.items():
            worker = self._cameras[cam_id]
            wanted = cam.detection.enabled and worker.cfg.enabled
            objects = self._detector.get() if wanted else None
            worker.apply(cam.motion, cam.detection, objects)
