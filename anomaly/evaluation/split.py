"""Score a model on a labelled split: every image and pixel metric, from one scoring pass.

:func:`score_split` scores the images once (keeping downsized maps only where masks exist);
:func:`split_metrics` and :func:`per_defect_type` turn that into figures; and
:func:`split_fingerprint` names the images, so two results can be shown to come from the same
split. ``fit`` uses them on its validation and test splits, ``anomaly evaluate`` and
``anomaly compare`` (:mod:`anomaly.commands.evaluate`) on the split they evaluate.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from anomaly.data.dataset import Sample
from anomaly.errors import AnomalyError, DataError
from anomaly.evaluation import metrics
from anomaly.io.batches import batches
from anomaly.io.images import load_image, load_mask
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: Pixel metrics are computed on maps and masks resized so their longer side is at most this,
#: which keeps memory bounded for megapixel images (as the MVTec AD evaluations do).
PIXEL_EVAL_SIZE = 256


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
    #: The model's most likely defect type per image, when it names types (else None).
    predicted_types: list[str] | None = None

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
    batch_types: list[list[str] | None] = []
    model_seconds = 0.0
    started = time.perf_counter()
    for batch_samples in batches(samples, model.batch_size, "evaluating", model.progress):
        batch = [load_image(s.path) for s in batch_samples]
        model_started = time.perf_counter()
        prediction = model.score_batch(batch)
        model_seconds += time.perf_counter() - model_started
        batch_scores, batch_maps = prediction.scores, prediction.anomaly_maps
        scores.append(batch_scores)
        batch_types.append(prediction.predicted_types)
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
        predicted_types=(
            None
            if not batch_types or any(t is None for t in batch_types)
            else [t for types in batch_types for t in types]
        ),
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
    """Image metrics (with the operating point at ``threshold``), per-defect-type AUROC,
    where masks exist pixel AUROC and AUPRO, and where the model names defect types how well
    it names them (``defect_types``: :func:`~anomaly.evaluation.metrics.defect_type_scores`
    over every typed defect of the split, rejected or not)."""
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
    kinds = sorted({s.mask_kind for s in split.samples if s.mask_kind})
    if kinds and result["pixel_auroc"] is not None:
        # Coarse masks (detection boxes) count every pixel of a box as defect: said with the
        # figures, which are not comparable with those on drawn masks.
        result["mask_kind"] = ", ".join(kinds)
    result["defect_types"] = _defect_type_scores(split)
    result["ms_per_image"] = round(split.ms_per_image, 2)
    return result


def _defect_type_scores(split: SplitScores) -> dict[str, Any] | None:
    if split.predicted_types is None:
        return None
    typed = [
        (sample.defect_type, predicted)
        for sample, predicted in zip(split.samples, split.predicted_types, strict=True)
        if sample.label == 1 and sample.defect_type
    ]
    return metrics.defect_type_scores([t for t, _ in typed], [p for _, p in typed])


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
    split: SplitScores,
    aurocs: Mapping[str, float | None],
    threshold: float | None,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """For each defect type: count, AUROC against all good images, and at ``threshold`` the
    misses and miss rate with its two-sided Clopper-Pearson interval at ``confidence``.

    ``aurocs`` is :func:`split_metrics`' ``per_defect_type_auroc`` of the same split: the
    AUROCs are computed there once, and this adds what a per-type table shows next to them.
    """
    labels, scores = split.labels, split.scores
    types = np.array([s.defect_type for s in split.samples], dtype=object)
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


def _downsize(anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = anomaly_map.shape
    scale = PIXEL_EVAL_SIZE / max(height, width)
    if scale >= 1.0:
        return anomaly_map.astype(np.float32), mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_map = cv2.resize(anomaly_map, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return small_map, small_mask
