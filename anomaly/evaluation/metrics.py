"""Image- and pixel-level evaluation metrics for anomaly detectors.

Conventions shared by every function here:

* label 1 is a defect (the positive class), label 0 a good part;
* a higher score is more anomalous, and a part is rejected (verdict NG) when
  ``score >= threshold``;
* miss rate = defects scored below the threshold / defects (false-negative rate);
  false-alarm rate = good parts at or above the threshold / good parts (false-positive rate).

A metric that needs both classes returns ``None`` when a split lacks one, instead of NaN or an
exception, so that a report can show every other figure and say why this one is missing
(:func:`missing_class_reason`). Invalid input (mismatched lengths, labels other than 0/1,
non-finite scores, map/mask shape mismatch) raises ``ValueError`` naming the offending value.

Pixel-level metrics (:func:`pixel_auroc`, :func:`aupro`) are computed *exactly* (every distinct
score is a threshold) when the maps hold at most ``exact_max_pixels`` pixels in all, and
otherwise on a fixed set of thresholds taken as quantiles of a sample of the scores, so memory
stays at one image plus a few arrays of ``num_thresholds`` counts however many maps there are.
The binned curves are the exact curves evaluated at a subset of thresholds, so the error only
comes from pixels sharing a bin; with the default 65,536 thresholds it is far below 1e-3.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from anomaly.decision.statistics import clopper_pearson, upper_bound
from anomaly.decision.verdict import is_anomalous

logger = logging.getLogger(__name__)

#: Pixel count up to which pixel metrics use every distinct score as a threshold.
EXACT_MAX_PIXELS = 4_194_304
#: Number of thresholds of the binned pixel curves used above ``EXACT_MAX_PIXELS``.
DEFAULT_NUM_THRESHOLDS = 65_536
#: Default false-alarm and miss-rate targets reported by :func:`image_metrics`.
FALSE_ALARM_TARGETS = (0.01, 0.05)
MISS_RATE_TARGETS = (0.0, 0.01, 0.05)

# 8-connectivity, as in the MVTec AD evaluation code: diagonal neighbours belong to one defect.
_REGION_STRUCTURE = np.ones((3, 3), dtype=int)


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``(labels int8 (N,), scores float64 (N,))``."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if y.size:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"labels must be 0 (good) or 1 (defect): labels[{i}] = {y[i]!r}")
        nonfinite = ~np.isfinite(s)
        if nonfinite.any():
            i = int(np.argmax(nonfinite))
            raise ValueError(f"scores must be finite: scores[{i}] = {s[i]}")
    return y.astype(np.int8), s


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def missing_class_reason(labels: Any) -> str | None:
    """Why two-class metrics cannot be computed on ``labels`` ``(N,)``; ``None`` when they can."""
    y = np.asarray(labels)
    if y.size == 0:
        return "no images in this split: every metric needs images"
    if not (y == 1).any():
        return "no defective images in this split: AUROC, AP and miss rate need both classes"
    if not (y == 0).any():
        return "no good images in this split: AUROC, AP and false-alarm rate need both classes"
    return None


# --------------------------------------------------------------------------------------------
# Image-level metrics
# --------------------------------------------------------------------------------------------


def image_auroc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve of ``scores`` ``(N,)`` for ``labels`` ``(N,)``.

    ``None`` when one class is absent (see :func:`missing_class_reason`).
    """
    y, s = _labels_scores(labels, scores)
    if missing_class_reason(y) is not None:
        return None
    return float(roc_auc_score(y, s))


def average_precision(labels: Any, scores: Any) -> float | None:
    """Average precision (area under the precision-recall curve, defects positive).

    ``None`` when one class is absent: without defects it is undefined, and without good parts
    it is trivially 1 and says nothing.
    """
    y, s = _labels_scores(labels, scores)
    if missing_class_reason(y) is not None:
        return None
    return float(average_precision_score(y, s))


