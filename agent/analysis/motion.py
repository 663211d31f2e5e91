"""Motion detection on a small grey copy of each frame, robust to noise and lighting.

The motion detector keeps a running-average background of a ~160x90 grey image and marks pixels
that differ from it by more than a threshold. What it adds to the classic NVR recipe (Frigate's
running average, contrast normalisation and "lightning" recalibration):

- Cheap downscale first: a strided sample of one channel, then an area average. Memory traffic is
  the cost at 1080p, so the rows read are capped; a 1080p frame costs no more than a 360p one.
- Photometric compensation: a global gain and offset between frame and background, estimated from
  robust percentiles, is removed before differencing, so exposure drift and light ramps leave no
  residue. A step in the frame's percentiles from one frame to the next (light switch), or a
  large share of the frame changing at once, re-seeds the background instead of reporting motion;
  a whole view that keeps changing for over a second (camera moved, something fills the view) is
  reported as motion after all.
- A noise-adaptive threshold: the noise level is estimated from the median frame-to-frame change
  (robust to movers), and the threshold never drops below a multiple of it, while the configured
  threshold is scaled down in low-contrast (night) scenes so dim pedestrians are still found.
- Per-pixel dynamics: each pixel's 90th percentile of frame-to-frame change is tracked (a
  sigma-delta estimator), and its threshold never drops below a multiple of it, so swaying
  leaves, water or flicker stop firing after a few seconds while the rest stays sensitive.
- Temporal persistence: a pixel counts only if it also changed (nearby) in the previous frame,
  which removes independent noise speckles at one frame of onset latency.
- Regions are grouped by a dilation, but their area is counted in raw changed pixels, so that
  `min_area` rejects a bird even after grouping.
- Selective background update: moving pixels are not learnt, so slow movers are not absorbed,
  while foreground that stands still (a parked car, the ghost of a first-frame mover) fades in
  a few seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import cv2
import numpy as np
import numpy.typing as npt

from agent.capture.source import Image
from agent.config import MotionSettings

Region = tuple[float, float, float, float]
Plane = npt.NDArray[Any]  # a working-size image; OpenCV's stubs type results loosely


def _scalar(value: float) -> cv2.typing.MatLike:
    """A scalar operand for cv2 arithmetic: the bindings take numbers, their stubs only arrays."""
    return cast("cv2.typing.MatLike", value)


WORK_HEIGHT = 90  # rows of the working image; ~160x90 for 16:9
_NOISE_K = 4.0  # threshold floor in noise sigmas (of the background difference)
_SIGMA_RATE = 0.1  # weight of a new noise estimate, every other frame (after warm-up)
_WARMUP_FRAMES = 5  # frames that only learn the noise level and background
_BG_TAU_S = 4.0  # background time constant where the scene is still
_STANDING_TAU_S = 2.5  # ... where foreground stands still (stopped car, ghost of a left object)
_LIGHTING_SHARE = 0.25  # this share of the frame in foreground at once is a lighting change
_LIGHTING_JUMP = 0.1  # ... and so is this share turning foreground from one frame to the next
_ROW_BUDGET = 600_000  # bytes of input rows read per frame (see _shrink)
_BG_STATS_EVERY = 4  # frames between background percentile updates
_SWITCH_LEVELS = 10.0  # the frame's median moving this much between two frames is a light switch
_SWITCH_GAIN_LOG = math.log(1.2)  # ... and so is its contrast (p90-p10) changing by 20 %
_CALIBRATION_FRAMES = 2  # frames reported still after a recalibration
_GLOBAL_MOTION_S = 1.0  # whole-view change lasting this long is motion, not a light switch
_DYN_SHARE = 0.1  # per-pixel dynamics track the 90th percentile of frame-to-frame change
_DYN_RATE = 10.0  # grey levels per second that tracking moves
_DYN_K = 2.0  # a pixel's threshold is at least this times its tracked dynamics
_REF_SPREAD = 96.0  # background contrast (p90-p10, grey levels) at which `threshold` applies unscaled
_MIN_CONTRAST_SCALE = 0.35
_SCORE_AREA = 0.02  # share of the frame in motion that scores ~0.63


@dataclass(slots=True)
class MotionResult:
    """Motion in one frame: regions as normalised [x, y, w, h], score 0..1."""

    motion: bool
    regions: list[Region] = field(default_factory=list)
    score: float = 0.0


_STILL = MotionResult(motion=False)


class _Foreground(NamedTuple):
    """One frame's foreground: the mask (255 = changed), the global threshold it used, and the
    share of the active view it covers and how much that share grew since the previous frame."""

    mask: Plane
    threshold: float
    share: float
    jump: float


class MotionDetector:
    """Per-camera motion detector; `detect` is called with frames in time order, on one thread."""

    def __init__(self, settings: MotionSettings) -> None:
        self._settings = settings
        self._geometry: tuple[int, int, int, int] | None = None  # (input h, w, row step, col step)
        self._work_size = (0, 0)  # (w, h) of the working image
        self._mask: Plane | None = None  # 255 where motion counts
        self._active_px = 1
        self._kernel = np.ones((3, 3), np.uint8)
        self._group_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self.reset()

    def reset(self) -> None:
        """Forget the background, e.g. after the camera reconnected or moved."""
        self._bg: Plane | None = None  # running background
        self._prev: Plane | None = None  # previous working frame
        self._prev_fg: Plane | None = None  # previous foreground mask
        self._dyn: Plane | None = None  # per-pixel 90th pct of frame-to-frame change
        self._sigma = 0.0
        self._share = 0.0
        self._frames = 0
        self._calibrating = 0
        self._last_ts: float | None = None
        self._global_since: float | None = None  # start of a run of whole-view changes
        self._bg_stats: npt.NDArray[np.float64] | None = None  # background percentiles
        self._prev_q: npt.NDArray[np.float64] | None = None  # previous frame's percentiles

    def update_settings(self, settings: MotionSettings) -> None:
        """Apply new settings from the next frame on; the learnt background is kept.

        Not thread-safe by design: call it between two `detect` calls, on their thread (the
        camera's detect thread applies every change there), so no frame sees half a change.
        """
        self._settings = settings
        if self._geometry is not None:
            self._set_mask(settings)

    @property
    def noise_sigma(self) -> float:
        """Current noise estimate, grey levels of the working image (for diagnostics)."""
        return self._sigma

    def detect(self, image: Image, ts: float) -> MotionResult:
        """Compare one BGR frame with the background and return where it moved.

        The steps' order matters: each reads what the one before left, and a frame found to be a
        light switch or a whole-view change returns before it can teach noise, dynamics or
        background anything.
        """
        if not self._settings.enabled:
            return _STILL
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 8:
            raise ValueError(
                f"motion detection needs an HxW or HxWx3 uint8 image of at least 8x8, "
                f"got {image.dtype} {image.shape}"
            )
        small = self._shrink(image)
        cur = small.astype(np.float32)
        dt = 0.1 if self._last_ts is None else min(max(ts - self._last_ts, 1e-3), 5.0)
        self._last_ts = ts
        self._frames += 1
        if self._bg is None or self._prev is None or self._dyn is None or self._prev_fg is None:
            self._recalibrate(cur)
            self._dyn = np.zeros_like(cur)
            return _STILL
        step = cv2.absdiff(cur, self._prev)
        # Slow statistics alternate between frames to keep the per-frame cost down.
        even = self._frames % 2 == 0
        warming = self._frames <= _WARMUP_FRAMES
        sigma_now = self._measure_noise(step, even=even, warming=warming)
        diff, spread, switched = self._compensate(small, cur)
        fg = self._foreground(diff, spread)
        verdict = self._whole_view(cur, fg, ts, switched=switched, warming=warming)
        if verdict is not None:
            return verdict
        self._learn_noise(step, sigma_now, dt, even=even)
        moving = self._persistent(fg.mask)
        self._prev = cur
        self._update_background(cur, fg.mask, step, fg.threshold, dt)
        if self._calibrating > 0:
            self._calibrating -= 1
            return _STILL
        if cv2.countNonZero(moving) == 0:
            return _STILL
        return self._regions(moving)

    def _measure_noise(self, step: Plane, *, even: bool, warming: bool) -> float:
        """Noise from the frame-to-frame change, robust to movers (median |N(0, sqrt2 sigma)| is
        0.954 sigma): averaged in on every warm-up frame, so the first reported frame has a sound
        threshold; after that measured every other frame and learnt only if the frame is ordinary."""
        sigma_now = _median(step) / 0.954 if even or warming else self._sigma
        if warming:
            self._sigma += (sigma_now - self._sigma) / (self._frames - 1)
        return sigma_now

    def _compensate(self, small: Plane, cur: Plane) -> tuple[Plane, float, bool]:
        """(|frame - background|, background spread p90-p10, light switched), the frame's global
        gain and offset removed so that exposure drift and light ramps leave no residue; the
        background's percentiles drift slowly, so they are refreshed every few frames only."""
        bg = self._bg
        assert bg is not None
        if self._frames % _BG_STATS_EVERY == 0 or self._bg_stats is None:
            self._bg_stats = _quantiles(cv2.convertScaleAbs(bg), _PHOTO_QS)
        q = _quantiles(small, _PHOTO_QS)
        switched = self._prev_q is not None and _light_switched(self._prev_q, q)
        self._prev_q = q
        gain, offset, spread = _photometric(q, self._bg_stats)
        expected = cv2.addWeighted(bg, gain, bg, 0.0, offset)
        return cv2.absdiff(cur, expected), spread, switched

    def _foreground(self, diff: Plane, spread: float) -> _Foreground:
        """Threshold the difference: the configured level, scaled down in low contrast (night),
        never below the noise floor nor, per pixel, below that pixel's own recent flicker."""
        s = self._settings
        dyn = self._dyn
        assert dyn is not None
        contrast = min(1.0, max(_MIN_CONTRAST_SCALE, spread / _REF_SPREAD))
        threshold = max(s.threshold * contrast, _NOISE_K * self._sigma, 2.0)
        limit = cv2.max(cv2.addWeighted(dyn, _DYN_K, dyn, 0.0, 0.0), _scalar(threshold))
        fg = cv2.compare(diff, limit, cv2.CMP_GT)
        if self._mask is not None:
            cv2.bitwise_and(fg, self._mask, dst=fg)
        share = cv2.countNonZero(fg) / self._active_px
        jump = share - self._share
        self._share = share
        return _Foreground(fg, threshold, share, jump)

    def _whole_view(
        self, cur: Plane, fg: _Foreground, ts: float, *, switched: bool, warming: bool
    ) -> MotionResult | None:
        """The verdict on a frame that changed as a whole, else None: warm-up, a light switch or a
        change too wide or sudden for gain/offset re-seeds and reports nothing, until the whole view
        has kept changing for `_GLOBAL_MOTION_S` (camera moved, view filled): that is motion."""
        if switched and not warming:
            # A light switch or exposure step: re-seed even if gain/offset explains most of it,
            # as saturated or unevenly lit parts would otherwise linger as motion.
            self._recalibrate(cur)
            return _STILL
        if warming or fg.share > _LIGHTING_SHARE or fg.jump > _LIGHTING_JUMP:
            self._recalibrate(cur)
            if warming:
                return _STILL
            if self._global_since is None:
                self._global_since = ts
            if ts - self._global_since < _GLOBAL_MOTION_S:
                return _STILL
            score = round(1.0 - math.exp(-fg.share / _SCORE_AREA), 4)
            return MotionResult(True, [_bounding(fg.mask)], score)
        if fg.share < _LIGHTING_SHARE / 3:
            self._global_since = None  # hysteresis: a run of whole-view change ends when it calms
        return None

    def _learn_noise(self, step: Plane, sigma_now: float, dt: float, *, even: bool) -> None:
        """Learn from a frame known to be ordinary: the noise level on even frames, the per-pixel
        dynamics on odd ones, so that no frame pays for both."""
        if even:  # a single odd frame (cut, glitch) can at most double or halve the estimate
            bounded = min(max(sigma_now, 0.5 * self._sigma), 2.0 * self._sigma + 0.5)
            self._sigma += _SIGMA_RATE * (bounded - self._sigma)
        else:
            self._track_dynamics(step, 2 * dt)

    def _persistent(self, fg: Plane) -> Plane:
        """Foreground that also changed nearby in the previous frame: noise speckles do not persist."""
        prev_fg = self._prev_fg
        assert prev_fg is not None
        moving = cv2.bitwise_and(fg, cv2.dilate(prev_fg, self._kernel))
        self._prev_fg = fg
        return moving

    def _recalibrate(self, cur: Plane) -> None:
        self._bg = cur.copy()
        self._bg_stats = None
        self._prev = cur
        self._prev_fg = np.zeros(cur.shape, np.uint8)
        self._share = 0.0
        self._calibrating = _CALIBRATION_FRAMES

    def _track_dynamics(self, step: Plane, dt: float) -> None:
        """Sigma-delta quantile tracking: each pixel's level moves up when exceeded, else down."""
        dyn = self._dyn
        assert dyn is not None
        eta = _DYN_RATE * dt
        above = cv2.compare(step, dyn, cv2.CMP_GT)
        cv2.add(dyn, _scalar(eta * (1.0 - _DYN_SHARE)), dst=dyn, mask=above)
        cv2.subtract(dyn, _scalar(eta * _DYN_SHARE), dst=dyn, mask=cv2.bitwise_not(above))
        cv2.max(dyn, _scalar(0.0), dst=dyn)

    def _update_background(self, cur: Plane, fg: Plane, step: Plane, threshold: float, dt: float) -> None:
        """Fast where still; moderately fast where foreground stands still (stopped cars,
        ghosts); barely where something moves, so slow movers are not absorbed."""
        bg = self._bg
        assert bg is not None
        still = cv2.bitwise_not(cv2.dilate(fg, self._kernel))
        cv2.accumulateWeighted(cur, bg, 1.0 - math.exp(-dt / _BG_TAU_S), mask=still)
        standing = cv2.bitwise_and(fg, cv2.compare(step, _scalar(threshold), cv2.CMP_LE))
        cv2.accumulateWeighted(cur, bg, 1.0 - math.exp(-dt / _STANDING_TAU_S), mask=standing)

    # -- helpers --------------------------------------------------------------------------------

    def _shrink(self, image: Image) -> Plane:
        """Strided sample of the green channel, then an area average to the working size.

        Memory traffic, not arithmetic, is the cost at 1080p: every sampled row pulls the whole
        row through the cache. So rows are sampled twice per working row only while that stays
        under `_ROW_BUDGET` bytes, and columns always twice (free: same cache lines).
        """
        h, w = image.shape[:2]
        if self._geometry is None or self._geometry[:2] != (h, w):
            work_h = min(WORK_HEIGHT, h)
            work_w = max(1, round(w * work_h / h))
            row_bytes = image.strides[0] if image.ndim >= 2 else w
            per_row = 2 if 2 * work_h * row_bytes <= _ROW_BUDGET else 1
            self._geometry = (h, w, max(1, h // (per_row * work_h)), max(1, w // (2 * work_w)))
            self._work_size = (work_w, work_h)
            self._set_mask(self._settings)
            self.reset()
        _, _, sy, sx = self._geometry
        sample = image[::sy, ::sx, 1] if image.ndim == 3 else image[::sy, ::sx]
        small = cv2.resize(sample, self._work_size, interpolation=cv2.INTER_AREA)
        return cv2.blur(small, (3, 3))

    def _set_mask(self, settings: MotionSettings) -> None:
        """Rasterise the mask polygons at working size (255 where motion counts); the mask and
        its active pixel count are replaced together, once both are built."""
        w, h = self._work_size
        mask: Plane | None = None
        active = w * h
        if settings.masks:
            mask = np.full((h, w), 255, np.uint8)
            polys = [
                np.round(np.array(poly, np.float64) * (w, h)).astype(np.int32) for poly in settings.masks
            ]
            for poly in polys:  # one at a time: in one call OpenCV leaves where two overlap unfilled
                cv2.fillPoly(mask, [poly], 0)
            active = max(1, cv2.countNonZero(mask))
        self._mask, self._active_px = mask, active

    def _regions(self, moving: Plane) -> MotionResult:
        """Group nearby moving pixels into boxes; keep those with enough raw moving pixels."""
        grouped = cv2.dilate(moving, self._group_kernel)
        contours, _ = cv2.findContours(grouped, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        h, w = moving.shape
        min_px = max(1.0, self._settings.min_area * w * h)
        regions: list[Region] = []
        area = 0
        for contour in contours:
            x, y, bw, bh = cv2.boundingRect(contour)
            raw = cv2.countNonZero(moving[y : y + bh, x : x + bw])
            if raw < min_px:
                continue
            # Undo the grouping dilation (2 px each side) so boxes hug the moving pixels.
            x0, y0 = min(x + 2, w - 1), min(y + 2, h - 1)
            x1, y1 = max(x0 + 1, x + bw - 2), max(y0 + 1, y + bh - 2)
            regions.append((x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h))
            area += raw
        if not regions:
            return _STILL
        regions.sort(key=lambda r: -r[2] * r[3])
        score = 1.0 - math.exp(-area / (w * h) / _SCORE_AREA)
        return MotionResult(motion=True, regions=regions, score=round(score, 4))


def _bounding(mask: Plane) -> Region:
    x, y, w, h = cv2.boundingRect(mask)
    rows, cols = mask.shape
    if w == 0 or h == 0:
        return (0.0, 0.0, 1.0, 1.0)
    return (x / cols, y / rows, w / cols, h / rows)


def _quantiles(image: Plane, qs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Quantiles of a uint8 image from its histogram (cheaper than sorting)."""
    cdf = cv2.calcHist([image], [0], None, [256], [0, 256]).ravel().cumsum()
    return np.searchsorted(cdf, qs * float(cdf[-1])).astype(np.float64)


_PHOTO_QS = np.array([0.1, 0.5, 0.9])
_MEDIAN_Q = np.array([0.5])
_MEDIAN_SCALE = 8.0  # fixed-point scale for the median of a float image


def _photometric(cur: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """Gain and offset mapping the background onto the frame, from their 10/50/90th percentiles.

    Returns (gain, offset, background spread p90-p10).
    """
    c10, c50, c90 = cur
    b10, b50, b90 = ref
    spread = float(b90 - b10)
    gain = float(c90 - c10) / spread if spread >= 4.0 else 1.0
    gain = min(4.0, max(0.25, gain))
    return gain, float(c50 - gain * b50), spread


def _light_switched(before: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> bool:
    """Whether the frame's percentiles moved together by more than a mover could move them."""
    if abs(after[1] - before[1]) > _SWITCH_LEVELS:
        return True
    spread_before, spread_after = before[2] - before[0], after[2] - after[0]
    if min(spread_before, spread_after) < 16:
        return False
    return bool(abs(math.log(spread_after / spread_before)) > _SWITCH_GAIN_LOG)


def _median(diff: Plane) -> float:
    """Median of a non-negative float image, to 1/8 grey level (values past 31 saturate)."""
    fixed = cv2.convertScaleAbs(diff, alpha=_MEDIAN_SCALE)
    return float(_quantiles(fixed, _MEDIAN_Q)[0]) / _MEDIAN_SCALE
