"""The input step every runtime shares: images resized to the model's square input.

The whole image is resized (no centre crop: a crop would hide defects near the border of the
part), with OpenCV's area interpolation, and kept as ``uint8``: normalisation happens inside the
feature graph, so an exported graph takes the very same array as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np


def resize_batch(images: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """RGB ``uint8`` images ``(H, W, 3)`` -> one ``uint8`` batch ``(B, S, S, 3)``, ``S`` being
    ``image_size``."""
    batch = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return batch


def probe_channels(
    run: Callable[[Sequence[np.ndarray]], dict[str, np.ndarray]], image_size: int
) -> dict[str, int]:
    """The channels (dimension 1) of each output of a runtime, from one blank image.

    Asked of the graph itself rather than of a file's declared shapes, which an exporter may
    leave symbolic."""
    blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    return {name: int(value.shape[1]) for name, value in run([blank]).items()}
