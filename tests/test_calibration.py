"""Calibration to a target miss rate: meets the target, says when it cannot."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.decision.calibration import (
    METHOD_FALLBACK,
    METHOD_FEW_DEFECTS,
    METHOD_MISS_RATE,
    calibrate,
    clopper_pearson,
    required_defects,
    upper_bound,
)
from anomaly.errors import ConfigError


def test_meets_the_target_on_validation_and_generalises():
    rng = np.random.default_rng(0)
    good, defect = rng.normal(0, 1, 1000), rng.normal(2.5, 1, 400)
    result = calibrate(good, defect, target_miss_rate=0.05)
    assert result.method == METHOD_MISS_RATE and result.target_supported
    assert result.validation["miss_rate"] <= 0.05
    # The same rule on fresh parts from the same process misses about 5%.
    fresh_defects = rng.normal(2.5, 1, 100_000)
    assert abs((fresh_defects < result.threshold).mean() - 0.05) < 0.02
    fresh_good = rng.normal(0, 1, 100_000)
    assert (
        abs((fresh_good >= result.threshold).mean() - result.validation["false_alarm_rate"]) < 0.03
    )


def test_threshold_is_the_highest_that_meets_the_target():
    defect = np.arange(1.0, 21.0)  # 20 defects, target 5% allows exactly one miss
    result = calibrate(np.zeros(10), defect, target_miss_rate=0.05)
    assert result.threshold == 2.0
    assert result.validation["misses"] == 1


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_impossible_targets_are_refused(target):
    with pytest.raises(ConfigError, match="target_miss_rate"):
        calibrate(np.zeros(5), np.ones(5), target_miss_rate=target)


def test_too_few_defects_is_said_plainly():
    result = calibrate(np.linspace(0, 1, 50), np.array([2.0, 3.0, 4.0]), target_miss_rate=0.05)
    assert result.method == METHOD_FEW_DEFECTS and not result.target_supported
    assert "needs at least 20" in result.note
    assert result.threshold <= 2.0  # every validation defect is caught
    assert result.validation["miss_rate_upper"] > 0.5  # three defects prove little


def test_no_defects_falls_back_to_a_false_alarm_target():
    good = np.random.default_rng(1).normal(0, 1, 1000)
    result = calibrate(good, np.array([]), fallback_false_alarm_rate=0.05)
    assert result.method == METHOD_FALLBACK and not result.target_supported
    assert result.validation["miss_rate"] is None
    assert 0.04 <= result.validation["false_alarm_rate"] <= 0.05
    assert "miss rate is unknown" in result.note


def test_clopper_pearson_known_values():
    assert upper_bound(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10))
    low, high = clopper_pearson(5, 100)
    assert low < 0.05 < high
    assert required_defects(0.05) == 20 and required_defects(0.01) == 100
