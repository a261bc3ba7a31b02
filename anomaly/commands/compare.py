"""``anomaly compare``: the unsupervised models and the supervised baseline on one split.

Every model is fitted (or its bundle reused) on the same train/val/test split of one category,
calibrated by the same rule on the same validation images, and scored on the same test images;
the split fingerprints prove it (:func:`~anomaly.evaluation.split.split_fingerprint`).
The table shows
what a line cares about (misses and false alarms at the calibrated threshold, false alarms at
fixed miss rates), what each model costs (fit time, ms/image, size) and what it needs: how many
labelled defects went into training (none for the unsupervised models).

The optional learning curve trains the baseline on 5, 10, 25, 50 and all training defects
(nested seeded subsets, all good training images kept) to show how many labelled defects it
takes to catch up with a model that needs none.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anomaly.artifacts.bundle import bundle_size_bytes, load_bundle, read_metadata
from anomaly.commands.fit import build_model, fit_category
from anomaly.config import FitConfig, to_yaml
from anomaly.data import load_dataset
from anomaly.data.dataset import SPLITS, Dataset, Sample
from anomaly.errors import AnomalyError, DataError
from anomaly.evaluation import metrics
from anomaly.evaluation.plots import roc_plot
from anomaly.evaluation.split import score_split, split_fingerprint, split_metrics
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: Config sections that decide what a bundle learned: a bundle is reused only when they match.
_MODEL_KEYS = ("image_size", "backbone", "calibration")
#: Data keys that change the training set without changing the split fingerprints.
_DATA_KEYS = ("max_train_images", "include_uncertain")
#: Miss rates at which the table reports the false-alarm rate.
_MISS_TARGETS = ("0", "0.01", "0.05")


@dataclass
class ModelRow:
    """One model's line in the comparison."""

    model: str
    status: str  # "fitted" | "loaded" | "error"
    error: str | None = None
    bundle_dir: str | None = None
    initialisation: str = ""
    train_defects: int = 0  # labelled defects used for training (0 for unsupervised models)
    train_good: int = 0
    fit_seconds: float | None = None
    fit_cpu_seconds: float | None = None
    ms_per_image: float | None = None
    bundle_mb: float | None = None
    backbone_mb: float = 0.0  # frozen backbone weights loaded from elsewhere, not in the bundle
    test_fingerprint: str | None = None
    #: The classifier's own decision rule (defect probability >= 0.5), supervised models only.
    accuracy_at_half: float | None = None
    #: Test accuracy at the threshold that maximises accuracy on the validation images (any model).
    accuracy_val_best: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def size_mb(self) -> float | None:
        return None if self.bundle_mb is None else self.bundle_mb + self.backbone_mb

    def figures(self) -> dict[str, Any]:
        """The headline figures, flat (for the table and the CSV)."""
        m = self.metrics
        op = m.get("operating_point") or {}
        far_at = m.get("false_alarm_rate_at_miss_rate") or {}

        def far(target: str) -> float | None:
            entry = far_at.get(target)
            return None if entry is None else entry["false_alarm_rate"]

        return {
            "model": self.model,
            "status": self.status,
            "initialisation": self.initialisation,
            "train_defects": self.train_defects,
            "auroc": m.get("auroc"),
            "miss_rate": op.get("miss_rate"),
            "false_alarm_rate": op.get("false_alarm_rate"),
            "far_at_miss_0": far("0"),
            "far_at_miss_1pct": far("0.01"),
            "far_at_miss_5pct": far("0.05"),
            "accuracy": _accuracy(op),
            "accuracy_at_half": self.accuracy_at_half,
            "accuracy_val_best": self.accuracy_val_best,
            "pixel_auroc": m.get("pixel_auroc"),
            "aupro": m.get("aupro"),
            "fit_seconds": self.fit_seconds,
            "ms_per_image": self.ms_per_image,
            "size_mb": None if self.size_mb is None else round(self.size_mb, 2),
            "error": self.error or "",
        }