def f1_max(labels: Any, scores: Any) -> tuple[float, float] | None:
    """Best F1 over all thresholds and the threshold achieving it: ``(f1, threshold)``.

    The threshold is one of the scores (NG when ``score >= threshold``); when several reach the
    same F1 the lowest is returned (it misses the fewest defects). ``None`` when a class is absent.
    """
    y, s = _labels_scores(labels, scores)
    if missing_class_reason(y) is not None:
        return None
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision, recall) pair is the (1, 0) end point without a threshold.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))  # thresholds ascend, so argmax picks the lowest among ties
    return float(f1[best]), float(thresholds[best])


class _Sweep(NamedTuple):
    """Miss and false-alarm counts at every useful threshold of one labelled split.

    ``thresholds`` ``(T,)`` ascend: every distinct score plus one value just above the highest
    (reject nothing). Any other threshold gives the same counts as one of these, so optimising
    over them is exact, ties included. ``misses`` ``(T,)`` never decrease and ``false_alarms``
    ``(T,)`` never increase along the thresholds.
    """

    thresholds: np.ndarray
    misses: np.ndarray
    false_alarms: np.ndarray
    n_good: int
    n_defect: int


def _sweep(labels: Any, scores: Any) -> _Sweep | None:
    """Validate ``labels``/``scores`` ``(N,)`` and count at every threshold; ``None`` when a
    class is absent (every threshold search needs both)."""
    y, s = _labels_scores(labels, scores)
    if missing_class_reason(y) is not None:
        return None
    distinct = np.unique(s)
    thresholds = np.append(distinct, np.nextafter(distinct[-1], np.inf))
    good = np.sort(s[y == 0])
    defect = np.sort(s[y == 1])
    misses = np.searchsorted(defect, thresholds, side="left")  # defects with score < t
    false_alarms = good.size - np.searchsorted(good, thresholds, side="left")  # good >= t
    return _Sweep(thresholds, misses, false_alarms, good.size, defect.size)


def accuracy_max(labels: Any, scores: Any) -> tuple[float, float] | None:
    """Best accuracy over all thresholds and the threshold achieving it: ``(accuracy, threshold)``.

    Used to pick an accuracy-optimal threshold on validation images, then applied unchanged to the
    test images (a fair accuracy for models without a natural 0.5 decision). Among thresholds with
    the same accuracy the lowest is returned (it misses the fewest defects). ``None`` when a class
    is absent.
    """
    sweep = _sweep(labels, scores)
    if sweep is None:
        return None
    n_images = sweep.n_good + sweep.n_defect
    correct = n_images - sweep.misses - sweep.false_alarms
    best = int(np.argmax(correct))  # thresholds ascend, so argmax picks the lowest among ties
    return float(correct[best] / n_images), float(sweep.thresholds[best])


def miss_rate_at_false_alarm_rate(
    labels: Any, scores: Any, far: float
) -> tuple[float, float] | None:
    """Lowest miss rate reachable while the false-alarm rate stays ``<= far``.

    Returns ``(miss_rate, threshold)``. Among thresholds with that miss rate, the one with the
    fewest false alarms is returned (a Pareto-optimal operating point). The threshold is one of
    the scores, or just above the highest score when only rejecting nothing keeps the false-alarm
    rate low enough. ``None`` when a class is absent.
    """
    far = _check_rate("far", far)
    sweep = _sweep(labels, scores)
    if sweep is None:
        return None
    misses = sweep.misses
    # Rates compared as divisions (not counts against far * n) so 29/100 <= 0.29 holds. The
    # last threshold (0 false alarms) is always feasible.
    feasible = sweep.false_alarms / sweep.n_good <= far
    best_misses = misses[int(np.argmax(feasible))]
    # Misses only grow with the threshold and false alarms only fall: the last threshold with
    # the best miss count is the one with the fewest false alarms.
    k = int(np.flatnonzero(misses == best_misses)[-1])
    return float(misses[k] / sweep.n_defect), float(sweep.thresholds[k])


