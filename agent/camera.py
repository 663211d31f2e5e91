"""One camera at run time: capture with reconnects, a 2-deep frame queue, and the event pipeline.

Each `CameraWorker` owns two threads. `camera[id].capture` opens the source (retrying with
capped, jittered exponential backoff from tenacity) and reads frames into a queue of two;
when analysis falls behind, the oldest frame is dropped and counted rather than letting
latency grow. `camera[id].detect` runs the pipeline and hands event phases to the sink. A
camera that fails never touches another camera's threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, wait_random_exponential

from agent.capture.source import Frame, FrameSource, open_source
from agent.clock import iso
from agent.config import CameraConfig, MotionSettings
from agent.errors import SourceError
from agent.events import EventPhase
from agent.messages import CameraStatus
from agent.pipeline import CameraPipeline

log = logging.getLogger(__name__)

StatusSink = Callable[[str, CameraStatus], None]
PhaseSink = Callable[[str, EventPhase], None]
FrameSink = Callable[[str, Frame], None]

HEALTHY_SESSION_S = 30.0  # a session that delivered frames this long resets the backoff


@dataclass
class CameraStats:
    frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    fps: float = 0.0


class CameraWorker:
    """Owns one camera's capture and detect threads; start() and stop() are its lifecycle."""

    def __init__(
        self,
        cfg: CameraConfig,
        on_status: StatusSink,
        on_phase: PhaseSink,
        on_frame: FrameSink | None = None,
        source_factory: Callable[[str], FrameSource] = open_source,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.stats = CameraStats()
        self._on_status = on_status
        self._on_phase = on_phase
        self._on_frame = on_frame
        self._source_factory = source_factory
        self._backoff_max_s = backoff_max_s
        self.pipeline = CameraPipeline(cfg)
        self._frames: queue.Queue[Frame] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._arrivals: deque[float] = deque(maxlen=64)
        # _status_lock guards _status and _latest: written by the capture thread, read by others.
        self._status_lock = threading.Lock()
        self._status = CameraStatus(state="disabled" if not cfg.enabled else "connecting")
        self._latest: Frame | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._emit_status(self._status)
        if not self.cfg.enabled:
            return
        for name, target in (("capture", self._capture_loop), ("detect", self._detect_loop)):
            t = threading.Thread(target=target, name=f"camera[{self.id}].{name}", daemon=True)
            self._threads.append(t)
            t.start()

    def request_stop(self) -> None:
        """Ask both threads to stop without waiting (lets a gateway stop all cameras at once)."""
        self._stop.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop both threads; the detect thread ends any open event on its way out."""
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

    def latest_frame(self) -> Frame | None:
        with self._status_lock:
            return self._latest

    def update_motion(self, settings: MotionSettings) -> None:
        self.pipeline.update_settings(settings)

    # -- status ----------------------------------------------------------------------------

    def _set_status(self, state: str, error: str | None = None, frame: Frame | None = None) -> None:
        with self._status_lock:
            old = self._status
            h, w = (frame.image.shape[:2]) if frame is not None else (old.height, old.width)
            new = CameraStatus.model_validate(
                {
                    "state": state,
                    "fps": round(self.stats.fps, 2) if state == "ok" else None,
                    "width": w,
                    "height": h,
                    "last_frame_at": iso(frame.ts) if frame is not None else old.last_frame_at,
                    "error": error,
                }
            )
            changed = (new.state, new.error, new.width, new.height) != (
                old.state,
                old.error,
                old.width,
                old.height,
            )
            self._status = new
        if changed:
            self._emit_status(new)

    def _emit_status(self, status: CameraStatus) -> None:
        try:
            self._on_status(self.id, status)
        except Exception:
            log.exception("camera %s: status sink failed", self.id)

    # -- capture thread --------------------------------------------------------------------

    def _capture_loop(self) -> None:
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
                retrying(self._session)
            except SourceError:
                return  # only reached when stopping
            except Exception as exc:  # a backend bug must not take the gateway down
                log.exception("camera %s: capture crashed", self.id)
                self._set_status("failed", f"internal error: {exc}")
                self._stop.wait(self._backoff_max_s)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a backoff sleep that stop() cuts short

    def _before_retry(self, state: object) -> None:
        self.stats.reconnects += 1

    def _session(self) -> None:
        """Open the source and read until stopped; raise SourceError on failure."""
        source = self._source_factory(self.cfg.source)
        if self.status.state != "failed":
            self._set_status("connecting")
        started = time.monotonic()
        try:
            source.open()
            first = True
            while not self._stop.is_set():
                frame = source.read()
                self._count_arrival(frame.ts)
                with self._status_lock:
                    self._latest = frame
                if first or self.status.state != "ok":
                    self._set_status("ok", None, frame)
                    first = False
                if self._on_frame is not None:
                    self._on_frame(self.id, frame)
                if not self.pipeline.wants(frame.pts):
                    continue
                try:
                    self._frames.put_nowait(frame)
                except queue.Full:
                    try:
                        self._frames.get_nowait()
                        self.stats.dropped += 1
                    except queue.Empty:
                        pass
                    self._frames.put_nowait(frame)
        except SourceError as exc:
            log.warning("camera %s: %s", self.id, exc)
            self._set_status("failed", str(exc))
            if time.monotonic() - started > HEALTHY_SESSION_S:
                self.stats.reconnects += 1
                return  # healthy for a while: start over with a short backoff
            raise
        finally:
            try:
                source.close()
            except Exception:
                log.exception("camera %s: close failed", self.id)

    def _count_arrival(self, ts: float) -> None:
        self.stats.frames += 1
        self._arrivals.append(time.monotonic())
        if len(self._arrivals) >= 2:
            span = self._arrivals[-1] - self._arrivals[0]
            if span > 0:
                self.stats.fps = (len(self._arrivals) - 1) / span

    # -- detect thread ---------------------------------------------------------------------

    def _detect_loop(self) -> None:
        last: Frame | None = None
        while not self._stop.is_set():
            try:
                frame = self._frames.get(timeout=0.2)
            except queue.Empty:
                continue
            last = frame
            try:
                phases = self.pipeline.process(frame)
            except Exception:
                log.exception("camera %s: pipeline failed on a frame", self.id)
                continue
            for phase in phases:
                self._emit_phase(phase)
        now = time.time()
        for phase in self.pipeline.close(now, last.pts if last else 0.0):
            self._emit_phase(phase)

    def _emit_phase(self, phase: EventPhase) -> None:
        try:
            self._on_phase(self.id, phase)
        except Exception:
            log.exception("camera %s: event sink failed", self.id)
