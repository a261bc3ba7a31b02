"""``anomaly compare``: every model on the same split, one table, per-model failures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score
from test_baseline import SIZE, make_folder_category

from anomaly.commands.compare import (
    compare_category,
    defect_subsets,
    fit_config_for,
    format_table,
    learning_curve,
    reuse_problem,
)
from anomaly.commands.fit import add_good_images
from anomaly.config import CompareConfig, build_config
from anomaly.data import load_dataset
from anomaly.data.dataset import SPLITS
from anomaly.decision.statistics import clopper_pearson
from anomaly.evaluation.split import split_fingerprint
from anomaly.models.hybrid import Hybrid

#: Small and fast settings for every model.
FAST = [
    "image_size=64",
    "patchcore.coreset_ratio=0.5",
    "hybrid.coreset_ratio=0.5",
    "padim.n_features=20",
    "baseline.network=efficientnet_lite0",
    f"baseline.input_size={SIZE}",
    "baseline.epochs=1",
    "baseline.train_batch_size=8",
    "backbone.weights=imagenet",
    "runtime.progress=false",
    "runtime.num_threads=1",
]


def _config(tmp_path: Path, *extra: str):
    return build_config(
        CompareConfig,
        overrides=[
            *FAST,
            f"runs_dir={tmp_path / 'runs'}",
            f"out={tmp_path / 'compare'}",
            *extra,
        ],
        **{"data.category": "part", "data.root": str(tmp_path / "data")},
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison of PatchCore, PaDiM, the hybrid, the baseline and a model that does not
    exist."""
    tmp_path = tmp_path_factory.mktemp("compare")
    make_folder_category(tmp_path / "data" / "part")
    config = _config(
        tmp_path,
        "models=[patchcore,padim,hybrid,baseline,nosuchmodel]",
        "learning_curve=true",
        "learning_curve_defects=[2]",
    )
    return tmp_path, config, compare_category(config)


def test_every_model_scores_exactly_the_same_test_images(compared) -> None:
    _, config, result = compared
    dataset = load_dataset(config)
    expected = split_fingerprint(dataset.select("test"))
    ok = [row for row in result.rows if row.status != "error"]
    assert [row.model for row in ok] == ["patchcore", "padim", "hybrid", "baseline"]
    assert result.same_test_images
    assert {row.test_fingerprint for row in ok} == {expected}
    for row in ok:  # and each bundle was fitted (and tested) on this very split
        metadata = json.loads((Path(row.bundle_dir) / "metadata.json").read_text())
        assert metadata["data"]["split_fingerprints"] == result.fingerprints
        assert row.metrics["n_images"] == len(dataset.select("test"))


def test_labelled_defects_and_initialisation_are_stated(compared) -> None:
    _, config, result = compared
    dataset = load_dataset(config)
    rows = {row.model: row for row in result.rows}
    assert rows["patchcore"].train_defects == rows["padim"].train_defects == 0
    assert rows["baseline"].train_defects == len(dataset.select("train", label=1)) > 0
    assert rows["baseline"].initialisation.startswith("ImageNet")
    assert "frozen" in rows["patchcore"].initialisation
    assert rows["patchcore"].backbone_mb > 0 and rows["baseline"].backbone_mb == 0
    text = result.text()
    for split in SPLITS:
        assert f"{split:<5}:" in text  # the class balance of every split
    assert "initialisation:" in text and "baseline: ImageNet" in text


def test_a_failing_model_gets_a_row_with_its_error(compared) -> None:
    _, _, result = compared
    row = next(row for row in result.rows if row.model == "nosuchmodel")
    assert row.status == "error" and "nosuchmodel" in row.error
    assert "nosuchmodel" in result.text()


def test_outputs_are_written(compared) -> None:
    tmp_path, _, result = compared
    out = tmp_path / "compare"
    for name in ("compare.json", "compare.csv", "scores.csv", "roc.png", "learning_curve.csv"):
        assert (out / name).is_file(), name
    data = json.loads((out / "compare.json").read_text())
    assert data["same_test_images"] is True
    assert [m["model"] for m in data["models"]] == [r.model for r in result.rows]
    with (out / "compare.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {
        "auroc",
        "miss_rate",
        "false_alarm_rate",
        "far_at_miss_0",
        "far_at_miss_1pct",
        "far_at_miss_5pct",
        "pixel_auroc",
        "aupro",
        "fit_seconds",
        "ms_per_image",
        "size_mb",
        "train_defects",
        "accuracy_val_best",
    } <= set(table[0])
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    # scores.csv: every scored model's per-image scores, from which its figures recompute.
    with (out / "scores.csv").open() as handle:
        scores = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in scores])
    for row in (r for r in result.rows if r.status != "error"):
        column = np.array([float(r[row.model]) for r in scores])
        assert row.metrics["auroc"] == pytest.approx(roc_auc_score(labels, column))
        # acc@0.5: the model's own decision rule (native_threshold), the classifier's only.
        if row.model == "baseline":
            native = np.mean((column >= 0.5) == (labels == 1))
            assert row.accuracy_at_half == pytest.approx(native)
        else:
            assert row.accuracy_at_half is None