@dataclass
class CompareResult:
    """Everything ``anomaly compare`` found; :meth:`text` is what it prints."""

    category: str
    out_dir: Path
    summary: dict[str, Any]
    fingerprints: dict[str, str]
    rows: list[ModelRow]
    same_test_images: bool
    learning_curve: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"comparison on {self.category} (split fingerprints: "
            + ", ".join(f"{s} {self.fingerprints[s][:12]}" for s in SPLITS)
            + ")"
        ]
        lines += [f"  {line}" for line in balance_lines(self.summary)]
        val = self.summary["val"]
        lines.append(
            f"  every model is calibrated on the same {val['good'] + val['defect']} validation "
            f"images ({val['defect']} defects); 'defects' below counts the labelled defects used "
            "for training"
        )
        if self.same_test_images:
            lines.append(
                f"  all models scored the same test images "
                f"(fingerprint {self.fingerprints['test'][:12]})"
            )
        else:
            lines.append("  WARNING: the models did not all score the same test images")
        lines.append("")
        lines.append(format_table([row.figures() for row in self.rows]))
        inits = [f"  {row.model}: {row.initialisation}" for row in self.rows if row.initialisation]
        if inits:
            lines.append("initialisation:")
            lines += inits
        for row in self.rows:
            if row.error:
                lines.append(f"{row.model}: {row.error}")
        if self.learning_curve:
            lines.append("")
            lines.append(
                "learning curve (baseline with n labelled train defects, all good train "
                "images; unsupervised models need none):"
            )
            lines.append(format_curve(self.learning_curve))
        lines.append("")
        lines += [f"wrote {path}" for path in self.files]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def compare_category(config: DictConfig) -> CompareResult:
    """Fit or load every model in ``config.models`` on one split, score the test split with
    each, and write ``compare.json``, ``compare.csv``, ``scores.csv`` and ``roc.png``.

    A model that fails (cannot be imported, cannot be fitted) gets a row with the error; the
    others are still compared.
    """
    dataset = load_dataset(config)
    test = dataset.select("test")
    if not test:
        raise DataError(f"category {dataset.name!r} has no test images to compare models on")
    fingerprints = {split: split_fingerprint(dataset.select(split)) for split in SPLITS}
    summary = dataset.summary()
    out = Path(config.out or Path(config.runs_dir) / dataset.name / "compare")
    out.mkdir(parents=True, exist_ok=True)
    for line in balance_lines(summary):
        logger.info("%s", line)

    rows: list[ModelRow] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    points: dict[str, tuple[float, float]] = {}
    per_image: dict[str, np.ndarray] = {}
    for name in list(config.models):
        row, scores = _evaluate_model(config, name, dataset, fingerprints)
        rows.append(row)
        if scores is not None:
            labels = scores.labels
            curves[name] = (labels, scores.scores)
            per_image[name] = scores.scores
            op = row.metrics.get("operating_point") or {}
            if op.get("miss_rate") is not None and op.get("false_alarm_rate") is not None:
                points[name] = (op["false_alarm_rate"], 1.0 - op["miss_rate"])

    same = _check_same_test_images(rows, fingerprints["test"])
    files: list[Path] = []
    if curves:
        files.append(
            roc_plot(
                curves,
                out / "roc.png",
                points,
                title=f"{dataset.name}: test ROC, dots at the calibrated threshold",
            )
        )
    learning = []
    if config.learning_curve:
        learning = learning_curve(config, dataset, rows)
    result = CompareResult(
        category=dataset.name,
        out_dir=out,
        summary=summary,
        fingerprints=fingerprints,
        rows=rows,
        same_test_images=same,
        learning_curve=learning,
    )
    files.append(_write_text(out / "compare.csv", _csv([row.figures() for row in rows])))
    if per_image:
        files.append(_write_text(out / "scores.csv", _scores_csv(test, per_image)))
    if learning:
        files.append(_write_text(out / "learning_curve.csv", _csv(learning)))
    result.files = [*files, out / "compare.json"]
    _write_text(
        out / "compare.json", json.dumps(_to_json(result, config), indent=2, default=_json_default)
    )
    return result


# ---------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------


def fit_config_for(config: DictConfig, name: str, out: Path) -> DictConfig:
    """The ``anomaly fit`` configuration of model ``name`` inside a compare configuration."""
    keys = set(OmegaConf.structured(FitConfig).keys())
    base = OmegaConf.structured(FitConfig)
    chosen = {key: config[key] for key in config if key in keys}
    fit_config = OmegaConf.merge(base, chosen)
    fit_config.model = name
    fit_config.out = str(out)
    return fit_config


