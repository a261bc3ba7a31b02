"""The baseline's networks: any timm classifier (a ViT too), close-name errors, grayscale input.

Everything runs offline with random weights (``weights="none"``) on tiny images, one epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from test_baseline import _tiny
from torch import nn

from anomaly.artifacts.bundle import load_bundle, read_metadata, save_bundle
from anomaly.components.backbones import BACKBONES, classifier_spec
from anomaly.errors import BackboneError
from baselines import classifier as classifier_module
from baselines.classifier import ClassifierNetwork, SupervisedClassifier, build_network, luminance
from baselines.gradcam import grad_cam

SMALL = "resnet10t"  # the smallest timm ResNet: a timm name no registered backbone uses
VIT = "vit_tiny_patch16_224"
TEST_VIT = "test_vit"  # timm's own tiny ViT (6 blocks, 160 px): fits in a fraction of a second


def _colour_data(n_good: int, n_defect: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """48 px parts of random colour; a defect is a bright square."""
    rng = np.random.default_rng(seed)
    images, labels = [], [0] * n_good + [1] * n_defect
    for label in labels:
        image = rng.integers(40, 200, (48, 48, 3), dtype=np.uint8)
        if label:
            row, col = rng.integers(4, 32, 2)
            image[row : row + 12, col : col + 12] = 250
        images.append(image)
    return images, labels


def _model(network: str = SMALL, **kwargs) -> SupervisedClassifier:
    """test_baseline's tiny setting (weights none, 32 px, one thread), one epoch."""
    return _tiny(network=network, **{"epochs": 1, **kwargs})


def _fit(model: SupervisedClassifier, seed: int = 0) -> SupervisedClassifier:
    images, labels = _colour_data(8, 6, seed)
    val_images, val_labels = _colour_data(4, 4, seed + 1)
    return model.fit(images, labels, validation=(val_images, val_labels))


# --------------------------------------------------------------------------- names


def test_unknown_network_fails_before_any_image_is_read_and_suggests_close_names() -> None:
    # Paths that do not exist: reading any image first would raise ImageReadError instead.
    with pytest.raises(BackboneError, match=r"'resnet34x'.*did you mean resnet34\b"):
        _model("resnet34x").fit(["missing/a.png", "missing/b.png"], [0, 1])
    with pytest.raises(BackboneError, match=r"'vit_tiny'.*vit_tiny_patch16_224"):
        classifier_spec("vit_tiny")
    with pytest.raises(BackboneError, match=r"resnet50\.nosuchtag.*resnet50\.a1_in1k"):
        classifier_spec("resnet50.nosuchtag")


def test_specs_come_from_timm_and_registered_networks_keep_their_pip_weights() -> None:
    vit = classifier_spec(VIT)
    assert (vit.mean, vit.std, vit.input_size, vit.fixed_input_size) == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        224,
        True,
    )
    resnet50 = classifier_spec("resnet50")
    assert resnet50.mean == pytest.approx(timm.models.get_pretrained_cfg("resnet50").mean)
    assert not resnet50.fixed_input_size
    # The timm name of a registered backbone is that backbone: pip-shipped ImageNet weights.
    assert classifier_spec("tf_efficientnet_lite0") is BACKBONES["efficientnet_lite0"]
    assert classifier_spec("mobilenet_v3_large") is BACKBONES["mobilenet_v3_large"]


def test_a_timm_network_without_weights_offline_trains_from_scratch_and_says_how_to_get_them(
    monkeypatch, caplog
) -> None:
    def offline(name, weights):
        raise BackboneError(f"backbone {name!r}: cannot build classifier: no internet")

    monkeypatch.setattr(classifier_module, "create_classifier", offline)
    with caplog.at_level(logging.WARNING):
        network, initialisation = build_network(SMALL, "imagenet", "binary", 32)
    assert network.weights_source == "random" and "trained from scratch" in initialisation
    assert "TRAINING FROM SCRATCH" in caplog.text
    assert f"timm.create_model('{SMALL}', pretrained=True)" in caplog.text


def test_config_keys_reach_the_model() -> None:
    from anomaly.commands.fit import build_model
    from anomaly.config import FitConfig, build_config

    config = build_config(
        FitConfig, None, ["model=baseline", f"baseline.network={VIT}", "baseline.grayscale=true"]
    )
    model = build_model(config)
    assert (model.backbone, model.grayscale) == (VIT, True)


# --------------------------------------------------------------------------- a generic timm CNN


