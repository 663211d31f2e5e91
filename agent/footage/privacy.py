"""Privacy masks: the one place where configured polygons are blanked before any image is encoded.

Every path that lets imagery leave the gateway (snapshots, stream frames, clips) calls
`apply_privacy_masks` on the decoded BGR pixels right before encoding. Masks are normalised polygons
(0..1 of the frame), so the same config works at any resolution; the pixel mask for a given frame
size and polygon set is rasterised once and cached, which makes applying it a single SIMD `and`
(about 0.7 ms for 1080p on a small x86 core) instead of a polygon fill per frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from agent.capture.source import Image

PolygonLike = Sequence[Sequence[float]]
"""A polygon as configured: a sequence of [x, y] points normalised to 0..1."""

_Key = tuple[tuple[tuple[float, float], ...], ...]

__all__ = ["PolygonLike", "apply_privacy_masks", "exposed_pixels", "privacy_keep_mask"]


def _normalise(polygons: Sequence[PolygonLike]) -> _Key:
    """Validate polygons and turn them into a hashable cache key; errors name the bad polygon."""
    key: list[tuple[tuple[float, float], ...]] = []
    for i, poly in enumerate(polygons):
        points: list[tuple[float, float]] = []
        try:
            for point in poly:
                x, y = (float(v) for v in point)
                points.append((x, y))
        except (TypeError, ValueError):
            raise ValueError(f"privacy mask {i}: every point must be a pair of numbers [x, y]") from None
        if len(points) < 3:
            raise ValueError(f"privacy mask {i}: a polygon needs at least 3 points, got {len(points)}")
        for x, y in points:
            if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"privacy mask {i}: point ({x}, {y}) is outside 0..1")
        key.append(tuple(points))
    return tuple(key)


@lru_cache(maxsize=16)
def _keep_mask(width: int, height: int, channels: int, polygons: _Key) -> Image:
    """0xFF where pixels are kept, 0 where blanked; read-only so a cached mask cannot be altered."""
    blank = np.zeros((height, width), np.uint8)
    pts = [
        np.array([[round(x * width), round(y * height)] for x, y in poly], dtype=np.int32)
        for poly in polygons
    ]
    for poly in pts:  # one at a time: in one call OpenCV leaves where two overlap unfilled (a hole)
        cv2.fillPoly(blank, [poly], 255)
    keep = cv2.bitwise_not(blank)
    if channels > 1:
        keep = cv2.merge([keep] * channels)
    out = np.asarray(keep, dtype=np.uint8)
    out.setflags(write=False)
    return out


def privacy_keep_mask(width: int, height: int, polygons: Sequence[PolygonLike], channels: int = 3) -> Image:
    """The cached keep-mask for a frame size: 0xFF where pixels survive, 0 where they are blanked."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    return _keep_mask(width, height, channels, _normalise(polygons))


def apply_privacy_masks(image: Image, polygons: Sequence[PolygonLike]) -> Image:
    """Return a copy of `image` with every polygon filled black.

    With no polygons the input itself is returned (no copy): callers must not mutate the result in
    place if they also keep the original. Accepts HxW (grey) or HxWxC uint8 images.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError("privacy masks need an HxW or HxWxC uint8 image")
    if len(polygons) == 0:
        return image
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else int(image.shape[2])
    keep = privacy_keep_mask(width, height, polygons, channels)
    if channels == 1 and image.ndim == 3:
        keep = keep[..., None]
    out = np.asarray(cv2.bitwise_and(image, keep), dtype=np.uint8)
    if out.shape != image.shape:  # OpenCV drops a trailing singleton channel
        out = out.reshape(image.shape)
    return out


def exposed_pixels(
    before: Sequence[PolygonLike], after: Sequence[PolygonLike], width: int, height: int
) -> int:
    """How many pixels of a `width`x`height` frame `before` blanks and `after` would show: more than
    0 means the change loosens the privacy masks (a moved, shrunk or removed polygon)."""
    if not before:
        return 0
    hidden = cv2.bitwise_not(privacy_keep_mask(width, height, before, channels=1))
    shown = privacy_keep_mask(width, height, after, channels=1) if after else np.full_like(hidden, 255)
    return int(cv2.countNonZero(cv2.bitwise_and(hidden, shown)))
