"""``anomaly evaluate``: one or several saved bundles scored on the same labelled split.

One row per model (:func:`evaluate_model`: every image and pixel metric, per defect type,
latency, sizes and the fingerprint of the images scored), written as ``evaluation.json``,
``evaluation.txt``, per-image scores and PNG plots. ``anomaly compare`` builds its rows, ROC
and scores file with the same functions.

"The same split" is checked, not assumed: every model is scored on the sample list of the first
bundle's split (or of ``category``'s), the SHA-256 fingerprint of the images actually scored is
recorded per row and must be equal across rows, and a bundle whose own stored split fingerprint
differs is named in the notes (with how many evaluation images it saw while fitting).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anomaly.artifacts.bundle import (
    CONFIG,
    bundle_size_bytes,
    load_bundle,
    read_config,
    read_metadata,
)
from anomaly.config import FitConfig
from anomaly.data import load_dataset
from anomaly.data.dataset import Sample
from anomaly.errors import AnomalyError, DataError
from anomaly.evaluation import metrics, tables
from anomaly.evaluation.split import (
    SplitScores,
    per_defect_type,
    score_split,
    split_fingerprint,
    split_metrics,
)
from anomaly.io.files import csv_text, write_text_atomic
from anomaly.io.jsonio import dumps
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: File names written into an evaluation's output folder.
JSON_FILE = "evaluation.json"
TEXT_FILE = "evaluation.txt"


@dataclass
class Evaluation:
    """Result of :func:`evaluate_bundles`: one row per model, all on the same split.

    ``confidence`` is the level of every Clopper-Pearson interval in the rows.
    """

    split: dict[str, Any]
    rows: list[dict[str, Any]]
    notes: list[str]
    confidence: float = 0.95
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "confidence": self.confidence,
            "models": self.rows,
            "notes": self.notes,
            "files": self.files,
        }

    def text(self) -> str:
        """Readable tables: one row per model, the same columns in every row."""
        s = self.split
        lines = [
            f"Evaluation on {s['category']} / {s['split']}: {s['n_images']} images "
            f"({s['n_good']} good, {s['n_defect']} defect, {s['n_with_mask']} with masks); "
            f"split fingerprint {s['fingerprint'][:12]}",
            "",
            *tables.evaluation_tables(self.rows, self.confidence),
        ]
        if self.notes:
            lines += ["", "Notes:"] + [f"  {note}" for note in self.notes]
        if self.out_dir is not None:
            lines += ["", f"written to {self.out_dir}: {', '.join(self.files)}"]
        return "\n".join(lines)


def evaluate(config: DictConfig) -> Evaluation:
    """``anomaly evaluate`` from its configuration (:class:`anomaly.config.EvaluateConfig`)."""
    return evaluate_bundles(
        list(config.models),
        split=config.split,
        category=config.category,
        data_root=config.data_root,
        out=config.out,
        plots=config.plots,
        batch_size=config.runtime.batch_size,
        num_threads=config.runtime.num_threads,
        progress=config.runtime.progress,
        confidence=config.confidence,
    )


def evaluate_bundles(
    bundle_dirs: Sequence[str | Path],
    split: str = "test",
    category: str | None = None,
    data_root: str | Path | None = None,
    out: str | Path | None = None,
    plots: bool = True,
    batch_size: int | None = None,
    num_threads: int | None = None,
    progress: bool | None = None,
    confidence: float = 0.95,
) -> Evaluation:
    """Score each bundle on one labelled split and compute every metric.

    The split is ``split`` of the first bundle's dataset (its ``config.yaml``), or of
    ``category`` (under ``data_root`` when given, with the first bundle's split fractions and
    seed) when that is given. Writes ``evaluation.json``, ``evaluation.txt``,
    ``<label>_scores.csv`` (file, label, defect_type, score) per model and, with ``plots``,
    ``roc.png`` plus ``<label>_histogram.png`` and ``<label>_confusion.png`` per model into
    ``out`` (default ``runs/evaluate-<time>``). ``batch_size``, ``num_threads`` and
    ``progress`` override the bundles' own values when given; ``confidence`` is the level of
    the Clopper-Pearson intervals.
    """
    if not bundle_dirs:
        raise DataError("evaluate needs at least one model bundle (--model DIR)")
    bundles = [Path(b) for b in bundle_dirs]
    metadata = [read_metadata(b) for b in bundles]  # fail on a bad bundle before any scoring
    labels = _unique_labels(bundles)
    notes: list[str] = []

    dataset_config = _evaluation_config(bundles[0], category, data_root)
    samples = _load_split(dataset_config, split)
    fingerprint = split_fingerprint(samples)
    split_info = {
        "category": dataset_config.data.category,
        "split": split,
        "source": f"category {category!r}" if category else f"bundle {bundles[0]}",
        "fingerprint": fingerprint,
        "n_images": len(samples),
        "n_good": sum(s.label == 0 for s in samples),
        "n_defect": sum(s.label == 1 for s in samples),
        "n_with_mask": sum(s.mask_path is not None for s in samples),
    }
    logger.info(
        "evaluating %d model(s) on %s/%s: %d images (%d good, %d defect), fingerprint %s",
        len(bundles),
        split_info["category"],
        split,
        len(samples),
        split_info["n_good"],
        split_info["n_defect"],
        fingerprint[:12],
    )
    for bundle, meta in zip(bundles, metadata, strict=True):
        notes.extend(_split_notes(bundle, meta, split, fingerprint, samples, category, bundles[0]))

    out_dir = Path(out) if out else Path("runs") / f"evaluate-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    files: list[str] = []
    for bundle, label in zip(bundles, labels, strict=True):
        model = load_bundle(bundle).set_runtime(batch_size, num_threads, progress)
        row, scored = evaluate_model(model, samples, label, confidence, bundle)
        if row["fingerprint"] != fingerprint:  # a guarantee, so checked on what was scored
            raise DataError(
                f"{bundle}: scored images (fingerprint {row['fingerprint'][:12]}) differ from "
                f"the evaluation split ({fingerprint[:12]})"
            )
        rows.append(row)
        curves[label] = (scored.labels, scored.scores)
        path = write_scores_csv(
            out_dir / f"{_safe_name(label)}_scores.csv", scored.samples, {"score": scored.scores}
        )
        files.append(path.name)
        if plots:
            files.extend(_model_plots(out_dir, row, scored))
        del model, scored  # free the maps before the next model
    if plots:
        title = f"ROC: {split_info['category']} {split}"
        files.insert(0, write_roc(out_dir / "roc.png", rows, curves, title).name)
    evaluation = Evaluation(
        split=split_info,
        rows=rows,
        notes=notes,
        confidence=confidence,
        out_dir=out_dir,
        files=[JSON_FILE, TEXT_FILE, *files],
    )
    write_text_atomic(out_dir / JSON_FILE, dumps(evaluation.to_dict()))
    write_text_atomic(out_dir / TEXT_FILE, evaluation.text() + "\n")
    logger.info("evaluation written to %s", out_dir)
    return evaluation


def evaluate_model(
    model: AnomalyModel,
    samples: Sequence[Sample],
    label: str,
    confidence: float = 0.95,
    bundle: Path | None = None,
) -> tuple[dict[str, Any], SplitScores]:
    """Score ``model`` on ``samples`` and build its row of every figure; returns the row and
    the scores.

    The row (JSON-able) holds ``label``, ``model``, ``bundle``, ``fingerprint`` (of the images
    actually scored), ``threshold``, the keys of :func:`split_metrics` at the model's threshold,
    ``per_defect_type``, ``model_ms_per_image``, ``bundle_bytes`` (``None`` without a bundle),
    ``memory_bytes`` and ``mask_errors``. Intervals are Clopper-Pearson at ``confidence``.
    """
    scored = score_split(model, samples)
    threshold = model.threshold_
    figures = split_metrics(scored, threshold, confidence)
    aurocs = figures.pop("per_defect_type_auroc")  # per_defect_type holds them, with miss rates
    row: dict[str, Any] = {
        "label": label,
        "model": model.model_name,
        "bundle": None if bundle is None else str(bundle),
        "fingerprint": split_fingerprint(scored.samples),
        "threshold": threshold,
        **figures,
        "per_defect_type": per_defect_type(scored, aurocs, threshold, confidence),
        "model_ms_per_image": round(scored.model_ms_per_image, 2),
        "bundle_bytes": None if bundle is None else bundle_size_bytes(bundle),
        "memory_bytes": model.memory_bytes(),
        "mask_errors": scored.mask_errors,
    }
    if threshold is None:
        row["not_computed"]["operating_point"] = (
            "the bundle is not calibrated (no decision threshold)"
        )
    return row, scored


def write_roc(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
) -> Path:
    """``roc.png``: the ROC of each model in ``curves`` (label -> ``(labels, scores)``), with
    a dot at its calibrated operating point taken from its row (matched by ``label``)."""
    from anomaly.evaluation.plots import roc_plot  # matplotlib only when a plot is drawn

    points = {row["label"]: metrics.roc_point(row["operating_point"]) for row in rows}
    return roc_plot(curves, path, {label: points.get(label) for label in curves}, title=title)


def write_scores_csv(
    path: Path, samples: Sequence[Sample], scores: Mapping[str, np.ndarray]
) -> Path:
    """Per image: ``file``, ``label``, ``defect_type`` and one column per entry of ``scores``
    (column name -> ``(N,)`` scores in the order of ``samples``), written exactly (``repr``),
    so every figure can be recomputed from the file."""
    columns = ["file", "label", "defect_type", *scores]
    rows = (
        {
            "file": str(sample.path),
            "label": sample.label,
            "defect_type": sample.defect_type,
            **{name: repr(float(column[i])) for name, column in scores.items()},
        }
        for i, sample in enumerate(samples)
    )
    return write_text_atomic(path, csv_text(columns, rows, lineterminator="\n"))


# --------------------------------------------------------------------------------------------
# The split, and how it relates to each bundle's own
# --------------------------------------------------------------------------------------------


def _evaluation_config(
    bundle: Path, category: str | None, data_root: str | Path | None
) -> DictConfig:
    """Dataset settings of the evaluation: the first bundle's, with ``category`` swapped in."""
    config = read_config(bundle)
    if "data" not in config:
        if category is None:
            raise DataError(
                f"{bundle / CONFIG}: no dataset settings (fitted from the Python API?); "
                "give --category to choose the images to evaluate on"
            )
        config = OmegaConf.structured(FitConfig)
    if category is not None:
        config.data.category = category
        if data_root is not None:
            config.data.root = str(data_root)
    return config


