"""Evaluate models on a labelled split: every image and pixel metric, from one scoring pass.

:func:`score_split` and :func:`split_metrics` are the building blocks (the fit pipeline uses
them on the validation and test splits); :func:`evaluate_bundles` is ``anomaly evaluate``: one
or several saved bundles scored on the same labelled split, one row per model, written as
``evaluation.json``, ``evaluation.txt`` and PNG plots.

"The same split" is checked, not assumed: every model is scored on the sample list of the first
bundle's split (or of ``category``'s), the SHA-256 fingerprint of the images actually scored is
recorded per row and must be equal across rows, and a bundle whose own stored split fingerprint
differs is named in the notes (with how many evaluation images it saw while fitting).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly.data.dataset import Sample
from anomaly.errors import AnomalyError, DataError
from anomaly.evaluation import metrics
from anomaly.io.images import load_image, load_mask
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: Pixel metrics are computed on maps and masks resized so their longer side is at most this,
#: which keeps memory bounded for megapixel images (as the MVTec AD evaluations do).
PIXEL_EVAL_SIZE = 256
#: File names written into an evaluation's output folder.
JSON_FILE = "evaluation.json"
TEXT_FILE = "evaluation.txt"


@dataclass
class SplitScores:
    """Scores of one labelled split, kept small enough to evaluate thousands of images.

    ``scores`` and ``map_maxima`` are ``(N,)`` in the order of ``samples``; ``maps`` and
    ``masks`` hold one downsized ``(h, w)`` pair per image when the split has masks and none of
    them was faulty. ``mask_errors`` names each faulty mask (missing file, unreadable, size
    differing from its image); any of them drops the pixel metrics. ``seconds`` is the whole
    pass (image decoding included), ``model_seconds`` the time spent in the model alone.
    """

    samples: list[Sample]
    scores: np.ndarray
    map_maxima: np.ndarray
    seconds: float
    maps: list[np.ndarray] = field(default_factory=list)  # downsized, only when masks exist
    masks: list[np.ndarray] = field(default_factory=list)
    mask_errors: list[str] = field(default_factory=list)
    model_seconds: float = 0.0

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=int)

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(1, len(self.samples))

    @property
    def model_ms_per_image(self) -> float:
        return 1000.0 * self.model_seconds / max(1, len(self.samples))


def split_fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 of the split's sorted file paths and labels: equal means the same images."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: str(s.path)):
        digest.update(f"{sample.path}\t{sample.label}\n".encode())
    return digest.hexdigest()


def score_split(model: AnomalyModel, samples: Sequence[Sample]) -> SplitScores:
    """Score ``samples`` batch by batch, keeping maps (downsized) only where masks exist.

    A faulty mask (missing, unreadable, of another size than its image, or a defect image
    without one in a split that has masks) is logged with its file name and recorded in
    ``mask_errors``; scoring goes on, and only the pixel metrics are given up.
    """
    samples = list(samples)
    with_masks = any(s.mask_path is not None for s in samples)
    scores: list[np.ndarray] = []
    maxima: list[float] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    mask_errors: list[str] = []
    model_seconds = 0.0
    started = time.perf_counter()
    for batch_samples, batch in _batches(model, samples):
        model_started = time.perf_counter()
        batch_scores, batch_maps = model.score_arrays(batch)
        model_seconds += time.perf_counter() - model_started
        scores.append(batch_scores)
        maxima.extend(float(m.max()) for m in batch_maps)
        if not with_masks:
            continue
        for sample, anomaly_map in zip(batch_samples, batch_maps, strict=True):
            try:
                mask = _sample_mask(sample, anomaly_map.shape)
            except AnomalyError as error:
                logger.warning("pixel metrics will be skipped: %s", error)
                mask_errors.append(str(error))
                continue
            if not mask_errors:  # once a mask is faulty the maps are no longer needed
                small_map, small_mask = _downsize(anomaly_map, mask)
                maps.append(small_map)
                masks.append(small_mask)
    if mask_errors:
        maps, masks = [], []
    seconds = time.perf_counter() - started
    return SplitScores(
        samples=samples,
        scores=np.concatenate(scores) if scores else np.empty(0),
        map_maxima=np.asarray(maxima),
        seconds=seconds,
        maps=maps,
        masks=masks,
        mask_errors=mask_errors,
        model_seconds=model_seconds,
    )


def _sample_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` bool mask of ``sample``: all False for good parts; raises when faulty."""
    if sample.mask_path is None:
        if sample.label == 1:
            raise DataError(
                f"{sample.path}: defect image ({sample.defect_type}) has no mask file, while "
                "other images of this split do"
            )
        return np.zeros(shape, dtype=bool)
    return load_mask(sample.mask_path, shape)


