"""``anomaly export``: a bundle whose features run in ONNX Runtime or OpenVINO.

The export traces the model's feature graph, loads it in the chosen engine at the chosen
precision, and calibrates the exported model on the bundle's validation split with the bundle's
own calibration settings (the same call ``anomaly fit`` makes): the threshold belongs to the
scores the line will see. A miss-rate threshold sits exactly on a validation defect's score, so
even a 1e-6 change would otherwise let that defect through. It then compares the exported
model with the PyTorch one on those images (largest score difference, verdicts, AUROC, miss and
false-alarm rates) and saves only when the exported model misses no more validation defects
than the PyTorch model and its validation false-alarm rate is at most ``max_false_alarm_increase``
higher (``force`` overrides, and the record says so). Recalibrated to the same target, a worse
graph shows up as more false alarms, which is what an int8 or bf16 export can cost. Everything
after the features is the same code in both, so the comparison measures the graph.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from anomaly.artifacts.bundle import (
    CONFIG,
    bundle_size_bytes,
    load_bundle,
    read_config,
    save_bundle,
)
from anomaly.commands.fit import calibrate_on_validation
from anomaly.data import load_dataset
from anomaly.decision import verdict as verdict_rule
from anomaly.errors import AnomalyError
from anomaly.evaluation import metrics
from anomaly.evaluation.split import score_split
from anomaly.io.images import load_image
from anomaly.models.base import good_subset

logger = logging.getLogger(__name__)

#: Metadata a fitted bundle carries beyond the model's own, kept in its exported copy.
_CARRIED = ("data", "evaluation")


@dataclass
class ExportResult:
    """What ``anomaly export`` did, and how the exported model scores next to PyTorch's."""

    bundle: Path
    source: Path
    parity: dict[str, Any]
    bundle_mb: float

    def text(self) -> str:
        p = self.parity
        auroc = (
            f"validation AUROC {p['auroc_torch']:.4f} (torch) -> {p['auroc_exported']:.4f}"
            if p["auroc_torch"] is not None
            else "validation AUROC n/a (one class)"
        )
        return "\n".join(
            [
                f"exported {self.source} -> {self.bundle} ({p['engine']}, {p['precision']}, "
                f"{self.bundle_mb:.1f} MB)",
                f"calibrated and checked on {p['n_images']} validation images: largest score "
                f"difference {p['max_relative_difference']:.2e} relative "
                f"({p['max_abs_difference']:.3g} absolute); {p['verdict_flips']} verdict(s) "
                f"differ ({p['defects_passed']} defect(s) now pass, {p['good_rejected']} good "
                f"part(s) now rejected); {auroc}; false alarms "
                f"{_rate(p['false_alarm_rate_torch'])} -> {_rate(p['false_alarm_rate_exported'])}"
                f", misses {_rate(p['miss_rate_torch'])} -> {_rate(p['miss_rate_exported'])}",
                *(["saved although it scores worse (force)"] if p.get("forced") else []),
            ]
        )


def parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    reference_threshold: float,
    candidate_threshold: float,
) -> dict[str, Any]:
    """How the exported scores ``candidate`` differ from the PyTorch scores ``reference`` of
    the same images: largest absolute and relative differences, verdicts that differ (each
    model at its own threshold), the miss rate and the AUROC of each."""
    reference, candidate = np.asarray(reference, float), np.asarray(candidate, float)
    difference = np.abs(candidate - reference)
    scale = np.maximum(np.abs(reference), 1e-12)
    before = verdict_rule.is_anomalous(reference, reference_threshold)
    after = verdict_rule.is_anomalous(candidate, candidate_threshold)
    labels = np.asarray(labels, dtype=int)
    defects = labels == 1
    return {
        "n_images": int(reference.size),
        "max_abs_difference": float(difference.max()) if difference.size else 0.0,
        "max_relative_difference": float((difference / scale).max()) if difference.size else 0.0,
        "verdict_flips": int((before != after).sum()),
        "defects_passed": int((before & ~after & defects).sum()),
        "good_rejected": int((~before & after & ~defects).sum()),
        "auroc_torch": metrics.image_auroc(labels, reference),
        "auroc_exported": metrics.image_auroc(labels, candidate),
        "miss_rate_torch": float((~before[defects]).mean()) if defects.any() else None,
        "miss_rate_exported": float((~after[defects]).mean()) if defects.any() else None,
        "false_alarm_rate_torch": float(before[~defects].mean()) if (~defects).any() else None,
        "false_alarm_rate_exported": float(after[~defects].mean()) if (~defects).any() else None,
        "threshold_torch": float(reference_threshold),
        "threshold_exported": float(candidate_threshold),
    }


