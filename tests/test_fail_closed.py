"""Fail closed: a broken score is never a pass, a broken bundle never loads, a bad setting is
refused before any work."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import make_parts_category, save_image
from omegaconf import OmegaConf

from anomaly.artifacts.bundle import load_bundle, save_bundle
from anomaly.artifacts.rundir import read_scores
from anomaly.commands.fit import fit_category
from anomaly.commands.score import score_paths
from anomaly.components.memory_bank import MemoryBank
from anomaly.config import FitConfig
from anomaly.decision import verdict
from anomaly.decision.calibration import Calibration, calibrate
from anomaly.errors import BundleError, ConfigError, DataError
from anomaly.models.base import Prediction
from anomaly.models.padim import PaDiM
from anomaly.models.patchcore import PatchCore

FAST = {"image_size": 64, "progress": False, "num_threads": 1}


def test_a_score_that_is_not_finite_is_never_a_pass() -> None:
    scores = np.array([0.5, np.nan, np.inf, -np.inf, 2.0])
    assert verdict.is_anomalous(scores, 1.0).tolist() == [False, True, True, True, True]
    assert verdict.verdicts(scores, 1.0) == ["OK", "ERROR", "ERROR", "ERROR", "NG"]
    assert Prediction(scores=scores, anomaly_maps=[], threshold=1.0).verdicts[1] == "ERROR"


class NaNOnDark:
    """Stand-in model: the score is the mean brightness, NaN for a dark image (a numeric fault)."""

    model_name = "nan-on-dark"
    batch_size = 4
    progress = False
    defect_types_ = ()

    def __init__(self) -> None:
        self.calibration_ = Calibration(
            threshold=100.0,
            pixel_threshold=100.0,
            method="miss_rate",
            target_miss_rate=0.05,
            target_supported=True,
            confidence=0.95,
            validation={},
            note="stand-in",
            scores_good=[1.0],
            scores_defect=[200.0],
        )

    def check_is_fitted(self) -> None:
        pass

    def get_params(self) -> dict[str, object]:
        return {}

    def score_batch(self, images: list[np.ndarray]) -> Prediction:
        scores = np.array([np.nan if im.mean() < 10 else float(im.mean()) for im in images])
        maps = [np.full(im.shape[:2], s, np.float32) for im, s in zip(images, scores, strict=True)]
        return Prediction(scores=scores, anomaly_maps=maps, threshold=100.0)


def test_scoring_writes_an_error_row_for_a_nan_score_and_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    save_image(folder / "a_dark.png", np.zeros((16, 16, 3), np.uint8))
    save_image(folder / "b_good.png", np.full((16, 16, 3), 50, np.uint8))
    save_image(folder / "c_bright.png", np.full((16, 16, 3), 200, np.uint8))
    run = score_paths(NaNOnDark(), [folder], tmp_path / "run")
    rows = {Path(r.file).name: r for r in read_scores(tmp_path / "run")}
    assert rows["a_dark.png"].verdict == "ERROR" and rows["a_dark.png"].score is None
    assert "not a finite number" in rows["a_dark.png"].error
    assert rows["b_good.png"].verdict == "OK" and rows["c_bright.png"].verdict == "NG"
    assert run.counts["ERROR"] == 1


def test_calibration_refuses_scores_that_are_not_finite() -> None:
    with pytest.raises(DataError, match="1 of 4 validation scores are not finite"):
        calibrate(np.array([1.0, np.nan, 1.2]), np.array([3.0]))


@pytest.fixture(scope="module")
def patchcore(tmp_path_factory):
    root = make_parts_category(tmp_path_factory.mktemp("parts") / "parts", n_train=6)
    train = sorted((root / "train" / "good").glob("*.png"))
    return PatchCore(coreset_ratio=0.5, **FAST).fit(train), tmp_path_factory.mktemp("bundles")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("empty", "memory bank is empty"),
        ("width", "bank vectors have 7 dims"),
        ("nan", "non-finite values"),
        ("metric", "IndexFlatIP, not one of the bank's index types"),
    ],
)
def test_a_faulty_memory_bank_is_refused_at_load(patchcore, fault, message) -> None:
    model, bundles = patchcore
    good_bank = model.memory_bank_
    vectors = good_bank.all_vectors()
    if fault == "empty":
        bank = MemoryBank().fit(np.empty((0, good_bank.dim), np.float32))
    elif fault == "width":
        bank = MemoryBank().fit(vectors[:, :7])
    elif fault == "nan":
        vectors[3, 5] = np.nan
        bank = MemoryBank().fit(vectors)
    else:
        bank = MemoryBank()
        bank.index_ = faiss.IndexFlatIP(good_bank.dim)
        bank.index_.add(vectors)
    model.memory_bank_ = bank
    try:
        # Saved through the normal path: the checksums are right, the content is not.
        path = save_bundle(model, bundles / fault)
    finally:
        model.memory_bank_ = good_bank
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(path)
    assert str(path) in str(caught.value)
    load_bundle(save_bundle(model, bundles / "fine"))  # the same model, unharmed, loads


def test_padim_statistics_that_are_not_finite_are_refused(tmp_path: Path) -> None:
    root = make_parts_category(tmp_path / "parts", n_train=6)
    model = PaDiM(n_features=8, **FAST).fit(sorted((root / "train" / "good").glob("*.png")))
    model.mean_[0, 0] = np.nan
    path = save_bundle(model, tmp_path / "bundle")
    with pytest.raises(BundleError, match="non-finite"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("calibration.target_miss_rate", 1.5, "target_miss_rate=1.5"),
        ("calibration.confidence", 0.0, "confidence=0.0"),
        ("patchcore.coreset_ratio", 0.0, "coreset_ratio"),
    ],
)
def test_bad_settings_are_refused_before_any_data_is_read(tmp_path, key, value, message) -> None:
    config = OmegaConf.structured(FitConfig)
    config.data.root = str(tmp_path / "does-not-exist")  # reading data would fail differently
    config.data.category = "parts"
    OmegaConf.update(config, key, value)
    with pytest.raises((ConfigError, DataError), match=message):
        fit_category(config)


def test_one_good_image_fits_and_says_what_it_cannot_measure(tmp_path: Path) -> None:
    from conftest import textured_part, with_defect

    root = tmp_path / "parts"
    rng = np.random.default_rng(0)
    save_image(root / "good" / "g.png", textured_part(rng))
    for i in range(8):
        save_image(root / "blob" / f"b{i}.png", with_defect(textured_part(rng), rng)[0])
    config = OmegaConf.structured(FitConfig)
    config.data.root, config.data.category = str(tmp_path), "parts"
    config.out, config.image_size, config.runtime.progress = str(tmp_path / "b"), 64, False
    text = fit_category(config).text()
    assert "false-alarm rate n/a (no good test images)" in text


def test_a_bundle_without_its_patch_grid_is_a_bundle_error(patchcore, monkeypatch) -> None:
    model, bundles = patchcore
    full = model.state_tensors()
    monkeypatch.setattr(
        model, "state_tensors", lambda: {k: v for k, v in full.items() if k != "patch_grid"}
    )
    path = save_bundle(model, bundles / "no-grid")
    with pytest.raises(BundleError, match="lack 'patch_grid'"):
        load_bundle(path)