@pytest.mark.parametrize("learner", ["baseline", "hybrid"])
def test_learning_curve_trains_on_defect_subsets(compared, learner) -> None:
    _, config, result = compared
    dataset = load_dataset(config)
    n_defects = len(dataset.select("train", label=1))
    points = [p for p in result.learning_curve if p["model"] == learner]
    assert [p["train_defects"] for p in points] == [2, n_defects]
    assert all(p["error"] == "" and 0.0 <= p["auroc"] <= 1.0 for p in points)
    assert points[0]["fit_seconds"] > 0  # the subset point was trained here
    # Every point scored this comparison's test split, proved by fingerprint.
    expected = split_fingerprint(dataset.select("test"))
    assert {p["test_fingerprint"] for p in points} == {expected}
    assert all(p["accuracy_val_best"] is not None for p in points)
    # The all-defects point is the model's row of the table, not trained a second time.
    rows = {row.model: row for row in result.rows}
    assert points[1]["auroc"] == rows[learner].metrics["auroc"]
    assert points[1]["fit_seconds"] == rows[learner].fit_seconds
    unsupervised = [p for p in result.learning_curve if p["train_defects"] == 0]
    assert {p["model"]: p["train_defects"] for p in unsupervised} == {"patchcore": 0, "padim": 0}


@pytest.fixture
def banks(monkeypatch) -> list[int]:
    """The number of good images of every bank a hybrid fits during the test."""
    fitted: list[int] = []
    original = Hybrid.fit

    def spy(self, images, y=None):
        fitted.append(len(images))
        return original(self, images, y)

    monkeypatch.setattr(Hybrid, "fit", spy)
    return fitted


def test_learning_curve_fits_the_hybrid_bank_once(tmp_path, banks) -> None:
    # The good images are the same at every point: the bank is fitted once and each point
    # trains only what learns from its labels (tests/test_hybrid.py: the same model as a fresh
    # fit); each point's fit seconds count the bank's too.
    make_folder_category(tmp_path / "data" / "part")
    config = _config(tmp_path, "models=[hybrid]", "learning_curve_defects=[1,2]")
    dataset = load_dataset(config)
    points = learning_curve(config, dataset, [])
    n_defects = len(dataset.select("train", label=1))
    assert [p["train_defects"] for p in points] == [1, 2, n_defects]
    assert all(p["error"] == "" and p["fit_seconds"] > 0 for p in points)
    assert banks == [len(dataset.select("train", label=0))]


def test_a_comparison_reuses_the_hybrid_bank_it_fitted_for_its_curve(tmp_path, banks) -> None:
    # The main row's hybrid was fitted on the same good images in this process: its bank
    # serves every point of the curve, so one comparison fits one bank, and the curve's points
    # are those a bank fitted for the curve alone gives.
    make_folder_category(tmp_path / "data" / "part")
    options = ("models=[hybrid]", "learning_curve=true", "learning_curve_defects=[1,2]")
    config = _config(tmp_path, *options)
    dataset = load_dataset(config)
    result = compare_category(config)
    assert banks == [len(dataset.select("train", label=0))]
    alone = learning_curve(config, dataset, result.rows)
    assert len(banks) == 2  # the curve alone fitted its own
    for reused, fresh in zip(result.learning_curve, alone, strict=True):
        assert reused["train_defects"] == fresh["train_defects"]
        assert reused["auroc"] == fresh["auroc"]
        assert reused["false_alarm_rate"] == fresh["false_alarm_rate"]


