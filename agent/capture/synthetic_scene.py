"""The synthetic street scene: what is drawn in each frame and when, and the ground truth it implies.

Every scene is deterministic for its seed, and knows when a real mover (a person or a car, not a
bird or noise) is in view, so tests and the accuracy bench can score the motion detector against
ground truth. agent.capture.synthetic turns a scene into a `FrameSource` and a video file.

Kinds:
- `street`: day street; pedestrians and cars cross at intervals with quiet gaps; mild noise.
- `night`: dark street, heavy sensor noise, dim pedestrians (and an occasional car) crossing.
- `lightswitch`: day street, no mover; the whole frame's brightness jumps now and then.
- `ramp`: day street, no mover; slow light ramp and a soft cloud shadow drifting across.
- `tiny`: day street, no mover; small birds a few pixels wide fly through.
- `noise`: dark street with heavy noise, no mover.
- `cross`: one pedestrian crossing once, then quiet.
- `mixed`: street movers plus light ramps, light switches, birds and stronger noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from agent.capture.source import Image

__all__ = ["KINDS", "Mover", "Scene", "SceneOptions"]


def _scalar(value: float) -> cv2.typing.MatLike:
    """A scalar operand for cv2: the bindings take numbers, their stubs only arrays."""
    return cast("cv2.typing.MatLike", value)


KINDS = ("street", "night", "lightswitch", "ramp", "tiny", "noise", "cross", "mixed")


@dataclass(frozen=True, slots=True)
class SceneOptions:
    """What a `synthetic:` URI asks for."""

    kind: str = "street"
    seed: int = 0
    fps: float = 10.0
    width: int = 640
    height: int = 360


@dataclass(frozen=True, slots=True)
class Mover:
    """Something crossing the frame horizontally; x is its left edge, in pixels."""

    kind: str  # "person", "car" or "bird"
    t0: float  # seconds when its left edge is at x0
    x0: float
    speed: float  # pixels per second, signed
    y: float  # baseline (feet or wheels) in pixels; for birds the centre
    w: float
    h: float
    colour: tuple[int, int, int]
    phase: float  # gait / flap phase

    def left(self, t: float) -> float:
        return self.x0 + self.speed * (t - self.t0)

    def visible(self, width: int, share: float = 0.3) -> tuple[float, float]:
        """The time span in which at least `share` of its width is inside the frame."""
        lo_x, hi_x = share * self.w - self.w, width - share * self.w  # left edge range
        ta = self.t0 + (lo_x - self.x0) / self.speed
        tb = self.t0 + (hi_x - self.x0) / self.speed
        return (min(ta, tb), max(ta, tb))


class Scene:
    """Renders frame i of a scene kind; movers are scheduled lazily so the scene never ends."""

    def __init__(self, opts: SceneOptions) -> None:
        self.opts = opts
        self.width, self.height = opts.width, opts.height
        self._rng = np.random.default_rng(opts.seed)
        self._noise_rng = np.random.default_rng(opts.seed + 7919)
        self._base = _street_background(self.width, self.height, self._rng)
        self._movers: list[Mover] = []
        self._birds: list[Mover] = []
        self._scheduled_until = 0.0
        self._lights: list[tuple[float, float]] = [(0.0, 1.0)]  # (time, gain) of light switches
        self._cloud = self._make_cloud()
        night = opts.kind in ("night", "noise")
        self._gain = 0.3 if night else 1.0
        self._noise_sigma = {"night": 16.0, "noise": 20.0, "mixed": 6.0}.get(opts.kind, 2.5)
        self._frame = np.empty((self.height, self.width, 3), np.uint8)
        self._noise = np.empty((self.height, self.width, 3), np.int16)
        if opts.kind == "cross":
            self._movers.append(self._person(2.0, direction=1, dim=False))
            self._scheduled_until = math.inf

    # -- schedule -------------------------------------------------------------------------------

    def _person(self, t_enter: float, direction: int, dim: bool) -> Mover:
        rng, w_img, h_img = self._rng, self.width, self.height
        near = bool(rng.random() < 0.5)
        h = h_img * (0.26 if near else 0.17) * rng.uniform(0.9, 1.1)
        w = h * 0.32
        y = h_img * (0.96 if near else 0.57)
        speed = w_img * rng.uniform(0.09, 0.14) * direction  # crosses in ~7-11 s
        x0 = -w if direction > 0 else w_img
        if dim:
            # A dim figure at night: lit just a little above the dark street.
            colour = (int(rng.integers(120, 170)),) * 3
        else:
            colour = (int(rng.integers(20, 230)), int(rng.integers(20, 230)), int(rng.integers(20, 230)))
        return Mover("person", t_enter, x0, speed, y, w, h, colour, float(rng.uniform(0, 6.28)))

    def _car(self, t_enter: float, direction: int) -> Mover:
        rng, w_img, h_img = self._rng, self.width, self.height
        lane_y = h_img * (0.74 if direction > 0 else 0.86)
        h = h_img * rng.uniform(0.11, 0.15)
        w = h * rng.uniform(2.2, 2.8)
        speed = w_img * rng.uniform(0.25, 0.45) * direction  # crosses in ~3-5 s
        x0 = -w if direction > 0 else w_img
        colour = (int(rng.integers(0, 255)), int(rng.integers(0, 255)), int(rng.integers(0, 255)))
        return Mover("car", t_enter, x0, speed, lane_y, w, h, colour, 0.0)

    def _schedule(self, t: float) -> None:
        """Plan episodes (one or two movers) with quiet gaps, up to a little past time t."""
        kind = self.opts.kind
        while self._scheduled_until < t + 30.0:
            start = self._scheduled_until + (3.0 if self._scheduled_until == 0.0 else 0.0)
            if kind in ("street", "night", "mixed"):
                count = 1 if self._rng.random() < 0.7 else 2
                end = start
                for k in range(count):
                    direction = 1 if self._rng.random() < 0.5 else -1
                    enter = start + k * self._rng.uniform(0.5, 3.0)
                    is_car = self._rng.random() < (0.15 if kind == "night" else 0.4)
                    m = (
                        self._car(enter, direction)
                        if is_car
                        else self._person(enter, direction, dim=kind == "night")
                    )
                    self._movers.append(m)
                    end = max(end, m.visible(self.width, 0.0)[1])
                self._scheduled_until = end + self._rng.uniform(6.0, 12.0)
            else:
                self._scheduled_until = start + 30.0
            if kind in ("lightswitch", "mixed"):
                at = start + self._rng.uniform(2.0, 25.0)
                if kind == "lightswitch" or self._rng.random() < 0.4:
                    gain = float(self._rng.choice([0.45, 0.6, 1.0, 1.3, 1.8]))
                    if gain == self._lights[-1][1]:
                        gain = 0.7 if gain >= 1.0 else 1.0
                    self._lights.append((max(at, self._lights[-1][0] + 1.0), gain))
            if kind in ("tiny", "mixed"):
                flock = 8 if kind == "tiny" else 2
                for _ in range(flock):
                    self._birds.append(self._bird(start + self._rng.uniform(0.0, 28.0)))

    def _bird(self, t_enter: float) -> Mover:
        rng = self._rng
        size = max(2.0, self.width * rng.uniform(0.004, 0.008))  # 2.5-5 px at 640 wide
        direction = 1 if rng.random() < 0.5 else -1
        speed = self.width * rng.uniform(0.15, 0.5) * direction
        x0 = -size if direction > 0 else float(self.width)
        y = self.height * rng.uniform(0.03, 0.9)
        phase = float(rng.uniform(0, 6.28))
        return Mover("bird", t_enter, x0, speed, y, size, size * 0.6, (30, 30, 35), phase)

    def _make_cloud(self) -> npt.NDArray[np.float32] | None:
        if self.opts.kind not in ("ramp", "mixed"):
            return None
        # A soft shadow twice the frame wide; slid across by slicing, so rendering stays cheap.
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0 : 2 * w].astype(np.float32)
        d = np.hypot((xx - w) / (0.45 * w), (yy - 0.5 * h) / (0.9 * h))
        shadow = (1.0 - 0.35 * np.clip(1.2 - d, 0.0, 1.0)).astype(np.float32)
        return np.repeat(shadow[:, :, None], 3, axis=2)

    # -- state at time t ------------------------------------------------------------------------

    def light_gain(self, t: float) -> float:
        gain = self._gain
        if self.opts.kind in ("ramp", "mixed"):
            gain *= 0.8 + 0.25 * math.sin(2 * math.pi * t / 47.0)  # clouds: ±25 % over tens of seconds
        for at, g in reversed(self._lights):
            if t >= at:
                return gain * g
        return gain

    def truth(self, until: float) -> list[tuple[float, float]]:
        """Merged intervals (seconds) up to `until` in which a person or car is in view."""
        self._schedule(until)
        spans = sorted(m.visible(self.width) for m in self._movers)
        merged: list[tuple[float, float]] = []
        for first, last in spans:
            a, b = max(first, 0.0), min(last, until)
            if a >= b:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def render(self, index: int) -> Image:
        """Frame `index` (at index / fps seconds); returns a buffer reused by the next call."""
        t = index / self.opts.fps
        self._schedule(t)
        frame = self._frame
        np.copyto(frame, self._base)
        for m in self._movers:
            if m.t0 - 30.0 <= t and -m.w * 2 < m.left(t) < self.width + m.w:
                _draw(frame, m, t, night=self.opts.kind == "night")
        if self._cloud is not None:
            shift = int((t * self.width * 0.02) % self.width)
            shade = self._cloud[:, shift : shift + self.width]
            frame[:] = cv2.multiply(frame, shade, dtype=cv2.CV_8U)
        gain = self.light_gain(t)
        if gain != 1.0:
            cv2.convertScaleAbs(frame, frame, alpha=gain)
        for b in self._birds:
            if b.t0 - 30.0 <= t and -b.w < b.left(t) < self.width:
                _draw(frame, b, t, night=False)
        if self._noise_sigma > 0:
            # cv2's RNG (seeded per frame by seed_noise) is ~5x faster than numpy's normal here.
            cv2.randn(self._noise, _scalar(0.0), _scalar(self._noise_sigma))
            frame[:] = cv2.add(frame, self._noise, dtype=cv2.CV_8U)
        return frame

    def seed_noise(self, index: int) -> None:
        """Seed OpenCV's RNG for frame `index`, so the noise too is reproducible."""
        cv2.setRNGSeed(int(self.opts.seed * 1_000_003 + index) & 0x7FFFFFFF)


