"""Retention on its own timer: the clip store kept within quota, a full disk shown on every camera.

Retention used to run inside the telemetry sample, so deleting clips followed the telemetry
interval. It now runs at start and every `RETENTION_INTERVAL_S` on a `Ticker` named `housekeeping` (the
clip recorder also enforces it before and after each clip it writes).
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.footage.retention import Retention, RetentionReport
from agent.runtime.camera import CameraWorker

RETENTION_INTERVAL_S = 10.0


class Housekeeping:
    """One round: enforce retention, then tell the cameras whether the disk is full.

    The agent runs `run_once` on a `Ticker` named `housekeeping`, at start and every
    `RETENTION_INTERVAL_S`.
    """

    def __init__(self, retention: Retention, cameras: Iterable[CameraWorker]) -> None:
        self._retention = retention
        self._cameras = list(cameras)

    def run_once(self) -> RetentionReport:
        report = self._retention.enforce()
        note = f"disk full: clips paused ({report.reason})" if report.disk_full else None
        for worker in self._cameras:
            worker.set_note(note)
        return report
