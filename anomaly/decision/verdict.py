"""The one decision rule: a part is NG when its score reaches the calibrated threshold.

It fails closed: a score that is not a finite number (NaN from a numeric fault, infinity from a
corrupt bank) is never a pass. :func:`is_anomalous` counts it as rejected and :func:`verdict`
calls it ``ERROR``, so the part is held back and the run says why, instead of ``score >=
threshold`` being false for NaN and the part going through as OK.
"""

from __future__ import annotations

import numpy as np

OK, NG, ERROR = "OK", "NG", "ERROR"
#: The reason an ERROR row gives for a score that is not a finite number.
NOT_FINITE = (
    "score is not a finite number: the part is not accepted (the model or its bundle is faulty)"
)


def is_anomalous(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """``scores >= threshold`` elementwise, and True for any score that is not finite: True
    means the part is not accepted."""
    values = np.asarray(scores, dtype=np.float64)
    return ~np.isfinite(values) | (values >= threshold)


def verdict(score: float, threshold: float) -> str:
    """``"NG"`` when ``score`` reaches ``threshold``, ``"ERROR"`` when it is not finite, else
    ``"OK"``."""
    if not np.isfinite(score):
        return ERROR
    return NG if bool(is_anomalous(score, threshold)) else OK


def verdicts(scores: np.ndarray, threshold: float) -> list[str]:
    """:func:`verdict` of every score."""
    return [verdict(float(score), threshold) for score in np.asarray(scores, dtype=np.float64)]
