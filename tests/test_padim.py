"""PaDiM: Gaussian fit, Mahalanobis scoring, memory budget, bundles, CLI wiring."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import textured_part, with_defect
from sklearn.metrics import roc_auc_score

from anomaly.artifacts.bundle import load_bundle, save_bundle
from anomaly.components.features import extract, stack_features
from anomaly.config import PadimConfig
from anomaly.errors import DataError
from anomaly.models import model_class
from anomaly.models.padim import (
    POSITION_CHUNK,
    UPDATE_IMAGES,
    PaDiM,
    PadimSums,
    padim_memory_bytes,
)

SIZE = 64  # stage 1 of EfficientNet-Lite0 has stride 4: a 16 x 16 grid


def _random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _tiny(**kwargs) -> PaDiM:
    params = dict(image_size=SIZE, weights="none", n_features=12, progress=False, num_threads=1)
    params.update(kwargs)
    return PaDiM(**params)


@pytest.fixture(scope="module")
def fitted() -> tuple[PaDiM, list[np.ndarray]]:
    images = _random_images(9)
    return _tiny(batch_size=4).fit(images), images


def _embedded(model: PaDiM, images: list[np.ndarray]) -> np.ndarray:
    """Features as the model sees them, computed independently: ``(N, P, d)`` float64."""
    maps = extract(model.extractor_, images, model.image_size)
    stacked = stack_features(maps)[:, torch.from_numpy(model.channels_)]
    n, d = stacked.shape[:2]
    return stacked.reshape(n, d, -1).permute(0, 2, 1).double().numpy()


def test_registry_and_defaults() -> None:
    assert model_class("padim") is PaDiM
    assert PaDiM.default_layers == (1, 2, 3)
    # Every PadimConfig key is a PaDiM argument, so build_model can pass the section as is.
    keys = {f.name for f in dataclasses.fields(PadimConfig)}
    assert keys <= set(PaDiM._param_names())
    assert PaDiM().n_features == PadimConfig.n_features


def test_mahalanobis_matches_numpy(fitted: tuple[PaDiM, list[np.ndarray]]) -> None:
    model, images = fitted
    train = _embedded(model, images)  # (N, P, d)
    mean = train.mean(axis=0)
    assert np.allclose(model.mean_, mean, atol=1e-4)
    queries = _random_images(3, seed=1)
    test = _embedded(model, queries)
    d = train.shape[2]
    expected = np.empty(test.shape[:2])
    for p in range(train.shape[1]):
        covariance = np.cov(train[:, p, :], rowvar=False) + model.covariance_epsilon * np.eye(d)
        inverse = np.linalg.inv(covariance)
        diff = test[:, p, :] - mean[p]
        expected[:, p] = np.sqrt(np.einsum("ni,ij,nj->n", diff, inverse, diff))
    scores, grids = model._score_features(model.runtime_(queries))
    assert grids.shape == (3, *model.patch_grid_)
    np.testing.assert_allclose(grids.reshape(3, -1), expected, rtol=2e-3)
    np.testing.assert_allclose(scores, expected.max(axis=1), rtol=2e-3)


def test_image_score_is_the_maps_maximum_or_the_largest_distance(
    fitted: tuple[PaDiM, list[np.ndarray]],
) -> None:
    model, _ = fitted
    queries = _random_images(3, seed=3)
    assert model.image_score == "map_max"
    by_map = model.predict(queries)
    np.testing.assert_array_equal(by_map.scores, [m.max() for m in by_map.anomaly_maps])
    distances, _ = model._score_features(model.runtime_(queries))
    model.image_score = "distance"
    try:
        by_distance = model.predict(queries)
    finally:
        model.image_score = "map_max"
    np.testing.assert_allclose(by_distance.scores, distances, rtol=1e-6)
    # The blur averages neighbouring positions, so the map's peak is below the largest distance.
    assert (by_map.scores < by_distance.scores).all()
    for a, b in zip(by_map.anomaly_maps, by_distance.anomaly_maps, strict=True):
        np.testing.assert_array_equal(a, b)  # the rule changes the score, never the map


def test_unknown_image_score_is_named() -> None:
    with pytest.raises(DataError, match=r"image_score='mean'.*map_max or distance"):
        _tiny(image_score="mean").check_params()


def test_streaming_fit_does_not_depend_on_batching(
    fitted: tuple[PaDiM, list[np.ndarray]],
) -> None:
    model, images = fitted
    other = _tiny(batch_size=1).fit(images)
    np.testing.assert_allclose(other.mean_, model.mean_, atol=1e-5)
    np.testing.assert_allclose(other.inv_cholesky_, model.inv_cholesky_, rtol=1e-3, atol=1e-3)


def test_sums_are_the_same_whenever_the_pending_batches_are_added() -> None:
    rng = np.random.default_rng(1)
    images = UPDATE_IMAGES + 8  # one update on the way, one at flush
    vectors = torch.from_numpy(rng.normal(3, 1, (700, 5, images)).astype(np.float32))
    one_by_one, at_once = PadimSums.zeros(700, 5), PadimSums.zeros(700, 5)
    at_once.shift = one_by_one.shift = vectors[:, :, :1].double().mean(dim=2)
    for i in range(images):
        one_by_one.add(vectors[:, :, i : i + 1])
    assert len(one_by_one.pending) == 8  # the first UPDATE_IMAGES went into the sums
    at_once.add(vectors)
    one_by_one.flush()
    assert one_by_one.n == at_once.n == images and not one_by_one.pending
    centred = vectors.double() - at_once.shift[:, :, None]
    torch.testing.assert_close(one_by_one.sum, centred.sum(dim=2), rtol=1e-12, atol=1e-10)
    pairs = zip(one_by_one.sum_outer, at_once.sum_outer, strict=True)
    for index, (mine, theirs) in enumerate(pairs):
        part = centred[index * POSITION_CHUNK : (index + 1) * POSITION_CHUNK]
        torch.testing.assert_close(mine, part @ part.transpose(1, 2), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-9)


def test_bundle_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    # ImageNet weights: a bundle is only loaded with the exact backbone weights it was fitted
    # with, and random ones ("none") are not reproduced at load time.
    model = _tiny(weights="imagenet").fit(_random_images(5))
    model.calibrate_from_scores(
        np.array([1.0, 2.0, 30.0, 40.0]), np.array([0, 0, 1, 1]), np.array([1.0, 2.0, 30.0, 40.0])
    )
    queries = _random_images(4, seed=2)
    before = model.predict(queries)
    save_bundle(model, tmp_path / "bundle")
    files = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert files == ["config.yaml", "metadata.json", "model.safetensors"]
    loaded = load_bundle(tmp_path / "bundle")
    after = loaded.predict(queries)
    np.testing.assert_array_equal(after.scores, before.scores)
    for a, b in zip(after.anomaly_maps, before.anomaly_maps, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.threshold_ == model.threshold_
    assert loaded.memory_bytes() == model.memory_bytes()


def test_memory_budget_error_names_the_values() -> None:
    with pytest.raises(DataError) as error:
        _tiny(n_features=100, weights="none", memory_budget_mb=1).fit(_random_images(2))
    message = str(error.value)
    for part in ("image_size=64", "n_features=100", "16x16 = 256 positions", "memory_budget_mb=1"):
        assert part in message


def test_memory_estimate_of_the_default_fit() -> None:
    need = padim_memory_bytes(64 * 64, 100)  # image_size 256 on the stride-4 stage
    assert need["model"] == 4096 * (100 + 100 * 100) * 4  # 166 MB: mean + dense factors
    assert need["bundle"] < need["model"] / 1.9  # the triangle only
    assert need["fit"] < 600 * 2**20  # well inside the default 1 GiB budget
    PaDiM().check_memory(64 * 64, 100)  # the default passes its own budget
    with pytest.raises(DataError, match="memory_budget_mb"):
        PaDiM().check_memory(128 * 128, 100)  # image_size 512 does not


def test_too_many_features_is_refused() -> None:
    with pytest.raises(DataError, match=r"n_features=500: .* 176 channels"):
        _tiny(n_features=500).fit(_random_images(1))


def test_single_image_fit_is_finite() -> None:
    model = _tiny().fit(_random_images(1))
    scores = model.predict(_random_images(2, seed=3)).scores
    assert np.isfinite(scores).all()


def test_separates_obvious_defects_with_real_weights() -> None:
    rng = np.random.default_rng(0)
    train = [textured_part(rng, SIZE) for _ in range(16)]
    good = [textured_part(rng, SIZE) for _ in range(6)]
    defects = [with_defect(textured_part(rng, SIZE), rng) for _ in range(6)]
    model = PaDiM(image_size=SIZE, progress=False, num_threads=1).fit(train)
    prediction = model.predict(good + [image for image, _ in defects])
    labels = [0] * len(good) + [1] * len(defects)
    assert roc_auc_score(labels, prediction.scores) == 1.0
    # The map peaks on the defect.
    for (_, mask), anomaly_map in zip(defects, prediction.anomaly_maps[len(good) :], strict=True):
        y, x = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
        assert mask[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5].any()


def test_fit_from_the_cli(parts_category: Path, tmp_path: Path) -> None:
    from anomaly.commands.cli import main

    out = tmp_path / "bundle"
    code = main(
        [
            "-q",
            "fit",
            "--category",
            "parts",
            "--data-root",
            str(parts_category.parent),
            "--model",
            "padim",
            "--out",
            str(out),
            f"image_size={SIZE}",
            "padim.n_features=16",
            "runtime.progress=false",
            "runtime.num_threads=1",
        ]
    )
    assert code == 0
    model = load_bundle(out)
    assert isinstance(model, PaDiM)
    assert model.n_features == 16
    assert model.metadata_["evaluation"]["test"]["auroc"] is not None


def test_padim_says_it_cannot_add_images_without_refitting():
    with pytest.raises(NotImplementedError, match="fit it again"):
        PaDiM(progress=False).partial_fit([np.zeros((64, 64, 3), np.uint8)])
