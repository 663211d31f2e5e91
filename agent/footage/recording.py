"""One face for the two clip recorders: pixel-path cameras (`ClipRecorder`, re-encoded JPEG frames)
and packet-path cameras (`PacketRecorder`, the camera's packets remuxed).

Each recorder only knows its own cameras and passes other cameras' phases through untouched, so
chaining them gives every end phase exactly one clip_id.
"""

from __future__ import annotations

import time
from typing import Protocol

from agent.analysis.events import EventPhase
from agent.footage.recorder import RecorderStats

__all__ = ["Recorder", "Recorders"]


class Recorder(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout_s: float = 30.0) -> None: ...

    def on_phase(self, phase: EventPhase) -> EventPhase: ...

    def finish_camera(self, camera: str) -> None: ...

    def stats(self) -> RecorderStats: ...


class Recorders:
    """Recorders in a chain; stopped in order (the fast packet recorder first), sharing one budget."""

    def __init__(self, *parts: Recorder) -> None:
        self.parts = parts

    def start(self) -> None:
        for part in self.parts:
            part.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for part in self.parts:
            part.stop(timeout_s=max(0.1, deadline - time.monotonic()))

    def finish_camera(self, camera: str) -> None:
        """Finish the clips of a camera whose capture was stopped for a reload."""
        for part in self.parts:
            part.finish_camera(camera)

    def on_phase(self, phase: EventPhase) -> EventPhase:
        for part in self.parts:
            phase = part.on_phase(phase)
        return phase

    def stats(self) -> RecorderStats:
        all_stats = [part.stats() for part in self.parts]
        errors = [s.last_error for s in all_stats if s.last_error is not None]
        return RecorderStats(
            written=sum(s.written for s in all_stats),
            failed=sum(s.failed for s in all_stats),
            skipped_busy=sum(s.skipped_busy for s in all_stats),
            skipped_disk_full=sum(s.skipped_disk_full for s in all_stats),
            thinned=sum(s.thinned for s in all_stats),
            active=sum(s.active for s in all_stats),
            queued=sum(s.queued for s in all_stats),
            last_error=errors[-1] if errors else None,
        )
