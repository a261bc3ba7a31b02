"""What the benchmark scripts share: one way to fit a variant, and their tables' cell formats."""

from __future__ import annotations

import time
from typing import Any


def fit_variant(
    category: str,
    out: str,
    overrides: list[str],
    model: str | None = None,
    data_root: str | None = None,
) -> tuple[Any, float]:
    """Fit, calibrate, test and save one variant as ``anomaly fit`` does (quietly), in this
    process; returns the fit result and the command's wall seconds."""
    from anomaly.commands.fit import fit_category
    from anomaly.config import FitConfig, build_config

    keys = {"data.category": category, "data.root": data_root, "out": out}
    if model:
        keys["model"] = model
    config = build_config(FitConfig, None, ["runtime.progress=false", *overrides], **keys)
    started = time.perf_counter()
    result = fit_category(config)
    return result, time.perf_counter() - started


def pct(value: float | None) -> str:
    """A rate as a percentage with one decimal; ``n/a`` when there is none."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def num(value: float | None) -> str:
    """An AUROC-like figure with four decimals; ``n/a`` when there is none."""
    return "n/a" if value is None else f"{value:.4f}"