def test_generic_timm_network_fits_scores_and_round_trips_without_downloading(
    tmp_path: Path, monkeypatch
) -> None:
    model = _fit(_model())
    val_images, val_labels = _colour_data(4, 4, seed=1)
    model.calibrate(val_images, val_labels)
    before = model.predict(val_images)
    assert np.all((before.scores > 0) & (before.scores < 1))
    assert before.anomaly_maps[0].shape == (48, 48)
    # The network's own normalisation (timm's pretrained config), not another network's.
    assert model.extractor_.mean == pytest.approx(timm.models.get_pretrained_cfg(SMALL).mean)

    bundle = save_bundle(model, tmp_path / "bundle")
    assert read_metadata(bundle)["params"]["network"] == SMALL
    built = []
    create_model = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        built.append((name, pretrained))
        return create_model(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    loaded = load_bundle(bundle)
    assert built == [(SMALL, False)]  # the architecture only; the weights are the bundle's
    after = loaded.predict(val_images)
    np.testing.assert_array_equal(after.scores, before.scores)
    for a, b in zip(after.anomaly_maps, before.anomaly_maps, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.training_info()["timm_name"] == SMALL
    assert loaded.initialisation_ == "random (weights=none): trained from scratch"


# --------------------------------------------------------------------------- a ViT


def test_vit_runs_at_its_own_size_and_round_trips(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        model = _fit(_model(TEST_VIT, input_size=32, train_batch_size=7))
    assert "running at 160 px, not baseline.input_size=32" in caplog.text
    assert model.extractor_.input_size == 160 and model.extractor_.split_before_last_block

    images, _ = _colour_data(2, 1, seed=5)
    prediction = model.predict(images)
    assert [m.shape for m in prediction.anomaly_maps] == [(48, 48)] * 3
    loaded = load_bundle(save_bundle(model, tmp_path / "vit"))
    assert loaded.extractor_.input_size == 160
    np.testing.assert_array_equal(loaded.predict(images).scores, prediction.scores)
    for a, b in zip(loaded.predict(images).anomaly_maps, prediction.anomaly_maps, strict=True):
        np.testing.assert_array_equal(a, b)


def test_vit_grad_cam_is_split_before_the_last_block_and_located_on_the_patch_grid() -> None:
    torch.manual_seed(0)
    network, _ = build_network(VIT, "none", "binary", 224)
    network.eval()
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # the split computes exactly the classifier's output
        torch.testing.assert_close(network(batch), network.model(batch)[:, 0])
    _, cams = grad_cam(network, batch, network.cam_grid)
    assert cams.shape == (2, 14, 14)  # 224 / 16 patches a side, the class token left out
    # After the last block the head reads the class token only: every patch gradient would be
    # zero and the map uniform. Before it, the map has a location.
    assert np.ptp(cams, axis=(1, 2)).min() > 0


def test_features_without_a_grid_give_uniform_maps_not_a_crash() -> None:
    class Tokens:
        """Five tokens (not a square grid), score = their mean."""

        def features(self, batch: torch.Tensor) -> torch.Tensor:
            return batch.flatten(2)[:, :, :5].transpose(1, 2)

        def defect_log_odds(self, features: torch.Tensor) -> torch.Tensor:
            return features.mean(dim=(1, 2))

    network = ClassifierNetwork("toy", nn.Identity(), BACKBONES["resnet18"], "binary", "random")
    log_odds, cams = grad_cam(Tokens(), torch.rand(2, 3, 4, 4), network.cam_grid)
    assert log_odds.shape == (2,) and cams.shape == (2, 1, 1) and not cams.any()


def test_cam_grid_lays_out_tokens_and_channels_last_maps() -> None:
    vit_like = nn.Module()
    vit_like.num_prefix_tokens = 1
    network = ClassifierNetwork("toy", vit_like, BACKBONES["resnet18"], "binary", "random")
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # class + 2x2 patches
    grid = network.cam_grid(tokens)
    assert grid.shape == (2, 3, 2, 2)
    torch.testing.assert_close(grid[:, :, 1, 0], tokens[:, 3])  # patch 2 (after the class token)
    swin_like = nn.Module()
    swin_like.output_fmt = "NHWC"
    nhwc = torch.rand(1, 7, 7, 8)
    network = ClassifierNetwork("toy", swin_like, BACKBONES["resnet18"], "binary", "random")
    torch.testing.assert_close(network.cam_grid(nhwc), nhwc.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------- grayscale


def test_luminance_keeps_grey_images_and_drops_colour() -> None:
    grey = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    np.testing.assert_array_equal(luminance(grey), grey)
    red, blue = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    assert luminance(red)[0, 0, 0] != luminance(blue)[0, 0, 0]  # brightness, not hue, is kept
    assert np.all(luminance(red) == luminance(red)[..., :1])


def test_grayscale_scores_a_colour_image_as_its_grey_equivalent(tmp_path: Path) -> None:
    colour, _ = _colour_data(3, 2, seed=7)
    grey = [
        np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
        for image in colour
    ]
    model = _fit(_model(grayscale=True))
    from_colour, from_grey = model.predict(colour), model.predict(grey)
    np.testing.assert_array_equal(from_colour.scores, from_grey.scores)
    for a, b in zip(from_colour.anomaly_maps, from_grey.anomaly_maps, strict=True):
        np.testing.assert_array_equal(a, b)

    loaded = load_bundle(save_bundle(model, tmp_path / "grey"))
    assert loaded.grayscale is True
    np.testing.assert_array_equal(loaded.predict(colour).scores, from_colour.scores)
    np.testing.assert_array_equal(loaded.predict(grey).scores, from_colour.scores)

    in_colour = _fit(_model(grayscale=False))
    assert not np.array_equal(in_colour.predict(colour).scores, in_colour.predict(grey).scores)