def split_metrics(
    split: SplitScores, threshold: float | None, confidence: float = 0.95
) -> dict[str, Any]:
    """Image metrics (with the operating point at ``threshold``), per-defect-type AUROC and,
    where masks exist, pixel AUROC and AUPRO."""
    labels = split.labels
    result = metrics.image_metrics(labels, split.scores, threshold, confidence)
    types = [s.defect_type for s in split.samples]
    result["per_defect_type_auroc"] = {
        group: value
        for group, value in metrics.per_group_auroc(labels, split.scores, types).items()
        if group != "good"
    }
    reason = _pixel_reason(split)
    if reason is None:
        result["pixel_auroc"] = metrics.pixel_auroc(split.maps, split.masks)
        result["aupro"] = metrics.aupro(split.maps, split.masks)
        for name in ("pixel_auroc", "aupro"):
            if result[name] is None:
                result["not_computed"][name] = "the masks hold no defect pixel or no good pixel"
    else:
        result["pixel_auroc"] = None
        result["aupro"] = None
        result["not_computed"]["pixel_auroc"] = reason
        result["not_computed"]["aupro"] = reason
    result["ms_per_image"] = round(split.ms_per_image, 2)
    return result


def _pixel_reason(split: SplitScores) -> str | None:
    """Why pixel metrics cannot be computed on ``split``; ``None`` when they can."""
    if split.mask_errors:
        more = len(split.mask_errors) - 1
        tail = f" (and {more} more faulty mask{'s' if more > 1 else ''})" if more else ""
        return f"faulty ground-truth mask: {split.mask_errors[0]}{tail}"
    if not any(s.label == 1 for s in split.samples):
        return "no defective images in this split: pixel metrics need defect pixels"
    if not split.maps or not any(mask.any() for mask in split.masks):
        return "no ground-truth masks in this split"
    return None


