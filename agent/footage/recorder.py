"""The clip recorder: one MP4 per event, from (start - pre_roll_s) to (end + post_roll_s).

Timeline of one event:

* start phase: a job is admitted (bounded by `max_jobs`) and takes the pre-roll and what has
  happened so far from the camera's PreEventBuffer.
* while the event runs, the `recorder.collect` thread copies each camera's new buffered frames
  into its jobs every `poll_s`, so an event longer than the buffer still gets its beginning.
  A job over `max_job_bytes` halves its frame rate (keeps every other frame), so memory stays
  bounded however long the event lasts.
* end phase: `on_phase` assigns the clip_id at once and returns the end phase carrying it, so the
  event can be published without waiting; post-roll frames are still to come.
* once the buffer holds frames past end + post_roll (or no new frame came for `grace_s`: the
  camera stalled), the job moves to a bounded queue and the `recorder.encode` thread writes it
  (retention is enforced before and after; when the disk is full the clip is skipped, counted,
  and events carry on).

A clip_id published in an end phase may, rarely, never become a clip (encoder failure, disk full,
shutdown timeout); `clip.fetch` then answers not_found and `stats()` counts it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent.analysis.events import EventPhase
from agent.clock import parse_iso
from agent.config import CameraConfig
from agent.footage.clips import ClipError
from agent.footage.prebuffer import BufferedFrame, PreEventBuffer
from agent.footage.privacy import PolygonLike
from agent.footage.retention import Retention
from agent.footage.store import ClipStore

__all__ = ["ClipRecorder", "ClipSettings", "RecorderStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClipSettings:
    """What the recorder needs to know about one camera, looked up per event from the config file
    (clip settings and privacy masks are not changed at run time: `config.set` cannot reach them)."""

    enabled: bool = True
    pre_roll_s: float = 5.0
    post_roll_s: float = 5.0
    masks: tuple[tuple[tuple[float, float], ...], ...] = ()

    @classmethod
    def from_camera(cls, cam: CameraConfig) -> ClipSettings:
        return cls(
            enabled=cam.clips.enabled,
            pre_roll_s=cam.clips.pre_roll_s,
            post_roll_s=cam.clips.post_roll_s,
            masks=tuple(tuple((float(x), float(y)) for x, y in poly) for poly in cam.privacy_masks),
        )


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters for telemetry."""

    written: int
    failed: int
    skipped_busy: int
    skipped_disk_full: int
    thinned: int
    active: int
    queued: int
    last_error: str | None


@dataclass(slots=True)
class _Job:
    event_id: str
    camera: str
    start: float  # first instant wanted: event start - pre_roll
    masks: Sequence[PolygonLike]
    post_roll_s: float
    frames: list[BufferedFrame] = field(default_factory=list)
    bytes: int = 0
    min_gap_s: float = 0.0  # frames closer than this to the previous kept one are skipped
    clip_id: str | None = None
    due: float | None = None  # end + post_roll, known once the end phase arrived
    progressed_at: float = 0.0  # recorder clock when frames last arrived (stall detection)

    def add(self, frame: BufferedFrame, max_bytes: int) -> bool:
        """Append a frame; thin the whole job to half rate when over budget. True if thinned."""
        if self.frames and frame.ts - self.frames[-1].ts < self.min_gap_s:
            return False
        self.frames.append(frame)
        self.bytes += len(frame.jpeg)
        if self.bytes <= max_bytes or len(self.frames) < 3:
            return False
        kept = self.frames[::2]
        if kept[-1] is not self.frames[-1]:
            kept.append(self.frames[-1])
        self.frames = kept
        self.bytes = sum(len(f.jpeg) for f in kept)
        span = kept[-1].ts - kept[0].ts
        self.min_gap_s = 0.9 * span / max(1, len(kept) - 1)
        return True


