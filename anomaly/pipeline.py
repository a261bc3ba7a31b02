"""Fit one category end to end: split, fit on good images, calibrate, test, save the bundle."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anomaly.bundle import bundle_size_bytes, save_bundle
from anomaly.config import to_yaml
from anomaly.data import load_category
from anomaly.data.dataset import Dataset, Sample
from anomaly.errors import DataError
from anomaly.evaluation import model_memory_bytes, score_split, split_fingerprint, split_metrics
from anomaly.models import model_class
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)


def build_model(config: DictConfig) -> AnomalyModel:
    """Instantiate the configured model: shared keys plus the model's own config section."""
    name = config.model
    cls = model_class(name)
    specific = OmegaConf.to_container(config[name], resolve=True) if name in config else {}
    return cls(
        backbone=config.backbone.name,
        layers=None if config.backbone.layers is None else list(config.backbone.layers),
        weights=config.backbone.weights,
        image_size=config.image_size,
        batch_size=config.runtime.batch_size,
        num_threads=config.runtime.num_threads,
        seed=config.runtime.seed,
        progress=config.runtime.progress,
        **specific,
    )


def load_dataset(config: DictConfig) -> Dataset:
    data = config.data
    return load_category(
        data.category,
        data.root,
        data_dir=data.cache_dir,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        include_uncertain=data.include_uncertain,
    )


def training_samples(dataset: Dataset, max_images: int | None, seed: int) -> list[Sample]:
    """Good training images, optionally a seeded random subset of ``max_images``."""
    good = dataset.select("train", label=0)
    if not good:
        raise DataError(f"category {dataset.name!r} has no good training images")
    if max_images is not None and max_images < len(good):
        keep = np.random.default_rng(seed).choice(len(good), size=max_images, replace=False)
        good = [good[i] for i in sorted(keep)]
    return good


@dataclass
class FitResult:
    model: AnomalyModel
    bundle_dir: Path
    summary: dict[str, Any]

    def text(self) -> str:
        """A short human summary of the fit."""
        s = self.summary
        cal = self.model.calibration_
        kind = "labelled" if "n_train_defects" in s else "good"
        lines = [
            f"{s['model']} on {s['category']}: {s['n_train_images']} {kind} training images, "
            f"fit {s['fit_seconds']:.1f} s",
        ]
        if "memory_bank_size" in s:
            lines.append(f"memory bank: {s['memory_bank_size']} patches of {s['feature_dim']} dims")
        if "initialisation" in s:
            lines.append(
                f"initialisation: {s['initialisation']}; {s['n_train_defects']} labelled "
                f"train defects; best epoch {s['best_epoch']} of {s['epochs_run']}"
            )
        lines.append(f"calibration: {cal.summary()}")
        if not cal.target_supported:
            lines.append(f"  note: {cal.note}")
        test = s["test"]
        op = test.get("operating_point") or {}
        if test.get("auroc") is not None:
            lines.append(
                f"test image AUROC {test['auroc']:.4f} ({test['n_good']} good, "
                f"{test['n_defect']} defect)"
            )
        if op.get("miss_rate") is not None:
            lines.append(
                f"test at threshold: miss rate {op['miss_rate']:.1%}, false-alarm rate "
                f"{op['false_alarm_rate']:.1%}"
            )
        if test.get("pixel_auroc") is not None:
            lines.append(f"test pixel AUROC {test['pixel_auroc']:.4f}, AUPRO {test['aupro']:.4f}")
        lines.append(
            f"inference {test['ms_per_image']:.0f} ms/image; bundle "
            f"{s['bundle_mb']:.1f} MB at {self.bundle_dir}"
        )
        return "\n".join(lines)


def fit_category(config: DictConfig) -> FitResult:
    """Fit, calibrate, test and save the model ``config`` describes; returns the summary."""
    dataset = load_dataset(config)
    model = build_model(config)
    train = training_samples(dataset, config.data.max_train_images, config.data.seed)
    val = dataset.select("val")
    test = dataset.select("test")
    if not val:
        raise DataError(f"category {dataset.name!r} has no validation images to calibrate on")
    started = time.perf_counter()
    if model.supervised:
        # A supervised baseline learns from both classes of the same train split and watches
        # the same validation split for early stopping.
        labelled = dataset.select("train")
        n_defect = sum(s.label for s in labelled)
        logger.info(
            "fitting %s on %d good and %d defect images of %s",
            model.model_name,
            len(labelled) - n_defect,
            n_defect,
            dataset.name,
        )
        model.fit(
            [s.path for s in labelled],
            [s.label for s in labelled],
            validation=([s.path for s in val], [s.label for s in val]),
        )
        train = labelled
    else:
        logger.info(
            "fitting %s on %d good images of %s", model.model_name, len(train), dataset.name
        )
        model.fit([s.path for s in train])
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
    fit_seconds = time.perf_counter() - started - val_scores.seconds
    test_metrics: dict[str, Any] = {"n_images": 0, "ms_per_image": val_scores.ms_per_image}
    if test:
        test_scores = score_split(model, test)
        test_metrics = split_metrics(test_scores, model.threshold_)
    out = Path(config.out or Path("runs") / dataset.name / model.model_name)
    data_info = {
        "category": dataset.name,
        "layout": dataset.layout,
        "summary": dataset.summary(),
        "split_fingerprints": {
            split: split_fingerprint(dataset.select(split)) for split in ("train", "val", "test")
        },
    }
    summary: dict[str, Any] = {
        "model": model.model_name,
        "category": dataset.name,
        "n_train_images": len(train),
        "fit_seconds": round(fit_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "test": test_metrics,
        **model_facts(model),
    }
    bundle = save_bundle(model, out, to_yaml(config), {"data": data_info, "evaluation": summary})
    summary["bundle_mb"] = round(bundle_size_bytes(bundle) / 2**20, 2)
    return FitResult(model=model, bundle_dir=bundle, summary=summary)


def model_facts(model: AnomalyModel) -> dict[str, Any]:
    """Size facts a summary reports (memory bank for PatchCore, etc.)."""
    facts: dict[str, Any] = {"model_memory_mb": round(model_memory_bytes(model) / 2**20, 2)}
    bank = getattr(model, "memory_bank_", None)
    if bank is not None:
        facts["memory_bank_size"] = bank.size
        facts["feature_dim"] = bank.dim
    # Models may state more (the baseline: its initialisation and labelled defects used).
    summary_facts = getattr(model, "summary_facts", None)
    if callable(summary_facts):
        facts.update(summary_facts())
    return facts
