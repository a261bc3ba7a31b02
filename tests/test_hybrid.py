"""Hybrid: PatchCore plus a head on the labelled train defects, fused on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_image, textured_part, with_defect
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from anomaly.artifacts.bundle import load_bundle, save_bundle
from anomaly.commands.fit import build_model, fit_category
from anomaly.config import FitConfig
from anomaly.data import load_dataset
from anomaly.errors import DataError
from anomaly.evaluation.split import score_split
from anomaly.models.hybrid import PATCH_TOP_K, Hybrid, _fit_patch_instances, _top_k_mean
from anomaly.models.patchcore import PatchCore

FAST = {"image_size": 64, "coreset_ratio": 0.25, "progress": False, "num_threads": 1}


def make_category(root: Path, n_good: int = 30, n_defect: int = 15) -> Path:
    """Folder layout ``root/good`` and ``root/blob``: the 60/20/20 split leaves train defects."""
    rng = np.random.default_rng(0)
    for i in range(n_good):
        save_image(root / "good" / f"g{i:03d}.png", textured_part(rng, 64))
    for i in range(n_defect):
        image, _ = with_defect(textured_part(rng, 64), rng)
        save_image(root / "blob" / f"b{i:03d}.png", image)
    return root


def fit_config(root: Path, out: Path, **overrides: object) -> OmegaConf:
    config = OmegaConf.structured(FitConfig)
    config.model = "hybrid"
    config.data.category = "parts"
    config.data.root = str(root)
    config.out = str(out)
    config.image_size = 64
    config.hybrid.coreset_ratio = 0.25
    config.runtime.progress = False
    config.runtime.num_threads = 1
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    return config


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("hybrid")
    make_category(base / "data" / "parts")
    config = fit_config(base / "data", base / "bundle")
    return config, fit_category(config)


def test_fused_score_is_calibrated_like_every_model(fitted) -> None:
    config, result = fitted
    model = result.model
    dataset = load_dataset(config)
    val = score_split(model, dataset.select("val"))
    calibration = model.calibration_
    # The threshold was set on the fused validation scores, by the shared rule.
    np.testing.assert_allclose(sorted(calibration.scores_good), sorted(val.scores[val.labels == 0]))
    np.testing.assert_allclose(
        sorted(calibration.scores_defect), sorted(val.scores[val.labels == 1])
    )
    assert calibration.method in ("miss_rate", "few_defects")
    misses = int((val.scores[val.labels == 1] < calibration.threshold).sum())
    assert misses == calibration.validation["misses"]


def test_head_is_trained_and_described(fitted) -> None:
    config, result = fitted
    model = result.model
    dataset = load_dataset(config)
    n_defects = len(dataset.select("train", label=1))
    assert n_defects >= 2
    described = model.describe()
    assert described["n_train_defects"] == n_defects
    assert described["n_train_good"] == len(dataset.select("train", label=0))
    assert 0.0 <= model.fusion_weight_ <= 1.0 and model.head_c_ > 0
    assert 0.0 <= model.fusion_weight_ + model.patch_fusion_weight_ <= 1.0
    assert model.patch_head_coef_.any() and model.patch_head_k_ in PATCH_TOP_K
    assert model.patch_head_coef_.shape == (320,)  # EfficientNet-Lite0's stage 4
    assert "head: logistic regression" in result.text()
    assert "labelled training images" in result.text()


def test_bundle_round_trip_scores_identically(fitted, tmp_path) -> None:
    config, result = fitted
    loaded = load_bundle(result.bundle_dir)
    assert isinstance(loaded, Hybrid)
    samples = load_dataset(config).select("test")
    before = score_split(result.model, samples).scores
    after = score_split(loaded.set_runtime(progress=False), samples).scores
    np.testing.assert_array_equal(before, after)
    assert loaded.fusion_weight_ == result.model.fusion_weight_
    assert loaded.patch_fusion_weight_ == result.model.patch_fusion_weight_
    np.testing.assert_array_equal(loaded.patch_head_coef_, result.model.patch_head_coef_)
    assert loaded.patch_head_k_ == result.model.patch_head_k_
    assert loaded.threshold_ == result.model.threshold_


def test_the_patch_head_keeps_a_bounded_sample_of_good_patches(tmp_path, monkeypatch) -> None:
    """However many good images a team has, the patches held for the patch head stay bounded
    (a seeded sample of the images), and the head still learns from them."""
    monkeypatch.setattr("anomaly.models.hybrid.PATCH_MAX_GOOD", 5)
    make_category(tmp_path / "data" / "parts")
    config = fit_config(tmp_path / "data", tmp_path / "bundle")
    dataset = load_dataset(config)
    model = build_model(config).fit_samples(dataset.select("train"), dataset.select("val"))
    assert len(dataset.select("train", label=0)) > 5
    assert model._good_patches.shape[0] == 5 and model.n_train_good_ > 5
    assert model.patch_head_coef_.any()


def test_a_bundle_saved_before_the_patch_head_loads_without_one(tmp_path, monkeypatch) -> None:
    """Such a bundle has neither the patch head's key in its parameters nor its arrays: it
    scores as it did (the fused score of PatchCore and the pooled head)."""
    make_category(tmp_path / "data" / "parts")
    config = fit_config(tmp_path / "data", tmp_path / "bundle", **{"hybrid.patch_head_layers": []})
    result = fit_category(config)
    assert result.model.patch_fusion_weight_ == 0.0
    original_params, original_tensors = Hybrid.get_params, Hybrid.state_tensors

    def old_params(self):
        return {k: v for k, v in original_params(self).items() if k != "patch_head_layers"}

    def old_tensors(self):
        return {k: v for k, v in original_tensors(self).items() if not k.startswith("patch_head")}

    monkeypatch.setattr(Hybrid, "get_params", old_params)
    monkeypatch.setattr(Hybrid, "state_tensors", old_tensors)
    save_bundle(result.model, tmp_path / "old")
    monkeypatch.undo()
    loaded = load_bundle(tmp_path / "old").set_runtime(progress=False)
    assert loaded.patch_head_layers == [] and loaded.patch_fusion_weight_ == 0.0
    test = [s.path for s in load_dataset(config).select("test")]
    np.testing.assert_array_equal(loaded.predict(test).scores, result.model.predict(test).scores)


@pytest.mark.parametrize("n_train_defects", [0, 1])
def test_too_few_defects_falls_back_to_patchcore_and_says_so(n_train_defects, tmp_path) -> None:
    make_category(tmp_path / "data" / "parts")
    config = fit_config(tmp_path / "data", tmp_path / "bundle")
    dataset = load_dataset(config)
    train = [s for s in dataset.select("train") if s.label == 0]
    train += dataset.select("train", label=1)[:n_train_defects]
    val = dataset.select("val")
    hybrid = build_model(config).fit_samples(train, val)
    assert hybrid.fusion_weight_ == 0.0
    assert f"{n_train_defects} labelled train defect(s)" in hybrid.head_note_
    assert any("no head, scores are PatchCore's" in line for line in hybrid.summary_lines())
    patchcore = PatchCore(**FAST).fit([s.path for s in train if s.label == 0])
    test = [s.path for s in dataset.select("test")]
    np.testing.assert_array_equal(hybrid.predict(test).scores, patchcore.predict(test).scores)


def test_validation_images_never_reach_training(tmp_path, monkeypatch) -> None:
    make_category(tmp_path / "data" / "parts")
    config = fit_config(tmp_path / "data", tmp_path / "bundle")
    dataset = load_dataset(config)
    trained: list[str] = []
    original_fit, original_head = Hybrid.fit, Hybrid._head_features

    def spy_fit(self, images, y=None):
        trained.extend(str(image) for image in images)
        return original_fit(self, images, y)

    def spy_head(self, images):
        trained.extend(str(image) for image in images)
        return original_head(self, images)

    monkeypatch.setattr(Hybrid, "fit", spy_fit)
    monkeypatch.setattr(Hybrid, "_head_features", spy_head)
    model = build_model(config).fit_samples(dataset.select("train"), dataset.select("val"))
    held_out = {str(s.path) for s in dataset.select("val") + dataset.select("test")}
    assert trained and not held_out & set(trained)
    assert sorted(trained) == sorted(str(s.path) for s in dataset.select("train"))
    assert model.n_train_defects_ == len(dataset.select("train", label=1))


def test_fit_labels_on_one_bank_gives_the_model_a_fresh_fit_gives(tmp_path) -> None:
    # What the learning curve relies on: the bank fitted once, then only what learns from the
    # labels, point after point (all defects, fewer, too few for a head, all again).
    make_category(tmp_path / "data" / "parts")
    config = fit_config(tmp_path / "data", tmp_path / "bundle")
    dataset = load_dataset(config)
    good, defects = dataset.select("train", label=0), dataset.select("train", label=1)
    val, test = dataset.select("val"), [s.path for s in dataset.select("test")]
    shared = build_model(config).fit([s.path for s in good])
    for subset in (defects, defects[:2], defects[:1], defects):
        reused = shared.fit_labels(good, subset, val)
        fresh = build_model(config).fit_samples([*good, *subset], val)
        np.testing.assert_array_equal(reused.predict(test).scores, fresh.predict(test).scores)
        assert reused.fusion_weight_ == fresh.fusion_weight_
        assert reused.head_note_ == fresh.head_note_
        assert reused.n_train_defects_ == len(subset)


def test_fit_labels_needs_the_bank_of_this_process(fitted) -> None:
    _, result = fitted
    loaded = load_bundle(result.bundle_dir)
    with pytest.raises(DataError, match="fit_labels needs the pooled features"):
        loaded.fit_labels([], [], [])


def test_fit_needs_labels_through_fit_samples_and_cannot_grow(fitted) -> None:
    _, result = fitted
    with pytest.raises(Exception, match="cannot add images"):
        result.model.partial_fit([np.zeros((64, 64, 3), np.uint8)])


def test_fit_on_good_images_alone_is_patchcore_and_says_so(tmp_path) -> None:
    rng = np.random.default_rng(1)
    good = [textured_part(rng, 64) for _ in range(8)]
    test = [textured_part(rng, 64) for _ in range(2)] + [
        with_defect(textured_part(rng, 64), rng)[0]
    ]
    hybrid = Hybrid(**FAST).fit(good)
    assert hybrid.fusion_weight_ == 0.0 and hybrid.n_train_defects_ == 0
    assert "no head" in hybrid.head_note_
    patchcore = PatchCore(**FAST).fit(good)
    np.testing.assert_array_equal(hybrid.predict(test).scores, patchcore.predict(test).scores)


def with_scratch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint a thin bright line across the part: a defect of another kind than the dark blob."""
    out = image.copy()
    y = int(rng.integers(8, image.shape[0] - 8))
    out[y : y + 2, 4:-4] = 250
    return out


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """A hybrid fitted on a category with two defect types, and its test run directory."""
    base = tmp_path_factory.mktemp("typed")
    root = make_category(base / "data" / "parts", n_good=30, n_defect=15)
    rng = np.random.default_rng(1)
    for i in range(15):
        save_image(root / "scratch" / f"s{i:03d}.png", with_scratch(textured_part(rng, 64), rng))
    config = fit_config(base / "data", base / "bundle")
    return config, fit_category(config), base


