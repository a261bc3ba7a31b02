"""Property-based fuzzing: whatever the bytes, names or settings, a clear error, never a crash.

Derandomised (the same examples on every run, so CI is reproducible) and kept small enough to
run in seconds; each property states the only outcomes a user may see.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomaly.config import FitConfig, build_config
from anomaly.data.layouts import load_directory
from anomaly.errors import AnomalyError, ConfigError, ImageReadError
from anomaly.io.images import load_image

FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "TIFF", "BMP")}


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A valid PNG/JPEG/TIFF/BMP with bytes overwritten, cut off or appended."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64))


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), damaged_images()))
def test_any_bytes_load_as_an_rgb_image_or_give_a_read_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "part.png"
        path.write_bytes(data)
        try:
            image = load_image(path)
        except ImageReadError as error:
            assert str(path) in str(error) and "\n" not in error.reason
            return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@FUZZ
@given(
    key=st.sampled_from(
        [
            "image_size",
            "model",
            "data.category",
            "calibration.target_miss_rate",
            "hybrid.min_defects",
        ]
    )
    | st.text(max_size=20),
    value=st.text(max_size=30),
)
def test_any_key_value_override_gives_a_config_or_a_config_error(key: str, value: str) -> None:
    try:
        config = build_config(FitConfig, None, [f"{key}={value}"])
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert config.image_size is not None


@FUZZ
@given(text=st.text(max_size=200))
def test_any_config_file_gives_a_config_or_a_config_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        build_config(FitConfig, path, [])
    except ConfigError as error:
        assert "\n" not in str(error)


NAMES = st.sampled_from(["train", "test", "good", "ground_truth", "val", "blob", "x y", ".hidden"])
FILES = st.sampled_from(["a.png", "b_mask.png", "c.txt", "d.PNG", ".e.png", "f.tif"])


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, ...]]:
    """Relative file paths, one to three folders deep, from names layouts care about."""
    return draw(
        st.lists(
            st.tuples(*[NAMES] * draw(st.integers(0, 3)), FILES).map(tuple),
            max_size=12,
        )
    )


@pytest.mark.parametrize("content", ["image", "garbage"])
@FUZZ
@given(tree=trees())
def test_any_folder_tree_loads_as_a_dataset_or_gives_a_data_error(content, tree, tmp_path):
    root = tmp_path / "category"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    payload = VALID["PNG"] if content == "image" else b"not an image"
    for parts in tree:
        path = root.joinpath(*parts)
        if path.exists() and path.is_dir():
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue  # a file where a folder would go: the tree is what it is
        path.write_bytes(payload)
    try:
        dataset = load_directory(root)
    except AnomalyError as error:
        assert "\n" not in str(error)
        return
    assert all(s.label in (0, 1) and s.split in ("train", "val", "test") for s in dataset.samples)
