"""Shared fixtures: write small image files and category trees under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest


def save_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (RGB/RGBA channel order, uint8/uint16/float32) in the format of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        # OpenCV writes BGR(A).
        array = np.concatenate([array[:, :, 2::-1], array[:, :, 3:]], axis=2)
    ok, encoded = cv2.imencode(path.suffix, array)
    assert ok, f"cannot encode {path.suffix}"
    # Bytes, not cv2.imwrite: it would mangle non-ASCII paths on some platforms.
    path.write_bytes(encoded.tobytes())
    return path


@pytest.fixture
def write_image() -> Callable[[Path, np.ndarray], Path]:
    """``write_image(path, array) -> path``; see :func:`save_image`."""
    return save_image


def make_mvtec(
    root: Path,
    *,
    n_train: int = 4,
    n_test_good: int = 4,
    defects: dict[str, int] | None = None,
    size: int = 16,
    seed: int = 0,
) -> Path:
    """A tiny MVTec AD category at ``root``; defects get ``ground_truth`` masks.

    Defect images carry a bright square, where their mask is set.
    """
    defects = {"crack": 3} if defects is None else defects
    rng = np.random.default_rng(seed)

    def good() -> np.ndarray:
        return rng.integers(90, 110, (size, size, 3), dtype=np.uint8)

    for i in range(n_train):
        save_image(root / "train" / "good" / f"{i:03d}.png", good())
    for i in range(n_test_good):
        save_image(root / "test" / "good" / f"{i:03d}.png", good())
    for defect, count in defects.items():
        for i in range(count):
            image, mask = good(), np.zeros((size, size), np.uint8)
            image[2:6, 2:6] = 250
            mask[2:6, 2:6] = 255
            save_image(root / "test" / defect / f"{i:03d}.png", image)
            save_image(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def mvtec_category(tmp_path: Path) -> Path:
    """A tiny MVTec AD category ``tmp_path/data/widget`` (4 train, 4 good + 3 crack test)."""
    return make_mvtec(tmp_path / "data" / "widget")
