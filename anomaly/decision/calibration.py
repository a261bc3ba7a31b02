"""Decision thresholds calibrated to a target miss rate, with honest confidence bounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anomaly.decision.statistics import clopper_pearson, upper_bound
from anomaly.decision.verdict import is_anomalous
from anomaly.errors import ConfigError, DataError

__all__ = ["Calibration", "calibrate", "clopper_pearson", "required_defects", "upper_bound"]


METHOD_MISS_RATE = "miss_rate"
METHOD_FEW_DEFECTS = "few_defects"
METHOD_FALLBACK = "false_alarm_fallback"


def required_defects(target_miss_rate: float) -> int:
    """Validation defects needed before a miss-rate target can be resolved at all.

    With ``n`` defects the observed miss rate moves in steps of ``1 / n``; below ``1 / target``
    defects the only threshold that respects the target is "catch every one", and the target
    itself is not being measured.
    """
    if target_miss_rate <= 0:
        return 1
    return int(np.ceil(1.0 / target_miss_rate - 1e-9))


@dataclass
class Calibration:
    """A decision threshold and what it costs, as measured on the validation split.

    ``threshold`` applies to image scores (NG when ``score >= threshold``); ``pixel_threshold``
    is the same rule applied to the maximum of each anomaly map, and is the level heatmaps and
    contours are drawn against (normalised map = map / pixel_threshold).
    """

    threshold: float
    pixel_threshold: float
    method: str
    target_miss_rate: float
    target_supported: bool
    confidence: float
    validation: dict[str, Any]
    note: str
    scores_good: list[float] = field(default_factory=list)
    scores_defect: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)

    def summary(self) -> str:
        """One line a person reads: the threshold and what it costs."""
        v = self.validation
        parts = [f"threshold {self.threshold:.4g} ({self.method})"]
        if v["miss_rate"] is not None:
            parts.append(
                f"validation miss rate {v['miss_rate']:.1%} ({v['misses']}/{v['n_defect']}, "
                f"<= {v['miss_rate_upper']:.1%} at {self.confidence:.0%} confidence)"
            )
        if v["false_alarm_rate"] is not None:
            parts.append(
                f"false-alarm rate {v['false_alarm_rate']:.1%} ({v['false_alarms']}/{v['n_good']})"
            )
        return ", ".join(parts)


def check_targets(
    target_miss_rate: float, fallback_false_alarm_rate: float, confidence: float
) -> None:
    """Raise :class:`ConfigError` for a calibration setting no threshold can meet: checked
    before any work, so a bad value is refused in a second rather than after the whole fit."""
    if not 0.0 <= target_miss_rate < 1.0:
        raise ConfigError(f"target_miss_rate={target_miss_rate}: must be in [0, 1)")
    if not 0.0 < fallback_false_alarm_rate < 1.0:
        raise ConfigError(
            f"fallback_false_alarm_rate={fallback_false_alarm_rate}: must be in (0, 1)"
        )
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence}: must be in (0, 1)")


def calibrate(
    scores_good: np.ndarray,
    scores_defect: np.ndarray,
    map_max_good: np.ndarray | None = None,
    map_max_defect: np.ndarray | None = None,
    target_miss_rate: float = 0.05,
    fallback_false_alarm_rate: float = 0.05,
    confidence: float = 0.95,
) -> Calibration:
    """Pick the threshold that keeps the validation miss rate at or under the target.

    Rule: with ``n`` validation defects, at most ``k = floor(target * n)`` may fall below the
    threshold, so the threshold is the ``(k+1)``-th lowest defect score: the highest threshold
    (fewest false alarms) that still meets the target on validation.

    When there are fewer than :func:`required_defects` defects the target cannot be resolved: the
    threshold is then the lower of "catch every validation defect" and the good-image rule below,
    and ``target_supported`` is False. With no defects at all the threshold is the
    ``1 - fallback_false_alarm_rate`` quantile of the good scores (false-alarm target), and the
    miss rate is unknown. Every result states which rule was used.
    """
    check_targets(target_miss_rate, fallback_false_alarm_rate, confidence)
    good = np.asarray(scores_good, dtype=np.float64).ravel()
    defect = np.asarray(scores_defect, dtype=np.float64).ravel()
    broken = int((~np.isfinite(good)).sum() + (~np.isfinite(defect)).sum())
    if broken:
        # A threshold set among NaNs would be meaningless: refuse rather than calibrate on it.
        raise DataError(
            f"calibration: {broken} of {good.size + defect.size} validation scores are not finite "
            "numbers; the model is faulty (check its bundle), no threshold can be set"
        )
    if good.size == 0 and defect.size == 0:
        raise DataError("calibration needs validation images, and the validation split is empty")
    if defect.size == 0 and good.size < 2:
        raise DataError(
            "calibration needs defective validation images or at least 2 good ones; "
            f"got {good.size} good and no defects"
        )
    map_good = good if map_max_good is None else np.asarray(map_max_good, dtype=np.float64)
    map_defect = defect if map_max_defect is None else np.asarray(map_max_defect, dtype=np.float64)

    needed = required_defects(target_miss_rate)
    if defect.size >= needed:
        method = METHOD_MISS_RATE
        supported = True
        threshold = _miss_rate_threshold(defect, target_miss_rate)
        pixel_threshold = _miss_rate_threshold(map_defect, target_miss_rate)
        note = (
            f"threshold keeps the validation miss rate at or under {target_miss_rate:.1%} "
            f"({defect.size} validation defects)"
        )
    elif defect.size > 0:
        method = METHOD_FEW_DEFECTS
        supported = False
        threshold = float(defect.min())
        pixel_threshold = float(map_defect.min())
        if good.size >= 2:
            threshold = min(threshold, _false_alarm_threshold(good, fallback_false_alarm_rate))
            pixel_threshold = min(
                pixel_threshold, _false_alarm_threshold(map_good, fallback_false_alarm_rate)
            )
        note = (
            f"only {defect.size} validation defects: a {target_miss_rate:.1%} miss-rate target "
            f"needs at least {needed}. Threshold catches every validation defect (and is no "
            f"higher than the {fallback_false_alarm_rate:.0%} false-alarm rule on good images); "
            "the miss-rate bound below is what this evidence supports"
        )
    else:
        method = METHOD_FALLBACK
        supported = False
        threshold = _false_alarm_threshold(good, fallback_false_alarm_rate)
        pixel_threshold = _false_alarm_threshold(map_good, fallback_false_alarm_rate)
        note = (
            "no defective validation images: the miss rate is unknown. Threshold set so that "
            f"about {fallback_false_alarm_rate:.0%} of good validation images are flagged"
        )
    if pixel_threshold <= 0:
        pixel_threshold = float(np.finfo(np.float32).eps)
    misses = int((~is_anomalous(defect, threshold)).sum())
    false_alarms = int(is_anomalous(good, threshold).sum())
    validation = {
        "n_good": int(good.size),
        "n_defect": int(defect.size),
        "misses": misses,
        "false_alarms": false_alarms,
        "miss_rate": misses / defect.size if defect.size else None,
        "miss_rate_upper": upper_bound(misses, defect.size, confidence) if defect.size else None,
        "false_alarm_rate": false_alarms / good.size if good.size else None,
        "false_alarm_rate_upper": (
            upper_bound(false_alarms, good.size, confidence) if good.size else None
        ),
    }
    return Calibration(
        threshold=float(threshold),
        pixel_threshold=float(pixel_threshold),
        method=method,
        target_miss_rate=float(target_miss_rate),
        target_supported=supported,
        confidence=float(confidence),
        validation=validation,
        note=note,
        scores_good=[float(s) for s in good],
        scores_defect=[float(s) for s in defect],
    )


def _miss_rate_threshold(defect_scores: np.ndarray, target_miss_rate: float) -> float:
    ordered = np.sort(defect_scores)
    allowed_misses = int(np.floor(target_miss_rate * ordered.size + 1e-9))
    return float(ordered[min(allowed_misses, ordered.size - 1)])


def _false_alarm_threshold(good_scores: np.ndarray, false_alarm_rate: float) -> float:
    # The smallest threshold that flags at most the allowed share of good images.
    ordered = np.sort(good_scores)
    allowed = int(np.floor(false_alarm_rate * ordered.size + 1e-9))
    index = ordered.size - allowed  # flagged: ordered[index:] (>= threshold)
    if index >= ordered.size:
        return float(np.nextafter(ordered[-1], np.inf))
    if index > 0 and ordered[index] == ordered[index - 1]:
        # ties would flag more than allowed: move above the tied value
        return float(np.nextafter(ordered[index], np.inf))
    return float(ordered[index])
