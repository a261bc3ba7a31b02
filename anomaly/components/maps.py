"""Anomaly maps: patch scores brought to the input image's size and smoothed."""

from __future__ import annotations

import cv2
import numpy as np


def anomaly_map(
    patch_scores: np.ndarray,
    image_size: int,
    output_shape: tuple[int, int],
    blur_sigma: float = 4.0,
) -> np.ndarray:
    """Turn a grid of patch scores ``(h, w)`` into a pixel map of ``output_shape`` ``(H, W)``.

    The grid is upsampled bilinearly to the model's input resolution (``image_size`` squared),
    blurred there with a Gaussian of ``blur_sigma`` pixels (as in the PatchCore paper, so the
    smoothing means the same at any original resolution), then resized to the original image.
    """
    grid = np.asarray(patch_scores, dtype=np.float32)
    upsampled = cv2.resize(grid, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    if blur_sigma > 0:
        radius = int(4 * blur_sigma + 0.5)
        upsampled = cv2.GaussianBlur(
            upsampled, (2 * radius + 1, 2 * radius + 1), blur_sigma, borderType=cv2.BORDER_REFLECT
        )
    height, width = output_shape
    if (height, width) != (image_size, image_size):
        upsampled = cv2.resize(upsampled, (width, height), interpolation=cv2.INTER_LINEAR)
    return upsampled
