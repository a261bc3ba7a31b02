"""``anomaly export``: a bundle whose features run in ONNX Runtime or OpenVINO.

The export traces the model's feature graph, loads it in the chosen engine at the chosen
precision, scores the bundle's validation split with both the PyTorch model and the exported
one, and saves only when the exported model keeps the calibration's promise: no validation
defect the PyTorch model rejects may pass (``force`` overrides, and the record says so).
Everything after the features is the same code in both, so the comparison measures the graph.
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
from anomaly.data import load_dataset
from anomaly.decision import verdict as verdict_rule
from anomaly.errors import AnomalyError
from anomaly.evaluation import metrics
from anomaly.evaluation.split import score_split

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
                f"checked on {p['n_images']} validation images: largest score difference "
                f"{p['max_relative_difference']:.2e} relative ({p['max_abs_difference']:.3g} "
                f"absolute); {p['verdict_flips']} verdict(s) flipped "
                f"({p['defects_passed']} defect(s) now pass, {p['good_rejected']} good part(s) "
                f"now rejected); {auroc}",
                *(["saved despite the flips (force)"] if p.get("forced") else []),
            ]
        )


def parity(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, Any]:
    """How the exported scores ``candidate`` differ from the PyTorch scores ``reference`` of
    the same images: largest absolute and relative differences, verdict flips at
    ``threshold``, and the AUROC of each."""
    reference, candidate = np.asarray(reference, float), np.asarray(candidate, float)
    difference = np.abs(candidate - reference)
    scale = np.maximum(np.abs(reference), 1e-12)
    before = verdict_rule.is_anomalous(reference, threshold)
    after = verdict_rule.is_anomalous(candidate, threshold)
    labels = np.asarray(labels, dtype=int)
    return {
        "n_images": int(reference.size),
        "max_abs_difference": float(difference.max()) if difference.size else 0.0,
        "max_relative_difference": float((difference / scale).max()) if difference.size else 0.0,
        "verdict_flips": int((before != after).sum()),
        "defects_passed": int((before & ~after & (labels == 1)).sum()),
        "good_rejected": int((~before & after & (labels == 0)).sum()),
        "auroc_torch": metrics.image_auroc(labels, reference),
        "auroc_exported": metrics.image_auroc(labels, candidate),
    }


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
    validation = load_dataset(read_config(source)).select("val")
    if not validation:
        raise AnomalyError(f"{source}: its dataset has no validation images to check against")
    with tempfile.TemporaryDirectory(prefix="anomaly-export-") as work:
        runtime = export_features(model, config.format, config.precision, Path(work))
        exported = copy.copy(model)
        del exported.extractor_  # the copy scores with the exported graph only
        exported.runtime_ = runtime
        reference = score_split(model, validation)
        candidate = score_split(exported, validation)
        record = {
            "engine": runtime.engine,
            "precision": config.precision,
            **parity(reference.scores, candidate.scores, reference.labels, model.threshold_),
            "forced": False,
        }
        if record["defects_passed"] and not config.force:
            raise AnomalyError(
                f"{runtime.engine} at {config.precision}: {record['defects_passed']} validation "
                "defect(s) the PyTorch model rejects would pass, so the calibrated miss rate "
                "would no longer hold; nothing saved (use a higher precision, or --force)"
            )
        record["forced"] = bool(record["defects_passed"])
        carried = {key: model.metadata_[key] for key in _CARRIED if key in model.metadata_}
        carried["export"] = {"source": str(source), **record}
        bundle = save_bundle(exported, out, (source / CONFIG).read_text(), carried)
    return ExportResult(bundle, source, record, bundle_size_bytes(bundle) / 2**20)
