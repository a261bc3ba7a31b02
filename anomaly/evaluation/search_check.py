"""How far approximate nearest-neighbour search moves a fitted model from exact search.

HNSW (``patchcore.index=hnsw``) is as exact as exact search on some banks and not on others:
ELPV's 9,277-vector bank gives the same test AUROC at ``ef_search=24``, sealant's 8,194-vector
bank of stage-1 patches loses 0.026 validation AUROC at the same setting (README, "Search").
The calibrated miss rate holds either way, since the threshold is calibrated on the scores the
model really gives; what approximate search can cost is false alarms and AUROC. So a fit with
approximate search also scores its validation split exactly (:func:`check_exact_search`) and
says what the approximation changed (:func:`compare_search`), rather than leaving a team to find
out on the line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly.data.dataset import Sample
from anomaly.decision import verdict as verdict_rule
from anomaly.evaluation import metrics
from anomaly.evaluation.split import SplitScores, score_split
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

#: Validation AUROC lost to approximate search above which the fit warns.
AUROC_TOLERANCE = 0.005
#: Share of validation verdicts that differ from exact search's above which the fit warns.
VERDICT_TOLERANCE = 0.01


def compare_search(
    labels: np.ndarray,
    approximate: np.ndarray,
    exact: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """What approximate search changed on one labelled split, both scored against the same
    ``threshold`` (calibrated on the approximate scores, as the model will run).

    Returns AUROC of both and its change (None without both classes), the largest relative
    score difference, the verdicts that differ, the miss and false-alarm rates of both at the
    threshold (None without defects or good images), and ``acceptable``: AUROC lost within
    :data:`AUROC_TOLERANCE` and differing verdicts within :data:`VERDICT_TOLERANCE`.
    """
    labels = np.asarray(labels, dtype=int)
    approximate = np.asarray(approximate, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    if not (len(labels) == len(approximate) == len(exact)):
        raise ValueError(
            f"{len(labels)} labels, {len(approximate)} approximate and {len(exact)} exact scores"
        )
    auroc_approximate = metrics.image_auroc(labels, approximate)  # None without both classes
    auroc_exact = metrics.image_auroc(labels, exact)
    flagged_approximate = verdict_rule.is_anomalous(approximate, threshold)
    flagged_exact = verdict_rule.is_anomalous(exact, threshold)
    differing = int((flagged_approximate != flagged_exact).sum())
    scale = np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
    change = None if auroc_exact is None else float(auroc_approximate - auroc_exact)

    def rates(flagged: np.ndarray) -> dict[str, float | None]:
        defects, good = labels == 1, labels == 0
        return {
            "miss_rate": float((~flagged[defects]).mean()) if defects.any() else None,
            "false_alarm_rate": float(flagged[good].mean()) if good.any() else None,
        }

    return {
        "images": len(labels),
        "auroc_approximate": auroc_approximate,
        "auroc_exact": auroc_exact,
        "auroc_change": change,
        "largest_relative_score_difference": (
            float((np.abs(approximate - exact) / scale).max()) if len(labels) else 0.0
        ),
        "verdicts_differing": differing,
        "approximate": rates(flagged_approximate),
        "exact": rates(flagged_exact),
        "acceptable": (change is None or change >= -AUROC_TOLERANCE)
        and differing <= VERDICT_TOLERANCE * len(labels),
    }


def check_exact_search(
    model: AnomalyModel, validation: Sequence[Sample], scores: SplitScores
) -> dict[str, Any] | None:
    """Score ``validation`` again with exact search and compare with ``scores`` (the model's
    own, approximate ones) at the model's threshold; None for a model that searches exactly
    or is not calibrated. Warns when the approximation is not :func:`compare_search`'s
    ``acceptable``."""
    context = model.exact_search()
    if context is None or model.threshold_ is None:
        return None
    with context:
        exact = score_split(model, validation)
    check = compare_search(scores.labels, scores.scores, exact.scores, model.threshold_)
    if not check["acceptable"]:
        logger.warning("%s", search_check_line(check))
    return check


def search_check_line(check: dict[str, Any]) -> str:
    """One line for a fit's summary: what approximate search changed on validation, and what
    to do about it when it matters."""
    parts = []
    if check["auroc_change"] is not None:
        parts.append(
            f"AUROC {check['auroc_approximate']:.4f} vs {check['auroc_exact']:.4f} exact "
            f"({check['auroc_change']:+.4f})"
        )
    parts.append(f"{check['verdicts_differing']} of {check['images']} verdicts differ")
    rate = check["approximate"]["false_alarm_rate"]
    exact_rate = check["exact"]["false_alarm_rate"]
    if rate is not None and exact_rate is not None:
        parts.append(f"false alarms {rate:.1%} vs {exact_rate:.1%}")
    line = "approximate search on validation: " + ", ".join(parts)
    if not check["acceptable"]:
        line += (
            "; more than the approximation should cost: raise patchcore.ef_search or use "
            "patchcore.index=flat"
        )
    return line
