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

A stop loses no clip: encoding takes about 2 s of CPU per 10 s clip, more than the stop budget,
so `stop` first keeps every job not yet written as its frames in `clips-pending/`
(agent.footage.pending: the JPEG bytes as they are, milliseconds; masked cameras' frames are
masked first), including events still running (their footage is evidence; the sidecar names the
event). The encoder then goes on while the budget lasts; at its end the clip being encoded is cut
short (its ffmpeg killed, no `.part` left) and stays pending. The next `start` encodes every
pending clip under its clip_id, so a clip_id published before the stop becomes a clip after it.

A clip_id published in an end phase may, rarely, never become a clip (encoder failure, disk full,
a masked camera's frames that could not be masked within the stop budget); `clip.fetch` then
answers not_found and `stats()` counts it.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.analysis.events import EventPhase
from agent.clock import parse_iso
from agent.config import CameraConfig
from agent.footage.clips import ClipError, JpegFrame
from agent.footage.pending import Masks, PendingClip, PendingClips, PendingError, masked_frames
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.retention import Retention
from agent.footage.store import ClipStore

__all__ = ["ClipRecorder", "ClipSettings", "RecorderStats"]

log = logging.getLogger(__name__)

MAX_RESUMED = 256
"""Pending clips taken per start (the rest wait for the next): bounds the start's listing."""
KILL_RESERVE_S = 0.15
"""Part of the stop budget kept for cutting the running encode short and joining its thread."""
MIN_KILL_S = 0.1
"""However small the budget, the running encode is given this long to be cut short: a daemon
encoder left running would finish the clip behind a restarted recorder's back."""


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
    masks: Masks
    post_roll_s: float
    frames: list[JpegFrame] = field(default_factory=list)
    bytes: int = 0
    min_gap_s: float = 0.0  # frames closer than this to the previous kept one are skipped
    clip_id: str | None = None
    due: float | None = None  # end + post_roll, known once the end phase arrived
    progressed_at: float = 0.0  # recorder clock when frames last arrived (stall detection)
    promised: bool = False  # the clip_id went out in an end phase
    kept: bool = False  # a pending entry on disk holds it (the stop saved it, or it was resumed)
    written: bool = False  # the clip is in the store

    def add(self, frame: JpegFrame, max_bytes: int) -> bool:
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
    `pending_dir` holds the clips a stop could not encode (default: `clips-pending` beside the
    store's folder, i.e. `<data_dir>/clips-pending`).

    Lock scope: `_lock` guards `_jobs` (events being collected), the job being encoded, the
    pending clips still to resume, the stop flags and the counters; buffer reads, encoding and
    disk writes happen outside it.
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
        pending_dir: Path | None = None,
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
        self.pending = PendingClips(
            pending_dir if pending_dir is not None else store.root.parent / "clips-pending",
            store.discard_dir,
        )
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()  # serialises whole collect passes (thread + on_phase)
        self._jobs: dict[str, _Job] = {}
        # One slot more than admission allows, for the stop's end-of-work marker.
        self._ready: queue.Queue[_Job | None] = queue.Queue(maxsize=max_jobs + 1)
        self._resume: list[str] = []  # pending clip_ids the encoder has still to take
        self._encoding: _Job | None = None
        self._closing = False  # stop has taken the jobs: no new ones, no more resumed ones
        self._abort = False  # the budget is spent: the running encode is being cut short
        self._stop = threading.Event()
        self._collector: threading.Thread | None = None
        self._encoder: threading.Thread | None = None
        self._written = self._failed = self._busy = self._disk_full = self._thinned = 0
        self._last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start both threads; the encoder first finishes the clips a previous stop kept pending
        (between fresh jobs, one at a time in memory). Calling it twice is an error."""
        if self._collector is not None:
            raise RuntimeError("clip recorder already started")
        try:
            resume = self.pending.entries(MAX_RESUMED)
        except OSError as exc:
            log.error("pending clips in %s cannot be listed: %s", self.pending.root, exc.strerror or exc)
            resume = []
        if resume:
            log.info("clip recorder: %d clip(s) kept at the last stop will be finished now", len(resume))
        with self._lock:
            self._resume = resume
            self._closing = self._abort = False
        self._stop.clear()
        self._collector = threading.Thread(target=self._collect_loop, name="recorder.collect", daemon=True)
        self._encoder = threading.Thread(target=self._encode_loop, name="recorder.encode", daemon=True)
        self._collector.start()
        self._encoder.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Keep every job not yet written (events still running too) in `clips-pending`, let the
        encoder write what it can, and return within `timeout_s`.

        What the encoder has not written by then (the running encode is cut short) is finished at
        the next start. A masked camera's job whose frames cannot be masked in time is lost
        (logged, counted as failed): its unmasked frames never reach the disk.
        """
        if self._collector is None or self._encoder is None:
            return
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        self._stop.set()
        self._collector.join(max(0.0, deadline - time.monotonic()))
        self.collect()
        with self._lock:
            self._closing = True
            collecting = list(self._jobs.values())
            self._jobs.clear()
            current = self._encoding
        queued = self._drain()
        for job in collecting:
            if job.clip_id is None and job.frames:  # still running: its footage is evidence
                job.clip_id = str(uuid.uuid4())
                job.due = job.frames[-1].ts
        jobs = [j for j in (current, *queued, *collecting) if j is not None and j.clip_id is not None]
        # Cameras without masks first: their frames are written as they are, in milliseconds.
        jobs.sort(key=lambda j: bool(self._masks(j)))
        not_kept = {id(job): why for job in jobs if (why := self._keep(job, deadline - KILL_RESERVE_S))}
        for job in (*queued, *collecting):
            if job.clip_id is not None and job.frames:
                self._ready.put_nowait(job)  # fits: admission keeps jobs + queue <= max_jobs
        self._ready.put_nowait(None)
        self._encoder.join(max(0.0, deadline - KILL_RESERVE_S - time.monotonic()))
        if self._encoder.is_alive():
            self._cut_short(deadline)
        with self._lock:
            lost = [j for j in jobs if not j.written and not j.kept]
            left = sum(1 for j in jobs if j.kept and not j.written)
            self._failed += len(lost)
            if lost:
                self._last_error = f"clip {lost[-1].clip_id} lost at stop: {not_kept.get(id(lost[-1]))}"
        for job in lost:
            reason = not_kept.get(id(job))
            log.warning("clip %s for event %s lost at stop: %s", job.clip_id, job.event_id, reason)
        log.info(
            "clip recorder stopped in %.0f ms: %d clip(s) left in %s for the next start, %d lost",
            1000 * (time.monotonic() - t0),
            left,
            self.pending.root,
            len(lost),
        )
        self._collector = self._encoder = None

    def _drain(self) -> list[_Job]:
        """Take every job waiting in the ready queue."""
        taken: list[_Job] = []
        while True:
            try:
                job = self._ready.get_nowait()
            except queue.Empty:
                return taken
            if job is not None:
                taken.append(job)

    def _keep(self, job: _Job, deadline: float) -> str | None:
        """Save a job not yet written as a pending clip; None once it is on disk (or written),
        else why it could not be kept."""
        assert job.clip_id is not None
        assert job.due is not None
        with self._lock:
            if job.kept or job.written:
                return None
        if not job.frames:
            return "no frame was recorded"
        masks = self._masks(job)
        buffer = self.buffers.get(job.camera)
        already = buffer is not None and all(m in buffer.masks for m in masks)  # masked when kept
        frames = masked_frames(job.frames, masks, deadline) if masks and not already else job.frames
        if frames is None:
            return "its frames could not be masked within the stop budget"
        clip = PendingClip(
            clip_id=job.clip_id,
            event_id=job.event_id,
            camera=job.camera,
            start=job.start,
            end=max(job.due, job.start),
            promised=job.promised,
            masks=masks,
            masked=bool(masks),
            frames=frames,
        )
        try:
            self.pending.save(clip)
        except OSError as exc:
            return f"it could not be kept in {self.pending.root}: {exc.strerror or exc}"
        with self._lock:
            job.kept = True
            done = job.written  # the encoder finished it while it was being saved
        if done:
            self.pending.remove(job.clip_id)
        return None

    def _cut_short(self, deadline: float) -> None:
        """Kill the running encode's ffmpeg (the store removes its `.part` file) and wait for the
        encode thread until `deadline` (at least MIN_KILL_S from now); the job stays pending."""
        with self._lock:
            self._abort = True
            current = self._encoding
        part = self.store.root / f"{current.clip_id}.part.mp4" if current is not None else None
        assert self._encoder is not None
        deadline = max(deadline, time.monotonic() + MIN_KILL_S)
        while self._encoder.is_alive() and time.monotonic() < deadline:
            if part is not None:
                _kill_encoder(part)  # retried: ffmpeg may not have been started yet
            self._encoder.join(min(0.02, max(0.0, deadline - time.monotonic())))
        if self._encoder.is_alive():
            log.warning(
                "clip recorder: the encode of clip %s could not be cut short (not ffmpeg?); "
                "it stays in %s and is finished at the next start",
                current.clip_id if current is not None else "?",
                self.pending.root,
            )

    def finish_camera(self, camera: str) -> None:
        """Nothing to hurry: a pixel clip is cut from the camera's buffer, which outlives a reload."""

    # -- event side ----------------------------------------------------------------------------------

    def on_phase(self, phase: EventPhase) -> EventPhase:
        """Track the event; on its end phase return a copy carrying the clip_id (else `phase`)."""
        event = phase.event
        settings = self.settings(event.camera)
        buffer = self.buffers.get(event.camera)
        if settings is None or not settings.enabled or buffer is None:
            return phase
        with self._lock:
            if self._closing:
                return phase
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
                job.promised = True
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
            job = self._next_job()
            if job is None:
                return
            with self._lock:
                if self._abort:
                    continue  # the budget is spent: the job stays pending
                self._encoding = job
            try:
                self._write(job)
            finally:
                with self._lock:
                    self._encoding = None

    def _next_job(self) -> _Job | None:
        """A fresh job if one is waiting, else the next pending clip, else wait for a fresh one."""
        try:
            return self._ready.get_nowait()
        except queue.Empty:
            pass
        resumed = self._resume_one()
        return resumed if resumed is not None else self._ready.get()

    def _resume_one(self) -> _Job | None:
        """Load the next pending clip kept by a previous stop; unusable entries are set aside."""
        while True:
            with self._lock:
                if self._closing or not self._resume:
                    return None
                clip_id = self._resume.pop(0)
            try:
                clip = self.pending.load(clip_id)
            except PendingError as exc:
                self.pending.set_aside(clip_id, str(exc))
                with self._lock:
                    self._failed += 1
                    self._last_error = f"pending clip {clip_id}: {exc}"
                continue
            return _Job(
                event_id=clip.event_id,
                camera=clip.camera,
                start=clip.start,
                masks=clip.masks,
                post_roll_s=0.0,
                frames=list(clip.frames),
                clip_id=clip.clip_id,
                due=clip.end,
                promised=clip.promised,
                kept=True,
            )

    def _masks(self, job: _Job) -> Masks:
        """The job's masks and the camera's current ones: config.set may have changed them since
        the event started; blank both, old and new."""
        current = self.settings(job.camera)
        extra = tuple(m for m in (current.masks if current else ()) if m not in job.masks)
        return (*job.masks, *extra)

    def _write(self, job: _Job) -> None:
        assert job.clip_id is not None
        assert job.due is not None
        if job.kept and self._exists(job.clip_id):  # written before a stop could remove its entry
            self.pending.remove(job.clip_id)
            return
        if self.retention is not None and self.retention.make_room():
            with self._lock:
                self._disk_full += 1
            log.warning("disk full: clip %s for event %s not written", job.clip_id, job.event_id)
            return  # a pending clip stays pending for the next start
        try:
            self.store.export(
                job.camera,
                job.start,
                max(job.due, job.start + 0.001),
                job.frames,
                masks=self._masks(job),
                event_id=job.event_id,
                clip_id=job.clip_id,
                source="event",  # a recording: later exports may read it, and it is never `busy`
            )
        except Exception as exc:  # the encode thread must survive any one clip
            self._failed_write(job, exc)
            return
        with self._lock:
            self._written += 1
            job.written = True
            kept = job.kept
        if kept:
            self.pending.remove(job.clip_id)
            log.info("clip %s for event %s finished from clips-pending", job.clip_id, job.event_id)
        if self.retention is not None:
            self.retention.make_room()

    def _failed_write(self, job: _Job, exc: Exception) -> None:
        with self._lock:
            aborted = self._abort
        if aborted:  # stop() accounts for it: kept pending, or lost with the reason
            log.info("clip %s cut short by the stop", job.clip_id)
            return
        detail = str(exc) if isinstance(exc, ClipError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._failed += 1
            self._last_error = detail
        if isinstance(exc, ClipError):
            log.warning("clip %s for event %s failed: %s", job.clip_id, job.event_id, detail)
        else:
            log.error("clip %s for event %s failed", job.clip_id, job.event_id, exc_info=exc)
        if job.kept and job.clip_id is not None:
            # Encoding it again would fail again: keep its files for inspection (retention reclaims).
            self.pending.set_aside(job.clip_id, f"its clip cannot be written: {detail}")

    def _exists(self, clip_id: str) -> bool:
        try:
            self.store.get(clip_id)
        except ClipError:
            return False
        return True

    def stats(self) -> RecorderStats:
        """Counters; `queued` includes the pending clips a previous stop left to finish."""
        with self._lock:
            return RecorderStats(
                written=self._written,
                failed=self._failed,
                skipped_busy=self._busy,
                skipped_disk_full=self._disk_full,
                thinned=self._thinned,
                active=len(self._jobs),
                queued=self._ready.qsize() + len(self._resume),
                last_error=self._last_error,
            )


def _kill_encoder(part: Path) -> bool:
    """Kill this process's ffmpeg child writing `part` (its last argument); True if one was found.

    The store's encoder then sees ffmpeg fail and removes `part`. Found through /proc: Linux only;
    elsewhere (or with the OpenCV encoder, which runs in-process) nothing is killed.
    """
    me, target = os.getpid(), os.fsencode(part)
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if target in args:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                return False
            return True
    return False
