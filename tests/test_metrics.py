"""anomaly.evaluation.metrics and .plots: agreement with sklearn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as cc_label
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly.decision.statistics import clopper_pearson
from anomaly.evaluation import metrics, plots
from anomaly.evaluation.metrics import (
    accuracy_max,
    aupro,
    average_precision,
    f1_max,
    false_alarm_rate_at_miss_rate,
    image_auroc,
    image_metrics,
    miss_rate_at_false_alarm_rate,
    missing_class_reason,
    operating_point,
    per_group_auroc,
    pixel_auroc,
    roc_point,
)


def _random_split(seed: int, n: int = 60, levels: int | None = None):
    """Labels ``(n,)`` with both classes and scores ``(n,)``; ``levels`` rounds scores (ties)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 1.2 * labels
    if levels is not None:
        scores = np.round(scores * levels / 4) / (levels / 4)
    return labels, scores


def _counts(labels, scores, t):
    """(misses, false alarms) of the rule NG iff score >= t, computed directly."""
    reject = scores >= t
    return int((~reject & (labels == 1)).sum()), int((reject & (labels == 0)).sum())


def _candidates(scores):
    """Every distinct score, midpoints between them and values beyond both ends."""
    u = np.unique(scores)
    return np.concatenate([u, (u[1:] + u[:-1]) / 2, [u[0] - 1, u[-1] + 1]])


# ------------------------------------------------------------------------------ image level


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_ap_match_sklearn(seed):
    labels, scores = _random_split(seed, levels=8 if seed % 2 else None)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(6))
def test_f1_max_matches_brute_force(seed):
    labels, scores = _random_split(seed, levels=6 if seed % 2 else None)

    def f1_at(t):
        misses, fa = _counts(labels, scores, t)
        tp = int((labels == 1).sum()) - misses
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + misses + fa)

    best = max(f1_at(t) for t in _candidates(scores))
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert f1_at(threshold) == pytest.approx(best, abs=1e-12)
    assert threshold in scores


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_max_matches_brute_force_and_prefers_fewer_misses(seed):
    labels, scores = _random_split(seed, levels=6 if seed % 2 else None)

    def accuracy_at(t):
        misses, fa = _counts(labels, scores, t)
        return 1 - (misses + fa) / labels.size

    candidates = sorted(_candidates(scores))
    best = max(accuracy_at(t) for t in candidates)
    accuracy, threshold = accuracy_max(labels, scores)
    assert accuracy == pytest.approx(best, abs=1e-12)
    assert accuracy_at(threshold) == pytest.approx(best, abs=1e-12)
    fewest_misses = min(
        _counts(labels, scores, t)[0]
        for t in candidates
        if accuracy_at(t) == pytest.approx(best, abs=1e-12)
    )
    assert _counts(labels, scores, threshold)[0] == fewest_misses


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("bounded", ["false_alarms", "misses"])
def test_rate_at_a_bounded_rate_matches_brute_force(seed, target, bounded):
    """Miss rate at false-alarm rate <= target, and the reverse: the fewest of one count while
    the other stays within the target, ties broken by the fewest of the other."""
    labels, scores = _random_split(seed, n=50, levels=5 if seed % 2 else None)
    n_good, n_defect = (labels == 0).sum(), (labels == 1).sum()
    if bounded == "false_alarms":
        function, n_minimised, n_bounded = miss_rate_at_false_alarm_rate, n_defect, n_good
    else:
        function, n_minimised, n_bounded = false_alarm_rate_at_miss_rate, n_good, n_defect

    def counts(t):  # (count minimised, count bounded)
        misses, false_alarms = _counts(labels, scores, t)
        return (misses, false_alarms) if bounded == "false_alarms" else (false_alarms, misses)

    best = min(counts(t) for t in _candidates(scores) if counts(t)[1] / n_bounded <= target)
    rate, threshold = function(labels, scores, target)
    assert rate == best[0] / n_minimised
    assert counts(threshold) == best


def test_zero_miss_threshold_is_lowest_defect_score():
    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.4, 0.8, 0.4, 1.2])
    far, threshold = false_alarm_rate_at_miss_rate(labels, scores, 0.0)
    assert threshold == 0.4
    assert far == pytest.approx(3 / 4)  # 0.4 (tied with the defect), 0.5 and 0.9