def per_defect_type(
    split: SplitScores, threshold: float | None, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """For each defect type: count, AUROC against all good images, and at ``threshold`` the
    misses and miss rate with its two-sided Clopper-Pearson interval."""
    labels, scores = split.labels, split.scores
    types = np.array([s.defect_type for s in split.samples], dtype=object)
    aurocs = metrics.per_group_auroc(labels, scores, types)
    result: dict[str, dict[str, Any]] = {}
    for group, auroc in aurocs.items():
        keep = (labels == 1) & (types == group)
        entry: dict[str, Any] = {"n": int(keep.sum()), "auroc": auroc}
        if threshold is not None:
            point = metrics.operating_point(labels[keep], scores[keep], threshold, confidence)
            entry.update(
                misses=point.misses,
                miss_rate=point.miss_rate,
                miss_rate_ci=list(point.miss_rate_ci) if point.miss_rate_ci else None,
            )
        result[group] = entry
    return result


# --------------------------------------------------------------------------------------------
# anomaly evaluate
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Result of :func:`evaluate_bundles`: one row per model, all on the same split."""

    split: dict[str, Any]
    rows: list[dict[str, Any]]
    notes: list[str]
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "models": self.rows, "notes": self.notes, "files": self.files}

    def text(self) -> str:
        """Readable tables: one row per model, the same columns in every row."""
        return format_text(self)


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
    ``progress`` override the bundles' own values when given.
    """
    from anomaly.artifacts.bundle import bundle_size_bytes, load_bundle, read_metadata

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
    operating_points: dict[str, tuple[float, float] | None] = {}
    files: list[str] = []
    for bundle, label in zip(bundles, labels, strict=True):
        model = load_bundle(bundle).set_runtime(batch_size, num_threads, progress)
        scored = score_split(model, samples)
        scored_fingerprint = split_fingerprint(scored.samples)
        if scored_fingerprint != fingerprint:  # a guarantee, so checked on what was scored
            raise DataError(
                f"{bundle}: scored images (fingerprint {scored_fingerprint[:12]}) differ from "
                f"the evaluation split ({fingerprint[:12]})"
            )
        threshold = model.threshold_
        row: dict[str, Any] = {
            "label": label,
            "model": model.model_name,
            "bundle": str(bundle),
            "fingerprint": scored_fingerprint,
            "threshold": threshold,
            **split_metrics(scored, threshold, confidence),
            "per_defect_type": per_defect_type(scored, threshold, confidence),
            "model_ms_per_image": round(scored.model_ms_per_image, 2),
            "bundle_bytes": bundle_size_bytes(bundle),
            "memory_bytes": model.memory_bytes(),
            "mask_errors": scored.mask_errors,
        }
        row.pop("per_defect_type_auroc")  # per_defect_type holds it, with the miss rates
        if threshold is None:
            row["not_computed"]["operating_point"] = (
                "the bundle is not calibrated (no decision threshold)"
            )
        rows.append(row)
        curves[label] = (scored.labels, scored.scores)
        op = row["operating_point"]
        operating_points[label] = (
            None
            if not op or op["miss_rate"] is None or op["false_alarm_rate"] is None
            else (op["false_alarm_rate"], 1.0 - op["miss_rate"])
        )
        files.append(_write_scores_csv(out_dir, label, scored))
        if plots:
            files.extend(_model_plots(out_dir, label, scored, threshold, row))
        del model, scored  # free the maps before the next model
    if len({row["fingerprint"] for row in rows}) != 1:
        raise DataError("models were scored on different images; this is a bug, please report")
    if plots:
        from anomaly.evaluation.plots import roc_plot

        roc = roc_plot(
            curves,
            out_dir / "roc.png",
            operating_points,
            title=f"ROC: {split_info['category']} {split}",
        )
        files.insert(0, roc.name)
    evaluation = Evaluation(
        split=split_info,
        rows=rows,
        notes=notes,
        out_dir=out_dir,
        files=[JSON_FILE, TEXT_FILE, *files],
    )
    from anomaly.commands.score import write_text_atomic

    text = json.dumps(evaluation.to_dict(), indent=2, default=_jsonable)
    write_text_atomic(out_dir / JSON_FILE, text)
    write_text_atomic(out_dir / TEXT_FILE, evaluation.text() + "\n")
    logger.info("evaluation written to %s", out_dir)
    return evaluation


def _bundle_config(bundle: Path) -> Any:
    """The resolved config a bundle was fitted with (its ``config.yaml``), as a DictConfig."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = bundle / "config.yaml"
    try:
        config = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException) as error:
        raise DataError(f"{path}: cannot read the bundle's config ({error})") from error
    return config


def _evaluation_config(bundle: Path, category: str | None, data_root: str | Path | None) -> Any:
    """Dataset settings of the evaluation: the first bundle's, with ``category`` swapped in."""
    from omegaconf import OmegaConf

    from anomaly.config import FitConfig

    config = _bundle_config(bundle)
    if "data" not in config:
        if category is None:
            raise DataError(
                f"{bundle / 'config.yaml'}: no dataset settings (fitted from the Python API?); "
                "give --category to choose the images to evaluate on"
            )
        config = OmegaConf.structured(FitConfig)
    if category is not None:
        config.data.category = category
        if data_root is not None:
            config.data.root = str(data_root)
    return config


def _load_split(config: Any, split: str) -> list[Sample]:
    from anomaly.data import load_dataset

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
    from anomaly.data import load_dataset

    try:
        config = _bundle_config(bundle)
        if "data" not in config:
            return 0
        dataset = load_dataset(config)
    except AnomalyError as error:
        logger.info("%s: cannot reload its dataset to check for overlap (%s)", bundle, error)
        return 0
    seen = {str(s.path) for s in dataset.samples if s.split in ("train", "val")}
    return sum(str(s.path) in seen for s in samples)


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _write_scores_csv(out_dir: Path, label: str, scored: SplitScores) -> str:
    """``<label>_scores.csv``: file, label, defect_type, score, one row per evaluated image."""
    import csv
    import io

    from anomaly.commands.score import write_text_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "label", "defect_type", "score"])
    for sample, score in zip(scored.samples, scored.scores, strict=True):
        writer.writerow([str(sample.path), sample.label, sample.defect_type, repr(float(score))])
    name = f"{_safe_name(label)}_scores.csv"
    write_text_atomic(out_dir / name, buffer.getvalue())
    return name


