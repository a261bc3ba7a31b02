"""Anomaly maps: patch scores brought to the input image's size and smoothed."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomaly.components.tiling import Box


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
    upsampled = _blur(
        cv2.resize(grid, (image_size, image_size), interpolation=cv2.INTER_LINEAR), blur_sigma
    )
    height, width = output_shape
    if (height, width) != (image_size, image_size):
        upsampled = cv2.resize(upsampled, (width, height), interpolation=cv2.INTER_LINEAR)
    return upsampled


def stitched_anomaly_map(
    tile_scores: np.ndarray,
    boxes: Sequence[Box],
    image_size: int,
    output_shape: tuple[int, int],
    blur_sigma: float = 4.0,
) -> np.ndarray:
    """One pixel map of ``output_shape`` from the patch scores ``(T, h, w)`` of an image's
    tiles (:mod:`anomaly.components.tiling`), each in its place ``boxes[t]``.

    The tiles are stitched at the model's resolution (the image scaled so a tile is
    ``image_size`` pixels across), where overlapping tiles are averaged and the map is blurred
    with ``blur_sigma`` as :func:`anomaly_map` blurs a whole image's; then resized to the
    original. One tile covering a square image gives exactly :func:`anomaly_map`'s result.
    """
    scale = image_size / max(max(box.height, box.width) for box in boxes)
    height, width = output_shape
    canvas_shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    total = np.zeros(canvas_shape, dtype=np.float32)
    count = np.zeros(canvas_shape, dtype=np.float32)
    for grid, box in zip(np.asarray(tile_scores, dtype=np.float32), boxes, strict=True):
        top, bottom = round(box.top * scale), round((box.top + box.height) * scale)
        left, right = round(box.left * scale), round((box.left + box.width) * scale)
        bottom, right = (
            min(max(bottom, top + 1), canvas_shape[0]),
            min(max(right, left + 1), canvas_shape[1]),
        )
        tile = cv2.resize(grid, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        total[top:bottom, left:right] += tile
        count[top:bottom, left:right] += 1.0
    stitched = _blur(total / np.maximum(count, 1.0), blur_sigma)
    if canvas_shape != (height, width):
        stitched = cv2.resize(stitched, (width, height), interpolation=cv2.INTER_LINEAR)
    return stitched


def _blur(scores: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Gaussian smoothing of a map at the model's resolution (``blur_sigma`` <= 0: none)."""
    if blur_sigma <= 0:
        return scores
    radius = int(4 * blur_sigma + 0.5)
    return cv2.GaussianBlur(
        scores, (2 * radius + 1, 2 * radius + 1), blur_sigma, borderType=cv2.BORDER_REFLECT
    )