def false_alarm_rate_at_miss_rate(
    labels: Any, scores: Any, mr: float
) -> tuple[float, float] | None:
    """Lowest false-alarm rate reachable while the miss rate stays ``<= mr``.

    Returns ``(false_alarm_rate, threshold)``. Among thresholds with that false-alarm rate, the
    one with the fewest misses is returned. ``mr = 0`` means catching every defect: the threshold
    is then the lowest defect score. ``None`` when a class is absent.
    """
    mr = _check_rate("mr", mr)
    sweep = _sweep(labels, scores)
    if sweep is None:
        return None
    false_alarms = sweep.false_alarms
    feasible = sweep.misses / sweep.n_defect <= mr  # the lowest threshold (0 misses) always is
    best_false_alarms = false_alarms[int(np.flatnonzero(feasible)[-1])]
    # The first threshold with the best false-alarm count has the fewest misses.
    k = int(np.flatnonzero(false_alarms == best_false_alarms)[0])
    return float(false_alarms[k] / sweep.n_good), float(sweep.thresholds[k])


@dataclass(frozen=True)
class OperatingPoint:
    """Outcome of one decision threshold on a labelled split.

    Intervals are two-sided Clopper-Pearson at ``confidence``; ``*_upper`` are the one-sided
    upper bounds at the same confidence (the figure a guarantee should quote). A rate, its
    interval and its bound are ``None`` when its class is absent from the split.
    """

    threshold: float
    n_good: int
    n_defect: int
    misses: int
    false_alarms: int
    miss_rate: float | None
    miss_rate_ci: tuple[float, float] | None
    miss_rate_upper: float | None
    false_alarm_rate: float | None
    false_alarm_rate_ci: tuple[float, float] | None
    false_alarm_rate_upper: float | None
    confidence: float
    confusion: dict[str, int] = field(default_factory=dict)  # {"tp", "fn", "fp", "tn"}

    def roc_point(self) -> tuple[float, float] | None:
        """``(false-alarm rate, detection rate)`` for marking on a ROC plot; ``None`` if unknown."""
        return roc_point(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: intervals as ``[low, high]`` lists."""
        return {
            "threshold": self.threshold,
            "n_good": self.n_good,
            "n_defect": self.n_defect,
            "misses": self.misses,
            "false_alarms": self.false_alarms,
            "miss_rate": self.miss_rate,
            "miss_rate_ci": None if self.miss_rate_ci is None else list(self.miss_rate_ci),
            "miss_rate_upper": self.miss_rate_upper,
            "false_alarm_rate": self.false_alarm_rate,
            "false_alarm_rate_ci": (
                None if self.false_alarm_rate_ci is None else list(self.false_alarm_rate_ci)
            ),
            "false_alarm_rate_upper": self.false_alarm_rate_upper,
            "confidence": self.confidence,
            "confusion": dict(self.confusion),
        }


def roc_point(point: OperatingPoint | Mapping[str, Any] | None) -> tuple[float, float] | None:
    """``(false-alarm rate, detection rate)`` of an operating point, for marking on a ROC plot.

    ``point`` is an :class:`OperatingPoint` or its :meth:`~OperatingPoint.to_dict` (the form
    evaluation rows keep). ``None`` when there is no point or one of its rates is unknown (a
    class absent from the split).
    """
    if point is None:
        return None
    if isinstance(point, OperatingPoint):
        far, miss = point.false_alarm_rate, point.miss_rate
    else:
        far, miss = point.get("false_alarm_rate"), point.get("miss_rate")
    if far is None or miss is None:
        return None
    return float(far), 1.0 - float(miss)


def operating_point(
    labels: Any, scores: Any, threshold: float, confidence: float = 0.95
) -> OperatingPoint:
    """Counts, rates and Clopper-Pearson intervals of the rule ``NG iff score >= threshold``.

    ``labels`` and ``scores`` are ``(N,)``. Works on single-class splits: the rate of the absent
    class is ``None``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y, s = _labels_scores(labels, scores)
    rejected = is_anomalous(s, threshold)
    tp = int((rejected & (y == 1)).sum())
    fn = int((~rejected & (y == 1)).sum())
    fp = int((rejected & (y == 0)).sum())
    tn = int((~rejected & (y == 0)).sum())
    n_defect, n_good = tp + fn, fp + tn
    return OperatingPoint(
        threshold=float(threshold),
        n_good=n_good,
        n_defect=n_defect,
        misses=fn,
        false_alarms=fp,
        miss_rate=fn / n_defect if n_defect else None,
        miss_rate_ci=clopper_pearson(fn, n_defect, confidence) if n_defect else None,
        miss_rate_upper=upper_bound(fn, n_defect, confidence) if n_defect else None,
        false_alarm_rate=fp / n_good if n_good else None,
        false_alarm_rate_ci=clopper_pearson(fp, n_good, confidence) if n_good else None,
        false_alarm_rate_upper=upper_bound(fp, n_good, confidence) if n_good else None,
        confidence=confidence,
        confusion={"tp": tp, "fn": fn, "fp": fp, "tn": tn},
    )


def per_group_auroc(labels: Any, scores: Any, groups: Any) -> dict[str, float | None]:
    """AUROC of each group's defects against *all* good images.

    This is how per-defect-type AUROC is defined in MVTec-style reports: good images carry no
    defect type, so every type is ranked against the same good set. ``groups`` ``(N,)`` gives
    each image's group (defect type); the groups of good images are ignored. Keys are the
    groups of the defective images as ``str``, sorted; a value is ``None`` when there are no
    good images.
    """
    y, s = _labels_scores(labels, scores)
    g = np.asarray(groups, dtype=object)
    if g.shape != y.shape:
        raise ValueError(f"groups ({g.shape}) and labels ({y.shape}) differ in shape")
    names = np.array([str(v) for v in g], dtype=object)
    good = y == 0
    result: dict[str, float | None] = {}
    for group in sorted(set(names[y == 1])):
        keep = good | ((y == 1) & (names == group))
        result[group] = float(roc_auc_score(y[keep], s[keep])) if good.any() else None
    return result


def defect_type_scores(true_types: Sequence[str], predicted_types: Sequence[str]) -> dict[str, Any]:
    """How well a model names defect types: ``accuracy`` over the given defects, and for each
    true type its ``precision`` (of the parts named so, the share that are) and ``recall`` (of
    its parts, the share named so); ``None`` where a type was never predicted.

    Both sequences hold one entry per *defective* image; a true type the model never learned
    counts against recall like any other miss-naming.
    """
    true = [str(t) for t in true_types]
    predicted = [str(t) for t in predicted_types]
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true types but {len(predicted)} predicted ones")
    if not true:
        return {"accuracy": None, "per_type": {}}
    names = sorted(set(true))
    precision, recall, _, _ = precision_recall_fscore_support(
        true, predicted, labels=names, zero_division=np.nan
    )
    return {
        "accuracy": float(np.mean([t == p for t, p in zip(true, predicted, strict=True)])),
        "per_type": {
            name: {
                "precision": None if math.isnan(pr) else float(pr),
                "recall": float(rc),
            }
            for name, pr, rc in zip(names, precision, recall, strict=True)
        },
    }


def _fmt_target(value: float) -> str:
    return f"{value:g}"


def image_metrics(
    labels: Any,
    scores: Any,
    threshold: float | None = None,
    confidence: float = 0.95,
    false_alarm_targets: Sequence[float] = FALSE_ALARM_TARGETS,
    miss_rate_targets: Sequence[float] = MISS_RATE_TARGETS,
) -> dict[str, Any]:
    """Every image-level metric of one split, JSON-ready.

    Keys: ``n_images``, ``n_good``, ``n_defect``, ``auroc``, ``average_precision``, ``f1_max``
    and ``f1_max_threshold``, ``operating_point`` (:meth:`OperatingPoint.to_dict` at
    ``threshold``, or ``None`` without one), ``miss_rate_at_false_alarm_rate`` and
    ``false_alarm_rate_at_miss_rate`` (dicts keyed by the target as text, e.g. ``"0.01"``, of
    ``{"miss_rate" | "false_alarm_rate", "threshold"}`` or ``None``), and ``not_computed``:
    ``{metric: reason}`` for every value left ``None``. What can be computed is computed.
    """
    y, s = _labels_scores(labels, scores)
    reason = missing_class_reason(y)
    not_computed: dict[str, str] = {}

    auroc = image_auroc(y, s)
    ap = average_precision(y, s)
    f1 = f1_max(y, s)
    miss_at: dict[str, dict[str, float] | None] = {}
    for target in false_alarm_targets:
        found = miss_rate_at_false_alarm_rate(y, s, target)
        miss_at[_fmt_target(target)] = (
            None if found is None else {"miss_rate": found[0], "threshold": found[1]}
        )
    far_at: dict[str, dict[str, float] | None] = {}
    for target in miss_rate_targets:
        found = false_alarm_rate_at_miss_rate(y, s, target)
        far_at[_fmt_target(target)] = (
            None if found is None else {"false_alarm_rate": found[0], "threshold": found[1]}
        )
    if reason is not None:
        for name in (
            "auroc",
            "average_precision",
            "f1_max",
            "miss_rate_at_false_alarm_rate",
            "false_alarm_rate_at_miss_rate",
        ):
            not_computed[name] = reason

    op: dict[str, Any] | None = None
    if threshold is None:
        not_computed["operating_point"] = "no decision threshold given"
    else:
        point = operating_point(y, s, threshold, confidence)
        op = point.to_dict()
        if point.miss_rate is None:
            not_computed["operating_point.miss_rate"] = "no defective images in this split"
        if point.false_alarm_rate is None:
            not_computed["operating_point.false_alarm_rate"] = "no good images in this split"

    return {
        "n_images": int(y.size),
        "n_good": int((y == 0).sum()),
        "n_defect": int((y == 1).sum()),
        "auroc": auroc,
        "average_precision": ap,
        "f1_max": None if f1 is None else f1[0],
        "f1_max_threshold": None if f1 is None else f1[1],
        "operating_point": op,
        "miss_rate_at_false_alarm_rate": miss_at,
        "false_alarm_rate_at_miss_rate": far_at,
        "not_computed": not_computed,
    }


# --------------------------------------------------------------------------------------------
# Pixel-level metrics
# --------------------------------------------------------------------------------------------


def _map_mask_pairs(anomaly_maps: Any, masks: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pair each ``(H, W)`` map with its ``(H, W)`` bool mask, checking shapes and values.

    Accepts sequences of 2-D arrays (sizes may differ between images), ``(N, H, W)`` arrays, or
    a single ``(H, W)`` map and mask. Arrays are not copied.
    """
    if isinstance(anomaly_maps, np.ndarray) and anomaly_maps.ndim == 2:
        anomaly_maps = [anomaly_maps]
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    if len(anomaly_maps) != len(masks):
        raise ValueError(f"{len(anomaly_maps)} anomaly maps but {len(masks)} masks")
    pairs = []
    for i, (amap, mask) in enumerate(zip(anomaly_maps, masks, strict=True)):
        amap, mask = np.asarray(amap), np.asarray(mask)
        if amap.ndim != 2 or amap.shape != mask.shape:
            raise ValueError(
                f"anomaly map {i} has shape {amap.shape} but its mask has shape {mask.shape};"
                " both must be the same (H, W)"
            )
        if not np.isfinite(amap).all():
            raise ValueError(f"anomaly map {i} holds non-finite values")
        pairs.append((amap, mask.astype(bool, copy=False)))
    return pairs


def _thresholds(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    num_thresholds: int | None,
    exact_max_pixels: int,
) -> np.ndarray:
    """Ascending distinct thresholds ``(T,)`` at which the pixel curves are evaluated.

    Every distinct score when the maps are small enough (exact curves); otherwise the distinct
    values of a random sample of the scores when there are at most ``num_thresholds`` of them
    (maps with few levels, e.g. 8-bit, stay exact), else quantiles of that sample taken at
    actual score values (``method="lower"``). The lowest threshold
    is always the global minimum, so each pixel falls at or above some threshold, and the global
    maximum is always one too.
    """
    total = sum(amap.size for amap, _ in pairs)
    if num_thresholds is None and total <= exact_max_pixels:
        logger.debug("pixel metrics: exact, %d pixels", total)
        return np.unique(np.concatenate([amap.ravel() for amap, _ in pairs]).astype(np.float64))

    n_thr = DEFAULT_NUM_THRESHOLDS if num_thresholds is None else int(num_thresholds)
    if n_thr < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {n_thr}")
    # ~20 samples per quantile keeps the bins close to equal-mass; the cap bounds memory. When
    # the cap exceeds the data every pixel is used, so no level present in the maps is lost.
    n_sample = max(20 * n_thr, 1_000_000)
    rng = np.random.default_rng(0)  # fixed seed: the same maps always give the same figure
    samples = []
    low, high = np.inf, -np.inf
    for amap, _ in pairs:
        flat = amap.ravel()
        low, high = min(low, float(flat.min())), max(high, float(flat.max()))
        if n_sample < total:
            flat = flat[rng.integers(0, flat.size, size=math.ceil(n_sample * flat.size / total))]
        samples.append(flat.astype(np.float64))
    distinct = np.unique(np.concatenate(samples))
    if distinct.size > n_thr:
        # Sorted distinct values are what the quantiles would index into; equal-mass bins need
        # the multiplicities, so take the quantiles of the sample itself.
        sample = np.concatenate(samples)
        distinct = np.quantile(sample, np.linspace(0.0, 1.0, n_thr), method="lower")
    logger.debug("pixel metrics: binned, %d pixels, %d thresholds", total, distinct.size)
    return np.unique(np.append(distinct, [low, high]))


def _pixel_counts(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    thresholds: np.ndarray,
    with_regions: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-threshold-bin sums, one image at a time.

    Bin ``k`` holds the pixels with ``thresholds[k] <= score < thresholds[k + 1]``. Returns
    ``(good (T,), defect (T,), overlap (T,), n_regions)``: counts of good and defect pixels per
    bin and, when ``with_regions``, the per-bin sum of ``1 / |region|`` over defect pixels, so
    that the reversed cumulative sum divided by the number of regions is the PRO at each
    threshold.
    """
    n_bins = thresholds.size
    good = np.zeros(n_bins, dtype=np.int64)
    defect = np.zeros(n_bins, dtype=np.int64)
    overlap = np.zeros(n_bins, dtype=np.float64)
    n_regions = 0
    for amap, mask in pairs:
        values = amap.ravel().astype(np.float64, copy=False)
        bins = np.searchsorted(thresholds, values, side="right") - 1
        inside = mask.ravel()
        good += np.bincount(bins[~inside], minlength=n_bins)
        defect_bins = bins[inside]
        defect += np.bincount(defect_bins, minlength=n_bins)
        if with_regions and defect_bins.size:
            regions, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
            sizes = np.bincount(regions.ravel())
            weights = 1.0 / sizes[regions.ravel()[inside]]
            overlap += np.bincount(defect_bins, weights=weights, minlength=n_bins)
            n_regions += int(count)
    return good, defect, overlap, n_regions


def _descending_cumsum(counts: np.ndarray) -> np.ndarray:
    """Cumulative sums from the highest bin down, with a leading 0 (threshold above all)."""
    return np.concatenate([[0], np.cumsum(counts[::-1])])


def pixel_auroc(
    anomaly_maps: Any,
    masks: Any,
    num_thresholds: int | None = None,
    exact_max_pixels: int = EXACT_MAX_PIXELS,
) -> float | None:
    """Pixel-level AUROC of anomaly maps against ground-truth masks.

    ``anomaly_maps``: ``(H, W)`` float maps (a sequence, or ``(N, H, W)``); ``masks``: ``(H, W)``
    masks of the same shapes, nonzero = defect. Up to ``exact_max_pixels`` pixels in all (and
    ``num_thresholds`` None) the result is sklearn's exact ``roc_auc_score`` on the flattened
    arrays; above it, or when ``num_thresholds`` is given, the trapezoidal area of the ROC at
    ``num_thresholds`` quantile thresholds (see the module docstring). ``None`` when there are
    no defect pixels or no good pixels.
    """
    pairs = _map_mask_pairs(anomaly_maps, masks)
    if not pairs:
        return None
    total = sum(amap.size for amap, _ in pairs)
    n_defect = sum(int(mask.sum()) for _, mask in pairs)
    if n_defect == 0 or n_defect == total:
        missing = "no defect pixels" if n_defect == 0 else "no good pixels"
        logger.info("pixel AUROC not computed: the masks hold %s", missing)
        return None
    if num_thresholds is None and total <= exact_max_pixels:
        scores = np.concatenate([amap.ravel() for amap, _ in pairs])
        truth = np.concatenate([mask.ravel() for _, mask in pairs])
        return float(roc_auc_score(truth, scores))
    thresholds = _thresholds(pairs, num_thresholds, exact_max_pixels)
    good, defect, _, _ = _pixel_counts(pairs, thresholds, with_regions=False)
    fpr = _descending_cumsum(good) / good.sum()
    tpr = _descending_cumsum(defect) / defect.sum()
    return float(auc(fpr, tpr))


def aupro(
    anomaly_maps: Any,
    masks: Any,
    max_fpr: float = 0.3,
    num_thresholds: int | None = None,
    exact_max_pixels: int = EXACT_MAX_PIXELS,
) -> float | None:
    """Normalised area under the per-region-overlap (PRO) curve up to ``max_fpr`` (AUPRO).

    As in Bergmann et al. (MVTec AD): the regions are the 8-connected components of each
    ground-truth mask; at a threshold ``t`` the PRO is the mean over all regions (of all images)
    of ``|region ∩ {score >= t}| / |region|``, and the false-positive rate is the fraction of
    good pixels (outside every mask, good images included) at or above ``t``. The PRO-vs-FPR
    curve, from (0, 0) with linear interpolation between thresholds, is integrated over
    ``[0, max_fpr]`` (interpolated at ``max_fpr`` exactly) and divided by ``max_fpr``: 1.0 is
    perfect, a constant map scores ``max_fpr / 2``.

    Shapes, ``num_thresholds`` and ``exact_max_pixels`` as in :func:`pixel_auroc` (exact means
    every distinct score is a threshold). ``None`` when there are no defect regions or no good
    pixels.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    pairs = _map_mask_pairs(anomaly_maps, masks)
    if not pairs or not any(mask.any() for _, mask in pairs):
        logger.info("AUPRO not computed: the masks hold no defect region")
        return None
    if all(mask.all() for _, mask in pairs):
        logger.info("AUPRO not computed: the masks hold no good pixel")
        return None
    thresholds = _thresholds(pairs, num_thresholds, exact_max_pixels)
    good, _, overlap, n_regions = _pixel_counts(pairs, thresholds, with_regions=True)
    # Points ordered by decreasing threshold: FPR and PRO both rise from (0, 0).
    fpr = _descending_cumsum(good) / good.sum()
    pro = _descending_cumsum(overlap) / n_regions
    pro = np.minimum(pro, 1.0)  # float round-off in the weight sums may overshoot 1 by an ulp
    # Keep the points left of max_fpr and close the curve at max_fpr exactly, interpolating on
    # the segment that crosses it (a vertical segment at max_fpr adds no area).
    end = int(np.searchsorted(fpr, max_fpr, side="left"))  # first point with fpr >= max_fpr
    x0, x1, y0, y1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
    y_end = y1 if x1 == x0 else y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    x = np.append(fpr[:end], max_fpr)
    y = np.append(pro[:end], y_end)
    return float(auc(x, y) / max_fpr)