def reuse_problem(
    bundle_dir: Path, fit_config: DictConfig, fingerprints: dict[str, str]
) -> str | None:
    """Why the bundle at ``bundle_dir`` cannot stand in for fitting ``fit_config`` (None: it can).

    It can when it holds the same model, was fitted on a split with the same fingerprints, and
    its configuration agrees on every key that changes what the model learns.
    """
    if not bundle_dir.exists():
        return "no bundle yet"
    try:
        metadata = read_metadata(bundle_dir)
    except AnomalyError as error:
        return f"unusable bundle ({error})"
    if metadata.get("model") != fit_config.model:
        return f"bundle holds model {metadata.get('model')!r}"
    added = (metadata.get("data") or {}).get("added_images")
    if added:
        # Its bank holds images beyond the train split, so it is not what fitting would give.
        return f"bundle holds {len(added)} good images added after fitting (anomaly add)"
    saved = (metadata.get("data") or {}).get("split_fingerprints")
    if saved != fingerprints:
        return "bundle was fitted on a different split (fingerprints differ)"
    try:
        bundle_config = OmegaConf.load(bundle_dir / "config.yaml")
    except Exception as error:  # omegaconf/yaml raise several kinds
        return f"bundle config unreadable ({error})"
    wanted = OmegaConf.to_container(fit_config, resolve=True)
    have = OmegaConf.to_container(bundle_config, resolve=True)
    assert isinstance(wanted, dict) and isinstance(have, dict)
    keys = [*_MODEL_KEYS, fit_config.model]
    for key in keys:
        if key in wanted and wanted.get(key) != have.get(key):
            return f"bundle config differs in {key!r}"
    for key in _DATA_KEYS:
        if wanted["data"].get(key) != (have.get("data") or {}).get(key):
            return f"bundle config differs in 'data.{key}'"
    if (wanted.get("runtime") or {}).get("seed") != (have.get("runtime") or {}).get("seed"):
        return "bundle config differs in 'runtime.seed'"
    return None


def _evaluate_model(
    config: DictConfig, name: str, dataset: Dataset, fingerprints: dict[str, str]
) -> tuple[ModelRow, Any]:
    """Fit or load ``name``, score the test split; a failure becomes a row with the error."""
    bundle_dir = Path(config.runs_dir) / dataset.name / name
    row = ModelRow(model=name, status="error", bundle_dir=str(bundle_dir))
    try:
        fit_config = fit_config_for(config, name, bundle_dir)
        problem = (
            "refit=true" if config.refit else reuse_problem(bundle_dir, fit_config, fingerprints)
        )
        if problem is None:
            logger.info("%s: reusing the bundle at %s (same split and config)", name, bundle_dir)
            model = load_bundle(bundle_dir)
            row.status = "loaded"
            row.fit_seconds = (model.metadata_.get("evaluation") or {}).get("fit_seconds")
        else:
            logger.info("%s: fitting (%s)", name, problem)
            result = fit_category(fit_config)
            model = result.model
            row.status = "fitted"
            row.fit_seconds = result.summary["fit_seconds"]
        model.set_runtime(
            config.runtime.batch_size, config.runtime.num_threads, config.runtime.progress
        )
        _describe(row, model, dataset)
        row.bundle_mb = round(bundle_size_bytes(bundle_dir) / 2**20, 2)
        saved = read_metadata(bundle_dir)["data"]["split_fingerprints"]
        if saved != fingerprints:
            raise DataError(f"{bundle_dir}: was fitted on a different split than this comparison")
        test = dataset.select("test")
        logger.info("%s: scoring %d test images", name, len(test))
        scores = score_split(model, test)
        row.test_fingerprint = split_fingerprint(scores.samples)
        row.metrics = split_metrics(scores, model.threshold_)
        row.ms_per_image = round(scores.ms_per_image, 2)
        row.accuracy_val_best = accuracy_at_validation_best(model, scores.labels, scores.scores)
        if model.supervised:
            row.accuracy_at_half = float(np.mean((scores.scores >= 0.5) == (scores.labels == 1)))
        return row, scores
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one model's failure must not cost the comparison
        logger.error("%s failed: %s", name, error)
        logger.debug("traceback", exc_info=True)
        row.status = "error"
        row.error = (
            f"{type(error).__name__}: {error}"
            if not isinstance(error, AnomalyError)
            else str(error)
        )
        return row, None


def accuracy_at_validation_best(
    model: AnomalyModel, labels: np.ndarray, scores: np.ndarray
) -> float | None:
    """Accuracy on ``(labels, scores)`` at the threshold that maximises validation accuracy.

    The validation scores are the ones kept by calibration, so the threshold never sees the test
    images. ``None`` when the model is not calibrated or validation lacks a class.
    """
    calibration = getattr(model, "calibration_", None)
    if calibration is None:
        return None
    good, defect = calibration.scores_good, calibration.scores_defect
    best = metrics.accuracy_max([0] * len(good) + [1] * len(defect), [*good, *defect])
    if best is None:
        return None
    return float(np.mean((np.asarray(scores) >= best[1]) == (np.asarray(labels) == 1)))