def _load_split(config: DictConfig, split: str) -> list[Sample]:
    samples = load_dataset(config).select(split)
    if not samples:
        raise DataError(f"category {config.data.category!r} has no {split!r} images to evaluate on")
    return samples


def _split_notes(
    bundle: Path,
    meta: dict[str, Any],
    split: str,
    fingerprint: str,
    samples: list[Sample],
    category: str | None,
    first: Path,
) -> list[str]:
    """Say how the evaluation split relates to the split each bundle was fitted with."""
    data = meta.get("data") or {}
    own = (data.get("split_fingerprints") or {}).get(split)
    if own == fingerprint:
        return []
    if category is not None and data.get("category") != category:
        what = f"fitted on category {data.get('category')!r}, evaluated on {category!r}"
    elif own is None:
        what = f"stores no fingerprint of its {split} split, so it cannot be compared"
    else:
        what = (
            f"was fitted with a different {split} split (fingerprint {own[:12]}, evaluation "
            f"{fingerprint[:12]}); evaluated on the {split} split of "
            f"{'category ' + repr(category) if category else str(first)}"
        )
    notes = [f"{bundle}: {what}"]
    seen = _images_seen_in_fit(bundle, samples)
    if seen:
        notes.append(
            f"{bundle}: {seen} of the {len(samples)} evaluation images were in its train or "
            "val split (used to fit or calibrate it): its figures are optimistic"
        )
    return notes


