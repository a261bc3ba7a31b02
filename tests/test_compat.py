"""Bundles saved before the layout change (commit 29a8803) still load and score the same.

The fixture is a small PatchCore bundle (64 px images, EfficientNet-Lite0 ImageNet weights from
the pip package) saved by that commit's code, with its test images and the scores that code
gave them.
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