def test_learning_curve_plot_is_written(compared) -> None:
    _, _, result = compared
    plot = result.out_dir / "learning_curve.png"
    assert plot in result.files and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_reuses_bundles_and_a_changed_key_refits(compared) -> None:
    tmp_path, config, _ = compared
    dataset = load_dataset(config)
    fingerprints = {split: split_fingerprint(dataset.select(split)) for split in SPLITS}
    for name in ("patchcore", "padim", "baseline"):
        bundle = tmp_path / "runs" / "part" / name
        assert reuse_problem(bundle, fit_config_for(config, name, bundle), fingerprints) is None
    changed = _config(tmp_path, "patchcore.coreset_ratio=0.25")
    bundle = tmp_path / "runs" / "part" / "patchcore"
    problem = reuse_problem(bundle, fit_config_for(changed, "patchcore", bundle), fingerprints)
    assert problem == "bundle config differs in 'patchcore'"
    other_split = {**fingerprints, "test": "0" * 64}
    assert "different split" in reuse_problem(
        bundle, fit_config_for(config, "patchcore", bundle), other_split
    )
    again = compare_category(_config(tmp_path, "models=[patchcore]"))
    assert again.rows[0].status == "loaded"


def test_a_bundle_grown_with_anomaly_add_is_not_reused(compared, tmp_path) -> None:
    runs, config, _ = compared
    dataset = load_dataset(config)
    fingerprints = {split: split_fingerprint(dataset.select(split)) for split in SPLITS}
    grown = tmp_path / "patchcore"
    shutil.copytree(runs / "runs" / "part" / "patchcore", grown)
    extra_good = dataset.select("train", label=0)[0].path
    add_good_images(grown, [extra_good], runtime=OmegaConf.create({"progress": False}))
    problem = reuse_problem(grown, fit_config_for(config, "patchcore", grown), fingerprints)
    assert problem == "bundle holds 1 good images added after fitting (anomaly add)"


def test_defect_subsets_are_nested_and_seeded() -> None:
    subsets = defect_subsets(40, [5, 10, 25, 50], seed=0)
    assert list(subsets) == [5, 10, 25, 40]  # 50 >= 40 defects: "all" only
    assert set(subsets[5]) <= set(subsets[10]) <= set(subsets[25]) <= set(subsets[40])
    again = defect_subsets(40, [5, 10, 25, 50], seed=0)
    assert all(np.array_equal(subsets[k], again[k]) for k in subsets)
    assert not np.array_equal(defect_subsets(40, [5], seed=1)[5], subsets[5])


def test_table_shows_missing_values_as_dashes() -> None:
    text = format_table([{"model": "padim", "status": "error", "train_defects": 0}])
    assert text.splitlines()[1].startswith("padim") and " - " in text


def test_accuracy_threshold_is_chosen_on_validation_not_test() -> None:
    from types import SimpleNamespace

    from anomaly.commands.compare import accuracy_at_validation_best
    from anomaly.decision.calibration import Calibration

    calibration = Calibration(
        threshold=0.5, pixel_threshold=0.5, method="miss_rate", target_miss_rate=0.05,
        target_supported=True, confidence=0.95, validation={}, note="",
        scores_good=[0.1, 0.2, 0.3], scores_defect=[0.6, 0.7],
    )  # fmt: skip
    model = SimpleNamespace(calibration_=calibration)
    # At the validation-best threshold 0.6 the test defect at 0.4 is missed: 3 of 4 right, even
    # though a threshold of 0.4 (chosen on test) would score 4 of 4.
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.4, 0.9])
    assert accuracy_at_validation_best(model, labels, scores) == 0.75
    assert accuracy_at_validation_best(SimpleNamespace(calibration_=None), labels, scores) is None


def test_the_calibration_confidence_reaches_the_test_intervals(compared, tmp_path) -> None:
    data, _, _ = compared
    config = build_config(
        CompareConfig,
        overrides=[
            *FAST,
            f"runs_dir={tmp_path / 'runs'}",
            f"out={tmp_path / 'compare'}",
            "models=[padim]",
            "calibration.confidence=0.9",
        ],
        **{"data.category": "part", "data.root": str(data / "data")},
    )
    row = compare_category(config).rows[0]
    op = row.metrics["operating_point"]
    assert op["confidence"] == 0.9
    assert op["miss_rate_ci"] == pytest.approx(clopper_pearson(op["misses"], op["n_defect"], 0.9))
    assert op["false_alarm_rate_ci"] == pytest.approx(
        clopper_pearson(op["false_alarms"], op["n_good"], 0.9)
    )
    crack = row.metrics["per_defect_type"]["crack"]
    assert crack["miss_rate_ci"] == pytest.approx(clopper_pearson(crack["misses"], crack["n"], 0.9))
