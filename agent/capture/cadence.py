"""Which frames of a camera become pixels: decided before each read, so the others can be skipped.

A camera often sends more frames than the gateway uses: 25 fps in, `detect_fps` 10 analysed, the
pre-event buffer keeping 10. A source with `skip()` (OpenCV) can advance past a frame without the
conversion to BGR and the copy, which for 1080p H.264 is about a third of a read's CPU. The
decision must come before the read, so `FrameDemand` predicts the next frame's `pts` from the
last one and the source's rate, and says "read" whenever that prediction, a quarter frame late,
is wanted by either consumer: in doubt it reads, so jitter never costs an analysed frame.

- The analysis consumer takes frames on a `Cadence`, the one frame-rate grid, which
  `CameraPipeline` also keeps: every frame queued for analysis is one the pipeline then analyses
  (25 fps in gives exactly 10 out).
- The keeping consumer (the frame sink that feeds the pre-event buffer) mirrors the buffer's own
  rule: a frame at least 0.9 / fps after the last one kept. The buffer judges by capture time,
  which jitters; when it turns a frame down (`kept(pts, False)`), the next frame is read for it.
- A live view (a stream session) asks for a rate for as long as it runs (`view_due`) and gets
  frames on a grid of its own, so that a stream gets the rate it asked for, not only
  `detect_fps` and the buffer's.
"""

from __future__ import annotations

import math

__all__ = ["KEEP_ALL", "Cadence", "FrameDemand"]

KEEP_ALL = math.inf  # keep_fps meaning "the sink wants every frame"
_KEEP_SLACK = 0.9  # PreEventBuffer keeps a frame >= 0.9 / fps after its last: the same here
_LOOKAHEAD = 0.25  # share of a frame interval added to the predicted pts before asking


class Cadence:
    """Frames at up to `fps` on a pts grid: the first frame at or after each due time.

    The grid restarts on the first frame, when pts jumps back (a file loops, a stream reconnects)
    and after a gap longer than one step; otherwise it advances by exactly one step per frame
    taken, so 25 fps in gives exactly 10 out. `CameraPipeline` and `FrameDemand` both keep one.
    """

    def __init__(self, fps: float) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"cadence fps must be a positive number, got {fps}")
        self.step = 1.0 / fps
        self._due: float | None = None

    def wants(self, pts: float) -> bool:
        """Whether the frame at `pts` would be taken (the grid does not move)."""
        if self._due is None or pts < self._due - 3 * self.step:
            return True  # first frame, or the source jumped back (loop, reconnect)
        return pts >= self._due - 1e-3 * self.step

    def take(self, pts: float) -> bool:
        """Whether the frame at `pts` is on the grid; if so, the grid moves on past it."""
        if not self.wants(pts):
            return False
        step = self.step
        if self._due is None or pts < self._due - 3 * step or pts >= self._due + step:
            self._due = pts + step  # (re)start: first frame, a jump back, or a gap
        else:
            self._due += step  # stay on the grid
        return True


class FrameDemand:
    """Predicts, before each read, whether the next frame is needed as pixels.

    `analyse_fps` is the pipeline's rate (None: this source feeds no analysis, e.g. the main stream
    of a camera with a detect substream); `keep_fps` the frame sink's (0: no sink, KEEP_ALL: every
    frame); `source_fps` the rate the source declares, used to predict the next pts.
    """

    def __init__(self, analyse_fps: float | None, keep_fps: float, source_fps: float) -> None:
        if not (keep_fps >= 0):
            raise ValueError(f"keep_fps must be >= 0, got {keep_fps}")
        self.cadence = Cadence(analyse_fps) if analyse_fps is not None else None
        self._keep_gap = _KEEP_SLACK / keep_fps if keep_fps > 0 else math.inf
        self._frame_s = 1.0 / source_fps if math.isfinite(source_fps) and source_fps > 0 else 0.0
        self._last_pts: float | None = None
        self._last_kept: float | None = None
        self._view: Cadence | None = None  # a live view's grid, while one asks

    def needs_next(self) -> bool:
        """Whether the next frame should be read as pixels (False: skip() it)."""
        if self._last_pts is None or self._frame_s == 0.0 or self._keep_gap == 0.0:
            return True
        probe = self._last_pts + (1.0 + _LOOKAHEAD) * self._frame_s
        if self.cadence is not None and self.cadence.wants(probe):
            return True
        return self._keep_due(probe)

    def skipped(self, pts: float | None) -> None:
        """A frame was skipped at `pts` (None: the source did not say; the prediction stands)."""
        self._last_pts = pts if pts is not None else (self._last_pts or 0.0) + self._frame_s

    def view_due(self, fps: float) -> bool:
        """Whether the next frame is due for a live view at `fps` (0: none), on its own grid."""
        if not (math.isfinite(fps) and fps > 0):
            self._view = None
            return False
        if self._view is None or self._view.step != 1.0 / fps:
            self._view = Cadence(fps)
        if self._last_pts is None or self._frame_s == 0.0:
            return True
        return self._view.wants(self._last_pts + (1.0 + _LOOKAHEAD) * self._frame_s)

    def decoded(self, pts: float) -> bool:
        """A frame was read at `pts`; return whether it is one for analysis."""
        self._last_pts = pts
        if self._view is not None:
            self._view.take(pts)
        return self.cadence is not None and self.cadence.take(pts)

    def kept(self, pts: float, taken: bool = True) -> None:
        """The sink was given the frame at `pts`; `taken` False if it turned the frame down."""
        if taken and self._keep_due(pts):
            self._last_kept = pts

    def _keep_due(self, pts: float) -> bool:
        if self._keep_gap == math.inf:
            return False
        last = self._last_kept
        return last is None or pts < last or pts - last >= self._keep_gap