def test_defect_types_are_learned_named_and_evaluated(typed) -> None:
    config, result, _ = typed
    model = result.model
    assert model.defect_types_ == ("blob", "scratch")
    test = load_dataset(config).select("test")
    prediction = model.predict([s.path for s in test])
    assert prediction.defect_types == ("blob", "scratch")
    np.testing.assert_allclose(prediction.type_probabilities.sum(axis=1), 1.0)
    # Two kinds of defect a frozen backbone tells apart: named right far above chance.
    named = result.summary["test"]["defect_types"]
    assert named["accuracy"] >= 0.8, named
    truth = [s.defect_type for s in test if s.label == 1]
    predicted = [t for t, s in zip(prediction.predicted_types, test, strict=True) if s.label == 1]
    right = [a == b for a, b in zip(truth, predicted, strict=True)]
    assert named["accuracy"] == pytest.approx(np.mean(right))
    assert set(named["per_type"]) == {"blob", "scratch"}
    assert "defect type named correctly" in result.text()
    assert "defect types: blob, scratch" in result.text()


def test_scores_csv_and_report_name_the_type_of_rejected_parts(typed) -> None:
    from anomaly.artifacts.rundir import read_scores
    from anomaly.commands.score import score_paths
    from anomaly.report import write_report

    config, result, base = typed
    loaded = load_bundle(result.bundle_dir).set_runtime(progress=False)
    assert loaded.defect_types_ == ("blob", "scratch")
    test = load_dataset(config).select("test")
    run_dir = base / "run"
    score_paths(loaded, [s.path for s in test], run_dir, heatmaps=False)
    rows = read_scores(run_dir)
    rejected = [r for r in rows if r.verdict == "NG"]
    assert rejected and all(r.predicted_type in ("blob", "scratch") for r in rejected)
    assert all(0.5 <= r.predicted_type_probability <= 1.0 for r in rejected)
    assert all(r.predicted_type == "" for r in rows if r.verdict == "OK")
    # The loaded bundle names the same types with the same probabilities as the fitted model.
    paths = [s.path for s in test]
    np.testing.assert_array_equal(
        loaded.predict(paths).type_probabilities, result.model.predict(paths).type_probabilities
    )
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "Likely type" in html and f"Likely defect type: {rejected[0].predicted_type}" in html


