"""Bundles saved by earlier code still load and score the same.

The fixtures are small bundles (64 px images, EfficientNet-Lite0 ImageNet weights from the pip
package) saved by an earlier commit's code, with their test images and the scores that code gave
them: a PatchCore bundle from before the layout change (commit 29a8803) and a PaDiM bundle from
before PaDiM scored images by their map's maximum (commit e3bb624).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly.artifacts.bundle import load_bundle

DATA = Path(__file__).parent / "data"
BUNDLE = DATA / "patchcore_bundle_29a8803"


def test_bundle_saved_before_the_layout_change_scores_as_it_did() -> None:
    expected = np.load(DATA / "patchcore_bundle_29a8803_expected.npz", allow_pickle=False)
    model = load_bundle(BUNDLE).set_runtime(num_threads=1, progress=False)
    prediction = model.predict(list(expected["images"]))
    np.testing.assert_allclose(prediction.scores, expected["scores"], rtol=1e-5)
    assert prediction.verdicts == ["OK"] * 3 + ["NG"] * 3
    assert model.threshold_ is not None


def test_padim_bundle_saved_before_image_score_keeps_scoring_by_distance() -> None:
    expected = np.load(DATA / "padim_bundle_e3bb624_expected.npz", allow_pickle=False)
    model = load_bundle(DATA / "padim_bundle_e3bb624").set_runtime(num_threads=1, progress=False)
    assert model.image_score == "distance"  # legacy_params: the rule it was calibrated with
    prediction = model.predict(list(expected["images"]))
    np.testing.assert_allclose(prediction.scores, expected["scores"], rtol=1e-5)
    assert prediction.verdicts == ["OK"] * 3 + ["NG"] * 3
