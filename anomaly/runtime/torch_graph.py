"""The feature graph in PyTorch: normalisation, the frozen backbone and the model's pooling.

:class:`FeatureGraph` is the one definition of a model's features: fitting and torch scoring run
it eagerly (:class:`TorchRuntime`), and ``anomaly export`` traces this same module into ONNX
(:mod:`anomaly.runtime.export`), so an exported graph cannot drift from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly.components.backbones import FeatureExtractor
from anomaly.runtime.inputs import probe_channels, resize_batch

#: A model's pooling: backbone feature maps (one per stage) -> named feature tensors.
Embed = Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]


class FeatureGraph(nn.Module):
    """``uint8`` images ``(B, S, S, 3)`` -> the model's named features.

    The input is the resized ``uint8`` batch of :func:`~anomaly.runtime.inputs.resize_batch`;
    scaling to ``[0, 1]`` and the backbone's normalisation happen here, inside the graph.
    """

    def __init__(self, extractor: FeatureExtractor, embed: Embed) -> None:
        super().__init__()
        self.extractor = extractor
        self.embed = embed
        self.register_buffer("mean", torch.tensor(extractor.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(extractor.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
        x = (x - self.mean) / self.std
        return self.embed(self.extractor(x))


class TorchRuntime:
    """Runs a :class:`FeatureGraph` in PyTorch, eagerly."""

    engine = "torch"

    def __init__(self, extractor: FeatureExtractor, embed: Embed, image_size: int) -> None:
        self.graph = FeatureGraph(extractor, embed).eval()
        self.image_size = image_size
        self._channels: dict[str, int] | None = None

    @torch.inference_mode()
    def tensors(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """The graph's outputs as float32 tensors (fitting keeps them in torch)."""
        batch = torch.from_numpy(resize_batch(images, self.image_size))
        return {name: value.float() for name, value in self.graph(batch).items()}

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self.tensors(images).items()}

    def output_names(self) -> list[str]:
        return sorted(self._probe())

    def channels(self, name: str) -> int:
        return self._probe()[name]

    def _probe(self) -> dict[str, int]:
        if self._channels is None:
            self._channels = probe_channels(self, self.image_size)
        return self._channels

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine}

    def with_threads(self, num_threads: int) -> TorchRuntime:
        return self  # torch's pool is set per call (components.threads.limited_threads)
