"""The one decision rule: a part is NG when its score reaches the calibrated threshold."""

from __future__ import annotations

import numpy as np

OK, NG = "OK", "NG"


def is_anomalous(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """``scores >= threshold``, elementwise: True means the part is rejected (NG)."""
    return np.asarray(scores) >= threshold


def verdict(score: float, threshold: float) -> str:
    """``"NG"`` when ``score`` reaches ``threshold``, else ``"OK"``."""
    return NG if bool(is_anomalous(score, threshold)) else OK


def verdicts(scores: np.ndarray, threshold: float) -> list[str]:
    """:func:`verdict` of every score."""
    return [NG if flag else OK for flag in is_anomalous(scores, threshold)]