def _street_background(w: int, h: int, rng: np.random.Generator) -> Image:
    """Sky, buildings with windows, a sidewalk, a textured road with lane marks, a near sidewalk."""
    img = np.empty((h, w, 3), np.uint8)
    sky_end, bld_end, walk_end, road_end = int(h * 0.12), int(h * 0.45), int(h * 0.58), int(h * 0.9)
    img[:sky_end] = (215, 190, 160)
    img[sky_end:bld_end] = (150, 155, 160)
    x = 0
    while x < w:
        bw = int(w * rng.uniform(0.08, 0.2))
        top = int(h * rng.uniform(0.0, 0.2))
        tone = rng.integers(60, 200, size=3)
        cv2.rectangle(img, (x, top), (x + bw, bld_end), tuple(int(c) for c in tone), -1)
        step_x, step_y = max(6, w // 60), max(6, h // 28)
        for wy in range(top + step_y // 2, bld_end - step_y, step_y):
            for wx in range(x + step_x // 2, x + bw - step_x, step_x):
                lit = int(rng.integers(30, 90))
                corner = (wx + step_x // 2, wy + step_y // 2)
                cv2.rectangle(img, (wx, wy), corner, (lit, lit + 10, lit + 20), -1)
        x += bw
    img[bld_end:walk_end] = (170, 172, 175)
    for tx in range(0, w, max(8, w // 40)):
        cv2.line(img, (tx, bld_end), (tx, walk_end), (150, 152, 155), 1)
    img[walk_end:road_end] = (95, 95, 98)
    mid = (walk_end + road_end) // 2
    dash = max(10, w // 20)
    for dx in range(0, w, 2 * dash):
        cv2.rectangle(img, (dx, mid - 1), (dx + dash, mid + 1), (230, 230, 230), -1)
    img[road_end:] = (165, 168, 170)
    texture = cv2.GaussianBlur(rng.normal(0.0, 9.0, size=(h, w)).astype(np.float32), (0, 0), 1.2)
    out = img.astype(np.float32) + np.asarray(texture, np.float32)[:, :, None]
    result: Image = np.clip(out, 0, 255).astype(np.uint8)
    return result


def _draw(frame: Image, m: Mover, t: float, night: bool) -> None:
    x = m.left(t)
    if m.kind == "bird":
        flap = 0.5 + 0.5 * math.sin(t * 25.0 + m.phase)
        bh = max(1, round(m.h * (0.5 + flap)))
        cx, cy = round(x + m.w / 2), round(m.y)
        cv2.ellipse(frame, (cx, cy), (max(1, round(m.w / 2)), max(1, bh // 2)), 0, 0, 360, m.colour, -1)
        return
    if m.kind == "person":
        _draw_person(frame, m, x, t)
        return
    x0, y1 = round(x), round(m.y)
    y0 = round(m.y - m.h)
    x1 = round(x + m.w)
    cv2.rectangle(frame, (x0, y0 + round(m.h * 0.35)), (x1, y1 - round(m.h * 0.15)), m.colour, -1)
    cv2.rectangle(
        frame, (x0 + round(m.w * 0.2), y0), (x1 - round(m.w * 0.2), y0 + round(m.h * 0.4)), m.colour, -1
    )
    glass = (40, 35, 30)
    cv2.rectangle(
        frame,
        (x0 + round(m.w * 0.25), y0 + round(m.h * 0.07)),
        (x1 - round(m.w * 0.25), y0 + round(m.h * 0.35)),
        glass,
        -1,
    )
    r = max(2, round(m.h * 0.17))
    for wx in (x0 + round(m.w * 0.2), x1 - round(m.w * 0.2)):
        cv2.circle(frame, (wx, y1 - r), r, (20, 20, 20), -1)
    if night:
        front = x1 if m.speed > 0 else x0
        cv2.circle(frame, (front, y1 - round(m.h * 0.45)), max(2, r // 2), (250, 250, 250), -1)


def _draw_person(frame: Image, m: Mover, x: float, t: float) -> None:
    head = m.h * 0.14
    cx = x + m.w / 2
    top = m.y - m.h
    skin = (110, 150, 190) if m.colour[0] != m.colour[1] else m.colour
    cv2.circle(frame, (round(cx), round(top + head / 2)), max(1, round(head / 2)), skin, -1)
    torso_top, hip = top + head, top + m.h * 0.58
    cv2.rectangle(frame, (round(x), round(torso_top)), (round(x + m.w), round(hip)), m.colour, -1)
    swing = math.sin(t * 6.0 + m.phase) * m.w * 0.45
    legs = (max(10, m.colour[0] // 2), max(10, m.colour[1] // 2), max(10, m.colour[2] // 2))
    thick = max(1, round(m.w * 0.3))
    cv2.line(frame, (round(cx), round(hip)), (round(cx + swing), round(m.y)), legs, thick)
    cv2.line(frame, (round(cx), round(hip)), (round(cx - swing), round(m.y)), legs, thick)
