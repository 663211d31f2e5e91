"""The running agent as the commissioning console sees it (agent.console.gateway.ConsoleGateway).

Reads only (camera health, newest frames, overlays, recent events), plus two ways to act, each
owned elsewhere: the audit log, and `Agent.apply_camera`, which puts saved masks in force.
Safe to call from any of the console's request threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.commands.audit import AuditLog
from agent.config import AgentConfig
from agent.footage.images import encode_outgoing
from agent.runtime.camera import CameraWorker
from agent.runtime.config_check import config_problems
from agent.runtime.recent_events import RecentEvents

LIVE_QUALITY = 75


class ConsoleBridge:
    def __init__(
        self,
        config: Callable[[], AgentConfig],
        cameras: Mapping[str, CameraWorker],
        recent: RecentEvents,
        audit_log: AuditLog,
        apply_camera: Callable[[AgentConfig, str], None],
    ) -> None:
        self._config = config
        self._cameras = cameras
        self._recent = recent
        self._audit = audit_log
        self._apply = apply_camera

    @property
    def label(self) -> str:
        gateway = self._config().gateway
        return f"{gateway.district}/{gateway.id}"

    def config(self) -> AgentConfig:
        return self._config()

    def cameras(self) -> list[dict[str, Any]]:
        out = []
        for cam in self._config().cameras:
            worker = self._cameras.get(cam.id)
            status = worker.status if worker is not None else None
            running = worker is not None and status is not None and status.state == "ok"
            out.append(
                {
                    "id": cam.id,
                    "name": cam.name,
                    "enabled": cam.enabled,
                    "state": status.state if status else "unknown",
                    "fps": round(worker.stats.fps, 1) if running and worker is not None else 0.0,
                    "error": status.error if status else None,
                    "width": status.width if status else None,
                    "height": status.height if status else None,
                    "footage": "packets" if cam.records_packets else "pixels",
                    "last_event": self._recent.last(cam.id),
                }
            )
        return out

    def frame_jpeg(self, camera: str, max_width: int) -> bytes | None:
        cam = self._config().camera(camera)
        worker = self._cameras.get(camera)
        frame = worker.latest_frame() if worker is not None else None
        if cam is None or frame is None:
            return None
        return encode_outgoing(frame.image, cam.privacy_masks, max_width=max_width, quality=LIVE_QUALITY).data

    def overlay(self, camera: str) -> dict[str, Any] | None:
        worker = self._cameras.get(camera)
        if worker is None:
            return None
        found = worker.overlay()
        if found is None:
            return {"ts": None, "motion": [], "objects": []}
        return {
            "ts": found.ts,
            "motion": [[round(v, 4) for v in region] for region in found.regions],
            "objects": [
                {
                    "label": t.label,
                    "score": round(t.score, 3),
                    "box": [round(v, 4) for v in t.box],
                    "track": str(t.track_id),
                    "stationary": t.stationary,
                }
                for t in found.tracks
            ],
        }

    def events(self, camera: str) -> list[dict[str, Any]]:
        return self._recent.for_camera(camera)

    def event_snapshot(self, event_id: str) -> tuple[str, bytes] | None:
        return self._recent.snapshot(event_id)

    def config_problems(self, cfg: AgentConfig) -> list[str]:
        return config_problems(cfg)

    def apply_camera(self, new: AgentConfig, camera: str) -> None:
        self._apply(new, camera)

    def audit(self, fields: Mapping[str, Any]) -> None:
        self._audit.append(fields)
