"""anomaly.io.images: one output format for every input, precise errors, deterministic walks."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import save_image
from PIL import Image

from anomaly.errors import DataError, ImageReadError, NoImagesError
from anomaly.io.images import (
    IMAGE_EXTENSIONS,
    find_images,
    load_image,
    load_mask,
    shrink_to_fit,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 17, 3), dtype=np.uint8)


def _pil_save(path: Path, image: Image.Image, fmt: str | None = None) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, fmt or path.suffix.lstrip(".").upper().replace("TIF", "TIFF"))
    path.write_bytes(buffer.getvalue())
    return path


def _check_format(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.shape == (*shape, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_rgb_roundtrips_exactly(tmp_path: Path, suffix: str) -> None:
    image = load_image(save_image(tmp_path / f"a{suffix}", RGB))
    _check_format(image, RGB.shape[:2])
    np.testing.assert_array_equal(image, RGB)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_is_rgb_and_close(tmp_path: Path, suffix: str) -> None:
    flat = np.zeros((16, 16, 3), np.uint8)
    flat[..., 0] = 200  # pure-ish red: would come back blue if channels were swapped
    image = load_image(save_image(tmp_path / f"a{suffix}", flat))
    _check_format(image, (16, 16))
    assert abs(int(image[..., 0].mean()) - 200) < 6
    assert image[..., 2].mean() < 10


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = RGB[..., 0]
    image = load_image(save_image(tmp_path / "g.png", gray))
    _check_format(image, gray.shape)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_is_scaled_and_rounded(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 128, 129, 257, 65535, 32896]], dtype=np.uint16)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    image = load_image(save_image(tmp_path / f"g16{suffix}", values))
    _check_format(image, values.shape)
    np.testing.assert_array_equal(image[..., 1], expected)

    rgb16 = (RGB.astype(np.uint16) * 257)[..., :3]
    np.testing.assert_array_equal(load_image(save_image(tmp_path / f"c16{suffix}", rgb16)), RGB)


def test_alpha_is_dropped(tmp_path: Path) -> None:
    alpha = RNG.integers(0, 256, RGB.shape[:2], dtype=np.uint8)[..., None]
    rgba = np.concatenate([RGB, alpha], axis=2)
    np.testing.assert_array_equal(load_image(save_image(tmp_path / "a.png", rgba)), RGB)
    gray_alpha = Image.fromarray(np.stack([RGB[..., 0], alpha[..., 0]], axis=2), "LA")
    image = load_image(_pil_save(tmp_path / "la.png", gray_alpha))
    np.testing.assert_array_equal(image, np.repeat(RGB[..., :1], 3, axis=2))


def test_palette_expands_to_colours(tmp_path: Path) -> None:
    palette_image = Image.fromarray(RGB).quantize(colors=8)
    image = load_image(_pil_save(tmp_path / "p.png", palette_image))
    np.testing.assert_array_equal(image, np.asarray(palette_image.convert("RGB")))


@pytest.mark.parametrize(("scale", "clip_to"), [(1.0, 1.0), (255.0, 255.0)])
def test_float_tiff_range(tmp_path: Path, scale: float, clip_to: float) -> None:
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4) * scale
    image = load_image(save_image(tmp_path / "f.tif", values))
    expected = np.rint(values / clip_to * 255).astype(np.uint8)
    np.testing.assert_array_equal(image[..., 0], expected)


def test_pillow_fallback_for_formats_opencv_lacks(tmp_path: Path) -> None:
    image = load_image(_pil_save(tmp_path / "a.gif", Image.fromarray(RGB[..., 0]), "GIF"))
    np.testing.assert_array_equal(image[..., 0], RGB[..., 0])


def test_unicode_path(tmp_path: Path) -> None:
    path = save_image(tmp_path / "Prüfteil_検査.png", RGB)
    np.testing.assert_array_equal(load_image(path), RGB)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "empty file"),
        ("noise.png", bytes(RNG.integers(0, 256, 500, dtype=np.uint8)), "not a decodable image"),
        ("notes.jpg", b"this is a text file, not an image\n" * 5, "not a decodable image"),
        ("cut.png", _png_bytes()[:200], "truncated"),
        ("cut.jpg", _jpeg_bytes()[:-300], "truncated"),
        ("bad.png", _png_bytes()[:40] + b"\x00" * 300 + _png_bytes()[-12:], "not a decodable"),
    ],
)
def test_unreadable_files_raise_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        load_image(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_folder_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)


def test_load_mask(tmp_path: Path) -> None:
    mask = np.zeros((6, 5), np.uint8)
    mask[1:3, 2:4] = 255
    loaded = load_mask(save_image(tmp_path / "m.png", mask), shape=(6, 5, 3))
    assert loaded.dtype == np.bool_
    np.testing.assert_array_equal(loaded, mask > 0)

    # 16-bit masks holding 1 must not vanish in a 255/65535 rescale.
    ones = (mask > 0).astype(np.uint16)
    np.testing.assert_array_equal(load_mask(save_image(tmp_path / "m16.png", ones)), mask > 0)

    # An opaque alpha channel is not a defect.
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 3] = 255
    assert not load_mask(save_image(tmp_path / "rgba.png", rgba)).any()


def test_load_mask_size_mismatch_names_file_and_sizes(tmp_path: Path) -> None:
    path = save_image(tmp_path / "m.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(DataError, match=r"m\.png: mask is 6x5 \(HxW\) but its image is 8x8"):
        load_mask(path, shape=(8, 8))


def test_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS


def test_find_images_walks_sorted_skipping_hidden(tmp_path: Path) -> None:
    for rel in ["b.png", "a.JPG", "sub/c.tiff", "sub/deep/d.bmp", ".hidden.png", ".git/e.png"]:
        save_image(tmp_path / rel, RGB)
    (tmp_path / "readme.txt").write_text("not an image")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.JPG",
        "b.png",
        "sub/c.tiff",
        "sub/deep/d.bmp",
    ]
    flat = find_images([tmp_path], recursive=False)
    assert [p.name for p in flat] == ["a.JPG", "b.png"]
    assert find_images(tmp_path) == found  # a single path is accepted


def test_find_images_keeps_direct_files_and_input_order(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("x")
    image = save_image(tmp_path / "dir" / "a.png", RGB)
    assert find_images([text, tmp_path / "dir", image]) == [text, image]


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing: no such file or folder"):
        find_images([tmp_path / "missing"])
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    save_image(empty / ".hidden" / "a.png", RGB)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(NoImagesError, match=r"empty: no image files"):
        find_images([empty])


# ------------------------------------------------------------- reduced size (the QA report's)


def _gradient16(low: int, high: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A 16-bit ramp over a narrow range, where 8-bit shortcuts (x >> 8) differ from x / 257."""
    ramp = np.linspace(low, high, shape[0] * shape[1]).reshape(shape)
    return ramp.astype(np.uint16)


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("narrow16.png", _gradient16(1000, 1400)),
        ("narrow16.tif", np.stack([_gradient16(30000, 30600)] * 3, axis=2)),
        ("float01.tif", np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)),
        ("rgb8.png", RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
    ],
)
def test_reduced_size_is_the_full_conversion_shrunk(tmp_path: Path, name: str, array) -> None:
    """What the report shows is the scored picture, smaller: same depth and range mapping."""
    path = save_image(tmp_path / name, array)
    full = load_image(path)
    small = load_image(path, max_side=16)
    expected = cv2.resize(full, (16, 12), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small, expected)
    _check_format(small, (12, 16))


