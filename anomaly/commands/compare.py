"""``anomaly compare``: every registered model on one split, one table.

Every model is fitted (or its bundle reused) on the same train/val/test split of one category,
calibrated by the same rule on the same validation images, and scored on the same test images;
the split fingerprints prove it (:func:`~anomaly.evaluation.split.split_fingerprint`). Scoring,
the figures of each row, the ROC and the per-image scores are ``anomaly evaluate``'s
(:func:`~anomaly.commands.evaluate.evaluate_model`); this module adds fitting or reusing each
model, the accuracies a classifier is usually judged by, and the learning curve. The table shows
what a line cares about (misses and false alarms at the calibrated threshold, false alarms at
fixed miss rates), what each model costs (fit time, ms/image, size) and what it needs: how many
labelled defects went into training (none for the unsupervised models).

The optional learning curve trains the baseline on 5, 10, 25, 50 and all training defects
(nested seeded subsets, all good training images kept) to show how many labelled defects it
takes to catch up with a model that needs none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anomaly.artifacts.bundle import load_bundle, read_config, read_metadata
from anomaly.commands.evaluate import evaluate_model, write_roc, write_scores_csv
from anomaly.commands.fit import build_model, calibrate_on_validation, fit_category
from anomaly.config import FitConfig, to_yaml
from anomaly.data import load_dataset
from anomaly.data.dataset import SPLITS, Dataset, Sample
from anomaly.decision.verdict import is_anomalous
from anomaly.errors import AnomalyError, DataError
from anomaly.evaluation import metrics
from anomaly.evaluation.plots import learning_curve_plot
from anomaly.evaluation.split import SplitScores, score_split, split_fingerprint, split_metrics
from anomaly.evaluation.tables import format_table as _format_table
from anomaly.evaluation.tables import num, pct
from anomaly.io.files import csv_text, write_text_atomic
from anomaly.io.jsonio import dumps
from anomaly.models import model_class
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: Config sections that decide what a bundle learned: a bundle is reused only when they match.
_MODEL_KEYS = ("image_size", "keep_aspect", "tiling", "backbone", "calibration")
#: Data keys that change the training set without changing the split fingerprints.
_DATA_KEYS = ("max_train_images", "include_uncertain", "group_by")
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
    #: Test accuracy at the model's own decision rule (``native_threshold``: the classifier's
    #: defect probability >= 0.5); ``None`` for models without one. Named for the classifier,
    #: the only model that has one, as the CSV column and the ``acc@0.5`` title always were.
    accuracy_at_half: float | None = None
    #: Test accuracy at the threshold that maximises accuracy on the validation images (any model).
    accuracy_val_best: float | None = None
    #: The model's row of ``anomaly evaluate`` on the test split
    #: (:func:`~anomaly.commands.evaluate.evaluate_model`).
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
                "learning curve (models that learn from labels, with n labelled train defects "
                "and all good train images; unsupervised models need none):"
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
    per_image: dict[str, np.ndarray] = {}
    banks: dict[str, _Bank] = {}  # banks fitted here, for the learning curve to reuse
    for name in list(config.models):
        row, scores, model = _evaluate_model(config, name, dataset, fingerprints)
        rows.append(row)
        if model is not None and row.status == "fitted" and model.labels_on_bank:
            banks[name] = _Bank(model, model.fit_seconds_, row.train_good)
        if scores is not None:
            curves[name] = (scores.labels, scores.scores)
            per_image[name] = scores.scores

    same = _check_same_test_images(rows, fingerprints["test"])
    files: list[Path] = []
    if curves:
        title = f"{dataset.name}: test ROC, dots at the calibrated threshold"
        scored = [row.metrics for row in rows if row.metrics]
        files.append(write_roc(out / "roc.png", scored, curves, title))
    learning = []
    if config.learning_curve:
        learning = learning_curve(config, dataset, rows, banks)
        banks.clear()  # the models they hold are fitted on subsets now
        for point in learning:  # one split for every point, proved rather than assumed
            if point["test_fingerprint"] not in (None, fingerprints["test"]):
                point["error"] = "scored other test images than the comparison"
                same = False
        files.append(learning_curve_plot(learning, out / "learning_curve.png", dataset.name))
    result = CompareResult(
        category=dataset.name,
        out_dir=out,
        summary=summary,
        fingerprints=fingerprints,
        rows=rows,
        same_test_images=same,
        learning_curve=learning,
    )
    files.append(write_text_atomic(out / "compare.csv", _csv([row.figures() for row in rows])))
    if per_image:
        files.append(write_scores_csv(out / "scores.csv", test, per_image))
    if learning:
        files.append(write_text_atomic(out / "learning_curve.csv", _csv(learning)))
    result.files = [*files, out / "compare.json"]
    write_text_atomic(out / "compare.json", dumps(_to_json(result, config)))
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
        bundle_config = read_config(bundle_dir)
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


def _fit_or_reuse(
    config: DictConfig, name: str, bundle_dir: Path, fingerprints: dict[str, str]
) -> tuple[AnomalyModel, str]:
    """The model ``name`` and how it was had: ``"loaded"`` from a bundle that can stand in for
    fitting it (:func:`reuse_problem`), else ``"fitted"`` (and saved to ``bundle_dir``)."""
    fit_config = fit_config_for(config, name, bundle_dir)
    problem = "refit=true" if config.refit else reuse_problem(bundle_dir, fit_config, fingerprints)
    if problem is None:
        logger.info("%s: reusing the bundle at %s (same split and config)", name, bundle_dir)
        return load_bundle(bundle_dir), "loaded"
    logger.info("%s: fitting (%s)", name, problem)
    return fit_category(fit_config).model, "fitted"


def _evaluate_model(
    config: DictConfig, name: str, dataset: Dataset, fingerprints: dict[str, str]
) -> tuple[ModelRow, SplitScores | None, AnomalyModel | None]:
    """Fit or load ``name``, score the test split; a failure becomes a row with the error.
    Returns the row, the test scores and the model (``None`` on failure)."""
    bundle_dir = Path(config.runs_dir) / dataset.name / name
    row = ModelRow(model=name, status="error", bundle_dir=str(bundle_dir))
    try:
        model, row.status = _fit_or_reuse(config, name, bundle_dir, fingerprints)
        model.set_runtime(
            config.runtime.batch_size, config.runtime.num_threads, config.runtime.progress
        )
        metadata = read_metadata(bundle_dir)
        if metadata["data"]["split_fingerprints"] != fingerprints:
            raise DataError(f"{bundle_dir}: was fitted on a different split than this comparison")
        # The fit time the bundle recorded: the same for a model fitted now and one reused.
        row.fit_seconds = (metadata.get("evaluation") or {}).get("fit_seconds")
        description = model.describe()
        row.initialisation = description["initialisation"]
        row.train_defects = description["n_train_defects"]
        row.train_good = description["n_train_good"]
        row.fit_cpu_seconds = description["fit_cpu_seconds"]
        row.backbone_mb = description["external_weights_mb"]
        test = dataset.select("test")
        logger.info("%s: scoring %d test images", name, len(test))
        confidence = config.calibration.confidence
        row.metrics, scores = evaluate_model(model, test, name, confidence, bundle_dir)
        row.test_fingerprint = row.metrics["fingerprint"]
        row.ms_per_image = row.metrics["ms_per_image"]
        row.bundle_mb = round(row.metrics["bundle_bytes"] / 2**20, 2)
        row.accuracy_val_best = accuracy_at_validation_best(model, scores.labels, scores.scores)
        if model.native_threshold is not None:
            row.accuracy_at_half = _accuracy_at(
                model.native_threshold, scores.labels, scores.scores
            )
        return row, scores, model
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
        return row, None, None


def accuracy_at_validation_best(
    model: AnomalyModel, labels: np.ndarray, scores: np.ndarray
) -> float | None:
    """Accuracy on ``(labels, scores)`` at the threshold that maximises validation accuracy.

    The validation scores are the ones kept by calibration, so the threshold never sees the test
    images. ``None`` when the model is not calibrated or validation lacks a class.
    """
    calibration = model.calibration_
    if calibration is None:
        return None
    good, defect = calibration.scores_good, calibration.scores_defect
    best = metrics.accuracy_max([0] * len(good) + [1] * len(defect), [*good, *defect])
    if best is None:
        return None
    return _accuracy_at(best[1], labels, scores)


def _accuracy_at(threshold: float, labels: np.ndarray, scores: np.ndarray) -> float:
    """Share of images the one decision rule gets right at ``threshold``."""
    return float(np.mean(is_anomalous(scores, threshold) == (np.asarray(labels) == 1)))


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
    config: DictConfig,
    dataset: Dataset,
    rows: list[ModelRow],
    banks: dict[str, _Bank] | None = None,
) -> list[dict[str, Any]]:
    """Test figures of every compared model that learns from labels (the baseline, the hybrid)
    per number of labelled training defects, next to the unsupervised rows (0 defects).

    Each point is trained on all good train images plus a nested seeded subset of the train
    defects, calibrated on the validation split and scored on the test split; the fingerprint
    of the test images it scored is kept with it (and checked by :func:`compare_category`). The
    "all defects" point is the model's row of the main table when there is one (same config,
    same data), so it is not trained twice. A model that learns its labels on top of a bank of
    the good images (``labels_on_bank``: the hybrid) fits that bank once for all its points:
    the main row's, when ``banks`` holds it (the model was fitted in this process, on the same
    good images), else once for the curve. A model in ``banks`` is refitted on its points'
    labels, so it no longer is the main row's model afterwards.
    """
    good = dataset.select("train", label=0)
    defects = dataset.select("train", label=1)
    val, test = dataset.select("val"), dataset.select("test")
    if not defects:
        raise DataError(f"category {dataset.name!r} has no training defects for a learning curve")
    subsets = defect_subsets(
        len(defects), list(config.learning_curve_defects), int(config.runtime.seed)
    )
    points: list[dict[str, Any]] = [
        _curve_point(row.model, 0, row.metrics, row.fit_seconds, row.error, row)
        for row in rows
        if row.status != "error" and row.train_defects == 0
    ]
    learners = [name for name in config.models if _learns_from_labels(name)]
    for name in learners:
        fit_config = fit_config_for(config, name, Path(config.runs_dir))
        main = next((r for r in rows if r.model == name and r.status != "error"), None)
        bank = (banks or {}).get(name)
        if bank is not None and bank.n_good != len(good):  # fitted on a subset of the good
            bank = None
        for count, indices in subsets.items():
            if count == len(defects) and main is not None:
                points.append(_curve_point(name, count, main.metrics, main.fit_seconds, None, main))
                continue
            chosen = [defects[i] for i in indices]
            logger.info("learning curve: %s with %d of %d train defects", name, count, len(defects))
            try:
                if bank is None and model_class(name).labels_on_bank:
                    bank = _Bank.fit(fit_config, good)
                points.append(_curve_fit(name, fit_config, count, good, chosen, val, test, bank))
            except KeyboardInterrupt:
                raise
            except Exception as error:
                logger.error("learning curve: %s at %d defects failed: %s", name, count, error)
                points.append(_curve_point(name, count, {}, None, str(error)))
    return points


def _learns_from_labels(name: str) -> bool:
    try:
        return model_class(name).supervised
    except AnomalyError:
        return False  # an unknown model already has its error row in the main table


@dataclass
class _Bank:
    """A model that learns labels on top of a bank of the good images (``labels_on_bank``), with
    the bank fitted once for every point of a learning curve: the good images are the same at
    each point, only the labelled defects change."""

    model: AnomalyModel
    seconds: float
    n_good: int  # the good train images it was fitted on

    @classmethod
    def fit(cls, fit_config: DictConfig, good: list[Sample]) -> _Bank:
        started = time.perf_counter()
        model = build_model(fit_config).fit([sample.path for sample in good])
        return cls(model, time.perf_counter() - started, len(good))


def _curve_fit(
    name: str,
    fit_config: DictConfig,
    count: int,
    good: list[Sample],
    defects: list[Sample],
    val: list[Sample],
    test: list[Sample],
    bank: _Bank | None = None,
) -> dict[str, Any]:
    """Fit ``name`` on ``good`` and ``defects`` (on ``bank`` when given: only what learns
    from the labels is fitted, and the bank's seconds are counted in the point's), calibrate
    on ``val``, score ``test``: one curve point."""
    started = time.perf_counter()
    if bank is None:
        model = build_model(fit_config)
        model.fit_samples([*good, *defects], val)
    else:
        model = bank.model.fit_labels(good, defects, val)
    val_scores = calibrate_on_validation(model, val, fit_config.calibration)
    seconds = time.perf_counter() - started - val_scores.seconds + (bank.seconds if bank else 0)
    scored = score_split(model, test)
    figures = split_metrics(scored, model.threshold_, fit_config.calibration.confidence)
    row = ModelRow(model=name, status="fitted")
    row.test_fingerprint = split_fingerprint(scored.samples)
    row.accuracy_val_best = accuracy_at_validation_best(model, scored.labels, scored.scores)
    return _curve_point(name, count, figures, round(seconds, 2), None, row)


def _curve_point(
    model: str,
    defects: int,
    figures: dict[str, Any],
    fit_seconds: float | None,
    error: str | None,
    row: ModelRow | None = None,
) -> dict[str, Any]:
    op = figures.get("operating_point") or {}
    far_at = (figures.get("false_alarm_rate_at_miss_rate") or {}).get("0.05")
    return {
        "model": model,
        "train_defects": defects,
        "auroc": figures.get("auroc"),
        "miss_rate": op.get("miss_rate"),
        "false_alarm_rate": op.get("false_alarm_rate"),
        "far_at_miss_5pct": None if far_at is None else far_at["false_alarm_rate"],
        "accuracy": _accuracy(op),
        "accuracy_val_best": None if row is None else row.accuracy_val_best,
        "fit_seconds": fit_seconds,
        "test_fingerprint": None if row is None else row.test_fingerprint,
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


#: A table column: its title, the key of the figure it shows, and how to write that figure.
Column = tuple[str, str, Callable[[Any], str]]

_COLUMNS: tuple[Column, ...] = (
    ("model", "model", str),
    ("defects", "train_defects", str),
    ("AUROC", "auroc", num),
    ("miss@thr", "miss_rate", pct),
    ("FA@thr", "false_alarm_rate", pct),
    ("acc@thr", "accuracy", pct),
    ("acc@0.5", "accuracy_at_half", pct),
    ("acc@valbest", "accuracy_val_best", pct),
    ("FA@miss0", "far_at_miss_0", pct),
    ("FA@miss1%", "far_at_miss_1pct", pct),
    ("FA@miss5%", "far_at_miss_5pct", pct),
    ("pixAUROC", "pixel_auroc", num),
    ("AUPRO", "aupro", num),
    ("fit s", "fit_seconds", partial(num, digits=0)),
    ("ms/img", "ms_per_image", partial(num, digits=0)),
    ("MB", "size_mb", partial(num, digits=1)),
    ("source", "status", str),
)
#: The learning curve's columns, in its order: the same titles and formats as the main table's.
_CURVE_KEYS = (
    "model",
    "train_defects",
    "auroc",
    "miss_rate",
    "false_alarm_rate",
    "far_at_miss_5pct",
    "accuracy",
    "accuracy_val_best",
    "fit_seconds",
)
_CURVE_COLUMNS = tuple(next(c for c in _COLUMNS if c[1] == key) for key in _CURVE_KEYS)


def _columns_table(columns: Sequence[Column], records: Sequence[dict[str, Any]]) -> str:
    """The records as a table of ``columns``, numbers right-aligned, ``-`` where a figure is
    missing (an error row has almost none, and dashes keep it readable)."""
    body = [
        ["-" if record.get(key) in (None, "") else write(record[key]) for _, key, write in columns]
        for record in records
    ]
    return "\n".join(
        _format_table([title for title, _, _ in columns], body, numbers_right=True, rule=False)
    )


def format_table(figures: list[dict[str, Any]]) -> str:
    """Fixed-width text table of :meth:`ModelRow.figures` dicts."""
    return _columns_table(_COLUMNS, figures)


def format_curve(points: list[dict[str, Any]]) -> str:
    """Fixed-width text table of learning-curve points."""
    return _columns_table(_CURVE_COLUMNS, points)


def _accuracy(op: dict[str, Any]) -> float | None:
    confusion = op.get("confusion") or {}
    total = sum(confusion.values())
    if not total:
        return None
    return (confusion.get("tp", 0) + confusion.get("tn", 0)) / total


def _csv(rows: list[dict[str, Any]]) -> str:
    return csv_text(list(rows[0]), rows, lineterminator="\n") if rows else ""


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