def _model_plots(
    out_dir: Path, label: str, scored: SplitScores, threshold: float | None, row: dict[str, Any]
) -> list[str]:
    from anomaly.evaluation.plots import confusion_plot, score_histogram

    stem = _safe_name(label)
    written = [
        score_histogram(
            scored.labels,
            scored.scores,
            threshold,
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


# --------------------------------------------------------------------------------------------
# Text tables
# --------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mb(size: int) -> str:
    megabytes = size / 2**20
    return f"{megabytes:.1f}" if megabytes >= 10 else f"{megabytes:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _rate_ci(op: dict[str, Any] | None, key: str) -> str:
    if not op or op.get(key) is None:
        return "n/a"
    low, high = op[f"{key}_ci"]
    return f"{_pct(op[key])} [{100 * low:.1f}, {100 * high:.1f}]"


def _target(row: dict[str, Any], key: str, target: str, field_name: str) -> str:
    found = (row.get(key) or {}).get(target)
    return "n/a" if found is None else _pct(found[field_name])


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def join(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [join(headers), join(["-" * w for w in widths]), *(join(r) for r in rows)]


def format_text(evaluation: Evaluation) -> str:
    """The evaluation as plain-text tables (what ``anomaly evaluate`` prints)."""
    s = evaluation.split
    lines = [
        f"Evaluation on {s['category']} / {s['split']}: {s['n_images']} images "
        f"({s['n_good']} good, {s['n_defect']} defect, {s['n_with_mask']} with masks); "
        f"split fingerprint {s['fingerprint'][:12]}",
        "",
    ]
    rows = evaluation.rows
    lines += _table(
        [
            "model",
            "image AUROC",
            "AP",
            "F1-max",
            "pixel AUROC",
            "AUPRO",
            "ms/img",
            "model ms/img",
            "disk MB",
            "memory MB",
        ],
        [
            [
                r["label"],
                _num(r["auroc"]),
                _num(r["average_precision"]),
                _num(r["f1_max"]),
                _num(r["pixel_auroc"]),
                _num(r["aupro"]),
                f"{r['ms_per_image']:.1f}",
                f"{r['model_ms_per_image']:.1f}",
                _mb(r["bundle_bytes"]),
                _mb(r["memory_bytes"]),
            ]
            for r in rows
        ],
    )
    lines += ["", "At the calibrated threshold (95% Clopper-Pearson intervals):"]
    table_rows = []
    for r in rows:
        op = r["operating_point"]
        confusion = (op or {}).get("confusion") or {}
        table_rows.append(
            [
                r["label"],
                _num(r["threshold"], 4),
                _rate_ci(op, "miss_rate"),
                _rate_ci(op, "false_alarm_rate"),
                " ".join(f"{k}={confusion[k]}" for k in ("tp", "fn", "fp", "tn"))
                if confusion
                else "n/a",
            ]
        )
    lines += _table(
        ["model", "threshold", "miss rate", "false-alarm rate", "confusion (defect=positive)"],
        table_rows,
    )
    lines += ["", "Trade-offs (best achievable on this split):"]
    lines += _table(
        ["model", "miss@FA 1%", "miss@FA 5%", "FA@miss 0%", "FA@miss 1%", "FA@miss 5%"],
        [
            [
                r["label"],
                _target(r, "miss_rate_at_false_alarm_rate", "0.01", "miss_rate"),
                _target(r, "miss_rate_at_false_alarm_rate", "0.05", "miss_rate"),
                _target(r, "false_alarm_rate_at_miss_rate", "0", "false_alarm_rate"),
                _target(r, "false_alarm_rate_at_miss_rate", "0.01", "false_alarm_rate"),
                _target(r, "false_alarm_rate_at_miss_rate", "0.05", "false_alarm_rate"),
            ]
            for r in rows
        ],
    )
    types = sorted({t for r in rows for t in r["per_defect_type"]})
    if types:
        lines += ["", "Per defect type: AUROC vs all good / miss rate at the threshold (n):"]
        table_rows = []
        for r in rows:
            cells = [r["label"]]
            for t in types:
                entry = r["per_defect_type"].get(t)
                cells.append(
                    "n/a"
                    if entry is None
                    else f"{_num(entry['auroc'], 3)} / {_pct(entry.get('miss_rate'))}"
                )
            table_rows.append(cells)
        counts = {
            t: next(r["per_defect_type"][t]["n"] for r in rows if t in r["per_defect_type"])
            for t in types
        }
        lines += _table(["model", *(f"{t} ({counts[t]})" for t in types)], table_rows)
    reasons: dict[str, list[str]] = {}
    for r in rows:
        for name, reason in r["not_computed"].items():
            reasons.setdefault(f"{name}: {reason}", []).append(r["label"])
    if reasons:
        lines += ["", "Not computed:"]
        for text, labels in reasons.items():
            lines.append(f"  {text} [{', '.join(labels)}]")
    if evaluation.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in evaluation.notes]
    if evaluation.out_dir is not None:
        lines += ["", f"written to {evaluation.out_dir}: {', '.join(evaluation.files)}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _batches(
    model: AnomalyModel, samples: list[Sample]
) -> Iterator[tuple[list[Sample], list[np.ndarray]]]:
    from tqdm.auto import tqdm

    show = model.progress and len(samples) > model.batch_size
    bar = tqdm(total=len(samples), desc="evaluating", unit="img", disable=not show, leave=False)
    with bar:
        for start in range(0, len(samples), model.batch_size):
            chunk = samples[start : start + model.batch_size]
            yield chunk, [load_image(s.path) for s in chunk]
            bar.update(len(chunk))


def _downsize(anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = anomaly_map.shape
    scale = PIXEL_EVAL_SIZE / max(height, width)
    if scale >= 1.0:
        return anomaly_map.astype(np.float32), mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_map = cv2.resize(anomaly_map, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return small_map, small_mask