def _describe(row: ModelRow, model: AnomalyModel, dataset: Dataset) -> None:
    """Initialisation, labelled data used and size of the weights kept outside the bundle."""
    extractor = model.extractor_
    if model.supervised:
        row.initialisation = getattr(model, "initialisation_", "")
        row.train_defects = int(getattr(model, "n_train_defects_", 0))
        row.train_good = int(getattr(model, "n_train_good_", 0))
        cpu = getattr(model, "fit_cpu_seconds_", None)
        row.fit_cpu_seconds = None if cpu is None or not np.isfinite(cpu) else float(cpu)
        row.backbone_mb = 0.0  # the fine-tuned network is inside the bundle
    else:
        source = getattr(extractor, "weights_source", "")
        row.initialisation = f"{model.backbone}, frozen, {_source_text(source)}"
        row.train_defects = 0
        row.train_good = int(model.n_train_images_)
        tensors = [*extractor.parameters(), *extractor.buffers()]
        row.backbone_mb = round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 2)


def _source_text(source: str) -> str:
    if source == "random":
        return "random weights"
    if source.startswith(("package:", "timm:")):
        return f"ImageNet ({source})"
    return source


def _check_same_test_images(rows: list[ModelRow], expected: str) -> bool:
    """Every scored model saw the test images of this split; mark any row that did not."""
    same = True
    for row in rows:
        if row.test_fingerprint is not None and row.test_fingerprint != expected:
            same = False
            row.error = "scored other test images than the rest (fingerprint mismatch)"
            logger.error("%s: %s", row.model, row.error)
    return same


# ---------------------------------------------------------------------------------------------
# Learning curve
# ---------------------------------------------------------------------------------------------


def defect_subsets(n_defects: int, counts: list[int], seed: int) -> dict[int, np.ndarray]:
    """Nested seeded subsets of the training defects: ``{count: indices}``, plus all of them.

    Nested (each subset holds the smaller ones) so the curve shows the effect of more labels,
    not of a different draw. Counts at or above ``n_defects`` are replaced by "all".
    """
    order = np.random.default_rng(seed).permutation(n_defects)
    chosen = sorted({int(c) for c in counts if 0 < int(c) < n_defects})
    subsets = {count: np.sort(order[:count]) for count in chosen}
    subsets[n_defects] = np.arange(n_defects)
    return subsets


def learning_curve(
    config: DictConfig, dataset: Dataset, rows: list[ModelRow]
) -> list[dict[str, Any]]:
    """Baseline test figures per number of labelled training defects, next to the unsupervised
    rows (0 defects). The "all defects" point is the baseline row of the main table when there
    is one (same config, same data), so it is not trained twice."""
    good = dataset.select("train", label=0)
    defects = dataset.select("train", label=1)
    val, test = dataset.select("val"), dataset.select("test")
    if not defects:
        raise DataError(f"category {dataset.name!r} has no training defects for a learning curve")
    subsets = defect_subsets(
        len(defects), list(config.learning_curve_defects), int(config.runtime.seed)
    )
    fit_config = fit_config_for(config, "baseline", Path(config.runs_dir))
    points: list[dict[str, Any]] = [
        _curve_point(row.model, 0, row.metrics, row.fit_seconds, row.error)
        for row in rows
        if row.status != "error" and row.train_defects == 0
    ]
    main = next((r for r in rows if r.model == "baseline" and r.status != "error"), None)
    for count, indices in subsets.items():
        if count == len(defects) and main is not None:
            points.append(_curve_point("baseline", count, main.metrics, main.fit_seconds, None))
            continue
        chosen = good + [defects[i] for i in indices]
        logger.info("learning curve: baseline with %d of %d training defects", count, len(defects))
        try:
            started = time.perf_counter()
            model = build_model(fit_config)
            model.fit(
                [s.path for s in chosen],
                [s.label for s in chosen],
                validation=([s.path for s in val], [s.label for s in val]),
            )
            val_scores = score_split(model, val)
            cal = config.calibration
            model.calibrate_from_scores(
                val_scores.scores,
                val_scores.labels,
                val_scores.map_maxima,
                target_miss_rate=cal.target_miss_rate,
                fallback_false_alarm_rate=cal.fallback_false_alarm_rate,
                confidence=cal.confidence,
            )
            seconds = time.perf_counter() - started - val_scores.seconds
            metrics = split_metrics(score_split(model, test), model.threshold_)
            points.append(_curve_point("baseline", count, metrics, round(seconds, 2), None))
        except KeyboardInterrupt:
            raise
        except Exception as error:
            logger.error("learning curve at %d defects failed: %s", count, error)
            points.append(_curve_point("baseline", count, {}, None, str(error)))
    return points


