"""One camera at run time: capture with reconnects, a 2-deep frame queue, and the event pipeline.

Each `CameraWorker` owns two threads. `camera[id].capture` opens the source (retrying with
capped, jittered exponential backoff from tenacity) and reads frames into a queue of two;
when analysis falls behind, the oldest frame is dropped and counted rather than letting
latency grow. `camera[id].detect` runs the pipeline and hands event phases to the sink. A
camera that fails never touches another camera's threads.

Runtime settings (config.set) arrive on other threads. `apply()` only leaves them in a one-slot
mailbox; the detect thread applies the newest between two frames (and while idle), so the
pipeline, its motion detector and its object stage are only ever touched by that one thread and
every frame is analysed with one complete set of settings.

Decode less: a frame that neither the pipeline (at `detect_fps`), the frame sink (at
`frame_fps`, the pre-event buffer's rate) nor a live view (a stream session asking
`latest_frame(fps)` on each tick) will use is passed with the source's `skip()` where it has one
(see agent.capture.cadence), and counted in `stats.skipped`. A camera with a
`detect_source` substream gets a third thread, `camera[id].capture.detect`, that reads the
substream for the pipeline; the main stream then only feeds the sink, the latest frame
(snapshots, streams) and the camera's size and fps. Event snapshots then show the substream's
pixels, the ones the motion detector judged.

Keep packets, not pixels: a source with packets (PyAV, for rtsp:// cameras) hands every packet of
the main stream to `on_packet` (the camera's packet ring) before decoding. With a substream the
main stream is then only demuxed, never decoded, and the substream's frames are the latest picture.

Stream URIs from the camera (ONVIF, no `source` in the config): `resolve(stopping)` gives the main stream
and substream URIs; the capture threads ask it before their first session (one asks, the other
uses the answer) and again once a stream has failed RESOLVE_AFTER_FAILURES sessions in a row (a
rebooted camera may hand out new URIs). Such a camera always has a main and a detect thread; when
it has no substream, the detect thread idles and the main one analyses, as for a single stream.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenacity import Retrying, retry_if_exception_type, wait_random_exponential

from agent.analysis.events import EventPhase
from agent.analysis.objects.service import DetectionService
from agent.analysis.objects.tracker import TrackView
from agent.analysis.pipeline import CameraPipeline, MotionDetecting
from agent.capture.cadence import KEEP_ALL, FrameDemand
from agent.capture.packets import PacketSink
from agent.capture.source import Frame, FrameSource, open_source
from agent.clock import iso
from agent.config import CameraConfig, DetectionSettings, MotionSettings
from agent.config.redact import redact
from agent.contract.messages import CameraPtz, CameraStatus
from agent.errors import AgentError, SourceError

log = logging.getLogger(__name__)

StatusSink = Callable[[str, CameraStatus], None]
PhaseSink = Callable[[str, EventPhase], None]
# A frame sink may return False for a frame it did not keep (the buffer's rate cap), so that the
# next frame is converted for it; None or True: kept.
FrameSink = Callable[[str, Frame], bool | None]

HEALTHY_SESSION_S = 30.0  # a session that delivered frames this long resets the backoff
RESOLVE_AFTER_FAILURES = 3  # failed sessions in a row of a resolved stream before asking again
NO_SUBSTREAM_WAIT_S = 1.0  # the idle detect thread of a camera without substream looks this often
VIEW_HOLD_S = 1.0  # a live view's wish for pictures (latest_frame's fps) lasts this long

# What one capture thread reads: "both" a camera's only stream, else its main or detect stream.
Role = Literal["both", "main", "detect"]


@dataclass(frozen=True, slots=True)
class _Settings:
    """One complete set of a camera's runtime settings, as `CameraWorker.apply` hands it over."""

    motion: MotionSettings
    detection: DetectionSettings
    objects: DetectionService | None


@dataclass
class CameraStats:
    frames: int = 0  # frames that arrived from the (main) source, skipped ones included
    skipped: int = 0  # of those, frames passed without conversion to pixels
    dropped: int = 0
    reconnects: int = 0
    fps: float = 0.0


@dataclass(frozen=True, slots=True)
class Overlay:
    """What the detect thread last found, for the console to draw: motion regions and tracks."""

    ts: float
    regions: tuple[tuple[float, float, float, float], ...]
    tracks: tuple[TrackView, ...]


