"""Heatmaps on one fixed scale per model.

An anomaly map is divided by the model's calibrated ``pixel_threshold`` before colouring, so
1.0 is the level at which the calibrated rule rejects a part. The colour scale runs from 0 to
``SCALE_MAX`` for every image of every run: the same colour means the same anomaly level, and a
good part stays cool instead of being stretched to red as per-image normalisation would do.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Normalised anomaly level shown at the top of the colour scale (twice the threshold).
SCALE_MAX = 2.0
#: Normalised level of the contour drawn around anomalous regions (the threshold itself).
CONTOUR_LEVEL = 1.0
COLORMAP = cv2.COLORMAP_JET


def colorize(normalized_map: np.ndarray, scale_max: float = SCALE_MAX) -> np.ndarray:
    """Colour a normalised anomaly map ``(H, W)`` on the fixed scale; returns RGB ``uint8``."""
    level = np.clip(np.asarray(normalized_map, dtype=np.float32) / scale_max, 0.0, 1.0)
    bgr = cv2.applyColorMap((level * 255).astype(np.uint8), COLORMAP)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def colorbar(height: int = 256, width: int = 16, scale_max: float = SCALE_MAX) -> np.ndarray:
    """Vertical colour bar ``(height, width, 3)`` RGB, top = ``scale_max``, bottom = 0."""
    column = np.linspace(scale_max, 0.0, height, dtype=np.float32)[:, None]
    return colorize(np.repeat(column, width, axis=1), scale_max)


def anomalous_region(normalized_map: np.ndarray, level: float = CONTOUR_LEVEL) -> np.ndarray:
    """Boolean mask ``(H, W)`` of pixels at or above the contour level."""
    return np.asarray(normalized_map) >= level


def overlay(
    image: np.ndarray,
    normalized_map: np.ndarray,
    alpha: float = 0.45,
    scale_max: float = SCALE_MAX,
    contour_level: float = CONTOUR_LEVEL,
) -> np.ndarray:
    """Blend the fixed-scale heatmap over ``image`` and outline the anomalous region.

    ``image`` is RGB ``uint8`` ``(H, W, 3)`` and ``normalized_map`` is ``(H, W)``; the result is
    RGB ``uint8`` of the image's size. The contour is white so it reads on every colour.
    """
    if image.shape[:2] != normalized_map.shape:
        raise ValueError(
            f"anomaly map of shape {normalized_map.shape} does not match image {image.shape[:2]}"
        )
    heat = colorize(normalized_map, scale_max)
    blended = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    region = anomalous_region(normalized_map, contour_level).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(image.shape[:2]) / 150))
    cv2.drawContours(blended, contours, -1, (255, 255, 255), thickness)
    return blended
