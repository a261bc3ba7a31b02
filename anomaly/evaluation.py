"""Evaluate a model on a labelled split: every image and pixel metric, from one scoring pass."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from anomaly import metrics
from anomaly.data.dataset import Sample
from anomaly.images import load_mask
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: Pixel metrics are computed on maps and masks resized so their longer side is at most this,
#: which keeps memory bounded for megapixel images (as the MVTec AD evaluations do).
PIXEL_EVAL_SIZE = 256


@dataclass
class SplitScores:
    """Scores of one labelled split, kept small enough to evaluate thousands of images."""

    samples: list[Sample]
    scores: np.ndarray
    map_maxima: np.ndarray
    seconds: float
    maps: list[np.ndarray] = field(default_factory=list)  # downsized, only when masks exist
    masks: list[np.ndarray] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=int)

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(1, len(self.samples))


def split_fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 of the split's sorted file paths and labels: equal means the same images."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: str(s.path)):
        digest.update(f"{sample.path}\t{sample.label}\n".encode())
    return digest.hexdigest()


def score_split(model: AnomalyModel, samples: Sequence[Sample]) -> SplitScores:
    """Score ``samples`` batch by batch, keeping maps (downsized) only where masks exist."""
    samples = list(samples)
    with_masks = any(s.mask_path is not None for s in samples)
    scores: list[np.ndarray] = []
    maxima: list[float] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    started = time.perf_counter()
    for batch_samples, batch in _batches(model, samples):
        batch_scores, batch_maps = model.score_arrays(batch)
        scores.append(batch_scores)
        maxima.extend(float(m.max()) for m in batch_maps)
        if with_masks:
            for sample, anomaly_map in zip(batch_samples, batch_maps, strict=True):
                mask = (
                    load_mask(sample.mask_path, anomaly_map.shape)
                    if sample.mask_path is not None
                    else np.zeros(anomaly_map.shape, dtype=bool)
                )
                small_map, small_mask = _downsize(anomaly_map, mask)
                maps.append(small_map)
                masks.append(small_mask)
    seconds = time.perf_counter() - started
    return SplitScores(
        samples=samples,
        scores=np.concatenate(scores) if scores else np.empty(0),
        map_maxima=np.asarray(maxima),
        seconds=seconds,
        maps=maps,
        masks=masks,
    )


def split_metrics(split: SplitScores, threshold: float | None) -> dict[str, Any]:
    """Image metrics (with the operating point at ``threshold``), per-defect-type AUROC and,
    where masks exist, pixel AUROC and AUPRO."""
    labels = split.labels
    result = metrics.image_metrics(labels, split.scores, threshold)
    types = [s.defect_type for s in split.samples]
    result["per_defect_type_auroc"] = {
        group: value
        for group, value in metrics.per_group_auroc(labels, split.scores, types).items()
        if group != "good"
    }
    if split.maps and any(mask.any() for mask in split.masks):
        result["pixel_auroc"] = metrics.pixel_auroc(split.maps, split.masks)
        result["aupro"] = metrics.aupro(split.maps, split.masks)
    else:
        result["pixel_auroc"] = None
        result["aupro"] = None
        result["not_computed"]["pixel_auroc"] = "no ground-truth masks in this split"
        result["not_computed"]["aupro"] = "no ground-truth masks in this split"
    result["ms_per_image"] = round(split.ms_per_image, 2)
    return result


def _batches(model: AnomalyModel, samples: list[Sample]):
    from tqdm.auto import tqdm

    from anomaly.images import load_image

    show = model.progress and len(samples) > model.batch_size
    with tqdm(total=len(samples), desc="evaluating", unit="img", disable=not show, leave=False) as bar:
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
