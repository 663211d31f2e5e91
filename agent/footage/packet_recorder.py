"""Event clips of cameras on the packet path: the camera's own packets, remuxed as they arrive.

A job is opened at the event's start phase with its clip_id (published only with the end phase).
The `recorder.packets` thread copies, every `poll_s`, each job's new packets from the camera's
`PacketRing` into the job's `ClipWriter`, which writes `<clip_id>.part.mp4` as it goes: the first
pass takes the ring from the keyframe at or before (start - pre_roll_s), later passes what came
since. Nothing of an event is held in memory, however long it lasts.

A job ends once packets past end + post_roll have arrived, or no packet came for `grace_s` after
the end (the camera stalled), or the stream changed format (a new resolution cannot continue an
MP4 track: the clip ends there and says so in the log). Finishing is a remux's close: the moov
moves to the front and the store adopts the file (sha256, sidecar, rename), milliseconds for a
minute of 1080p. So `stop()` finishes every job, ended or not, within its budget: an upgrade that
restarts the gateway in the middle of an event keeps that event's clip up to the stop.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from agent.analysis.events import EventPhase
from agent.clock import parse_iso
from agent.footage.clips import ClipError
from agent.footage.packet_ring import PacketRing
from agent.footage.recorder import ClipSettings, RecorderStats
from agent.footage.retention import Retention
from agent.footage.store import ClipStore

if TYPE_CHECKING:
    from agent.footage.remux import ClipWriter

__all__ = ["PacketRecorder"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Job:
    event_id: str
    camera: str
    clip_id: str  # chosen at the start, published with the end phase
    start: float  # first instant wanted: event start - pre_roll
    post_roll_s: float
    writer: ClipWriter | None = None  # opened on the first packets
    last_seq: int = -1  # ring sequence number of the last packet taken
    ended: bool = False  # the end phase arrived (its clip_id is public)
    due: float | None = None  # end + post_roll
    progressed_at: float = 0.0  # recorder clock when packets last arrived
    done: str | None = None  # "complete", "format changed" or "failed": no more packets are taken


class PacketRecorder:
    """Owns the `recorder.packets` thread; `start`/`stop` it. Same face as `ClipRecorder`.

    `rings` maps the packet-path cameras to their rings (other cameras' phases pass untouched).
    Lock scope: `_lock` guards `_jobs` and the counters; `_pass_lock` serialises collection passes,
    so a job's writer is only ever used by one thread at a time. Disk writes happen outside `_lock`.
    """

    def __init__(
        self,
        store: ClipStore,
        rings: Mapping[str, PacketRing],
        settings: Callable[[str], ClipSettings | None],
        *,
        retention: Retention | None = None,
        max_jobs: int = 8,
        poll_s: float = 0.5,
        grace_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_jobs < 1 or poll_s <= 0 or grace_s < 0:
            raise ValueError("max_jobs and poll_s must be positive, grace_s >= 0")
        self.store = store
        self.rings = rings
        self.settings = settings
        self.retention = retention
        self.max_jobs = max_jobs
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.clock = clock
        self._lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = self._failed = self._busy = self._disk_full = 0
        self._last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("packet recorder already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="recorder.packets", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Take what the rings still hold, then finish every job with what it has.

        Jobs whose end phase never came (the camera could not end its event) are kept too: the
        footage is evidence, and the store lists it by event_id.
        """
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout_s)
        self._thread = None
        deadline = time.monotonic() + timeout_s
        with self._pass_lock:
            self._collect_once()
            with self._lock:
                jobs = list(self._jobs.values())
                self._jobs.clear()
            for job in jobs:
                if time.monotonic() >= deadline:
                    log.warning("packet recorder: no time left to finish clip %s", job.clip_id)
                    self._abandon(job, "stopped before it could be finished")
                    continue
                self._finish(job)

    def finish_camera(self, camera: str) -> None:
        """Finish now, with what its ring holds, every clip of `camera`: its capture was stopped
        (the camera is reloaded onto the pixel path) and no more of its packets will come."""
        with self._pass_lock:
            self._collect_once()
            with self._lock:
                jobs = [job for job in self._jobs.values() if job.camera == camera]
                for job in jobs:
                    del self._jobs[job.event_id]
            for job in jobs:
                self._finish(job)

    # -- event side ----------------------------------------------------------------------------------

    def on_phase(self, phase: EventPhase) -> EventPhase:
        """Track the event; on its end phase return a copy carrying the clip_id (else `phase`)."""
        event = phase.event
        ring = self.rings.get(event.camera)
        settings = self.settings(event.camera)
        if ring is None or settings is None or not settings.enabled:
            return phase
        with self._lock:
            job = self._jobs.get(event.event_id)
            if job is None and event.phase == "start":
                if len(self._jobs) >= self.max_jobs:
                    self._busy += 1
                    log.warning("clip recorder busy: no clip for event %s", event.event_id)
                    return phase
                if self.retention is not None and self.retention.disk_full:
                    self._disk_full += 1  # the end phase must not promise a clip
                    return phase
                job = _Job(
                    event_id=event.event_id,
                    camera=event.camera,
                    clip_id=str(uuid.uuid4()),
                    start=parse_iso(event.started_at) - settings.pre_roll_s,
                    post_roll_s=settings.post_roll_s,
                    progressed_at=self.clock(),
                )
                self._jobs[event.event_id] = job
            if job is None or event.phase != "end":
                return phase
            job.ended = True
            job.due = parse_iso(event.ended_at or event.ts) + job.post_roll_s
        return replace(phase, event=event.model_copy(update={"clip_id": job.clip_id}))

    # -- collection ----------------------------------------------------------------------------------

    def collect(self) -> None:
        """Write every job's new packets and finish the jobs that are complete."""
        with self._pass_lock:
            self._collect_once()

    def _collect_once(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        now = self.clock()
        for job in jobs:
            ring = self.rings.get(job.camera)
            if ring is None:
                continue
            if job.done is None:
                self._take(job, ring, now)
            if not job.ended:
                if job.done is None:
                    continue
            elif job.done is None:
                assert job.due is not None
                newest = ring.newest()
                arrived = newest is not None and newest.ts >= job.due
                if not arrived and now - job.progressed_at < self.grace_s:
                    continue
            with self._lock:
                if not job.ended or self._jobs.pop(job.event_id, None) is None:
                    continue
            self._finish(job)

    def _take(self, job: _Job, ring: PacketRing, now: float) -> None:
        """Append the packets that came since the last pass (the first pass reaches back to the start)."""
        fresh = ring.since(job.start) if job.last_seq < 0 else ring.after(job.last_seq)
        if not fresh:
            return
        # Here, not at the top: PyAV costs ~25 MB, paid only by gateways with packet cameras.
        from agent.footage.remux import ClipWriter, FormatChanged

        job.progressed_at = now
        try:
            for seq, packet in fresh:
                if job.due is not None and packet.ts > job.due:
                    job.done = "complete"
                    break
                job.last_seq = seq
                if job.writer is None:
                    job.writer = ClipWriter(self.store.part_path(job.clip_id))
                job.writer.add(packet)
        except FormatChanged as exc:
            job.done = "format changed"
            log.warning(
                "camera %s changed its stream format during event %s (%s): its clip %s ends there",
                job.camera,
                job.event_id,
                exc,
                job.clip_id,
            )
        except (ClipError, OSError) as exc:
            job.done = "failed"
            self._abandon(job, f"writing failed: {exc}")

    # -- finishing -----------------------------------------------------------------------------------

    def _finish(self, job: _Job) -> None:
        if job.done == "failed":
            return  # counted and logged when it failed
        writer, job.writer = job.writer, None
        if writer is None:
            self._count_failure(job, "no packets of the camera were buffered for its span")
            return
        if self.retention is not None and self.retention.make_room():
            writer.abort()
            with self._lock:
                self._disk_full += 1
            log.warning("disk full: clip %s for event %s not kept", job.clip_id, job.event_id)
            return
        try:
            result = writer.close()
            self.store.adopt(job.clip_id, job.camera, result, event_id=job.event_id, source="event")
        except ClipError as exc:
            writer.abort()
            self._count_failure(job, str(exc))
            return
        except Exception as exc:  # the recorder must survive any one clip
            writer.abort()
            self._count_failure(job, f"{type(exc).__name__}: {exc}")
            log.exception("clip %s for event %s failed", job.clip_id, job.event_id)
            return
        with self._lock:
            self._written += 1
        if self.retention is not None:
            self.retention.make_room()

    def _abandon(self, job: _Job, why: str) -> None:
        writer, job.writer = job.writer, None
        if writer is not None:
            writer.abort()
        self._count_failure(job, why)

    def _count_failure(self, job: _Job, why: str) -> None:
        with self._lock:
            self._failed += 1
            self._last_error = why
        log.warning("clip %s for event %s failed: %s", job.clip_id, job.event_id, why)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.collect()
            except Exception:  # one bad ring must not end collection for every camera
                log.exception("packet recorder: collection failed")

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(
                written=self._written,
                failed=self._failed,
                skipped_busy=self._busy,
                skipped_disk_full=self._disk_full,
                thinned=0,
                active=len(self._jobs),
                queued=0,
                last_error=self._last_error,
            )