def test_one_defect_type_names_none(fitted) -> None:
    _, result = fitted
    assert result.model.defect_types_ == ()
    assert result.summary["test"]["defect_types"] is None
    prediction = result.model.predict([np.zeros((64, 64, 3), np.uint8)])
    assert prediction.predicted_types is None and prediction.defect_types == ()


def test_a_head_gain_that_does_not_hold_under_resampling_is_not_trusted() -> None:
    model = Hybrid(seed=0)
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(12, int)]
    bank = rng.normal(0, 1, 72) + 1.5 * labels
    model.bank_stats_ = model.head_stats_ = model.patch_head_stats_ = (0.0, 1.0)
    unused = np.zeros(72)
    # A head of pure noise can win on one validation draw; it does not win on most resamples.
    # Both heads' weights are held to it: the pooled head's, then the patch head's.
    model.fusion_weight_, model.patch_fusion_weight_ = 0.5, 0.0
    assert model._fusion_support(labels, bank, rng.normal(0, 1, 72), unused) < 0.95
    assert model._fusion_support(labels, bank, 4.0 * labels + rng.normal(0, 1, 72), unused) > 0.99
    model.fusion_weight_, model.patch_fusion_weight_ = 0.0, 0.5
    assert model._fusion_support(labels, bank, unused, rng.normal(0, 1, 72)) < 0.95
    assert model._fusion_support(labels, bank, unused, 4.0 * labels + rng.normal(0, 1, 72)) > 0.99
    model.patch_fusion_weight_ = 0.0
    assert model._fusion_support(labels, bank, bank, bank) == 1.0