def _curve_point(
    model: str,
    defects: int,
    metrics: dict[str, Any],
    fit_seconds: float | None,
    error: str | None,
) -> dict[str, Any]:
    op = metrics.get("operating_point") or {}
    far_at = (metrics.get("false_alarm_rate_at_miss_rate") or {}).get("0.05")
    return {
        "model": model,
        "train_defects": defects,
        "auroc": metrics.get("auroc"),
        "miss_rate": op.get("miss_rate"),
        "false_alarm_rate": op.get("false_alarm_rate"),
        "far_at_miss_5pct": None if far_at is None else far_at["false_alarm_rate"],
        "accuracy": _accuracy(op),
        "fit_seconds": fit_seconds,
        "error": error or "",
    }


# ---------------------------------------------------------------------------------------------
# Text, CSV, JSON
# ---------------------------------------------------------------------------------------------


def balance_lines(summary: dict[str, Any]) -> list[str]:
    """One line per split: good and defect counts and the defect share."""
    lines = []
    for split in SPLITS:
        counts = summary[split]
        total = counts["good"] + counts["defect"]
        share = counts["defect"] / total if total else 0.0
        lines.append(
            f"{split:<5}: {counts['good']:>5} good, {counts['defect']:>5} defect "
            f"({share:.1%} defect)"
        )
    return lines


_COLUMNS = (
    ("model", "model", "s"),
    ("defects", "train_defects", "d"),
    ("AUROC", "auroc", ".4f"),
    ("miss@thr", "miss_rate", "%"),
    ("FA@thr", "false_alarm_rate", "%"),
    ("acc@thr", "accuracy", "%"),
    ("acc@0.5", "accuracy_at_half", "%"),
    ("acc@valbest", "accuracy_val_best", "%"),
    ("FA@miss0", "far_at_miss_0", "%"),
    ("FA@miss1%", "far_at_miss_1pct", "%"),
    ("FA@miss5%", "far_at_miss_5pct", "%"),
    ("pixAUROC", "pixel_auroc", ".4f"),
    ("AUPRO", "aupro", ".4f"),
    ("fit s", "fit_seconds", ".0f"),
    ("ms/img", "ms_per_image", ".0f"),
    ("MB", "size_mb", ".1f"),
    ("source", "status", "s"),
)


def _cell(value: Any, spec: str) -> str:
    if value is None or value == "":
        return "-"
    if spec == "%":
        return f"{100 * value:.1f}%"
    if spec == "s":
        return str(value)
    return format(value, spec)


def _fixed_width(columns: tuple[tuple[str, str, str], ...], rows: list[dict[str, Any]]) -> str:
    header = [title for title, _, _ in columns]
    body = [[_cell(row.get(key), spec) for _, key, spec in columns] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    )


def format_table(figures: list[dict[str, Any]]) -> str:
    """Fixed-width text table of :meth:`ModelRow.figures` dicts."""
    return _fixed_width(_COLUMNS, figures)


_CURVE_COLUMNS = (
    ("model", "model", "s"),
    ("defects", "train_defects", "d"),
    ("AUROC", "auroc", ".4f"),
    ("miss@thr", "miss_rate", "%"),
    ("FA@thr", "false_alarm_rate", "%"),
    ("FA@miss5%", "far_at_miss_5pct", "%"),
    ("acc@thr", "accuracy", "%"),
    ("fit s", "fit_seconds", ".0f"),
)


def format_curve(points: list[dict[str, Any]]) -> str:
    """Fixed-width text table of learning-curve points."""
    return _fixed_width(_CURVE_COLUMNS, points)


def _accuracy(op: dict[str, Any]) -> float | None:
    confusion = op.get("confusion") or {}
    total = sum(confusion.values())
    if not total:
        return None
    return (confusion.get("tp", 0) + confusion.get("tn", 0)) / total


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _scores_csv(test: list[Sample], per_image: dict[str, np.ndarray]) -> str:
    """Per test image: file, label, defect type, and each model's score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", "defect_type", *per_image])
    for i, sample in enumerate(test):
        writer.writerow(
            [
                str(sample.path),
                sample.label,
                sample.defect_type,
                *(f"{scores[i]:.6g}" for scores in per_image.values()),
            ]
        )
    return buffer.getvalue()


def _to_json(result: CompareResult, config: DictConfig) -> dict[str, Any]:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "category": result.category,
        "data": {"summary": result.summary, "split_fingerprints": result.fingerprints},
        "same_test_images": result.same_test_images,
        "models": [{**asdict(row), "figures": row.figures()} for row in result.rows],
        "learning_curve": result.learning_curve,
        "config": to_yaml(config),
    }


def _write_text(path: Path, text: str) -> Path:
    """Write atomically (temporary file, then rename), as the rest of the outputs are."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