def test_operating_point_counts_on_hand_example():
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.5, 0.7, 0.5, 0.9, 0.3]
    op = operating_point(labels, scores, threshold=0.5)
    # good at/above 0.5: 0.5, 0.7 -> 2 false alarms; defects below 0.5: 0.3 -> 1 miss
    assert (op.n_good, op.n_defect, op.misses, op.false_alarms) == (4, 3, 1, 2)
    assert op.confusion == {"tp": 2, "fn": 1, "fp": 2, "tn": 2}
    assert op.miss_rate == pytest.approx(1 / 3)
    assert op.false_alarm_rate == pytest.approx(0.5)
    for rate, (low, high), upper in (
        (op.miss_rate, op.miss_rate_ci, op.miss_rate_upper),
        (op.false_alarm_rate, op.false_alarm_rate_ci, op.false_alarm_rate_upper),
    ):
        assert 0.0 <= low <= rate <= high <= 1.0
        assert rate <= upper <= high
    assert op.roc_point() == pytest.approx((0.5, 2 / 3))
    d = op.to_dict()
    assert d["miss_rate_ci"] == list(op.miss_rate_ci)
    assert d["confusion"]["fp"] == 2


def test_roc_point_reads_an_operating_point_or_the_dict_rows_keep():
    op = operating_point([0, 0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.5, 0.7, 0.5, 0.9, 0.3], 0.5)
    assert roc_point(op) == roc_point(op.to_dict()) == pytest.approx((0.5, 2 / 3))
    good_only = operating_point([0, 0], [0.1, 0.9], 0.5)  # no defects: no detection rate
    assert roc_point(good_only) is None and roc_point(good_only.to_dict()) is None
    assert roc_point(None) is None  # an uncalibrated model has no operating point


@pytest.mark.parametrize("events,trials", [(0, 10), (3, 10), (10, 10), (1, 200), (57, 120)])
def test_clopper_pearson_interval_contains_rate(events, trials):
    labels = np.r_[np.ones(trials, int), np.zeros(5, int)]
    scores = np.r_[np.zeros(events), np.ones(trials - events), np.zeros(5)]
    op = operating_point(labels, scores, threshold=0.5)
    assert op.misses == events
    low, high = op.miss_rate_ci
    assert low <= events / trials <= high
    assert (low == 0.0) == (events == 0) and (high == 1.0) == (events == trials)


def test_single_class_split_returns_none_with_reason_and_computes_the_rest():
    labels = np.zeros(6, int)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    reason = missing_class_reason(labels)
    assert reason is not None and "no defective images" in reason
    assert missing_class_reason([1, 1]) is not None
    assert missing_class_reason([0, 1]) is None
    assert image_auroc(labels, scores) is None
    assert average_precision(labels, scores) is None
    assert f1_max(labels, scores) is None
    assert accuracy_max(labels, scores) is None
    assert miss_rate_at_false_alarm_rate(labels, scores, 0.01) is None

    result = image_metrics(labels, scores, threshold=0.45)
    assert result["auroc"] is None and result["not_computed"]["auroc"] == reason
    assert result["miss_rate_at_false_alarm_rate"]["0.01"] is None
    assert "false_alarm_rate_at_miss_rate" in result["not_computed"]
    op = result["operating_point"]
    assert op["false_alarm_rate"] == pytest.approx(2 / 6) and op["miss_rate"] is None
    assert op["false_alarm_rate_ci"] == pytest.approx(clopper_pearson(2, 6, 0.95))
    assert op["miss_rate_ci"] is None
    assert "operating_point.miss_rate" in result["not_computed"]
    assert (result["n_good"], result["n_defect"]) == (6, 0)


def test_image_metrics_bundle_on_two_classes():
    labels, scores = _random_split(3)
    result = image_metrics(labels, scores)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert set(result["miss_rate_at_false_alarm_rate"]) == {"0.01", "0.05"}
    assert set(result["false_alarm_rate_at_miss_rate"]) == {"0", "0.01", "0.05"}
    assert result["operating_point"] is None
    assert set(result["not_computed"]) == {"operating_point"}
    assert result["f1_max"] == pytest.approx(f1_max(labels, scores)[0])


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="labels"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="differ in length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="far"):
        miss_rate_at_false_alarm_rate([0, 1], [0.1, 0.2], 1.5)


