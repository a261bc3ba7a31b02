"""The supervised baseline: imbalance handling, early stopping, Grad-CAM, bundles, CLI."""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image

from anomaly.artifacts.bundle import load_bundle, read_metadata, save_bundle
from anomaly.errors import BackboneError, DataError
from baselines import classifier as classifier_module
from baselines.classifier import (
    EpochRecord,
    SupervisedClassifier,
    augment,
    best_epoch,
    build_network,
    class_weights,
    epoch_order,
    is_better,
)
from baselines.gradcam import grad_cam

SIZE = 32


def _image(rng: np.random.Generator, defect: bool, size: int = 48) -> np.ndarray:
    image = rng.integers(90, 110, (size, size, 3), dtype=np.uint8)
    if defect:
        row, col = rng.integers(4, size - 16, 2)
        image[row : row + 12, col : col + 12] = 250
    return image


def _data(n_good: int, n_defect: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [0] * n_good + [1] * n_defect
    return [_image(rng, bool(label)) for label in labels], labels


def _tiny(**kwargs) -> SupervisedClassifier:
    params = dict(
        network="resnet18",
        weights="none",
        input_size=SIZE,
        epochs=2,
        patience=2,
        train_batch_size=8,
        progress=False,
        num_threads=1,
    )
    params.update(kwargs)
    return SupervisedClassifier(**params)


# --------------------------------------------------------------------------- imbalance


def test_class_weights_follow_the_counts() -> None:
    weights = class_weights([0] * 30 + [1] * 10)
    # n / (2 n_c): 40 / 60 for good, 40 / 20 for defects; each class carries half the weight.
    np.testing.assert_allclose(weights, [40 / 60, 2.0])
    assert weights[0] * 30 == pytest.approx(weights[1] * 10)
    np.testing.assert_allclose(class_weights([0, 1, 0, 1]), [1.0, 1.0])


def test_class_weights_need_both_classes() -> None:
    with pytest.raises(DataError, match="0 defect"):
        class_weights([0, 0, 0])


def test_weighted_loss_gives_each_class_half_the_weight() -> None:
    model = _tiny()
    target = torch.tensor([0, 0, 0, 1])
    weights = torch.tensor(class_weights(target.numpy()), dtype=torch.float32)
    # Loss 1 on every good image, 0 on the defect: a weighted mean of 0.5.
    log_odds = torch.tensor([0.5413, 0.5413, 0.5413, 50.0])  # softplus(0.5413) = 1.0
    assert float(model._loss(log_odds, target, weights)) == pytest.approx(0.5, abs=1e-3)


def test_sampler_balances_the_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    draws = np.concatenate([epoch_order(labels, "sampler", rng, generator) for _ in range(20)])
    assert labels[draws].mean() == pytest.approx(0.5, abs=0.05)
    plain = epoch_order(labels, "class_weights", rng, generator)
    assert sorted(plain) == list(range(100))  # a permutation: every image once


# --------------------------------------------------------------------------- early stopping


def _record(epoch: int, loss: float, miss: float | None) -> EpochRecord:
    return EpochRecord(
        epoch, train_loss=0.0, val_loss=loss, val_miss_rate=miss, val_auroc=None, seconds=0.0
    )


def test_stopping_rule_keys_on_the_miss_rate_not_the_loss() -> None:
    low_miss = _record(1, loss=0.9, miss=0.10)
    low_loss = _record(2, loss=0.1, miss=0.20)
    assert is_better(low_miss, low_loss)
    assert not is_better(low_loss, low_miss)
    assert best_epoch([low_miss, low_loss]).epoch == 1


def test_stopping_rule_breaks_ties_on_the_loss() -> None:
    history = [_record(1, 0.5, 0.1), _record(2, 0.3, 0.1), _record(3, 0.4, 0.1)]
    assert best_epoch(history).epoch == 2


def test_stopping_rule_uses_the_loss_when_no_miss_rate() -> None:
    assert is_better(_record(2, 0.2, None), _record(1, 0.3, 0.0))
    assert not is_better(_record(2, 0.4, None), _record(1, 0.3, None))


def test_training_stops_on_the_miss_rate_and_restores_that_epoch(monkeypatch) -> None:
    """Validation loss keeps falling while the miss rate rises: epoch 1 must win."""
    scripted = iter([(0.50, 0.10, 0.9), (0.30, 0.20, 0.8), (0.20, 0.30, 0.7), (0.1, 0.4, 0.6)])
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_validate(self, network, val_x, val_y):
        snapshots.append({k: v.clone() for k, v in network.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(SupervisedClassifier, "_validate", fake_validate)
    images, labels = _data(12, 6, seed=0)
    val_images, val_labels = _data(4, 4, seed=1)
    model = _tiny(epochs=4, patience=2)
    model.fit(images, labels, validation=(val_images, val_labels))
    assert model.epochs_run_ == 3  # epochs 2 and 3 brought no better miss rate: stop
    assert model.best_epoch_ == 1
    assert [h["val_miss_rate"] for h in model.history_] == [0.10, 0.20, 0.30]
    restored = model.extractor_.state_dict()
    for key, value in snapshots[0].items():
        torch.testing.assert_close(restored[key], value)
    changed = any(
        not torch.equal(restored[k], v) for k, v in snapshots[-1].items() if v.is_floating_point()
    )
    assert changed, "the last epoch's weights were kept instead of the best epoch's"


# --------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_the_defect() -> None:
    image = np.full((1, 64, 64, 3), 100, dtype=np.uint8)
    image[0, 24:40, 24:40] = 250
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(image, rng, max_rotation=10.0)
        assert out.shape == image.shape and out.dtype == np.uint8
        bright = (out[0, :, :, 0] > 200).sum()
        assert 0.8 * 256 <= bright <= 1.2 * 256  # flips and <= 10 degrees keep the square
    assert np.array_equal(
        augment(image, np.random.default_rng(1), 0.0)[0, 24:40, 24:40], image[0, 24:40, 24:40]
    )


# --------------------------------------------------------------------------- Grad-CAM


class _ToyNetwork:
    """Features = the red channel; log-odds = its mean: evidence lies where red is bright."""

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, :1]

    def defect_log_odds(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(1, 2, 3))


def test_grad_cam_points_at_the_evidence_even_under_inference_mode() -> None:
    batch = torch.zeros(2, 3, 8, 8)
    batch[0, 0, 2:4, 5:7] = 1.0
    with torch.inference_mode():
        log_odds, cams = grad_cam(_ToyNetwork(), batch)
    assert log_odds.shape == (2,) and cams.shape == (2, 8, 8)
    assert log_odds[0] > log_odds[1]
    assert cams[0][2:4, 5:7].min() > 0 and cams[0].sum() == pytest.approx(cams[0][2:4, 5:7].sum())
    assert cams[1].max() == 0


# --------------------------------------------------------------------------- initialisation


def test_missing_imagenet_weights_fall_back_to_scratch_and_say_so(monkeypatch, caplog) -> None:
    def offline(name, weights):
        raise BackboneError(f"backbone {name!r}: cannot build classifier: no internet")

    monkeypatch.setattr(classifier_module, "create_classifier", offline)
    with caplog.at_level(logging.WARNING):
        network, initialisation = build_network("mobilenet_v3_large", "imagenet", "binary")
    assert network.weights_source == "random"
    assert "trained from scratch" in initialisation
    assert "TRAINING FROM SCRATCH" in caplog.text
    assert network.model.get_classifier().out_features == 1


def test_explicit_weight_file_never_falls_back(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"missing\.pth"):
        build_network("resnet18", str(tmp_path / "missing.pth"), "binary")


def test_efficientnet_lite0_starts_from_imagenet() -> None:
    network, initialisation = build_network("efficientnet_lite0", "imagenet", "two_class")
    assert initialisation.startswith("ImageNet (package:")
    assert network.model.get_classifier().out_features == 2


# --------------------------------------------------------------------------- fit, score, bundle


def test_fit_rejects_bad_labels() -> None:
    images, _ = _data(3, 0, seed=0)
    with pytest.raises(DataError, match="good and defective"):
        _tiny().fit(images, [0, 0, 0])
    with pytest.raises(DataError, match="3 images but 2 labels"):
        _tiny().fit(images, [0, 1])
    with pytest.raises(DataError, match="needs labels"):
        _tiny().fit(images)


@pytest.mark.parametrize("head", ["binary", "two_class"])
def test_bundle_round_trip_gives_identical_scores_and_holds_no_pickle(
    tmp_path: Path, head: str
) -> None:
    images, labels = _data(10, 6, seed=0)
    val_images, val_labels = _data(6, 4, seed=1)
    model = _tiny(head=head, imbalance="sampler" if head == "two_class" else "class_weights")
    model.fit(images, labels, validation=(val_images, val_labels))
    model.calibrate(val_images, val_labels)
    before = model.predict(val_images)
    assert np.all((before.scores > 0) & (before.scores < 1))  # defect probabilities
    assert before.anomaly_maps[0].shape == val_images[0].shape[:2]

    bundle = save_bundle(model, tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "config.yaml",
        "metadata.json",
        "model.safetensors",
    ]
    for file in bundle.iterdir():
        head_bytes = file.read_bytes()[:2]
        assert head_bytes[:1] != b"\x80" and head_bytes != b"PK", f"{file} looks pickled/zipped"
    raw = (bundle / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "training_info" in header and any(k.startswith("network.") for k in header)

    loaded = load_bundle(bundle)
    after = loaded.predict(val_images)
    np.testing.assert_array_equal(after.scores, before.scores)
    for a, b in zip(after.anomaly_maps, before.anomaly_maps, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.threshold_ == model.threshold_
    assert (
        loaded.initialisation_
        == model.initialisation_
        == ("random (weights=none): trained from scratch")
    )
    assert loaded.n_train_defects_ == 6 and loaded.history_ == model.history_
    assert read_metadata(bundle)["backbone"]["weights_source"] == "random"


# --------------------------------------------------------------------------- CLI


def make_folder_category(root: Path, n_good: int = 25, n_defect: int = 15, seed: int = 0) -> Path:
    """Folder layout ``root/good``, ``root/crack`` (+ masks): the split leaves train defects."""
    rng = np.random.default_rng(seed)
    for i in range(n_good):
        save_image(root / "good" / f"{i:03d}.png", _image(rng, False))
    for i in range(n_defect):
        image = _image(rng, False)
        mask = np.zeros(image.shape[:2], np.uint8)
        row, col = rng.integers(4, 32, 2)
        image[row : row + 12, col : col + 12] = 250
        mask[row : row + 12, col : col + 12] = 255
        save_image(root / "crack" / f"{i:03d}.png", image)
        save_image(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


def test_cli_fit_and_score_write_heatmaps(tmp_path: Path, capsys) -> None:
    from anomaly.commands.cli import main

    make_folder_category(tmp_path / "data" / "part")
    bundle = tmp_path / "runs" / "baseline"
    code = main(
        [
            "fit",
            "--category",
            "part",
            "--data-root",
            str(tmp_path / "data"),
            "--model",
            "baseline",
            "--out",
            str(bundle),
            "baseline.network=resnet18",
            "backbone.weights=none",
            f"baseline.input_size={SIZE}",
            "baseline.epochs=2",
            "baseline.train_batch_size=8",
            "runtime.progress=false",
            "runtime.num_threads=1",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "initialisation: random (weights=none): trained from scratch" in text
    assert "labelled training images" in text
    out = tmp_path / "score"
    code = main(
        [
            "score",
            "--model",
            str(bundle),
            "--split",
            "test",
            "--out",
            str(out),
            "runtime.progress=false",
            "runtime.num_threads=1",
        ]
    )
    assert code == 0
    rows = (out / "scores.csv").read_text().splitlines()
    n_rejected = sum(",NG," in row for row in rows)
    assert len(list((out / "heatmaps").glob("*.png"))) == n_rejected


def test_fit_samples_learns_from_every_labelled_train_sample_in_order(monkeypatch) -> None:
    from anomaly.data.dataset import Sample

    def sample(i: int, label: int, split: str) -> Sample:
        return Sample(f"{split}{i}.png", label, "crack" if label else "good", split)

    train = [sample(i, label, "train") for i, label in enumerate([0, 1, 0, 0, 1])]
    val = [sample(i, label, "val") for i, label in enumerate([1, 0])]
    calls = []
    monkeypatch.setattr(
        SupervisedClassifier, "fit", lambda self, *args, **kwargs: calls.append((args, kwargs))
    )
    # The cap on good images is for unsupervised models: the baseline keeps the whole split.
    _tiny().fit_samples(train, val, max_good_images=1, subset_seed=3)
    ((paths, labels), kwargs) = calls[0]
    assert paths == [s.path for s in train] and labels == [0, 1, 0, 0, 1]
    assert kwargs == {"validation": ([s.path for s in val], [1, 0])}


def test_threads_are_put_back_after_fit_and_scoring() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        images, labels = _data(6, 4, seed=0)
        model = _tiny(epochs=1, num_threads=1).fit(images, labels)
        assert torch.get_num_threads() == 2
        model.score_arrays(images[:2])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_docstrings_state_the_default_number_of_epochs() -> None:
    default = inspect.signature(SupervisedClassifier).parameters["epochs"].default
    stated = re.findall(r"(\d+) epochs", classifier_module.__doc__ or "")
    assert stated and {int(n) for n in stated} == {default}
