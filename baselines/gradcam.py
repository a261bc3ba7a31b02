"""Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolutional stage of a classifier.

The supervised baseline has no notion of "distance from normal"; Grad-CAM is the standard way
to ask a classifier *where* the evidence for its decision lies, so that the baseline can write
heatmap overlays for rejected parts like the unsupervised models do.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class CamNetwork(Protocol):
    """What Grad-CAM needs from a network: its last conv feature map and the head on top."""

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> last convolutional feature map ``(B, C, h, w)``."""
        ...

    def defect_log_odds(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, C, h, w)`` -> defect log-odds ``(B,)``."""
        ...


def grad_cam(network: CamNetwork, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Defect log-odds ``(B,)`` (float64) and Grad-CAM maps ``(B, h, w)`` (float32, >= 0).

    ``cam = ReLU(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of d(log-odds)/dA_c. The
    network must be in eval mode: batch-norm then uses running statistics, so each image's
    gradient depends on that image alone and the batch can be processed at once.

    Works when called under ``torch.inference_mode`` too (the base class scores that way):
    the gradient is taken in a local ``inference_mode(False)`` block.
    """
    with torch.inference_mode(False):
        # The backbone runs without a graph: only the head needs one, since the gradient is
        # taken with respect to the feature map, not the weights. This keeps scoring cheap.
        with torch.no_grad():
            features = network.features(batch.clone())
        features = features.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            log_odds = network.defect_log_odds(features)
            (gradients,) = torch.autograd.grad(log_odds.sum(), features)
        alpha = gradients.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((alpha * features.detach()).sum(dim=1))
    return (
        log_odds.detach().double().numpy().reshape(-1),
        cam.float().numpy(),
    )