def test_patch_head_learns_the_few_patches_that_carry_a_defect(monkeypatch) -> None:
    """A defective image's defect covers 2 of its 16 patches: the multiple-instance rounds must
    find them, so the top-k image score ranks unseen defective images above good ones better
    than a head that takes every patch of a defective image for a defect."""

    def auroc_of_head() -> tuple[float, np.ndarray]:
        rng = np.random.default_rng(0)

        def images(n: int, defective: bool) -> np.ndarray:
            x = rng.normal(0, 1, (n, 16, 6)).astype(np.float32)
            if defective:
                for image in x:
                    image[rng.choice(16, 2, replace=False), 0] += 3.0
            return x

        train = np.concatenate([images(60, False), images(20, True)])
        labels = np.r_[np.zeros(60, int), np.ones(20, int)]
        coef, intercept = _fit_patch_instances(train, labels, c=0.1, seed=0)
        test = np.concatenate([images(50, False), images(50, True)])
        scores = _top_k_mean(test @ coef + intercept, 2)
        return float(roc_auc_score(np.r_[np.zeros(50), np.ones(50)], scores)), coef

    multiple_instance, coef = auroc_of_head()
    assert np.argmax(coef) == 0 and coef[0] > 2 * np.abs(coef[1:]).max()
    monkeypatch.setattr("anomaly.models.hybrid.PATCH_ROUNDS", 0)
    every_patch, _ = auroc_of_head()
    assert multiple_instance > 0.93 and multiple_instance > every_patch + 0.03


def test_an_exported_hybrid_scores_and_names_types_like_its_source(typed, tmp_path) -> None:
    """The head, the type head and the fusion are numpy code after the features: through ONNX
    Runtime they give the same scores, verdicts and types."""
    from anomaly.artifacts.bundle import load_bundle
    from anomaly.commands.cli import main

    config, result, _ = typed
    out = tmp_path / "onnx"
    assert main(["export", "--model", config.out, "--out", str(out), "runtime.progress=false"]) == 0
    exported = load_bundle(out)
    assert exported.runtime_.engine == "onnxruntime"
    test = [s.path for s in load_dataset(config).select("test")]
    reference, candidate = result.model.predict(test), exported.predict(test)
    np.testing.assert_allclose(candidate.scores, reference.scores, rtol=1e-4)
    assert candidate.predicted_types == reference.predicted_types
    np.testing.assert_allclose(
        candidate.type_probabilities, reference.type_probabilities, atol=1e-4
    )
    assert candidate.verdicts == reference.verdicts
