"""Motion regions -> square crops at the model's input size -> boxes back on the full frame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.analysis.objects.regions import Crop, extract, plan_crops, tile_crops

SIDE = 300
FRAME = (1920, 1080)


def _inside(crop: Crop, size: tuple[int, int]) -> bool:
    return crop.x >= 0 and crop.y >= 0 and crop.x + crop.side <= size[0] and crop.y + crop.side <= size[1]


def _contains(crop: Crop, region: tuple[float, float, float, float], size: tuple[int, int]) -> bool:
    x, y, w, h = region
    return (
        crop.x <= x * size[0]
        and crop.y <= y * size[1]
        and (x + w) * size[0] <= crop.x + crop.side
        and (y + h) * size[1] <= crop.y + crop.side
    )


def test_small_region_gets_one_crop_at_input_size_around_it() -> None:
    region = (0.5, 0.5, 0.03, 0.1)  # a distant person: ~58x108 px
    (crop,) = plan_crops([region], FRAME, SIDE)
    assert crop.side == SIDE  # native resolution, no upscaling
    assert _contains(crop, region, FRAME)
    assert _inside(crop, FRAME)


def test_large_region_gets_a_bigger_square_with_context() -> None:
    region = (0.2, 0.1, 0.3, 0.6)  # 576x648 px
    (crop,) = plan_crops([region], FRAME, SIDE)
    assert crop.side >= 648 * 1.2
    assert _contains(crop, region, FRAME)
    assert _inside(crop, FRAME)


def test_region_at_the_edge_is_shifted_inside_the_frame() -> None:
    region = (0.98, 0.95, 0.02, 0.05)
    (crop,) = plan_crops([region], FRAME, SIDE)
    assert _inside(crop, FRAME)
    assert (crop.x + crop.side, crop.y + crop.side) == FRAME
    assert _contains(crop, region, FRAME)


def test_overlapping_crops_merge_and_distant_ones_do_not() -> None:
    near = [(0.40, 0.40, 0.02, 0.05), (0.47, 0.45, 0.02, 0.05)]
    (merged,) = plan_crops(near, FRAME, SIDE)
    assert all(_contains(merged, r, FRAME) for r in near)

    far = [(0.05, 0.1, 0.02, 0.05), (0.9, 0.8, 0.02, 0.05)]
    crops = plan_crops(far, FRAME, SIDE)
    assert len(crops) == 2
    assert all(any(_contains(c, r, FRAME) for c in crops) for r in far)


def test_no_two_crops_overlap_after_merging_a_chain() -> None:
    # A chain: each region's crop overlaps the next one's, so all end up in one.
    chain = [(0.1 + 0.08 * i, 0.4, 0.02, 0.05) for i in range(5)]
    crops = plan_crops(chain, FRAME, SIDE)
    for i, a in enumerate(crops):
        for b in crops[i + 1 :]:
            assert not (
                a.x < b.x + b.side and b.x < a.x + a.side and a.y < b.y + b.side and b.y < a.y + a.side
            )
    assert all(any(_contains(c, r, FRAME) for c in crops) for r in chain)


SCATTERED = [(x, y, 0.01, 0.02) for x in (0.02, 0.35, 0.7, 0.95) for y in (0.02, 0.9)]


def test_motion_everywhere_becomes_one_crop() -> None:
    small = (800, 450)  # one square around it all is 800 px: scaled down less than 3 times
    crops = plan_crops(SCATTERED, small, SIDE, max_crops=4)
    assert len(crops) == 1
    assert all(_contains(crops[0], r, small) for r in SCATTERED)


def test_motion_all_over_a_large_frame_is_looked_at_in_its_tiles() -> None:
    # One square around it all would be 1920 px, each person in it scaled down 6.4 times.
    crops = plan_crops(SCATTERED, FRAME, SIDE, max_crops=4)
    assert crops == tile_crops(FRAME, SIDE)
    assert max(c.side for c in crops) < 1920
    # A crowd whose crops merge into one big square (no more than max_crops left) as well.
    crowd = [(0.1 + 0.07 * i, 0.2 + 0.06 * (i % 3), 0.03, 0.1) for i in range(12)]
    assert plan_crops(crowd, FRAME, SIDE, max_crops=4) == tile_crops(FRAME, SIDE)


def test_one_large_object_on_a_large_frame_keeps_its_one_square() -> None:
    bus = (0.1, 0.2, 0.6, 0.6)  # 1152x648 px: tiles would cut it in two
    (crop,) = plan_crops([bus], FRAME, SIDE)
    assert crop.side >= 1152 and _contains(crop, bus, FRAME)


def test_empty_and_out_of_frame_regions_give_no_crops() -> None:
    assert plan_crops([], FRAME, SIDE) == []
    assert plan_crops([(0.5, 0.5, 0.0, 0.1), (1.2, 0.5, 0.1, 0.1)], FRAME, SIDE) == []


def test_bad_frame_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="frame size"):
        plan_crops([(0.1, 0.1, 0.1, 0.1)], (0, 480), SIDE)


def test_box_found_in_a_crop_maps_back_to_where_it_is_in_the_frame() -> None:
    """Round trip: draw a block, crop and shrink, find the block in the crop, map it back."""
    frame = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    x0, y0, x1, y1 = 700, 300, 1100, 820  # 400x520 px, so the crop is shrunk to SIDE
    frame[y0:y1, x0:x1] = 255
    region = (x0 / FRAME[0], y0 / FRAME[1], (x1 - x0) / FRAME[0], (y1 - y0) / FRAME[1])
    (crop,) = plan_crops([region], FRAME, SIDE)
    assert crop.side > SIDE
    pixels = extract(frame, crop, SIDE)
    assert pixels.shape == (SIDE, SIDE, 3)
    ys, xs = np.nonzero(pixels[:, :, 0] > 127)
    in_crop = (xs.min() / SIDE, ys.min() / SIDE, (xs.max() + 1) / SIDE, (ys.max() + 1) / SIDE)
    back = crop.to_frame(in_crop, FRAME)
    assert back is not None
    tolerance = crop.side / SIDE / FRAME[0] * 1.5  # one crop pixel, in frame units
    assert back == pytest.approx(region, abs=max(tolerance, 2.0 / FRAME[1]))


def test_frame_smaller_than_the_input_is_padded_and_maps_back() -> None:
    size = (200, 120)
    frame = np.full((size[1], size[0], 3), 80, np.uint8)
    frame[40:80, 50:90] = 255
    (crop,) = plan_crops([(0.25, 0.33, 0.2, 0.34)], size, SIDE)
    assert crop.side == SIDE
    assert crop.x < 0
    assert crop.y < 0
    pixels = extract(frame, crop, SIDE)
    assert pixels[0, 0].tolist() == [0, 0, 0]  # padding is black
    ys, xs = np.nonzero(pixels[:, :, 0] == 255)
    back = crop.to_frame(
        (xs.min() / SIDE, ys.min() / SIDE, (xs.max() + 1) / SIDE, (ys.max() + 1) / SIDE), size
    )
    assert back == pytest.approx((50 / 200, 40 / 120, 40 / 200, 40 / 120), abs=1e-9)


def test_box_in_the_padding_maps_to_nothing_and_overhangs_are_cut() -> None:
    crop = Crop(x=-50, y=-90, side=SIDE)
    size = (200, 120)
    assert crop.to_frame((0.0, 0.0, 0.1, 0.1), size) is None  # wholly in the padding
    box = crop.to_frame((0.0, 0.0, 0.5, 0.5), size)  # from padding into the frame
    assert box == pytest.approx((0.0, 0.0, 100 / 200, 60 / 120))