def _worse(record: dict[str, Any], max_false_alarm_increase: float) -> str | None:
    """Why the exported model is not good enough to save, or None."""
    miss_torch, miss = record["miss_rate_torch"] or 0.0, record["miss_rate_exported"] or 0.0
    if miss > miss_torch:
        return (
            f"validation miss rate {miss:.1%} against {miss_torch:.1%} with PyTorch: the "
            "calibrated miss rate would no longer hold"
        )
    alarms_torch = record["false_alarm_rate_torch"] or 0.0
    alarms = record["false_alarm_rate_exported"] or 0.0
    if alarms > alarms_torch + max_false_alarm_increase:
        return (
            f"validation false-alarm rate {alarms:.1%} against {alarms_torch:.1%} with "
            f"PyTorch, more than max_false_alarm_increase={max_false_alarm_increase:g} higher"
        )
    return None


def export_bundle(config: DictConfig) -> ExportResult:
    """Export the bundle ``config.model`` to ``config.format`` at ``config.precision`` into
    ``config.out`` (default ``<model>-<format>-<precision>``)."""
    from anomaly.runtime.export import export_features

    source = Path(config.model)
    model = load_bundle(source)
    model.check_exportable()
    if model.threshold_ is None:
        raise AnomalyError(f"{source}: not calibrated; export a bundle made by `anomaly fit`")
    model.num_threads = config.runtime.num_threads
    model.batch_size = config.runtime.batch_size
    model.progress = config.runtime.progress
    out = Path(config.out or f"{source}-{config.format}-{config.precision}")
    if out.resolve() == source.resolve():
        raise AnomalyError(f"--out {out}: the exported bundle cannot replace its source")
    source_config = read_config(source)
    dataset = load_dataset(source_config)
    validation = dataset.select("val")
    if not validation:
        raise AnomalyError(f"{source}: its dataset has no validation images to check against")
    calibration_images = []
    if config.precision == "int8":  # activation ranges from the model's own good train images
        good = good_subset(dataset.select("train"), config.int8_images, seed=0)
        calibration_images = [
            tile for sample in good for tile in model.input_tiles(load_image(sample.path))
        ]
    with tempfile.TemporaryDirectory(prefix="anomaly-export-") as work:
        runtime = export_features(
            model, config.format, config.precision, Path(work), calibration_images
        )
        exported = copy.copy(model)
        del exported.extractor_  # the copy scores with the exported graph only
        exported.runtime_ = runtime
        reference = score_split(model, validation)
        candidate = calibrate_on_validation(exported, validation, source_config.calibration)
        record = {
            "engine": runtime.engine,
            "precision": config.precision,
            **parity(
                reference.scores,
                candidate.scores,
                reference.labels,
                model.threshold_,
                exported.threshold_,
            ),
        }
        if calibration_images:
            record["int8_calibration_images"] = len(good)
        problem = _worse(record, config.max_false_alarm_increase)
        if problem and not config.force:
            raise AnomalyError(
                f"{runtime.engine} at {config.precision}: {problem}; nothing saved (use a "
                "higher precision, or --force)"
            )
        record["forced"] = bool(problem)
        carried = {key: model.metadata_[key] for key in _CARRIED if key in model.metadata_}
        carried["export"] = {"source": str(source), **record}
        bundle = save_bundle(exported, out, (source / CONFIG).read_text(), carried)
    return ExportResult(bundle, source, record, bundle_size_bytes(bundle) / 2**20)


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
