"""Privacy masks at their edges: single-channel frames, the smallest frames, bounds of a point.

These close mutants that survived tests/test_privacy.py (docs/mutants.md); pixels are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.footage.privacy import apply_privacy_masks, privacy_keep_mask

LEFT_HALF = [[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]]


def test_single_channel_frame_with_a_channel_axis_is_masked_and_keeps_its_shape() -> None:
    img = np.full((40, 80, 1), 200, np.uint8)
    out = apply_privacy_masks(img, LEFT_HALF)
    assert out.shape == (40, 80, 1)
    assert out.dtype == np.uint8
    assert out[:, :38].max() == 0
    assert out[:, 42:].min() == 200


def test_keep_mask_has_the_asked_channels() -> None:
    assert privacy_keep_mask(8, 4, LEFT_HALF).shape == (4, 8, 3)
    assert privacy_keep_mask(8, 4, LEFT_HALF, channels=1).shape == (4, 8)


def test_one_pixel_frames_work_and_empty_ones_are_refused() -> None:
    assert privacy_keep_mask(1, 1, LEFT_HALF).shape == (1, 1, 3)
    for width, height in ((0, 10), (10, 0), (-1, 5)):
        with pytest.raises(ValueError, match=rf"^frame size must be positive, got {width}x{height}$"):
            privacy_keep_mask(width, height, LEFT_HALF)


def test_points_below_the_frame_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^privacy mask 0: point \(0\.0, 1\.5\) is outside 0\.\.1$"):
        apply_privacy_masks(np.zeros((4, 4, 3), np.uint8), [[(0.0, 0.0), (1.0, 0.0), (0.0, 1.5)]])


def test_non_image_input_is_refused_with_what_is_needed() -> None:
    with pytest.raises(ValueError, match=r"^privacy masks need an HxW or HxWxC uint8 image$"):
        apply_privacy_masks(np.zeros((4, 4, 3, 1), np.uint8), LEFT_HALF)
