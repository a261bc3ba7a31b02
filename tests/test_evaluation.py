"""`anomaly evaluate`: metrics of one or several bundles on one checked split, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_parts_category, save_image, textured_part
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomaly.commands.cli import main
from anomaly.commands.evaluate import evaluate_bundles, evaluate_model
from anomaly.commands.fit import fit_category
from anomaly.config import FitConfig, build_config
from anomaly.data import load_dataset
from anomaly.data.dataset import Sample
from anomaly.decision.statistics import clopper_pearson
from anomaly.evaluation import metrics
from anomaly.evaluation.split import score_split, split_fingerprint, split_metrics
from anomaly.models.base import Prediction

SIZE = 64


# --------------------------------------------------------------------------- fake model
class BrightnessModel:
    """Stands in for a fitted model: map = darkness of each pixel, score = its maximum."""

    model_name = "brightness"
    progress = False
    batch_size = 3
    threshold_ = 0.5

    def memory_bytes(self) -> int:
        return 0

    defect_types_ = ()  # names no defect types, like every model without a type head

    def score_batch(self, images: list[np.ndarray]) -> Prediction:
        scores, maps = self.score_arrays(images)
        return Prediction(scores=scores, anomaly_maps=maps, threshold=None)

    def score_arrays(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        maps = [1.0 - image.mean(axis=2).astype(np.float32) / 255.0 for image in images]
        return np.array([float(m.max()) for m in maps]), maps


def _labelled_split(root: Path, n_good: int = 6, n_defect: int = 5) -> list[Sample]:
    """Good images and defect images with a dark blob of varying strength, with masks."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n_good):
        image = textured_part(rng, 32)
        image[rng.integers(0, 32), rng.integers(0, 32)] = rng.integers(0, 60)  # a stray pixel
        path = save_image(root / f"good_{i}.png", image)
        samples.append(Sample(path, 0, "good", "test"))
    for i in range(n_defect):
        image, mask = textured_part(rng, 32), np.zeros((32, 32), np.uint8)
        level = int(rng.integers(0, 70))
        image[10:16, 10:16], mask[10:16, 10:16] = level, 255
        path = save_image(root / f"{'dent' if i % 2 else 'blob'}_{i}.png", image)
        mask_path = save_image(root / f"{path.stem}_mask.png", mask)
        samples.append(Sample(path, 1, "dent" if i % 2 else "blob", "test", mask_path=mask_path))
    return samples


def test_split_metrics_agree_with_sklearn(tmp_path: Path) -> None:
    samples = _labelled_split(tmp_path)
    scored = score_split(BrightnessModel(), samples)
    result = split_metrics(scored, BrightnessModel.threshold_)
    labels, scores = scored.labels, scored.scores
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["average_precision"] == pytest.approx(average_precision_score(labels, scores))
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    assert result["f1_max"] == pytest.approx(f1.max())
    maps = np.stack(scored.maps)
    masks = np.stack(scored.masks)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert result["aupro"] == pytest.approx(metrics.aupro(maps, masks))  # on the same maps
    op = result["operating_point"]
    rejected = scores >= BrightnessModel.threshold_
    assert op["confusion"] == {
        "tp": int((rejected & (labels == 1)).sum()),
        "fn": int((~rejected & (labels == 1)).sum()),
        "fp": int((rejected & (labels == 0)).sum()),
        "tn": int((~rejected & (labels == 0)).sum()),
    }
    assert op["miss_rate_ci"][0] <= op["miss_rate"] <= op["miss_rate_ci"][1]


def test_single_class_split_says_what_cannot_be_computed(tmp_path: Path) -> None:
    samples = [s for s in _labelled_split(tmp_path) if s.label == 0]
    result = split_metrics(score_split(BrightnessModel(), samples), BrightnessModel.threshold_)
    for name in ("auroc", "average_precision", "f1_max"):
        assert result[name] is None
        assert "no defective images" in result["not_computed"][name]
    assert "no defective images" in result["not_computed"]["pixel_auroc"]
    # What can be, is computed: the good parts at or above the threshold.
    scores = score_split(BrightnessModel(), samples).scores
    false_alarm_rate = float(np.mean(scores >= BrightnessModel.threshold_))
    assert result["operating_point"]["false_alarm_rate"] == pytest.approx(false_alarm_rate)
    assert "operating_point.miss_rate" in result["not_computed"]


