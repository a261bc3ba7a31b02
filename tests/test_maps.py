"""Anomaly maps have the input's size and keep the hot spot where it was."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.components.maps import anomaly_map


@pytest.mark.parametrize("shape", [(37, 91), (256, 256), (600, 400)])
def test_map_has_the_input_size(shape):
    grid = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    assert anomaly_map(grid, 64, shape).shape == shape


def test_hot_patch_stays_in_place_and_is_smoothed():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0
    result = anomaly_map(grid, 64, (128, 128), blur_sigma=4.0)
    y, x = np.unravel_index(result.argmax(), result.shape)
    assert abs(y - 2.5 * 16) <= 10 and abs(x - 5.5 * 16) <= 10
    assert result.max() < 1.0  # the blur spreads the peak
