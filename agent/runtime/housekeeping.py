"""Retention on its own timer: the clip store kept within quota, a full disk shown on every camera.

Retention used to run inside the telemetry sample, so deleting clips followed the telemetry
interval. It now runs at start and every `RETENTION_INTERVAL_S` on thread `housekeeping` (the
clip recorder also enforces it before and after each clip it writes).
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.footage.retention import Retention, RetentionReport
from agent.runtime.camera import CameraWorker
from agent.runtime.ticker import Ticker

RETENTION_INTERVAL_S = 10.0


class Housekeeping:
    """Owns the `housekeeping` thread: enforce retention, then tell the cameras whether the disk is full."""

    def __init__(
        self, retention: Retention, cameras: Iterable[CameraWorker], interval_s: float = RETENTION_INTERVAL_S
    ) -> None:
        self._retention = retention
        self._cameras = list(cameras)
        self._ticker = Ticker("housekeeping", interval_s, self.run_once, run_at_start=True)

    def run_once(self) -> RetentionReport:
        report = self._retention.enforce()
        note = f"disk full: clips paused ({report.reason})" if report.disk_full else None
        for worker in self._cameras:
            worker.set_note(note)
        return report

    def start(self) -> None:
        self._ticker.start()

    def request_stop(self) -> None:
        self._ticker.request_stop()

    def stop(self, timeout: float) -> None:
        self._ticker.stop(timeout)

    def alive(self) -> bool:
        return self._ticker.alive()
