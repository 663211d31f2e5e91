"""Retention: keep the clip store within its disk quota, oldest unheld footage first.

Held footage (an evidence hold in force) is never deleted, whatever the quota says. When held
footage alone exceeds the quota, or the filesystem's free space stays below `min_free_bytes` after
everything deletable is gone, the report says `disk_full`: the recorder then stops writing clips
while detection and event metadata carry on, and telemetry/camera status say so.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.footage.store import ClipStore

__all__ = ["Retention", "RetentionReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """The outcome of one `enforce`, with the figures telemetry reports."""

    usage_bytes: int
    held_bytes: int
    quota_bytes: int
    free_bytes: int
    min_free_bytes: int
    deleted: tuple[str, ...]
    freed_bytes: int
    disk_full: bool
    reason: str | None

    def telemetry(self) -> dict[str, Any]:
        return {
            "clips_bytes": self.usage_bytes,
            "clips_held_bytes": self.held_bytes,
            "clips_quota_bytes": self.quota_bytes,
            "disk_free_bytes": self.free_bytes,
            "disk_full": self.disk_full,
            "disk_full_reason": self.reason,
        }


class Retention:
    """Enforces the quota on one ClipStore; call `enforce` before/after writing and periodically.

    Lock scope: `_lock` serialises whole `enforce` runs (recorder worker and runtime timer may both
    call it) and guards `last`.
    """

    def __init__(
        self,
        store: ClipStore,
        quota_bytes: int,
        min_free_bytes: int = 0,
        *,
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        if quota_bytes < 0 or min_free_bytes < 0:
            raise ValueError("quota_bytes and min_free_bytes must be >= 0")
        self.store = store
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes or (lambda: shutil.disk_usage(store.root).free)
        self._lock = threading.Lock()
        self.last: RetentionReport | None = None

    @property
    def disk_full(self) -> bool:
        """Whether the last enforce found no room for new footage."""
        with self._lock:
            return self.last is not None and self.last.disk_full

    def make_room(self) -> bool:
        """Enforce before or after writing a clip; True when the disk is full. A failing run is
        logged, not raised: a recorder must carry on, judging by the last report."""
        try:
            return self.enforce().disk_full
        except OSError as exc:
            log.warning("retention failed: %s", exc)
            return self.disk_full

    def enforce(self, *, now: float | None = None) -> RetentionReport:
        """Delete set-aside files, then the oldest unheld clips, until within quota and free floor."""
        now = time.time() if now is None else now
        with self._lock:
            deleted: list[str] = []
            freed = 0
            usage = self.store.usage_bytes()
            free = self._free_bytes()

            def over() -> bool:
                return usage > self.quota_bytes or free < self.min_free_bytes

            for path in self.store.discarded_files() if over() else []:
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                log.info("retention: removed set-aside file %s (%d bytes)", path.name, size)
                freed += size
                free = self._free_bytes()
                if not over():
                    break
            held_bytes = 0
            for info in self.store.clips():
                if self.store.held_until(info, now=now) is not None:
                    held_bytes += info.bytes
                    continue
                if not over():
                    continue
                gone = self.store.delete(info.clip_id)
                if gone:
                    deleted.append(info.clip_id)
                    freed += gone
                    usage -= gone
                    free = self._free_bytes()
            reason = None
            if held_bytes > self.quota_bytes:
                reason = (
                    f"held footage ({held_bytes} bytes) exceeds the clip quota ({self.quota_bytes} bytes)"
                )
            elif free < self.min_free_bytes:
                reason = f"free disk space {free} bytes is below the floor of {self.min_free_bytes} bytes"
            if deleted:
                log.info("retention: deleted %d clip(s), %d bytes", len(deleted), freed)
            if reason is not None and (self.last is None or self.last.reason != reason):
                log.warning("retention: disk full: %s; clips are paused, events continue", reason)
            report = RetentionReport(
                usage_bytes=usage,
                held_bytes=held_bytes,
                quota_bytes=self.quota_bytes,
                free_bytes=free,
                min_free_bytes=self.min_free_bytes,
                deleted=tuple(deleted),
                freed_bytes=freed,
                disk_full=reason is not None,
                reason=reason,
            )
            self.last = report
            return report
