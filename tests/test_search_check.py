"""A fit with approximate search says what it changed against exact search on validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import textured_part, with_defect

from anomaly.artifacts.bundle import load_bundle
from anomaly.evaluation.search_check import compare_search, search_check_line
from anomaly.models.patchcore import PatchCore


def test_identical_scores_change_nothing():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([1.0, 2.0, 3.0, 8.0, 9.0])
    check = compare_search(labels, scores, scores.copy(), threshold=5.0)
    assert check["auroc_change"] == 0.0 and check["verdicts_differing"] == 0
    assert check["largest_relative_score_difference"] == 0.0
    assert check["approximate"] == check["exact"] == {"miss_rate": 0.0, "false_alarm_rate": 0.0}
    assert check["acceptable"]
    assert "raise patchcore.ef_search" not in search_check_line(check)


def test_a_defect_pushed_under_the_threshold_is_counted_and_warned():
    labels = np.array([0] * 8 + [1] * 4)
    exact = np.array([1.0] * 8 + [9.0, 9.5, 10.0, 10.5])
    approximate = exact.copy()
    approximate[8] = 4.0  # approximate search found a nearer (wrong) neighbour for a defect
    approximate[0] = 6.0  # and a farther one for a good part
    check = compare_search(labels, approximate, exact, threshold=5.0)
    assert check["verdicts_differing"] == 2
    assert check["approximate"] == {"miss_rate": 0.25, "false_alarm_rate": 0.125}
    assert check["exact"] == {"miss_rate": 0.0, "false_alarm_rate": 0.0}
    assert check["auroc_exact"] == 1.0 and check["auroc_change"] < -0.005
    assert check["largest_relative_score_difference"] == pytest.approx(5.0)
    assert not check["acceptable"]
    line = search_check_line(check)
    assert "2 of 12 verdicts differ" in line and "raise patchcore.ef_search" in line


def test_one_class_has_no_auroc_but_still_counts_verdicts():
    check = compare_search(np.zeros(3), np.array([1.0, 6.0, 2.0]), np.ones(3), threshold=5.0)
    assert check["auroc_change"] is None and check["verdicts_differing"] == 1
    assert check["approximate"]["miss_rate"] is None
    with pytest.raises(ValueError, match="3 labels, 2 approximate"):
        compare_search(np.zeros(3), np.ones(2), np.ones(3), threshold=1.0)


def test_exact_search_scores_as_a_flat_model_and_restores_the_approximate_bank():
    rng = np.random.default_rng(4)
    train = [textured_part(rng) for _ in range(8)]
    queries = [textured_part(rng) for _ in range(3)] + [
        with_defect(textured_part(rng), rng)[0] for _ in range(3)
    ]
    params = dict(image_size=64, coreset_ratio=0.5, progress=False, num_threads=1)
    flat = PatchCore(**params).fit(train)
    approximate = PatchCore(index="hnsw", ef_search=1, **params).fit(train)
    assert flat.exact_search() is None
    with approximate.exact_search():
        assert approximate.memory_bank_.index_type == "flat"
        exact_scores = approximate.predict(queries).scores
    assert approximate.memory_bank_.index_type == "hnsw"
    # The same coreset (the index type only decides how the bank is searched).
    np.testing.assert_allclose(exact_scores, flat.predict(queries).scores, rtol=1e-5)


@pytest.mark.parametrize("index", ["hnsw", "flat"])
def test_fit_reports_and_saves_the_check_only_with_approximate_search(
    index: str, parts_category: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anomaly.commands.cli import main

    out = tmp_path / "bundle"
    argv = ["fit", "--category", "parts", "--data-root", str(parts_category.parent)]
    argv += ["--out", str(out), "image_size=64", "runtime.progress=false"]
    code = main([*argv, "runtime.num_threads=1", f"patchcore.index={index}"])
    assert code == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((out / "metadata.json").read_text())["evaluation"]
    if index == "flat":
        assert "search_check" not in evaluation and "approximate search" not in printed
        return
    check = evaluation["search_check"]
    assert check["images"] > 0 and 0.5 <= check["auroc_exact"] <= 1.0
    assert set(check["exact"]) == {"miss_rate", "false_alarm_rate"}
    assert "approximate search on validation: AUROC" in printed
    assert load_bundle(out).memory_bank_.index_type == "hnsw"  # the check left the bank as is
