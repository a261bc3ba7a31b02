"""Score scales per group of parts (data.group_by): the pure core and the models using it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_image, textured_part, with_defect

from anomaly.artifacts.bundle import load_bundle, save_bundle
from anomaly.components.groups import GroupScales
from anomaly.data.dataset import Sample
from anomaly.errors import ConfigError, DataError, UnsupportedError
from anomaly.models.hybrid import Hybrid
from anomaly.models.patchcore import PatchCore

FAST = {"image_size": 64, "coreset_ratio": 0.25, "progress": False, "num_threads": 1}


def _two_groups(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    """Descriptors of two well separated groups, ``n`` of each."""
    features = np.r_[rng.normal(0, 1, (n, 6)), rng.normal(4, 1, (n, 6))]
    return features, ["mono"] * n + ["poly"] * n


def test_group_scales_standardise_within_each_group() -> None:
    rng = np.random.default_rng(0)
    features, groups = _two_groups(rng, 40)
    scales = GroupScales().fit(features, groups)
    assert scales.names_ == ("mono", "poly")
    assert scales.predict(features) == groups and scales.train_accuracy_ == 1.0
    # The busy group scores 5 higher and spreads twice as wide: one threshold would reject
    # its good parts first.
    scores = np.r_[rng.normal(1, 0.5, 40), rng.normal(6, 1.0, 40)]
    assert scales.fit_scales(scores, features) == []
    scaled = scales.apply(scores, features)
    for part in (slice(0, 40), slice(40, 80)):
        assert scaled[part].mean() == pytest.approx(scores.mean(), abs=1e-9)
        assert scaled[part].std() == pytest.approx(scores.std(), rel=1e-6)
    # Patch grids get the same affine map as the image score of their image.
    grids = np.stack([np.full((3, 3), s) for s in scores])
    np.testing.assert_allclose(scales.apply(grids, features)[:, 1, 1], scaled)


def test_group_scales_round_trip_and_refusals() -> None:
    rng = np.random.default_rng(1)
    features, groups = _two_groups(rng, 10)
    scales = GroupScales().fit(features, groups)
    notes = scales.fit_scales(rng.normal(0, 1, 13), features[7:20])  # 3 mono, 10 poly
    assert len(notes) == 1 and "'mono': 3 good validation image(s)" in notes[0]
    back = GroupScales.from_tensors(scales.to_tensors(), "bundle")
    scores = rng.normal(0, 1, 20)
    np.testing.assert_array_equal(back.apply(scores, features), scales.apply(scores, features))
    assert GroupScales.from_tensors({}, "bundle") is None
    with pytest.raises(DataError, match="1 group"):
        GroupScales().fit(features, ["mono"] * 20)


def _samples(root: Path, split: str, n: int, rng: np.random.Generator) -> list[Sample]:
    """Good parts of two variants (dark and bright stripes) and a few defects of each."""
    samples = []
    for i in range(n):
        for group, gain in (("dark", 0.6), ("bright", 1.4)):
            image = np.clip(textured_part(rng, 64) * gain, 0, 255).astype(np.uint8)
            path = save_image(root / split / group / f"{i:03d}.png", image)
            samples.append(Sample(path, 0, "good", split, group=group))
            if split != "train" and i < 3:
                defect, _ = with_defect(image, rng)
                path = save_image(root / split / group / f"d{i:03d}.png", defect)
                samples.append(Sample(path, 1, "blob", split, group=group))
    return samples


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(0)
    train, val, test = (_samples(root, split, 12, rng) for split in ("train", "val", "test"))
    model = PatchCore(group_by="dataset", **FAST).fit_samples(train, val)
    model.calibrate([s.path for s in val], [s.label for s in val])
    return model, train, val, test, root


def test_patchcore_with_groups_scales_scores_and_round_trips(grouped) -> None:
    model, _, val, test, root = grouped
    assert model.group_scales_.names_ == ("bright", "dark")
    assert model.group_scales_.validation_accuracy_ == 1.0
    assert "groups (dataset): bright, dark" in model.summary_lines()[-1]
    good = [s for s in val if s.label == 0]
    scores = model.predict([s.path for s in good]).scores
    # On the images the scales came from, both groups now have the same mean.
    for group in ("bright", "dark"):
        members = scores[[s.group == group for s in good]]
        assert members.mean() == pytest.approx(scores.mean(), rel=1e-6)
    bundle = save_bundle(model, root / "bundle")
    loaded = load_bundle(bundle).set_runtime(progress=False)
    paths = [s.path for s in test]
    np.testing.assert_array_equal(loaded.predict(paths).scores, model.predict(paths).scores)
    assert loaded.describe()["groups"] == ["bright", "dark"]
    assert loaded.describe()["group_accuracy"]["validation"] == 1.0
    with pytest.raises(UnsupportedError, match="group_by"):
        model.partial_fit(paths[:1])


def test_hybrid_scales_its_fused_score_per_group(grouped) -> None:
    _, train, val, _, root = grouped
    rng = np.random.default_rng(5)
    extra = []
    for i in range(4):  # the hybrid needs labelled train defects
        image, _ = with_defect(textured_part(rng, 64), rng)
        path = save_image(root / "train_defects" / f"{i}.png", image)
        extra.append(Sample(path, 1, "blob", "train", group="dark" if i % 2 else "bright"))
    model = Hybrid(group_by="dataset", **FAST).fit_samples(train + extra, val)
    assert model.group_scales_ is not None and model.head_note_ == ""
    good = [s for s in val if s.label == 0]
    scores = model.predict([s.path for s in good]).scores
    for group in ("bright", "dark"):
        members = scores[[s.group == group for s in good]]
        assert members.mean() == pytest.approx(scores.mean(), rel=1e-6)


def test_hybrid_with_groups_fits_labels_again_on_one_bank(grouped) -> None:
    # The learning curve's reuse of one bank keeps the group classifier's train descriptors.
    _, train, val, test, root = grouped
    rng = np.random.default_rng(6)
    extra = []
    for i in range(4):
        image, _ = with_defect(textured_part(rng, 64), rng)
        path = save_image(root / "reuse_defects" / f"{i}.png", image)
        extra.append(Sample(path, 1, "blob", "train", group="dark" if i % 2 else "bright"))
    shared = Hybrid(group_by="dataset", **FAST).fit([s.path for s in train])
    paths = [s.path for s in test]
    for subset in (extra, extra[:1], extra):
        reused = shared.fit_labels(train, subset, val)
        fresh = Hybrid(group_by="dataset", **FAST).fit_samples(train + subset, val)
        np.testing.assert_array_equal(reused.predict(paths).scores, fresh.predict(paths).scores)


def test_group_by_needs_groups_and_a_known_value(grouped) -> None:
    _, train, val, _, _ = grouped
    ungrouped = [Sample(s.path, s.label, s.defect_type, s.split) for s in train]
    with pytest.raises(DataError, match="have no group"):
        PatchCore(group_by="dataset", **FAST).fit_samples(ungrouped, val)
    with pytest.raises(ConfigError, match=r"data\.group_by='folder'"):
        PatchCore(group_by="folder", **FAST).fit([train[0].path])


def test_baseline_refuses_groups() -> None:
    from baselines.classifier import SupervisedClassifier

    with pytest.raises(ConfigError, match="baseline takes no groups"):
        SupervisedClassifier(group_by="dataset", weights="none")._check_params()
