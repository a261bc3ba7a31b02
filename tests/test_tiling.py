"""Tiling and aspect: images cut into square tiles, scored as one, stitched into one map."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import save_image

from anomaly.artifacts.bundle import load_bundle, save_bundle
from anomaly.commands.cli import main
from anomaly.components.maps import anomaly_map, stitched_anomaly_map
from anomaly.components.tiling import Box, Tiling
from anomaly.errors import ConfigError, DataError
from anomaly.evaluation.metrics import image_auroc
from anomaly.io.batches import batches
from anomaly.models.hybrid import Hybrid
from anomaly.models.padim import PaDiM
from anomaly.models.patchcore import PatchCore


def covered(boxes: list[Box], height: int, width: int) -> np.ndarray:
    """How many tiles cover each pixel."""
    count = np.zeros((height, width), int)
    for box in boxes:
        count[box.top : box.top + box.height, box.left : box.left + box.width] += 1
    return count


@pytest.mark.parametrize(
    ("tiling", "shape", "n_tiles"),
    [
        (Tiling(tile_size=640, stride=512), (640, 2048), 4),
        (Tiling(tile_size=256), (1024, 1024), 16),
        (Tiling(tile_size=300, stride=200), (1000, 700), 5 * 3),
        (Tiling(keep_aspect=True), (824, 2532), 4),
        (Tiling(keep_aspect=True), (300, 300), 1),
        (Tiling(tile_size=512), (200, 900), 2),  # shorter than a tile: one row, clipped
    ],
)
def test_tiles_cover_every_pixel_and_stay_inside(tiling, shape, n_tiles):
    height, width = shape
    boxes = tiling.boxes(height, width)
    assert len(boxes) == n_tiles
    assert covered(boxes, height, width).min() >= 1
    for box in boxes:
        assert box.top >= 0 and box.left >= 0
        assert box.top + box.height <= height and box.left + box.width <= width
    if tiling.tile_size is not None and min(shape) >= tiling.tile_size:
        assert {(b.height, b.width) for b in boxes} == {(tiling.tile_size, tiling.tile_size)}


def test_keep_aspect_covers_a_long_part_with_squares_of_its_short_side():
    boxes = Tiling(keep_aspect=True).boxes(640, 2048)
    assert [(b.top, b.left, b.height, b.width) for b in boxes] == [
        (0, 0, 640, 640),
        (0, 469, 640, 640),
        (0, 939, 640, 640),
        (0, 1408, 640, 640),
    ]


@pytest.mark.parametrize(
    ("tiling", "message"),
    [
        (Tiling(stride=64), r"tiling\.stride=64 needs tiling\.tile_size"),
        (Tiling(tile_size=16), r"tiling\.tile_size=16: must be at least 32"),
        (Tiling(tile_size=64, stride=80), r"tiling\.stride=80: must be between 1 and"),
    ],
)
def test_impossible_tilings_are_refused_naming_the_value(tiling, message):
    with pytest.raises(ConfigError, match=message):
        tiling.check()


def test_one_tile_over_a_square_image_is_the_untiled_map():
    rng = np.random.default_rng(0)
    grid = rng.random((8, 8)).astype(np.float32)
    whole = anomaly_map(grid, 64, (100, 100), blur_sigma=4.0)
    stitched = stitched_anomaly_map(grid[None], [Box(0, 0, 100, 100)], 64, (100, 100), 4.0)
    np.testing.assert_array_equal(stitched, whole)


def test_overlapping_tiles_are_averaged_and_each_lands_in_its_place():
    boxes = Tiling(tile_size=64, stride=32).boxes(64, 128)  # left 0, 32, 64
    grids = np.stack([np.full((4, 4), v, np.float32) for v in (1.0, 3.0, 5.0)])
    result = stitched_anomaly_map(grids, boxes, 64, (64, 128), blur_sigma=0)
    assert result.shape == (64, 128)
    assert result[:, :32] == pytest.approx(1.0)
    assert result[:, 32:64] == pytest.approx(2.0)  # tiles 1 and 3 overlap
    assert result[:, 64:96] == pytest.approx(4.0)
    assert result[:, 96:] == pytest.approx(5.0)


def test_the_progress_bar_counts_tiles(monkeypatch):
    seen = {}

    class Bar:
        def __init__(self, total, unit, **kwargs):
            seen.update(total=total, unit=unit, done=0)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def update(self, n):
            seen["done"] += n

    monkeypatch.setattr("anomaly.io.batches.tqdm", Bar)
    assert len(list(batches(list(range(10)), 4, "x", tiles_per_item=14))) == 3
    assert seen == {"total": 140, "unit": "tile", "done": 140}


# ---------------------------------------------------------------------- models
def wide_part(rng: np.random.Generator, height: int = 64, width: int = 256) -> np.ndarray:
    """A long 'good part': stripes along its length, with sensor noise."""
    x = np.linspace(0, 12 * np.pi, width)
    base = 120 + 40 * np.sin(x)[None, :] + rng.normal(0, 4, (height, width))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def small_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """A faint 3x3 dark spot: squashed from 256 to 64 pixels it is under one pixel."""
    out = image.astype(np.int16)
    y, x = int(rng.integers(10, image.shape[0] - 15)), int(rng.integers(10, image.shape[1] - 15))
    out[y : y + 3, x : x + 3] -= 40
    return np.clip(out, 0, 255).astype(np.uint8), (y + 1, x + 1)


@pytest.fixture(scope="module")
def wide_data():
    rng = np.random.default_rng(1)
    train = [wide_part(rng) for _ in range(12)]
    good = [wide_part(rng) for _ in range(10)]
    defects, centres = zip(*(small_defect(wide_part(rng), rng) for _ in range(10)), strict=True)
    return train, good, list(defects), list(centres)


def fitted(cls, train, **params):
    return cls(image_size=64, progress=False, **params).fit(train)


def test_tiling_finds_small_defects_on_a_long_part_that_squashing_loses(wide_data):
    train, good, defects, centres = wide_data
    labels = [0] * len(good) + [1] * len(defects)
    squashed = fitted(PatchCore, train, coreset_ratio=0.5).predict(good + defects)
    tiled_model = fitted(PatchCore, train, coreset_ratio=0.5, tile_size=64, tile_stride=48)
    tiled = tiled_model.predict(good + defects)
    assert tiled_model.tiling_["tiles_per_image"] == 5
    assert image_auroc(labels, tiled.scores) >= 0.95
    assert image_auroc(labels, tiled.scores) > image_auroc(labels, squashed.scores)
    for anomaly, (y, x) in zip(tiled.anomaly_maps[len(good) :], centres, strict=True):
        assert anomaly.shape == (64, 256)  # the map is at the image's full resolution
        assert anomaly[y, x] >= np.quantile(anomaly, 0.95)  # the spot is among the hottest


def test_one_tile_covering_a_square_image_scores_as_the_untiled_model(wide_data):
    rng = np.random.default_rng(3)
    train = [wide_part(rng, 64, 64) for _ in range(6)]
    test = [small_defect(wide_part(rng, 64, 64), rng)[0], wide_part(rng, 64, 64)]
    for cls in (PatchCore, PaDiM):
        extra = {"n_features": 40} if cls is PaDiM else {}
        plain = fitted(cls, train, **extra).predict(test)
        aspect = fitted(cls, train, keep_aspect=True, **extra).predict(test)
        np.testing.assert_allclose(aspect.scores, plain.scores, rtol=1e-6)
        for a, b in zip(aspect.anomaly_maps, plain.anomaly_maps, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padim_keeps_one_gaussian_per_tile_position_and_refuses_another_size(wide_data):
    train, good, defects, _ = wide_data
    model = fitted(PaDiM, train, n_features=40, tile_size=64)
    assert model.tiling_["tiles_per_image"] == 4
    # 4 tiles of a 16x16 stride-4 grid, stacked: 4x more positions than one square image.
    assert model.mean_.shape == (4 * 16 * 16, 40)
    labels = [0] * len(good) + [1] * len(defects)
    assert image_auroc(labels, model.predict(good + defects).scores) >= 0.9
    with pytest.raises(DataError, match=r"4 tile positions of its 64x256 .* 64x320 pixels gives 5"):
        model.predict([np.zeros((64, 320, 3), np.uint8)])


def test_patchcore_scores_images_of_any_size_with_one_bank(wide_data):
    train, *_ = wide_data
    model = fitted(PatchCore, train, coreset_ratio=0.5, tile_size=64)
    rng = np.random.default_rng(5)
    images = [wide_part(rng, 64, 256), wide_part(rng, 64, 448), wide_part(rng, 128, 128)]
    prediction = model.predict(images)
    assert [m.shape for m in prediction.anomaly_maps] == [(64, 256), (64, 448), (128, 128)]
    assert np.isfinite(prediction.scores).all()
    # Scored together or one by one: the same (images with other tile counts are grouped).
    alone = [model.predict([image]).scores[0] for image in images]
    np.testing.assert_allclose(prediction.scores, alone, rtol=1e-6)


def test_a_tiled_bundle_records_its_tiling_and_scores_the_same_after_loading(tmp_path, wide_data):
    train, _, defects, _ = wide_data
    model = fitted(PatchCore, train, coreset_ratio=0.5, tile_size=64, tile_stride=48)
    save_bundle(model, tmp_path / "bundle")
    metadata = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert metadata["tiling"]["tiles_per_image"] == 5
    assert metadata["tiling"]["image_shape"] == [64, 256]
    assert metadata["params"]["tile_size"] == 64 and metadata["params"]["tile_stride"] == 48
    loaded = load_bundle(tmp_path / "bundle")
    np.testing.assert_array_equal(
        loaded.predict(defects[:3]).scores, model.predict(defects[:3]).scores
    )


def test_models_that_do_not_tile_say_so():
    with pytest.raises(ConfigError, match="'hybrid' does not tile images"):
        Hybrid(tile_size=256).check_params()


# ---------------------------------------------------------------------- CLI
def make_wide_category(root: Path) -> Path:
    rng = np.random.default_rng(2)
    for i in range(12):
        save_image(root / "train" / "good" / f"train_{i:03d}.png", wide_part(rng))
    for i in range(6):
        save_image(root / "test" / "good" / f"good_{i:03d}.png", wide_part(rng))
    for i in range(6):
        image, (y, x) = small_defect(wide_part(rng), rng)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[y - 1 : y + 2, x - 1 : x + 2] = 255
        save_image(root / "test" / "spot" / f"spot_{i:03d}.png", image)
        save_image(root / "ground_truth" / "spot" / f"spot_{i:03d}_mask.png", mask)
    return root


def test_fit_score_and_heatmaps_at_full_resolution_from_the_cli(tmp_path, capsys):
    make_wide_category(tmp_path / "data" / "strip")
    out, run = tmp_path / "bundle", tmp_path / "run"
    fast = ["image_size=64", "patchcore.coreset_ratio=0.5", "runtime.progress=false"]
    fit = ["fit", "--category", "strip", "--data-root", str(tmp_path / "data"), "--out", str(out)]
    assert main([*fit, "tiling.tile_size=64", "tiling.stride=48", *fast]) == 0
    assert "tiling: 5 tiles of 64 px (stride 48) per 64x256 image" in capsys.readouterr().out
    config = (out / "config.yaml").read_text()
    assert "tile_size: 64" in config and "stride: 48" in config
    score = ["score", "--split", "test", "--model", str(out), "--out", str(run)]
    assert main([*score, "runtime.progress=false"]) == 0
    with (run / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and all(row["verdict"] in ("OK", "NG") for row in rows)
    heatmaps = sorted((run / "heatmaps").glob("*.png"))
    assert heatmaps, "rejected parts get heatmaps"
    for path in heatmaps:
        height, width = cv2.imread(str(path)).shape[:2]
        assert width / height == pytest.approx(256 / 64, rel=0.05)  # not squashed to a square
    # Exported, tiles are just more images in the graph's batch: the same scores.
    onnx, onnx_run = tmp_path / "bundle-onnx", tmp_path / "run-onnx"
    assert main(["export", "--model", str(out), "--out", str(onnx), "runtime.progress=false"]) == 0
    assert json.loads((onnx / "metadata.json").read_text())["tiling"]["tiles_per_image"] == 5
    score = ["score", "--split", "test", "--model", str(onnx), "--out", str(onnx_run)]
    assert main([*score, "runtime.progress=false"]) == 0
    with (onnx_run / "scores.csv").open() as handle:
        exported = [float(row["score"]) for row in csv.DictReader(handle)]
    np.testing.assert_allclose(exported, [float(row["score"]) for row in rows], rtol=1e-3)


def test_tiling_a_model_that_cannot_is_refused_before_any_work(tmp_path, capsys):
    make_wide_category(tmp_path / "data" / "strip")
    fit = ["fit", "--category", "strip", "--data-root", str(tmp_path / "data"), "--model"]
    assert main([*fit, "hybrid", "keep_aspect=true", "runtime.progress=false"]) == 2
    assert "does not tile images" in capsys.readouterr().err
