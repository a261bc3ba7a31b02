"""Grad-CAM (Selvaraju et al., ICCV 2017) on the last spatial features of a classifier.

The supervised baseline has no notion of "distance from normal"; Grad-CAM is the standard way
to ask a classifier *where* the evidence for its decision lies, so that the baseline can write
heatmap overlays for rejected parts like the unsupervised models do.

Convolutional networks give a feature map ``(B, C, h, w)`` and need nothing more. Other
layouts (a vision transformer's tokens ``(B, N, C)``, a Swin's ``(B, h, w, C)``) are brought to
that grid by the caller's ``to_grid``; a ViT's class token has no place on it and is left out.
When the features have no grid (``to_grid`` gives ``None``), or the defect score does not
depend on them at all (every gradient is zero: a head that reads only the class token of the
final tokens), the map is **uniform** (zero everywhere) and a warning says so once per process:
the score is still the classifier's, only its heatmaps show no location.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Turns features ``(B, ...)`` (or their gradient, same shape) into a grid ``(B, C, h, w)``, or
#: ``None`` when they have no spatial layout.
ToGrid = Callable[[torch.Tensor], torch.Tensor | None]

_warned: set[str] = set()


class CamNetwork(Protocol):
    """What Grad-CAM needs from a network: its last spatial features and the head on top."""

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> last spatial features, e.g. a conv feature map ``(B, C, h, w)``."""
        ...

    def defect_log_odds(self, features: torch.Tensor) -> torch.Tensor:
        """Features as :meth:`features` gives them -> defect log-odds ``(B,)``."""
        ...


def grad_cam(
    network: CamNetwork, batch: torch.Tensor, to_grid: ToGrid | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Defect log-odds ``(B,)`` (float64) and Grad-CAM maps ``(B, h, w)`` (float32, >= 0).

    ``cam = ReLU(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of d(log-odds)/dA_c, on
    the grid ``to_grid`` makes of the features (``None``: they are ``(B, C, h, w)`` already).
    Features without a grid give uniform maps ``(B, 1, 1)`` of zeros (see the module docstring).
    The network must be in eval mode: batch-norm then uses running statistics, so each image's
    gradient depends on that image alone and the batch can be processed at once.

    Works when called under ``torch.inference_mode`` too (the base class scores that way):
    the gradient is taken in a local ``inference_mode(False)`` block.
    """
    with torch.inference_mode(False):
        # The backbone runs without a graph: only the head needs one, since the gradient is
        # taken with respect to the features, not the weights. This keeps scoring cheap.
        with torch.no_grad():
            features = network.features(batch.clone())
        features = features.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            log_odds = network.defect_log_odds(features)
            (gradients,) = torch.autograd.grad(log_odds.sum(), features)
        scores = log_odds.detach().double().numpy().reshape(-1)
        activations = features.detach()
        if to_grid is not None:
            activations, gradients = to_grid(activations), to_grid(gradients)
        if activations is None or gradients is None or activations.ndim != 4:
            _warn_once(
                f"Grad-CAM: features of shape {tuple(features.shape[1:])} have no spatial grid; "
                "heatmaps are uniform (zero), scores are unaffected"
            )
            return scores, np.zeros((len(scores), 1, 1), dtype=np.float32)
        if not torch.any(gradients):
            _warn_once(
                "Grad-CAM: the defect score does not depend on the spatial features (a head "
                "that reads only a class token?); heatmaps are uniform (zero)"
            )
        alpha = gradients.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((alpha * activations).sum(dim=1))
    return scores, cam.float().numpy()


def _warn_once(message: str) -> None:
    # Once per process: scoring calls Grad-CAM once per batch, and the reason does not change.
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)
