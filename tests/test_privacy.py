"""Privacy masks: polygons are blanked exactly, at any resolution, and bad masks are named."""

from __future__ import annotations

import numpy as np
import pytest

from agent.footage.privacy import apply_privacy_masks, exposed_pixels, privacy_keep_mask

LEFT_HALF = [[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]]


def bright(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(100, 256, (h, w, 3), dtype=np.uint8)


def test_polygon_is_black_and_the_rest_untouched() -> None:
    img = bright(360, 640)
    out = apply_privacy_masks(img, LEFT_HALF)
    assert out[:, :319].max() == 0
    assert np.array_equal(out[:, 322:], img[:, 322:])
    assert img.min() >= 100, "the input must not be modified"


def test_same_normalised_polygon_covers_same_share_at_any_size() -> None:
    tri = [[(0.1, 0.1), (0.9, 0.1), (0.5, 0.8)]]
    shares = []
    for w, h in [(320, 180), (1280, 720), (1920, 1080)]:
        out = apply_privacy_masks(bright(h, w), tri)
        shares.append(float((out.max(axis=2) == 0).mean()))
    assert max(shares) - min(shares) < 0.01
    assert 0.25 < shares[0] < 0.3  # triangle area 0.8 * 0.7 / 2 = 0.28


def test_several_polygons_and_grey_images() -> None:
    grey = np.full((100, 200), 255, np.uint8)
    polys = [[(0.0, 0.0), (0.1, 0.0), (0.1, 0.1)], [(0.9, 0.9), (1.0, 0.9), (1.0, 1.0), (0.9, 1.0)]]
    out = apply_privacy_masks(grey, polys)
    assert out.shape == grey.shape
    assert out[95:, 185:].max() == 0
    assert out[50, 100] == 255


def test_overlapping_polygons_blank_their_overlap_too() -> None:
    """Two masks drawn over each other (the console makes that easy) hide their overlap as well:
    filled in one OpenCV call, the overlap came out as a visible hole."""
    img = np.full((100, 100, 3), 200, np.uint8)
    a = [(0.1, 0.1), (0.6, 0.1), (0.6, 0.6), (0.1, 0.6)]
    b = [(0.3, 0.3), (0.9, 0.3), (0.9, 0.9), (0.3, 0.9)]
    out = apply_privacy_masks(img, [a, b])
    assert out[45, 45].max() == 0 and out[20, 20].max() == 0 and out[80, 80].max() == 0
    assert out[95, 5].min() == 200


def test_exposed_pixels_says_whether_new_masks_show_what_old_ones_hid() -> None:
    a = [(0.1, 0.1), (0.5, 0.1), (0.5, 0.5), (0.1, 0.5)]
    bigger = [(0.05, 0.05), (0.6, 0.05), (0.6, 0.6), (0.05, 0.6)]
    other = [(0.7, 0.7), (0.9, 0.7), (0.9, 0.9)]
    assert exposed_pixels([a], [bigger], 640, 480) == 0
    assert exposed_pixels([a], [a, other], 640, 480) == 0
    assert exposed_pixels([], [a], 640, 480) == 0
    assert exposed_pixels([bigger], [a], 640, 480) > 0
    assert exposed_pixels([a], [], 640, 480) == 0.4 * 640 * 0.4 * 480 + 0.4 * 640 + 0.4 * 480 + 1
    assert exposed_pixels([a, other], [a], 640, 480) > 0


def test_no_polygons_returns_the_image_itself() -> None:
    img = bright(10, 10)
    assert apply_privacy_masks(img, []) is img


def test_mask_is_rasterised_once_per_size_and_polygons() -> None:
    a = privacy_keep_mask(640, 360, LEFT_HALF)
    b = privacy_keep_mask(640, 360, [list(p) for p in LEFT_HALF])
    assert a is b
    assert privacy_keep_mask(320, 180, LEFT_HALF) is not a
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1  # cached masks are read-only


@pytest.mark.parametrize(
    ("polygons", "message"),
    [
        ([[(0.0, 0.0), (1.0, 1.0)]], "at least 3 points"),
        ([[(0.0, 0.0), (1.5, 0.0), (0.0, 1.0)]], "outside 0..1"),
        ([[(0.0, 0.0), ("a", 0.0), (0.0, 1.0)]], "pair of numbers"),
        ([[(0.0, 0.0), (float("nan"), 0.0), (0.0, 1.0)]], "outside 0..1"),
    ],
)
def test_bad_polygons_are_named(polygons: list[list[tuple[object, float]]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_privacy_masks(bright(10, 10), polygons)  # type: ignore[arg-type]


def test_non_image_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8 image"):
        apply_privacy_masks(np.zeros((4, 4, 3), np.float32), LEFT_HALF)
