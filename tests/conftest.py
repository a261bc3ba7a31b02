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


def textured_part(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A 'good part': smooth stripes with sensor noise, so good images are not all identical."""
    x = np.linspace(0, 4 * np.pi, size)
    base = 120 + 40 * np.sin(x)[None, :] + rng.normal(0, 4, (size, size))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def with_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a dark blob at a random place; returns the image and its mask."""
    size = image.shape[0]
    out, mask = image.copy(), np.zeros(image.shape[:2], np.uint8)
    y, x = rng.integers(8, size - 16, 2)
    out[y : y + 10, x : x + 10] = 20
    mask[y : y + 10, x : x + 10] = 255
    return out, mask


def make_parts_category(
    root: Path, n_train: int = 12, n_good: int = 12, n_defect: int = 12, size: int = 64
) -> Path:
    """An MVTec AD category of textured parts whose defects a real backbone can see."""
    rng = np.random.default_rng(0)
    for i in range(n_train):
        save_image(root / "train" / "good" / f"train_{i:03d}.png", textured_part(rng, size))
    for i in range(n_good):
        save_image(root / "test" / "good" / f"good_{i:03d}.png", textured_part(rng, size))
    for i in range(n_defect):
        image, mask = with_defect(textured_part(rng, size), rng)
        save_image(root / "test" / "blob" / f"blob_{i:03d}.png", image)
        save_image(root / "ground_truth" / "blob" / f"blob_{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def parts_category(tmp_path: Path) -> Path:
    """``tmp_path/data/parts``: 12 train, 12 good + 12 defect test images of 64 px."""
    return make_parts_category(tmp_path / "data" / "parts")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for a module's tests, shut down (with its processes) at the module's end."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