def _images_seen_in_fit(bundle: Path, samples: list[Sample]) -> int:
    """How many of ``samples`` the bundle's own dataset put in train or val (0 if unknown)."""
    try:
        config = read_config(bundle)
        if "data" not in config:
            return 0
        dataset = load_dataset(config)
    except AnomalyError as error:
        logger.info("%s: cannot reload its dataset to check for overlap (%s)", bundle, error)
        return 0
    seen = {str(s.path) for s in dataset.samples if s.split in ("train", "val")}
    return sum(str(s.path) in seen for s in samples)


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def _unique_labels(bundles: list[Path]) -> list[str]:
    """Short, distinct row labels: the bundle folder name, with parents added until unique."""
    labels = [b.name or str(b) for b in bundles]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 4:
        depth += 1
        labels = ["/".join(b.resolve().parts[-depth:]) for b in bundles]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def _safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _model_plots(out_dir: Path, row: Mapping[str, Any], scored: SplitScores) -> list[str]:
    """``<label>_histogram.png`` and, with an operating point, ``<label>_confusion.png``."""
    from anomaly.evaluation.plots import confusion_plot, score_histogram

    label = row["label"]
    stem = _safe_name(label)
    written = [
        score_histogram(
            scored.labels,
            scored.scores,
            row["threshold"],
            out_dir / f"{stem}_histogram.png",
            title=f"Scores: {label}",
        ).name
    ]
    if row["operating_point"] is not None:
        written.append(
            confusion_plot(
                row["operating_point"], out_dir / f"{stem}_confusion.png", title=f"{label}"
            ).name
        )
    return written