class ClipRecorder:
    """Owns the `recorder.collect` and `recorder.encode` threads; `start`/`stop` them.

    `buffers` maps camera id to its PreEventBuffer; `settings(camera)` returns that camera's
    ClipSettings (None: no clips). `on_phase` is called by the event pipeline for every phase.

    Lock scope: `_lock` guards `_jobs` (events being collected) and the counters; buffer reads and
    encoding happen outside it.
    """

    def __init__(
        self,
        store: ClipStore,
        buffers: Mapping[str, PreEventBuffer],
        settings: Callable[[str], ClipSettings | None],
        *,
        retention: Retention | None = None,
        max_jobs: int = 8,
        max_job_bytes: int = 32 * 1024 * 1024,
        poll_s: float = 0.5,
        grace_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_jobs < 1 or max_job_bytes < 1 or poll_s <= 0 or grace_s < 0:
            raise ValueError("max_jobs, max_job_bytes and poll_s must be positive, grace_s >= 0")
        self.store = store
        self.buffers = buffers
        self.settings = settings
        self.retention = retention
        self.max_jobs = max_jobs
        self.max_job_bytes = max_job_bytes
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.clock = clock
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()  # serialises whole collect passes (thread + on_phase)
        self._jobs: dict[str, _Job] = {}
        self._ready: queue.Queue[_Job | None] = queue.Queue(maxsize=max_jobs)
        self._stop = threading.Event()
        self._collector: threading.Thread | None = None
        self._encoder: threading.Thread | None = None
        self._written = self._failed = self._busy = self._disk_full = self._thinned = 0
        self._last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start both threads; calling it twice is an error."""
        if self._collector is not None:
            raise RuntimeError("clip recorder already started")
        self._stop.clear()
        self._collector = threading.Thread(target=self._collect_loop, name="recorder.collect", daemon=True)
        self._encoder = threading.Thread(target=self._encode_loop, name="recorder.encode", daemon=True)
        self._collector.start()
        self._encoder.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop collecting; write every job whose end phase was published, with the frames it has.

        Jobs still not written after `timeout_s` are abandoned (counted as failed).
        """
        if self._collector is None or self._encoder is None:
            return
        self._stop.set()
        self._collector.join(timeout_s)
        self.collect()
        with self._lock:
            ended = [j for j in self._jobs.values() if j.clip_id is not None]
            self._jobs.clear()
        deadline = time.monotonic() + timeout_s
        for job in ended:
            self._hand_over(job, wait_s=max(0.01, deadline - time.monotonic()))
        while True:
            try:
                self._ready.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._encoder.join(max(0.0, deadline - time.monotonic()))
        if self._encoder.is_alive():
            log.warning("clip recorder: encoder still busy after %.0f s; pending clips are lost", timeout_s)
        self._collector = self._encoder = None

    # -- event side ----------------------------------------------------------------------------------

    def on_phase(self, phase: EventPhase) -> EventPhase:
        """Track the event; on its end phase return a copy carrying the clip_id (else `phase`)."""
        event = phase.event
        settings = self.settings(event.camera)
        buffer = self.buffers.get(event.camera)
        if settings is None or not settings.enabled or buffer is None:
            return phase
        with self._lock:
            job = self._jobs.get(event.event_id)
            if job is None and event.phase == "start":
                if len(self._jobs) + self._ready.qsize() >= self.max_jobs:
                    self._busy += 1
                    log.warning("clip recorder busy: no clip for event %s", event.event_id)
                    return phase
                if self.retention is not None and self.retention.disk_full:
                    # No clip will be written: the end phase must not promise one.
                    self._disk_full += 1
                    return phase
                job = _Job(
                    event_id=event.event_id,
                    camera=event.camera,
                    start=parse_iso(event.started_at) - settings.pre_roll_s,
                    masks=settings.masks,
                    post_roll_s=settings.post_roll_s,
                )
                self._jobs[event.event_id] = job
            if job is not None and event.phase == "end":
                job.clip_id = str(uuid.uuid4())
                job.due = parse_iso(event.ended_at or event.ts) + job.post_roll_s
        self.collect()
        if job is None or job.clip_id is None or event.phase != "end":
            return phase
        return replace(phase, event=event.model_copy(update={"clip_id": job.clip_id}))

    # -- collection ----------------------------------------------------------------------------------

    def collect(self) -> None:
        """Copy new buffered frames into every job and hand finished jobs to the encoder.

        The collector thread calls this every `poll_s`; callers may call it to collect at once.
        """
        with self._collect_lock:
            self._collect_once()

    def _collect_once(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        now = self.clock()
        for job in jobs:
            buffer = self.buffers.get(job.camera)
            if buffer is None:
                continue
            since = job.frames[-1].ts if job.frames else job.start
            until = job.due if job.due is not None else float("inf")
            fresh = [f for f in buffer.frames_between(since, until) if not job.frames or f.ts > since]
            with self._lock:
                for frame in fresh:
                    if job.add(frame, self.max_job_bytes):
                        self._thinned += 1
                if fresh or not job.progressed_at:
                    job.progressed_at = now
                if job.due is None:
                    continue
                newest = buffer.newest()
                arrived = newest is not None and newest.ts >= job.due
                if not (arrived or now - job.progressed_at >= self.grace_s):
                    continue
                if self._jobs.pop(job.event_id, None) is None:
                    continue
            self._hand_over(job)

    def _hand_over(self, job: _Job, wait_s: float = 0.0) -> None:
        try:
            self._ready.put(job, timeout=wait_s) if wait_s > 0 else self._ready.put_nowait(job)
        except queue.Full:  # admission keeps jobs + queue <= max_jobs, so this is a bug guard
            with self._lock:
                self._failed += 1
            log.warning("clip recorder queue full: clip %s for event %s lost", job.clip_id, job.event_id)

    def _collect_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.collect()
            except Exception:  # one bad buffer must not end collection for every camera
                log.exception("clip recorder: collection failed")

    # -- encoding ------------------------------------------------------------------------------------

    def _encode_loop(self) -> None:
        while True:
            job = self._ready.get()
            if job is None:
                return
            self._write(job)

    def _write(self, job: _Job) -> None:
        assert job.clip_id is not None
        assert job.due is not None
        if self.retention is not None and self._enforce():
            with self._lock:
                self._disk_full += 1
            log.warning("disk full: clip %s for event %s not written", job.clip_id, job.event_id)
            return
        # Masks may have changed (config.set) since the event started: blank both, old and new.
        current = self.settings(job.camera)
        masks = [*job.masks, *(m for m in (current.masks if current else ()) if m not in job.masks)]
        try:
            self.store.export(
                job.camera,
                job.start,
                max(job.due, job.start + 0.001),
                job.frames,
                masks=masks,
                event_id=job.event_id,
                clip_id=job.clip_id,
                source="event",  # a recording: later exports may read it, and it is never `busy`
            )
        except ClipError as exc:
            with self._lock:
                self._failed += 1
                self._last_error = str(exc)
            log.warning("clip %s for event %s failed: %s", job.clip_id, job.event_id, exc)
            return
        except Exception as exc:  # the encode thread must survive any one clip
            with self._lock:
                self._failed += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
            log.exception("clip %s for event %s failed", job.clip_id, job.event_id)
            return
        with self._lock:
            self._written += 1
        if self.retention is not None:
            self._enforce()

    def _enforce(self) -> bool:
        """Run retention; True when the disk is full. A failing retention run is logged, not fatal."""
        assert self.retention is not None
        try:
            return self.retention.enforce().disk_full
        except OSError as exc:
            log.warning("retention failed: %s", exc)
            return self.retention.disk_full

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(
                written=self._written,
                failed=self._failed,
                skipped_busy=self._busy,
                skipped_disk_full=self._disk_full,
                thinned=self._thinned,
                active=len(self._jobs),
                queued=self._ready.qsize(),
                last_error=self._last_error,
            )