@pytest.mark.parametrize("fault", ["wrong_size", "missing_file", "no_mask"])
def test_faulty_masks_drop_pixel_metrics_and_name_the_file(tmp_path: Path, fault: str) -> None:
    samples = _labelled_split(tmp_path)
    bad = samples[-1]
    if fault == "wrong_size":
        save_image(bad.mask_path, np.zeros((20, 24), np.uint8))
        culprit = bad.mask_path.name
    elif fault == "missing_file":
        bad.mask_path.unlink()
        culprit = bad.mask_path.name
    else:
        samples[-1] = Sample(bad.path, 1, bad.defect_type, "test", mask_path=None)
        culprit = bad.path.name
    scored = score_split(BrightnessModel(), samples)
    assert len(scored.mask_errors) == 1 and culprit in scored.mask_errors[0]
    result = split_metrics(scored, BrightnessModel.threshold_)
    assert result["pixel_auroc"] is None and result["aupro"] is None
    assert culprit in result["not_computed"]["pixel_auroc"]
    assert result["auroc"] == pytest.approx(roc_auc_score(scored.labels, scored.scores))


def test_a_row_computes_per_defect_type_auroc_once_with_the_miss_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = _labelled_split(tmp_path)
    calls = []
    per_group_auroc = metrics.per_group_auroc

    def counted(*args, **kwargs):
        calls.append(args)
        return per_group_auroc(*args, **kwargs)

    monkeypatch.setattr(metrics, "per_group_auroc", counted)
    row, scored = evaluate_model(BrightnessModel(), samples, "brightness", confidence=0.9)
    assert len(calls) == 1
    assert "per_defect_type_auroc" not in row  # held once, in per_defect_type
    labels, scores = scored.labels, scored.scores
    types = np.array([s.defect_type for s in samples])
    assert set(row["per_defect_type"]) == {"blob", "dent"}
    for name, entry in row["per_defect_type"].items():
        keep = (labels == 0) | (types == name)
        assert entry["auroc"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
        defects = scores[types == name]
        misses = int((defects < BrightnessModel.threshold_).sum())
        assert (entry["n"], entry["misses"]) == (defects.size, misses)
        assert entry["miss_rate_ci"] == pytest.approx(clopper_pearson(misses, defects.size, 0.9))


# --------------------------------------------------------------------------- real bundles
def _fit(data_root: Path, out: Path, model: str, *overrides: str) -> Path:
    config = build_config(
        FitConfig,
        overrides=[
            f"image_size={SIZE}",
            "runtime.progress=false",
            "runtime.num_threads=1",
            "padim.n_features=24",
            "patchcore.coreset_ratio=0.25",
            *overrides,
        ],
        **{"data.category": "parts", "data.root": str(data_root), "model": model, "out": str(out)},
    )
    return fit_category(config).bundle_dir


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    data_root = root / "data"
    make_parts_category(data_root / "parts")
    return {
        "data_root": data_root,
        "padim": _fit(data_root, root / "padim", "padim"),
        "patchcore": _fit(data_root, root / "patchcore", "patchcore"),
        "padim_seed1": _fit(data_root, root / "other" / "padim", "padim", "data.seed=1"),
    }


def test_two_bundles_are_rows_on_the_same_fingerprint(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    result = evaluate_bundles(
        [bundles["padim"], bundles["patchcore"]], out=tmp_path / "eval", progress=False
    )
    config = build_config(
        FitConfig, **{"data.category": "parts", "data.root": str(bundles["data_root"])}
    )
    expected = split_fingerprint(load_dataset(config).select("test"))
    assert [row["label"] for row in result.rows] == ["padim", "patchcore"]
    assert {row["fingerprint"] for row in result.rows} == {expected}
    assert result.split["fingerprint"] == expected
    assert result.notes == []
    columns = set(result.rows[0])
    assert all(set(row) == columns for row in result.rows)
    for row in result.rows:
        assert row["pixel_auroc"] is not None and row["aupro"] is not None
        assert row["operating_point"]["confusion"]
        assert row["bundle_bytes"] > 0 and row["memory_bytes"] > 0
        assert set(row["miss_rate_at_false_alarm_rate"]) == {"0.01", "0.05"}
        assert set(row["false_alarm_rate_at_miss_rate"]) == {"0", "0.01", "0.05"}
        assert row["per_defect_type"]["blob"]["n"] == result.split["n_defect"]
        # The reported AUROC and AP are sklearn's on the per-image scores written alongside.
        with (tmp_path / "eval" / f"{row['label']}_scores.csv").open() as handle:
            table = list(csv.DictReader(handle))
        labels = [int(r["label"]) for r in table]
        scores = [float(r["score"]) for r in table]
        assert row["auroc"] == pytest.approx(roc_auc_score(labels, scores))
        assert row["average_precision"] == pytest.approx(average_precision_score(labels, scores))
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [m["label"] for m in saved["models"]] == ["padim", "patchcore"]
    for name in ("evaluation.txt", "roc.png", "padim_histogram.png", "patchcore_confusion.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    text = result.text()
    assert "padim" in text and "patchcore" in text and "miss@FA 1%" in text


def test_bundles_from_different_splits_use_the_first_and_say_so(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    result = evaluate_bundles(
        [bundles["padim"], bundles["padim_seed1"]], out=tmp_path, plots=False, progress=False
    )
    assert len({row["fingerprint"] for row in result.rows}) == 1
    assert result.rows[0]["label"] != result.rows[1]["label"]  # both folders are named padim
    assert any(
        str(bundles["padim_seed1"]) in note and "different test split" in note
        for note in result.notes
    )
    assert any("optimistic" in note for note in result.notes)


def test_cli_evaluate_on_another_category_with_one_class(
    bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    other = tmp_path / "data" / "goodonly"
    for i in range(5):
        save_image(other / "train" / "good" / f"{i}.png", textured_part(rng, SIZE))
        save_image(other / "test" / "good" / f"{i}.png", textured_part(rng, SIZE))
    code = main(
        [
            "-q",
            "evaluate",
            "--model",
            str(bundles["padim"]),
            "--model",
            str(bundles["patchcore"]),
            "--category",
            "goodonly",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "eval"),
            "runtime.progress=false",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Not computed:" in printed and "no defective images" in printed
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["split"]["category"] == "goodonly"
    for row in saved["models"]:
        assert row["auroc"] is None and "auroc" in row["not_computed"]
        with (tmp_path / "eval" / f"{row['label']}_scores.csv").open() as handle:
            scores = np.array([float(r["score"]) for r in csv.DictReader(handle)])
        # The false-alarm rate is still computed: the good parts at or above the threshold.
        expected = float(np.mean(scores >= row["threshold"]))
        assert row["operating_point"]["false_alarm_rate"] == pytest.approx(expected)
    assert any("evaluated on 'goodonly'" in note for note in saved["notes"])


def test_cli_evaluate_refuses_a_missing_bundle(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_the_confidence_setting_reaches_the_intervals_and_the_text(
    bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed, saved = {}, {}
    for level, extra in (("90%", ["confidence=0.9"]), ("95%", [])):
        out = tmp_path / level
        args = ["--model", str(bundles["padim"]), "--out", str(out), "--no-plots"]
        assert main(["-q", "evaluate", *args, "runtime.progress=false", *extra]) == 0
        printed[level] = capsys.readouterr().out
        saved[level] = json.loads((out / "evaluation.json").read_text())
    assert "(90% Clopper-Pearson intervals)" in printed["90%"] and "95%" not in printed["90%"]
    assert "(95% Clopper-Pearson intervals)" in printed["95%"]
    assert saved["90%"]["confidence"] == 0.9
    op = saved["90%"]["models"][0]["operating_point"]
    assert op["confidence"] == 0.9
    for rate, count, total in (
        ("miss_rate", op["misses"], op["n_defect"]),
        ("false_alarm_rate", op["false_alarms"], op["n_good"]),
    ):
        assert op[f"{rate}_ci"] == pytest.approx(clopper_pearson(count, total, 0.9))
        assert op[f"{rate}_ci"] != saved["95%"]["models"][0]["operating_point"][f"{rate}_ci"]
    blob = saved["90%"]["models"][0]["per_defect_type"]["blob"]
    assert blob["miss_rate_ci"] == pytest.approx(clopper_pearson(blob["misses"], blob["n"], 0.9))