class CameraWorker:
    """Owns one camera's capture and detect threads; start() and stop() are its lifecycle."""

    def __init__(
        self,
        cfg: CameraConfig,
        on_status: StatusSink,
        on_phase: PhaseSink,
        *,
        on_frame: FrameSink | None = None,
        on_packet: PacketSink | None = None,
        source_factory: Callable[[str], FrameSource] | None = None,
        backoff_max_s: float = 30.0,
        frame_fps: float | None = None,
        motion_detector: MotionDetecting | None = None,
        state_dir: Path | None = None,
        moving: Callable[[], bool] | None = None,
        resolve: Callable[[threading.Event], tuple[str, str | None]] | None = None,
        keep_overlay: bool = False,
    ) -> None:
        """`frame_fps`: the most frames per second `on_frame` needs (None: every frame).
        `on_packet` takes the main stream's packets, from sources that have them (PyAV).
        `motion_detector` replaces the built-in one (a bench's reference, a test's observer).
        `state_dir` keeps analysis state across restarts (stationary objects). `moving()` says the
        camera is being turned (PTZ): its frames are not analysed, and motion re-learns the view
        once it is still again. `resolve(stopping)` gives (main, substream or None) URIs in place of
        `cfg.source`/`cfg.detect_source` (ONVIF); it raises SourceError when it cannot say, and
        soon after `stopping` is set. `keep_overlay`: keep what each analysed frame found for
        `overlay()` (the console draws it; without a console the detect thread does no such work)."""
        self.cfg = cfg
        self.id = cfg.id
        self.stats = CameraStats()
        self._on_status = on_status
        self._on_phase = on_phase
        self._on_frame = on_frame
        self._keep_fps = 0.0 if on_frame is None else (KEEP_ALL if frame_fps is None else frame_fps)
        self._on_packet = on_packet
        self._source_factory = source_factory or functools.partial(open_source, decoder=cfg.decoder)
        # Set by the main capture thread: the main stream is only demuxed (its packets kept, nothing
        # decoded), so the detect stream's frames are the camera's latest picture.
        self._main_packets_only = False
        self._backoff_max_s = backoff_max_s
        # Read its counters only: the detect thread alone drives it (settings go through apply()).
        self.pipeline = CameraPipeline(cfg, motion_detector, state_dir=state_dir)
        self._moving = moving
        # _pending_lock guards _pending, the newest settings not yet applied (a one-slot mailbox).
        self._pending_lock = threading.Lock()
        self._pending: _Settings | None = None
        self._frames: queue.Queue[Frame] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._arrivals: deque[float] = deque(maxlen=64)
        # _status_lock guards _status, _health, _latest and _declared_fps: written by the capture
        # threads, read by others; and _view, written by live views (latest_frame), read whole
        # (one tuple) by the capture thread that keeps _latest.
        self._status_lock = threading.Lock()
        # _emit_lock orders the published statuses as they were made: the capture threads (main
        # and substream) and the PTZ and disk notes change the status at once, and the last one
        # published is retained on the broker, so it must be the newest.
        self._emit_lock = threading.Lock()
        self._status = CameraStatus(state="disabled" if not cfg.enabled else "connecting")
        self._latest: Frame | None = None
        self._view: tuple[float, float] = (0.0, -math.inf)  # (fps, when asked) of the fastest live view
        self._declared_fps = 0.0  # the rate the main source declares, until arrivals measure one
        self._keep_overlay = keep_overlay
        self._overlay: Overlay | None = None
        self._note: str | None = None
        self._ptz: CameraPtz | None = None
        self._resolve = resolve
        self._resolved: tuple[str, str | None] | None = None  # guarded by _resolve_lock
        self._resolve_lock = threading.Lock()
        self._failures: dict[Role, int] = {}  # failed sessions in a row, per stream
        roles: list[tuple[Role, str | None]] = [("both", cfg.source)]
        if resolve is not None:
            roles = [("main", None), ("detect", None)]  # URIs from resolve()
        elif cfg.detect_source is not None:
            roles = [("main", cfg.source), ("detect", cfg.detect_source)]
        self._roles = roles
        self._health: dict[Role, tuple[str, str | None]] = {role: ("connecting", None) for role, _ in roles}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        with self._emit_lock:
            self._emit_status(self._status)
        if not self.cfg.enabled:
            return
        threads = [
            threading.Thread(
                target=self._capture_loop,
                args=(role, uri),
                name=f"camera[{self.id}].capture" + (".detect" if role == "detect" else ""),
                daemon=True,
            )
            for role, uri in self._roles
        ]
        detect = threading.Thread(target=self._detect_loop, name=f"camera[{self.id}].detect", daemon=True)
        threads.append(detect)
        for t in threads:
            self._threads.append(t)
            t.start()

    def request_stop(self) -> None:
        """Ask the threads to stop without waiting (lets a gateway stop all cameras at once)."""
        self._stop.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads; the detect thread ends any open event on its way out."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s did not stop within %.1f s", t.name, timeout)

    def alive(self) -> bool:
        """Whether the camera's threads still run (a disabled camera has none and is fine)."""
        return all(t.is_alive() for t in self._threads)

    @property
    def status(self) -> CameraStatus:
        with self._status_lock:
            return self._status

    def latest_frame(self, fps: float | None = None) -> Frame | None:
        """The newest picture. `fps`: a live view (a stream session, asking on each tick) wants a
        new one this often: for VIEW_HOLD_S after each ask, frames are decoded at that rate too,
        not only at detect_fps and the buffer's. The fastest view asking wins."""
        with self._status_lock:
            if fps is not None and fps > 0:
                now = time.monotonic()
                fastest, asked = self._view
                if fps >= fastest or now - asked > VIEW_HOLD_S:
                    self._view = (fps, now)
            return self._latest

    def _view_fps(self) -> float:
        """The rate a live view asked for within VIEW_HOLD_S; 0.0 when none did."""
        fps, asked = self._view
        return fps if time.monotonic() - asked <= VIEW_HOLD_S else 0.0

    def overlay(self) -> Overlay | None:
        """Motion regions and object tracks of the last analysed frame (None before the first)."""
        with self._status_lock:
            return self._overlay

    def apply(
        self, motion: MotionSettings, detection: DetectionSettings, objects: DetectionService | None
    ) -> None:
        """Hand the camera's full runtime settings to its detect thread; applied between two frames.

        `objects` is the shared detection service when detection is enabled and loaded, else
        None. Never blocks: a newer call replaces settings not yet applied (each call carries
        the complete settings, so only the latest matters). Call once before start() for the
        first frame's settings; later calls land within 0.2 s even while no frames flow. Labels
        the model lacks are logged and the camera keeps its previous settings, whole.
        """
        with self._pending_lock:
            self._pending = _Settings(motion, detection, objects)

    # -- status ----------------------------------------------------------------------------

    def _set_status(
        self,
        state: str,
        error: str | None = None,
        frame: Frame | None = None,
        role: Role = "both",
        *,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Record `role`'s state; the camera's is the worst of its streams' (failed, connecting, ok).
        `size` (width, height) stands in for `frame` when the stream's packets are not decoded."""
        with self._status_lock:
            self._health[role] = (state, error)
        self._refresh_status(frame, size)

    def republish_status(self) -> None:
        """Publish the current status again (the link reconnected), in order with the changes the
        camera's threads publish."""
        with self._emit_lock:
            self._emit_status(self.status)

    def set_ptz(self, ptz: CameraPtz | None) -> None:
        """The camera's PTZ move state, shown in its status (published when it changes)."""
        with self._status_lock:
            if ptz == self._ptz:
                return
            self._ptz = ptz
        self._refresh_status(None)

    def set_note(self, note: str | None) -> None:
        """A gateway-level condition shown in `error` while the camera itself works (disk full)."""
        with self._status_lock:
            if note == self._note:
                return
            self._note = note
        self._refresh_status(None)

    def _refresh_status(self, frame: Frame | None, size: tuple[int, int] | None = None) -> None:
        with self._emit_lock:
            if self._stop.is_set():
                return  # a stopped worker's thread (stuck in a read) must not overwrite its successor's
            new = self._next_status(frame, size)
            if new is not None:
                self._emit_status(new)

    def _next_status(self, frame: Frame | None, size: tuple[int, int] | None) -> CameraStatus | None:
        """Make the status from the streams' health and the notes; None when what is published
        did not change (or the camera is disabled)."""
        with self._status_lock:
            state, error = self._combined_health()
            old = self._status
            if old.state == "disabled":
                return None
            h, w = (frame.image.shape[:2]) if frame is not None else (old.height, old.width)
            if frame is None and size is not None:
                w, h = size
            fps = self.stats.fps if self.stats.fps > 0 else self._declared_fps
            new = CameraStatus.model_validate(
                {
                    "state": state,
                    "fps": round(fps, 2) if state == "ok" and fps > 0 else None,
                    "width": w,
                    "height": h,
                    "last_frame_at": iso(frame.ts) if frame is not None else old.last_frame_at,
                    "error": error or self._note,
                    "ptz": self._ptz,
                }
            )
            self._status = new
        changed = (new.state, new.error, new.width, new.height, new.ptz) != (
            old.state,
            old.error,
            old.width,
            old.height,
            old.ptz,
        )
        return new if changed else None

    def _combined_health(self) -> tuple[str, str | None]:
        for wanted in ("failed", "connecting"):
            for role, (state, error) in self._health.items():
                if state == wanted:
                    return state, (f"detect_source: {error}" if role == "detect" and error else error)
        return "ok", None

    def _role_state(self, role: Role) -> str:
        with self._status_lock:
            return self._health[role][0]

    def _emit_status(self, status: CameraStatus) -> None:
        try:
            self._on_status(self.id, status)
        except Exception:
            log.exception("camera %s: status sink failed", self.id)

    # -- capture thread --------------------------------------------------------------------

    def _capture_loop(self, role: Role, uri: str | None) -> None:
        while not self._stop.is_set():
            retrying = Retrying(
                wait=wait_random_exponential(multiplier=0.5, max=self._backoff_max_s),
                retry=retry_if_exception_type(SourceError),
                stop=lambda _state: self._stop.is_set(),
                sleep=self._sleep,
                before_sleep=self._before_retry,
                reraise=True,
            )
            try:
                retrying(self._session, role, uri)
            except SourceError:
                return  # only reached when stopping
            except Exception as exc:  # a backend bug must not take the gateway down
                log.exception("camera %s: capture crashed", self.id)
                self._set_status("failed", redact(f"internal error: {exc}"), role=role)
                self._stop.wait(self._backoff_max_s)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a backoff sleep that stop() cuts short

    def _before_retry(self, state: object) -> None:
        self.stats.reconnects += 1

    def _session(self, role: Role, fixed: str | None) -> None:
        """Open the source and read until stopped; raise SourceError on failure. `fixed`: the
        stream's URI, None when `resolve` gives it."""
        try:
            uri, mode = self._stream(role, fixed)
            if uri is None:  # the detect thread of a camera without substream
                self._set_status("ok", role=role)
                self._stop.wait(NO_SUBSTREAM_WAIT_S)
                return
            source = self._source_factory(uri)
        except SourceError as exc:  # a URI the backend refuses: reported, retried like any failure
            log.warning("camera %s: %s%s", self.id, "detect_source: " if role == "detect" else "", exc)
            self._set_status("failed", str(exc), role=role)
            self._failed(role)
            raise
        if self._role_state(role) != "failed":
            self._set_status("connecting", role=role)
        started = time.monotonic()
        feeds_sink = role != "detect"
        packets_only = self._take_packets(source, mode)
        try:
            source.open()
            if feeds_sink:  # the retained ok status carries it: it is published at the first frame
                with self._status_lock:
                    self._declared_fps = source.fps
            skip: Callable[[], float | None] | None = getattr(source, "skip", None)
            demand = FrameDemand(
                self.cfg.detect_fps if mode != "main" else None,
                self._keep_fps if feeds_sink else 0.0,
                source.fps,
            )
            first = True
            while not self._stop.is_set():
                keeps_latest = feeds_sink or (role == "detect" and self._main_packets_only)
                viewed = demand.view_due(self._view_fps() if keeps_latest else 0.0)  # its grid goes on
                wanted = demand.needs_next() or viewed
                if skip is not None and (packets_only or not wanted):
                    demand.skipped(skip())
                    if feeds_sink:
                        self._count_arrival()
                        self.stats.skipped += 1
                    if packets_only and (first or self._role_state(role) != "ok"):
                        self._set_status("ok", None, None, role, size=source.size)
                        self._failures[role] = 0
                        first = False
                    continue
                frame = source.read()
                analyse = demand.decoded(frame.pts)
                if first or self._role_state(role) != "ok":
                    self._set_status("ok", None, frame if feeds_sink else None, role)
                    self._failures[role] = 0
                    first = False
                if keeps_latest:
                    with self._status_lock:
                        self._latest = frame
                if feeds_sink:
                    self._count_arrival()
                    if self._on_frame is not None:
                        demand.kept(frame.pts, self._on_frame(self.id, frame) is not False)
                if analyse:
                    self._queue(frame)
        except SourceError as exc:
            log.warning("camera %s: %s%s", self.id, "detect_source: " if role == "detect" else "", exc)
            self._set_status("failed", str(exc), role=role)
            self._failed(role)
            if time.monotonic() - started > HEALTHY_SESSION_S:
                self.stats.reconnects += 1
                return  # healthy for a while: start over with a short backoff
            raise
        finally:
            try:
                source.close()
            except Exception:
                log.exception("camera %s: close failed", self.id)

    def _stream(self, role: Role, fixed: str | None) -> tuple[str | None, Role]:
        """The URI `role` reads now and how (a main stream without substream acts as "both")."""
        if self._resolve is None:
            return fixed, role
        with self._resolve_lock:
            if self._resolved is None:
                main, sub = self._resolve(self._stop)
                log.info(
                    "camera %s: stream URIs from the camera: %s, substream %s",
                    self.id,
                    redact(main),
                    redact(sub) if sub is not None else "none",
                )
                self._resolved = main, sub
            main, sub = self._resolved
        if role == "detect":
            return sub, role
        return main, ("main" if sub is not None else "both")

    def _failed(self, role: Role) -> None:
        """Count a failed session; after RESOLVE_AFTER_FAILURES in a row, ask for the URIs again."""
        if self._resolve is None:
            return
        self._failures[role] = self._failures.get(role, 0) + 1
        if self._failures[role] >= RESOLVE_AFTER_FAILURES:
            self._failures[role] = 0
            with self._resolve_lock:
                if self._resolved is not None:
                    log.info("camera %s: its stream failed repeatedly: asking for its URIs again", self.id)
                self._resolved = None

    def _take_packets(self, source: FrameSource, role: Role) -> bool:
        """Hand the main stream's packets to `on_packet` where the source has them; True when the
        stream is then only demuxed (a detect stream does the analysis, so nothing is decoded)."""
        set_sink: Callable[[PacketSink | None], None] | None = getattr(source, "set_packet_sink", None)
        if role == "detect" or self._on_packet is None or set_sink is None:
            return False
        set_sink(self._on_packet)
        packets_only = role == "main"
        if packets_only:
            source.set_decode("none")  # type: ignore[attr-defined]
        self._main_packets_only = packets_only
        return packets_only

    def _queue(self, frame: Frame) -> None:
        """Hand `frame` to the detect thread; when it is behind, drop the oldest queued frame."""
        try:
            self._frames.put_nowait(frame)
        except queue.Full:
            try:
                self._frames.get_nowait()
                self.stats.dropped += 1
            except queue.Empty:
                pass
            self._frames.put_nowait(frame)

    def _count_arrival(self) -> None:
        self.stats.frames += 1
        self._arrivals.append(time.monotonic())
        if len(self._arrivals) >= 2:
            span = self._arrivals[-1] - self._arrivals[0]
            if span > 0:
                self.stats.fps = (len(self._arrivals) - 1) / span

    # -- detect thread ---------------------------------------------------------------------

    def _is_moving(self) -> bool:
        if self._moving is None:
            return False
        try:
            return self._moving()
        except Exception:  # a PTZ bug must not stop analysis
            log.exception("camera %s: PTZ state unavailable", self.id)
            return False

    def _detect_loop(self) -> None:
        last: Frame | None = None
        was_moving = False
        while not self._stop.is_set():
            self._apply_pending()  # also while no frames flow
            try:
                frame = self._frames.get(timeout=0.2)
            except queue.Empty:
                continue
            self._apply_pending()  # a change made while waiting holds from this frame on
            last = frame
            if self._is_moving():
                was_moving = True
                continue
            if was_moving:
                was_moving = False
                self.pipeline.camera_moved()
            try:
                phases = self.pipeline.process(frame)
            except Exception:
                log.exception("camera %s: pipeline failed on a frame", self.id)
                continue
            if self._keep_overlay:
                self._note_overlay(frame)
            for phase in phases:
                self._emit_phase(phase)
        now = time.time()
        for phase in self.pipeline.close(now, last.pts if last else 0.0):
            self._emit_phase(phase)

    def _note_overlay(self, frame: Frame) -> None:
        last = self.pipeline.last
        if last is None or last.frame is not frame:
            return  # not analysed (off the analysis grid)
        regions = tuple(last.motion.regions) if last.motion is not None else ()
        overlay = Overlay(frame.ts, regions, tuple(self.pipeline.tracks()))
        with self._status_lock:
            self._overlay = overlay

    def _apply_pending(self) -> None:
        """Apply the newest settings handed to apply(), if any; on the detect thread only."""
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self.pipeline.reconfigure(pending.motion, pending.detection, pending.objects)
        except AgentError as exc:
            log.error("camera %s: settings not applied, the previous ones stay: %s", self.id, exc)
        except Exception:  # a bug must not end the camera's analysis
            log.exception("camera %s: applying settings failed", self.id)

    def _emit_phase(self, phase: EventPhase) -> None:
        try:
            self._on_phase(self.id, phase)
        except Exception:
            log.exception("camera %s: event sink failed", self.id)
