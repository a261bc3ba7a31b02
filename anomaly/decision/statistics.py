"""Exact binomial bounds (Clopper-Pearson) for miss and false-alarm rates counted on few parts."""

from __future__ import annotations


def _beta_ppf(q: float, a: float, b: float) -> float:
    # scipy is imported here, not at module import: calibrating needs it, and scoring with a
    # calibrated bundle (a line PC's [edge] install, without scipy) does not.
    from scipy import stats

    return float(stats.beta.ppf(q, a, b))


def clopper_pearson(events: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion ``events / trials``.

    Returns ``(low, high)``; ``(0.0, 1.0)`` when ``trials`` is 0 (nothing is known).
    """
    if trials == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if events == 0 else _beta_ppf(tail, events, trials - events + 1)
    high = 1.0 if events == trials else _beta_ppf(1 - tail, events + 1, trials - events)
    return low, high


def upper_bound(events: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound: the rate is below it with ``confidence``."""
    if trials == 0:
        return 1.0
    if events == trials:
        return 1.0
    return _beta_ppf(confidence, events + 1, trials - events)