def test_per_group_auroc_ranks_each_type_against_all_good():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.25, 0.15])
    groups = ["good", "good", "good", "good", "crack", "crack", "scratch", "scratch"]
    result = per_group_auroc(labels, scores, groups)
    assert list(result) == ["crack", "scratch"]
    assert result["crack"] == 1.0
    keep = np.array([1, 1, 1, 1, 0, 0, 1, 1], bool)
    assert result["scratch"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
    assert per_group_auroc([1, 1], [0.1, 0.2], ["a", "b"]) == {"a": None, "b": None}


# ------------------------------------------------------------------------------ pixel level


def _random_maps(seed: int, n: int = 6, size: int = 32):
    """Smooth-ish random maps ``(n, size, size)`` and masks with a few blobs, some images good."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        if i % 3:  # every third image is good
            for _ in range(rng.integers(1, 3)):
                cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        maps.append(rng.normal(size=(size, size)) + 1.5 * mask)
        masks.append(mask)
    return np.array(maps), np.array(masks)


def _aupro_brute_force(maps, masks, max_fpr):
    """PRO curve by thresholding at every distinct score and labelling regions explicitly."""
    regions = [cc_label(m, connectivity=2) for m in masks]
    good = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & good).sum() / good.sum()
        overlaps = [
            (pred[i][lab == r]).mean()
            for i, lab in enumerate(regions)
            for r in range(1, lab.max() + 1)
        ]
        points.append((fpr, float(np.mean(overlaps))))
    x, y = np.array(points).T
    # area up to max_fpr with the curve interpolated at max_fpr
    area = 0.0
    for k in range(1, len(x)):
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def _two_blob_mask():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # region A, 4 px
    mask[6:9, 6:9] = True  # region B, 9 px
    return mask


def test_aupro_perfect_map_is_one():
    mask = _two_blob_mask()
    assert aupro([mask.astype(float)], [mask]) == pytest.approx(1.0)
    good_image = np.zeros((10, 10))
    assert aupro([mask.astype(float), good_image], [mask, good_image.astype(bool)]) == 1.0


def test_aupro_constant_map_is_half_max_fpr():
    mask = _two_blob_mask()
    # One threshold: nothing flagged -> (0, 0), everything -> (1, 1); the diagonal to 0.3.
    assert aupro([np.full((10, 10), 0.7)], [mask], max_fpr=0.3) == pytest.approx(0.15)


def test_aupro_one_region_found_one_missed_is_half():
    mask = _two_blob_mask()
    rng = np.random.default_rng(0)
    amap = rng.uniform(1.0, 2.0, size=(10, 10))  # good pixels in [1, 2)
    amap[1:3, 1:3] = 5.0  # region A above every good pixel: found at FPR 0
    amap[6:9, 6:9] = 0.0  # region B below every good pixel: only found at FPR 1
    # PRO jumps to 0.5 at FPR 0 and stays there until FPR 1: mean 0.5 over [0, max_fpr].
    for max_fpr in (0.05, 0.3, 0.99):
        assert aupro([amap], [mask], max_fpr=max_fpr) == pytest.approx(0.5)
    # Over the full range the last step (FPR 1, PRO 0.5 -> 1) is vertical: still 0.5.
    assert aupro([amap], [mask], max_fpr=1.0) == pytest.approx(0.5)


def test_aupro_hand_computed_interpolation():
    # 1 region of 2 px, 4 good px. Scores: region (3, 1), good (2, 0, 0, 0).
    amap = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    mask = np.array([[True, True, False], [False, False, False]])
    # Curve: (0,0) -t=3-> (0, .5) -t=2-> (.25, .5) -t=1-> (.25, 1) -t=0-> (1, 1).
    # Area to 0.3: 0.25 * 0.5 + 0.05 * 1 = 0.175 -> / 0.3
    assert aupro([amap], [mask], max_fpr=0.3) == pytest.approx(0.175 / 0.3)
    # Area to 0.2 interpolates inside the flat part: 0.2 * 0.5 / 0.2 = 0.5
    assert aupro([amap], [mask], max_fpr=0.2) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, max_fpr):
    maps, masks = _random_maps(seed, n=4, size=16)
    maps = np.round(maps, 1)  # ties across pixels and images
    expected = _aupro_brute_force(maps, masks, max_fpr)
    assert aupro(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_aupro_none_without_regions():
    maps = [np.random.default_rng(0).normal(size=(8, 8))]
    assert aupro(maps, [np.zeros((8, 8), bool)]) is None
    assert pixel_auroc(maps, [np.zeros((8, 8), bool)]) is None


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_equals_sklearn_on_flattened(seed):
    maps, masks = _random_maps(seed)
    maps = np.round(maps, 1) if seed == 2 else maps
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(list(maps), list(masks)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_binned_pixel_metrics_match_exact(seed):
    maps, masks = _random_maps(seed, n=12, size=48)
    exact_auroc = pixel_auroc(maps, masks)
    exact_pro = aupro(maps, masks)
    # Forced binned with the default number of thresholds, and with a much coarser grid.
    assert pixel_auroc(maps, masks, exact_max_pixels=0) == pytest.approx(exact_auroc, abs=1e-3)
    assert aupro(maps, masks, exact_max_pixels=0) == pytest.approx(exact_pro, abs=1e-3)
    assert pixel_auroc(maps, masks, num_thresholds=2000) == pytest.approx(exact_auroc, abs=1e-3)
    assert aupro(maps, masks, num_thresholds=2000) == pytest.approx(exact_pro, abs=1e-3)


def test_binned_is_exact_on_few_levels():
    maps, masks = _random_maps(1)
    maps = np.round(maps * 4) / 4  # a few dozen distinct levels, all kept as thresholds
    assert pixel_auroc(maps, masks, num_thresholds=1000) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
    )
    assert aupro(maps, masks, num_thresholds=1000) == pytest.approx(aupro(maps, masks), abs=1e-12)


def test_pixel_shape_mismatch_names_index_and_shapes():
    maps = [np.zeros((4, 4)), np.zeros((4, 5))]
    masks = [np.zeros((4, 4), bool), np.zeros((4, 4), bool)]
    with pytest.raises(ValueError, match=r"anomaly map 1 has shape \(4, 5\).*\(4, 4\)"):
        pixel_auroc(maps, masks)
    with pytest.raises(ValueError, match="2 anomaly maps but 1 masks"):
        aupro(maps, masks[:1])


# ------------------------------------------------------------------------------ plots


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_non_empty_pngs(tmp_path):
    labels, scores = _random_split(0, n=80)
    other = scores + np.random.default_rng(1).normal(scale=0.5, size=scores.size)
    op = operating_point(labels, scores, threshold=0.6)

    roc = plots.roc_plot(
        {"patchcore": (labels, scores), "padim": (labels, other), "empty": ([0, 0], [1, 2])},
        tmp_path / "roc.png",
        operating_points={"patchcore": op.roc_point()},
    )
    single = plots.roc_plot((labels, scores), tmp_path / "sub" / "roc1.png")
    hist = plots.score_histogram(labels, scores, 0.6, tmp_path / "hist.png", title="test")
    conf = plots.confusion_plot(op, tmp_path / "confusion.png")
    conf_dict = plots.confusion_plot(op.to_dict(), tmp_path / "confusion2.png")
    for path in (roc, single, hist, conf, conf_dict):
        assert path.exists() and _is_png(path)
    # nothing but the figures is left in the folder (the temporary files were renamed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.png",
        "confusion2.png",
        "hist.png",
        "roc.png",
        "sub",
    ]


def test_defect_type_scores_precision_recall_and_accuracy() -> None:
    true = ["gap", "gap", "gap", "smear", "smear", "bubble"]
    predicted = ["gap", "gap", "smear", "smear", "gap", "gap"]
    result = metrics.defect_type_scores(true, predicted)
    assert result["accuracy"] == pytest.approx(3 / 6)
    per_type = result["per_type"]
    assert per_type["gap"] == {"precision": pytest.approx(2 / 4), "recall": pytest.approx(2 / 3)}
    assert per_type["smear"] == {"precision": pytest.approx(1 / 2), "recall": pytest.approx(1 / 2)}
    # Never predicted: no precision to speak of, and none of its parts named right.
    assert per_type["bubble"] == {"precision": None, "recall": 0.0}
    assert metrics.defect_type_scores([], []) == {"accuracy": None, "per_type": {}}
    with pytest.raises(ValueError, match="2 true types but 1"):
        metrics.defect_type_scores(["a", "b"], ["a"])
