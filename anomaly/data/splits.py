"""Seeded, stratified assignment of items to named splits (train / val / test).

Each stratum (e.g. a ``(label, defect_type)`` pair) is split on its own, so every split sees
the classes in the same proportions. Counts come from largest-remainder rounding of
``fraction * n``; then every split with a positive fraction is given at least one item of every
stratum that has enough items, because a validation or test split lacking a defect class cannot
calibrate or measure it.
"""

from __future__ import annotations

import logging
import math
import numbers
import zlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from anomaly.errors import ConfigError

logger = logging.getLogger(__name__)


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check split fractions: non-empty, finite, non-negative, summing to 1 within 1e-6.

    Returns:
        The fractions as a plain ``dict`` of ``float``, in the given order.

    Raises:
        ConfigError: naming the offending split or the sum.
    """
    if not fractions:
        raise ConfigError("split fractions are empty: give at least one split")
    checked: dict[str, float] = {}
    for name, value in fractions.items():
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"split fraction {name}={value!r} is not a number") from exc
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"split fraction {name}={value!r} must be a number >= 0")
        checked[str(name)] = number
    total = sum(checked.values())
    if abs(total - 1.0) > 1e-6:
        listed = ", ".join(f"{k}={v:g}" for k, v in checked.items())
        raise ConfigError(f"split fractions must sum to 1, got {total:g} ({listed})")
    return checked


def split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """How many of ``n`` items each split gets (largest remainder, minimum one per split).

    Args:
        n: number of items in one stratum.
        fractions: validated fractions, split name -> fraction.

    Returns:
        Split name -> count, summing to ``n``. When ``n`` is at least the number of splits with
        a positive fraction, each of those gets at least one item; a split with fraction 0
        always gets none.
    """
    names = list(fractions)
    total = sum(fractions.values())
    # Renormalise so that quotas sum to n even when the fractions sum to 1 only within 1e-6.
    quotas = [fractions[k] / total * n for k in names]
    counts = [math.floor(q) for q in quotas]
    active = [i for i in range(len(names)) if fractions[names[i]] > 0]
    # Hand out what flooring left over: largest remainder first, ties to the larger fraction,
    # then to the split listed first; all deterministic. Splits with fraction 0 get nothing.
    order = sorted(active, key=lambda i: (-(quotas[i] - counts[i]), -fractions[names[i]], i))
    leftover = n - sum(counts)
    for k in range(leftover):
        counts[order[k % len(order)]] += 1
    if n >= len(active):
        for i in active:
            if counts[i] == 0:
                # Take from the split that is most above its quota and can spare an item.
                donor = max(
                    (j for j in active if counts[j] > 1),
                    key=lambda j: (counts[j] - quotas[j], counts[j], -j),
                )
                counts[donor] -= 1
                counts[i] = 1
    return dict(zip(names, counts, strict=True))


def _stratum_seed(seed: int, key: Hashable) -> np.random.Generator:
    # Each stratum gets its own stream (seed, crc32 of its repr): adding items of one class
    # does not reshuffle the others, and crc32 is stable across processes (unlike hash()).
    return np.random.default_rng([int(seed), zlib.crc32(repr(key).encode("utf-8"))])


def stratified_split(
    strata: Sequence[Hashable], fractions: Mapping[str, float], seed: int
) -> list[str]:
    """Assign each item to a split, stratified and reproducible.

    Args:
        strata: the stratum of each item (length N), e.g. ``(label, defect_type)`` tuples.
        fractions: split name -> fraction, e.g. ``{"train": 0.6, "val": 0.2, "test": 0.2}``;
            non-negative, summing to 1.
        seed: the same seed and inputs give the same assignment.

    Returns:
        Split name of each item (length N), in input order. Within each stratum the counts are
        those of :func:`split_counts`: every split with a positive fraction receives at least
        one item of each stratum holding at least as many items as there are such splits.

    Raises:
        ConfigError: the fractions are invalid.
    """
    checked = validate_fractions(fractions)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(strata):
        members.setdefault(key, []).append(index)
    active = sum(1 for v in checked.values() if v > 0)
    assignment: list[str] = [""] * len(strata)
    for key, indices in members.items():
        if len(indices) < active:
            logger.debug(
                "stratum %r has %d item(s) for %d splits: some splits get none",
                key,
                len(indices),
                active,
            )
        counts = split_counts(len(indices), checked)
        shuffled = _stratum_seed(seed, key).permutation(len(indices))
        position = 0
        for name, count in counts.items():
            for k in shuffled[position : position + count]:
                assignment[indices[k]] = name
            position += count
    return assignment


def check_fraction(key: str, value: object) -> float:
    """``value`` as a float within 0..1.

    Raises:
        ConfigError: naming ``key`` when ``value`` is not a number within 0..1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(f"{key}={value!r} must be a number between 0 and 1")
    return float(value)


def train_val_test_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """``{"train": 1 - val - test, "val": val, "test": test}``, checked.

    Raises:
        ConfigError: a fraction is outside 0..1, or together they leave nothing to train on.
    """
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    train = 1.0 - float(val_fraction) - float(test_fraction)
    if train <= 0:
        raise ConfigError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no images "
            "to train on: it must be below 1"
        )
    return {"train": train, "val": float(val_fraction), "test": float(test_fraction)}