def test_reduced_size_never_enlarges_and_rejects_nonsense(tmp_path: Path) -> None:
    path = save_image(tmp_path / "a.png", RGB)
    np.testing.assert_array_equal(load_image(path, max_side=100), RGB)
    np.testing.assert_array_equal(shrink_to_fit(RGB, 17), RGB)
    with pytest.raises(ValueError, match="max_side"):
        load_image(path, max_side=0)


@pytest.mark.parametrize("gray", [False, True])
def test_large_jpeg_decoded_reduced_matches_the_full_decode(tmp_path: Path, gray: bool) -> None:
    """libjpeg's DCT scaling (IMREAD_REDUCED) is used for speed only: the result is the same
    picture as decoding in full and shrinking, within JPEG's own rounding."""
    yy, xx = np.mgrid[:480, :640]
    smooth = (128 + 60 * np.sin(xx / 40.0) * np.cos(yy / 55.0)).astype(np.uint8)
    array = smooth if gray else np.stack([smooth, 255 - smooth, smooth // 2], axis=2)
    path = save_image(tmp_path / "big.jpg", array)
    full = shrink_to_fit(load_image(path), 100)
    small = load_image(path, max_side=100)
    assert small.shape == full.shape == (75, 100, 3)
    assert np.abs(small.astype(int) - full.astype(int)).mean() < 1.5
    if gray:
        np.testing.assert_array_equal(small[..., 0], small[..., 2])


def test_reduced_size_reports_the_same_errors(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg_bytes()[:-300])
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(path, max_side=8)
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.jpg", max_side=8)


def _gray_image(path: Path) -> Path:
    return save_image(path, np.full((8, 8, 3), 100, np.uint8))


def test_symlinked_folders_are_followed_once_and_a_loop_is_reported(tmp_path: Path) -> None:
    from anomaly.io.images import find_images

    outside = tmp_path / "elsewhere"
    _gray_image(outside / "linked.png")
    root = tmp_path / "inputs"
    _gray_image(root / "a.png")
    (root / "shift2").symlink_to(outside, target_is_directory=True)
    (root / "back").symlink_to(root, target_is_directory=True)  # a loop
    problems: list[tuple[Path, str]] = []
    found = find_images(root, problems=problems)
    assert [p.name for p in found] == ["a.png", "linked.png"]
    assert problems == [(root / "back", "a link back to a folder already walked; not walked twice")]


def test_a_folder_that_cannot_be_read_is_an_error_row_not_a_silence(tmp_path, monkeypatch):
    from anomaly.commands.score import collect_files

    root = tmp_path / "inputs"
    _gray_image(root / "a.png")
    _gray_image(root / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path=".", *args):  # root can read every folder: deny one the way the OS would
        if Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    files, errors = collect_files([root])
    assert [p.name for p in files] == ["a.png"]
    assert [(e.file, e.verdict) for e in errors] == [(str(root / "locked"), "ERROR")]
    assert "folder cannot be read (Permission denied)" in errors[0].error


def test_a_multi_page_tiff_is_refused_with_its_page_count(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200, 90)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match=r"multi-page TIFF \(3 pages\)"):
        load_image(path)
    pages[0].save(tmp_path / "one.tif")
    assert load_image(tmp_path / "one.tif").shape == (8, 8, 3)
