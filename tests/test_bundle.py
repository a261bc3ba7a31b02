"""Model bundles: the model contract loads them, their files get the usual modes, and files
that start like a pickle or a zip archive (a torch checkpoint) are never loaded.

The round trips of each model live with the model's tests (test_patchcore, test_padim,
test_baseline); bundles saved before the layout change, in test_compat.
"""

from __future__ import annotations

import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import textured_part
from safetensors.numpy import load_file
from test_files import umask  # noqa: F401  (the fixture: each test runs under two umasks)

from anomaly.artifacts.bundle import TENSORS, load_bundle, read_metadata, save_bundle
from anomaly.components.backbones import FeatureExtractor
from anomaly.errors import BundleError, NotFittedError
from anomaly.models import PaDiM, PatchCore
from anomaly.models.patchcore import BANK_FILE


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [textured_part(rng) for _ in range(6)]


@pytest.fixture(scope="module")
def fitted(images: list[np.ndarray]) -> PatchCore:
    model = PatchCore(image_size=64, coreset_ratio=0.25, progress=False, num_threads=1)
    model.fit(images[:4])
    return model.calibrate(images[4:] + images[:2], [0, 0, 1, 1], target_miss_rate=0.5)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- the contract
def test_from_bundle_is_what_load_bundle_does(fitted, images, tmp_path):
    bundle = save_bundle(fitted, tmp_path / "model")
    metadata = read_metadata(bundle)
    model = PatchCore.from_bundle(bundle, metadata, load_file(str(bundle / TENSORS)))
    model.check_is_fitted()
    np.testing.assert_array_equal(
        model.predict(images).scores, load_bundle(bundle).predict(images).scores
    )
    assert model.threshold_ == fitted.threshold_ and model.metadata_ == metadata
    assert model.n_train_images_ == 4


def test_a_bundle_of_another_model_is_refused(fitted, tmp_path):
    bundle = save_bundle(fitted, tmp_path / "model")
    with pytest.raises(BundleError, match="holds a 'patchcore' model, not 'padim'"):
        PaDiM.from_bundle(bundle, read_metadata(bundle), load_file(str(bundle / TENSORS)))


def test_other_backbone_weights_are_refused(fitted, tmp_path, monkeypatch):
    bundle = save_bundle(fitted, tmp_path / "model")
    monkeypatch.setattr(FeatureExtractor, "weights_sha256", lambda self: "0" * 64)
    with pytest.raises(BundleError, match="weights differ from those the model was fitted with"):
        load_bundle(bundle)


def test_check_is_fitted_is_public_and_names_the_class():
    with pytest.raises(NotFittedError, match="PaDiM is not fitted"):
        PaDiM().check_is_fitted()


def test_an_unfitted_model_is_not_saved(tmp_path):
    with pytest.raises(NotFittedError):
        save_bundle(PatchCore(), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_file_in_the_way_is_not_overwritten(fitted, tmp_path):
    (tmp_path / "model").write_text("not a bundle")
    with pytest.raises(BundleError, match="exists and is not a bundle directory"):
        save_bundle(fitted, tmp_path / "model")
    assert (tmp_path / "model").read_text() == "not a bundle"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# --------------------------------------------------------------------------- file modes
def test_bundle_directory_and_files_get_the_usual_mode(fitted, tmp_path, umask):  # noqa: F811
    # mkdtemp made bundle directories 0700: the QA team could not open them.
    bundle = save_bundle(fitted, tmp_path / "model")
    assert _mode(bundle) == 0o777 & ~umask
    for file in bundle.iterdir():
        assert _mode(file) == 0o666 & ~umask, file
    replaced = save_bundle(fitted, tmp_path / "model")  # the swap over an existing bundle
    assert _mode(replaced) == 0o777 & ~umask


# --------------------------------------------------------------------------- unsafe formats
def _save_with_bank_file(model: PatchCore, path: Path, content: bytes, monkeypatch) -> Path:
    """Save ``model`` with ``content`` as its faiss file: listed and checksummed like any file."""

    def write(self: PatchCore, bundle_dir: Path) -> None:
        (bundle_dir / BANK_FILE).write_bytes(content)

    with monkeypatch.context() as patch:
        patch.setattr(PatchCore, "write_extra_files", write)
        return save_bundle(model, path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_disguised_as_the_index_is_refused(fitted, tmp_path, monkeypatch, protocol):
    content = pickle.dumps({"evil": True}, protocol=protocol)
    bundle = _save_with_bank_file(fitted, tmp_path / "model", content, monkeypatch)
    with pytest.raises(BundleError, match=r"memory_bank\.faiss: holds pickle data"):
        load_bundle(bundle)


def test_torch_checkpoint_disguised_as_the_index_is_refused(fitted, tmp_path, monkeypatch):
    # torch.save writes a zip archive (PK\x03\x04): the former check looked for pickle's 0x80
    # only and let it through to faiss.
    checkpoint = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, checkpoint)
    content = checkpoint.read_bytes()
    assert content[:4] == b"PK\x03\x04"
    bundle = _save_with_bank_file(fitted, tmp_path / "model", content, monkeypatch)
    with pytest.raises(BundleError, match=r"memory_bank\.faiss: holds a zip archive"):
        load_bundle(bundle)
