"""How a model's features are computed: the one step that differs between a fitted model and
its exported copy.

Every model splits in two at its features. Before: the image is resized (:mod:`.inputs`,
numpy and OpenCV), then a *feature graph* normalises it, runs the frozen backbone and applies
the model's own pooling (PatchCore's locally aware patch features, PaDiM's stacked channels, the
hybrid's pooled head features). After: faiss search, Mahalanobis distances, maps, calibration
and verdicts, in numpy, the same code for every runtime.

A runtime runs the feature graph on a batch of images and returns its outputs as numpy arrays:

* :class:`anomaly.runtime.torch_graph.TorchRuntime`: the graph in PyTorch (fitting, and bundles
  that were not exported);
* :mod:`anomaly.runtime.engines`: the same graph exported to ONNX Runtime or OpenVINO
  (``anomaly export``), loaded without importing torch.

So an exported bundle scores through exactly the pathway of the bundle it came from, apart from
the graph itself, whose outputs the export checks against PyTorch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

#: Engines a bundle's ``runtime.engine`` may name.
ENGINES = ("torch", "onnxruntime", "openvino")


class FeatureRuntime(Protocol):
    """Runs a model's feature graph: RGB ``uint8`` images in, named numpy arrays out."""

    engine: str

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]: ...

    def channels(self, name: str) -> int:
        """Channels (dimension 1) of the output ``name``."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a bundle's ``metadata.json`` records under ``runtime``."""
        ...

    def with_threads(self, num_threads: int) -> FeatureRuntime:
        """This runtime on ``num_threads`` threads (0 = every core): itself where the count is
        set per call, a reloaded session where the engine fixes it at load."""
        ...
