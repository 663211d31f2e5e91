"""From motion regions to square crops at the model's input size, and boxes back to the frame.

A detector with a 300x300 input sees a person 60 px tall in a 1080p frame as 17 px when given the
whole frame, and as 60 px in a crop around the motion: crops at the input size keep small,
distant objects at native resolution and skip the still parts of the scene entirely. Crops are
squares of at least the input size (never upscaled), grown to hold the region with some context;
squares that overlap are merged into one around both regions, so no object is seen twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from agent.capture.source import Image

NormBox = tuple[float, float, float, float]  # x, y, w, h normalised to the frame (messages.Box)
XYXY = tuple[float, float, float, float]  # x0, y0, x1, y1

CONTEXT = 0.25  # a crop is this much wider than its region, so the whole object is in view
SCALED_DOWN = 3.0  # a crop this many times the model's input side gives way to the frame's tiles


@dataclass(frozen=True, slots=True)
class Crop:
    """A square of the frame in pixels; it may reach past the frame's edges (padded with black)."""

    x: int
    y: int
    side: int

    def to_frame(self, box: XYXY, frame_size: tuple[int, int]) -> NormBox | None:
        """Map a box normalised to this crop onto the frame, as normalised [x, y, w, h].

        The part outside the frame (padding) is cut off; None when nothing is left.
        """
        width, height = frame_size
        x0 = min(max(self.x + box[0] * self.side, 0.0), width)
        y0 = min(max(self.y + box[1] * self.side, 0.0), height)
        x1 = min(max(self.x + box[2] * self.side, 0.0), width)
        y1 = min(max(self.y + box[3] * self.side, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            return None
        return (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height)


def _square(rect: XYXY, frame_size: tuple[int, int], input_side: int) -> Crop:
    """The crop for one pixel rectangle: centred on it, kept inside the frame where it fits."""
    width, height = frame_size
    x0, y0, x1, y1 = rect
    wanted = math.ceil(max(x1 - x0, y1 - y0) * (1.0 + CONTEXT))
    side = max(input_side, min(wanted, max(width, height)))

    def place(centre: float, extent: int) -> int:
        if side >= extent:
            return (extent - side) // 2  # centred, padded on both sides
        return min(max(round(centre - side / 2), 0), extent - side)

    return Crop(place((x0 + x1) / 2, width), place((y0 + y1) / 2, height), side)


def _overlap(a: Crop, b: Crop) -> bool:
    return a.x < b.x + b.side and b.x < a.x + a.side and a.y < b.y + b.side and b.y < a.y + a.side


def _union(a: XYXY, b: XYXY) -> XYXY:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def plan_crops(
    regions: Sequence[NormBox], frame_size: tuple[int, int], input_side: int, *, max_crops: int = 4
) -> list[Crop]:
    """Square crops covering every motion region, none overlapping another (tiles excepted).

    Overlapping squares are merged into the square around both regions until none overlap (at
    most one merge per region). More than `max_crops` left means motion all over: one crop
    around all of it then costs less than many. A crop around more than `max_crops` regions
    that is SCALED_DOWN times the model's input or more (motion all over a large frame: a crowd
    on a 720p or 1080p camera) would shrink people below what the model finds, so the frame's
    tiles (`tile_crops`, scaled down less) are looked at instead, at one inference more on a
    16:9 frame. One large object (a bus near the camera) keeps its one square, in which it is
    whole.
    """
    width, height = frame_size
    if width <= 0 or height <= 0 or input_side <= 0:
        raise ValueError(f"bad frame size {frame_size} or input side {input_side}")
    rects: list[XYXY] = []
    for x, y, w, h in regions:
        x0, y0 = max(x, 0.0) * width, max(y, 0.0) * height
        x1, y1 = min(x + w, 1.0) * width, min(y + h, 1.0) * height
        if x1 > x0 and y1 > y0:
            rects.append((x0, y0, x1, y1))
    crops = [_square(r, frame_size, input_side) for r in rects]
    held = [1] * len(rects)  # motion regions inside each crop
    merged = True
    while merged:  # each pass removes one crop, so this runs at most len(rects) times
        merged = False
        for i in range(len(crops)):
            for j in range(i + 1, len(crops)):
                if _overlap(crops[i], crops[j]):
                    rects[i] = _union(rects[i], rects[j])
                    crops[i] = _square(rects[i], frame_size, input_side)
                    held[i] += held[j]
                    del rects[j], crops[j], held[j]
                    merged = True
                    break
            if merged:
                break
    if len(crops) > max_crops:
        whole = rects[0]
        for r in rects[1:]:
            whole = _union(whole, r)
        crops, held = [_square(whole, frame_size, input_side)], [sum(held)]
    if any(c.side >= SCALED_DOWN * input_side and n > max_crops for c, n in zip(crops, held, strict=True)):
        return tile_crops(frame_size, input_side)  # motion all over a large frame
    return crops


def tile_crops(frame_size: tuple[int, int], input_side: int) -> list[Crop]:
    """Squares side by side along the frame's long axis that cover all of it, one per frame
    height (two for 16:9), overlapping evenly: the full-frame pass that finds what motion missed,
    at a resolution the model can still use."""
    width, height = frame_size
    if width <= 0 or height <= 0 or input_side <= 0:
        raise ValueError(f"bad frame size {frame_size} or input side {input_side}")
    long, short = max(width, height), min(width, height)
    side = max(short, min(input_side, long))
    count = max(1, math.ceil(long / side))
    step = 0 if count == 1 else (long - side) / (count - 1)
    offset = (short - side) // 2  # a square taller than the frame is centred (padded)
    starts = [round(i * step) if long > side else (long - side) // 2 for i in range(count)]
    if width >= height:
        return [Crop(x, offset, side) for x in starts]
    return [Crop(offset, y, side) for y in starts]


def extract(image: Image, crop: Crop, input_side: int) -> Image:
    """The crop's pixels at input_side x input_side; outside the frame is black."""
    height, width = image.shape[:2]
    x0, y0 = max(crop.x, 0), max(crop.y, 0)
    x1, y1 = min(crop.x + crop.side, width), min(crop.y + crop.side, height)
    if (x0, y0, x1, y1) == (crop.x, crop.y, crop.x + crop.side, crop.y + crop.side):
        square = image[y0:y1, x0:x1]
    else:
        square = np.zeros((crop.side, crop.side, image.shape[2]), dtype=image.dtype)
        if x1 > x0 and y1 > y0:
            square[y0 - crop.y : y1 - crop.y, x0 - crop.x : x1 - crop.x] = image[y0:y1, x0:x1]
    if crop.side == input_side:
        return np.ascontiguousarray(square)
    return cast(Image, cv2.resize(square, (input_side, input_side), interpolation=cv2.INTER_AREA))
