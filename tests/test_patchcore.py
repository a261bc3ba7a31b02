"""PatchCore end to end in the library: detects, localises, is deterministic, persists safely."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from conftest import textured_part, with_defect

from anomaly.artifacts.bundle import load_bundle, save_bundle
from anomaly.errors import BundleError, DataError, NotFittedError
from anomaly.models import PatchCore, Prediction


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    train = [textured_part(rng) for _ in range(10)]
    good = [textured_part(rng) for _ in range(8)]
    pairs = [with_defect(textured_part(rng), rng) for _ in range(8)]
    return train, good, [p[0] for p in pairs], [p[1] > 0 for p in pairs]


@pytest.fixture(scope="module")
def fitted(images):
    train, good, defects, _ = images
    model = PatchCore(image_size=64, coreset_ratio=0.25, progress=False).fit(train)
    labels = [0] * len(good) + [1] * len(defects)
    return model.calibrate(good + defects, labels, target_miss_rate=0.1)


def test_defects_score_higher_than_good_parts(fitted, images):
    _, good, defects, _ = images
    scores = fitted.predict(good + defects).scores
    assert scores[len(good) :].min() > np.median(scores[: len(good)])


def test_anomaly_map_has_the_input_size_and_peaks_on_the_defect(fitted, images):
    _, _, defects, masks = images
    prediction = fitted.predict(defects[:4])
    for anomaly_map, mask in zip(prediction.anomaly_maps, masks[:4], strict=True):
        assert anomaly_map.shape == mask.shape
        assert anomaly_map[mask].mean() > anomaly_map[~mask].mean()


def test_fit_is_deterministic_for_a_seed(images):
    train, good, _, _ = images
    a = PatchCore(image_size=64, coreset_ratio=0.1, progress=False, seed=3).fit(train)
    b = PatchCore(image_size=64, coreset_ratio=0.1, progress=False, seed=3).fit(train)
    np.testing.assert_array_equal(a.predict(good).scores, b.predict(good).scores)


def test_fit_returns_self_and_learned_state_ends_in_underscore(images):
    model = PatchCore(image_size=64, coreset_ratio=0.1, progress=False)
    assert model.fit(images[0]) is model
    assert model.memory_bank_.size >= 1 and model.threshold_ is None


def test_predict_before_fit_says_what_to_do():
    with pytest.raises(NotFittedError, match="call fit"):
        PatchCore().predict([np.zeros((8, 8, 3), np.uint8)])


def test_verdicts_follow_the_calibrated_threshold(fitted, images):
    _, good, defects, _ = images
    prediction = fitted.predict(good + defects)
    assert prediction.verdicts == [
        "NG" if s >= fitted.threshold_ else "OK" for s in prediction.scores
    ]
    np.testing.assert_allclose(prediction.normalized_scores, prediction.scores / fitted.threshold_)


# --------------------------------------------------------------------------- bundles
def test_bundle_round_trip_gives_identical_scores(fitted, images, tmp_path):
    _, good, defects, _ = images
    save_bundle(fitted, tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    before, after = fitted.predict(good + defects), loaded.predict(good + defects)
    np.testing.assert_array_equal(before.scores, after.scores)
    np.testing.assert_array_equal(before.anomaly_maps[0], after.anomaly_maps[0])
    assert loaded.threshold_ == fitted.threshold_
    assert loaded.get_params() == fitted.get_params()


def test_edited_metadata_is_refused(fitted, tmp_path):
    bundle = save_bundle(fitted, tmp_path / "model")
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata["calibration"]["threshold"] *= 2
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match="metadata was altered"):
        load_bundle(bundle)


def test_changed_index_file_is_refused(fitted, tmp_path):
    bundle = save_bundle(fitted, tmp_path / "model")
    with (bundle / "memory_bank.faiss").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"memory_bank\.faiss: contents changed"):
        load_bundle(bundle)


def test_pickle_in_a_bundle_is_refused(fitted, tmp_path):
    bundle = save_bundle(fitted, tmp_path / "model")
    (bundle / "model.pkl").write_bytes(pickle.dumps({"evil": True}))
    with pytest.raises(BundleError, match=r"pickle-style files are never loaded: model\.pkl"):
        load_bundle(bundle)


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    bundle = tmp_path / "model"
    bundle.mkdir()
    (bundle / "model.safetensors").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(BundleError, match=r"metadata\.json is missing"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["missing", "file"])
def test_missing_or_wrong_bundle_path_is_named(tmp_path, name):
    path = tmp_path / name
    if name == "file":
        path.write_text("not a bundle")
    with pytest.raises(BundleError, match=re.escape(str(path))):
        load_bundle(path)


def test_a_failed_save_leaves_the_previous_bundle_intact(fitted, tmp_path, monkeypatch):
    bundle = save_bundle(fitted, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}

    def crash(self, directory: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(PatchCore, "write_extra_files", crash)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(fitted, tmp_path / "model")
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no half-written leftovers
    load_bundle(bundle)


def test_partial_fit_adds_good_images_without_refitting(images):
    # num_neighbors=1: image score = nearest-patch distance, which a larger bank can only lower.
    train, good, defects, _ = images
    model = PatchCore(image_size=64, coreset_ratio=0.25, num_neighbors=1, progress=False)
    model.fit(train[:5]).calibrate(good + defects, [0] * len(good) + [1] * len(defects), 0.1)
    before = model.predict(train[5:] + train[:5]).scores
    size = model.memory_bank_.size
    assert model.partial_fit(train[5:]) is model
    after = model.predict(train[5:] + train[:5]).scores
    patches = int(np.prod(model.patch_grid_))
    assert size < model.memory_bank_.size <= size + int(np.ceil(0.25 * 5 * patches))
    assert model.n_train_images_ == 10
    assert np.all(after <= before + 1e-5)
    assert after[:5].mean() < 0.9 * before[:5].mean()  # the added images now look familiar
    # The bank grew, so the old threshold no longer holds the target miss rate.
    assert model.threshold_ is None


def test_partial_fit_keeps_every_patch_at_full_ratio_like_one_fit(images):
    train = images[0]
    whole = PatchCore(image_size=64, coreset_ratio=1.0, progress=False).fit(train)
    grown = PatchCore(image_size=64, coreset_ratio=1.0, progress=False).fit(train[:4])
    grown.partial_fit(train[4:])
    assert grown.memory_bank_.size == whole.memory_bank_.size
    np.testing.assert_allclose(
        grown.predict(images[1]).scores, whole.predict(images[1]).scores, rtol=1e-5
    )


def test_partial_fit_works_on_a_loaded_bundle(fitted, images, tmp_path):
    loaded = load_bundle(save_bundle(fitted, tmp_path / "model"))
    size = loaded.memory_bank_.size
    loaded.partial_fit(images[1][:2])
    assert loaded.memory_bank_.size > size and loaded.threshold_ is None


def test_partial_fit_refuses_an_unfitted_model_and_no_images(fitted):
    with pytest.raises(NotFittedError):
        PatchCore(progress=False).partial_fit([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(DataError, match="at least one good image"):
        fitted.partial_fit([])


def test_hnsw_bank_round_trip_through_a_bundle_gives_identical_scores(images, tmp_path):
    train, good, defects, _ = images
    model = PatchCore(image_size=64, coreset_ratio=0.25, index="hnsw", progress=False)
    model.fit(train)
    loaded = load_bundle(save_bundle(model, tmp_path / "model"))
    assert loaded.index == "hnsw" and loaded.memory_bank_.index_type == "hnsw"
    assert loaded.memory_bank_.size == model.memory_bank_.size
    np.testing.assert_array_equal(
        loaded.predict(good + defects).scores, model.predict(good + defects).scores
    )


# --------------------------------------------------------------------------- threads
@pytest.fixture
def two_threads():
    """torch and faiss at 2 threads for the test; the previous settings are put back."""
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


def test_threads_are_limited_during_fit_and_scoring_only(images, two_threads, monkeypatch):
    train, good, _, _ = images
    seen: list[int] = []
    original = PatchCore._score_features

    def spy(self, feature_maps):
        seen.append(torch.get_num_threads())
        return original(self, feature_maps)

    monkeypatch.setattr(PatchCore, "_score_features", spy)
    model = PatchCore(image_size=64, coreset_ratio=0.25, num_threads=1, progress=False)
    model.fit(train[:3])
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    model.score_arrays(good[:2])
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    model.partial_fit(train[3:4])
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    assert seen == [1]  # the scoring itself ran on the model's one thread


# --------------------------------------------------------------------------- contract
def test_verdicts_use_the_one_decision_rule(monkeypatch):
    from anomaly.decision import verdict

    prediction = Prediction(scores=np.array([1.0, 2.0]), anomaly_maps=[], threshold=2.0)
    assert prediction.verdicts == ["OK", "NG"]
    # A different rule in anomaly.decision.verdict must change every verdict with it.
    monkeypatch.setattr(verdict, "is_anomalous", lambda scores, threshold: scores > threshold)
    assert prediction.verdicts == ["OK", "OK"]
    assert prediction.is_anomalous.tolist() == [False, False]


def test_fit_samples_learns_from_the_good_train_samples_only(monkeypatch):
    from anomaly.data.dataset import Sample

    train = [
        Sample(f"{i}.png", label, "good" if label == 0 else "crack", "train")
        for i, label in enumerate([0, 1, 0, 0, 1, 0, 0])
    ]
    seen: list[list[Path]] = []
    monkeypatch.setattr(PatchCore, "fit", lambda self, paths: seen.append(list(paths)) or self)
    model = PatchCore()
    model.fit_samples(train, validation=[])
    model.fit_samples(train, validation=[], max_good_images=3, subset_seed=4)
    good = [s.path for s in train if s.label == 0]
    assert seen[0] == good
    # The seeded subset ``anomaly fit`` has always drawn (data.max_train_images, data.seed).
    keep = np.random.default_rng(4).choice(len(good), size=3, replace=False)
    assert seen[1] == [good[i] for i in sorted(keep)]


def test_zero_padding_keeps_inner_patches_and_sets_border_patches_apart():
    from anomaly.components.features import patch_features

    maps = [torch.ones(1, 2, 6, 6)]
    inside = patch_features(maps, padding="ignore")[0, 0]
    zeros = patch_features(maps, padding="zeros")[0, 0]
    torch.testing.assert_close(inside, torch.ones(6, 6))  # only the window inside the map
    torch.testing.assert_close(zeros[1:-1, 1:-1], torch.ones(4, 4))  # inner patches: the same
    assert zeros[0, 3].item() == pytest.approx(6 / 9)  # an edge: 3 of 9 cells are padding
    assert zeros[0, 0].item() == pytest.approx(4 / 9)  # a corner: 5 of 9


def test_unknown_neighbourhood_padding_is_named():
    with pytest.raises(DataError, match=r"neighbourhood_padding='reflect'.*zeros, ignore"):
        PatchCore(neighbourhood_padding="reflect").check_params()


def test_padding_is_saved_with_the_model_and_changes_scores(fitted, images, tmp_path):
    train, good, defects, _ = images
    inside = PatchCore(
        image_size=64, coreset_ratio=0.25, neighbourhood_padding="ignore", progress=False
    ).fit(train)
    save_bundle(inside, tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    assert loaded.neighbourhood_padding == "ignore"
    scores = loaded.predict(good + defects).scores
    np.testing.assert_array_equal(scores, inside.predict(good + defects).scores)
    assert not np.allclose(scores, fitted.predict(good + defects).scores)  # zeros: other scores
