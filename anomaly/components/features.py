"""Image preprocessing and locally aware patch features (PatchCore, Roth et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.components.backbones import FeatureExtractor
from anomaly.runtime.inputs import resize_batch


def preprocess(
    images: Sequence[np.ndarray],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize RGB ``uint8`` images ``(H, W, 3)`` to ``image_size`` squared (the resize every
    runtime shares, :func:`~anomaly.runtime.inputs.resize_batch`) and normalise.

    Returns a float batch ``(B, 3, image_size, image_size)``. The anomaly models normalise
    inside their feature graph (:mod:`anomaly.runtime.torch_graph`); this is for networks that
    run outside one (the supervised baseline, benchmarks).
    """
    batch = resize_batch(images, image_size).astype(np.float32)
    batch *= 1.0 / 255.0
    batch -= np.asarray(mean, dtype=np.float32)
    batch /= np.asarray(std, dtype=np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def patch_features(
    feature_maps: Sequence[torch.Tensor],
    feature_dim: int | None = None,
    neighbourhood: int = 3,
    padding: str = "zeros",
) -> torch.Tensor:
    """Locally aware patch features on the grid of the first (finest) stage.

    Each location is replaced by the average over its ``neighbourhood`` squared window, so a patch
    vector describes its surroundings. ``padding="zeros"`` counts the window's part beyond the
    map as zeros, as the published PatchCore does (its ``Unfold`` pads with zeros): border
    patches then stay apart from inner ones, so an edge of the part is compared with edges (on
    ELPV validation AUROC 0.901 -> 0.918, on sealant validation false alarms 48% -> 17%).
    ``"ignore"`` averages only the window's part inside the map: this project's choice until
    2026-12-02, kept for the bundles fitted so. Deeper stages are upsampled bilinearly to the
    finest grid and concatenated. When the concatenation is wider than ``feature_dim``,
    adjacent channels are averaged down to ``feature_dim`` (the paper's adaptive average
    pooling); narrower features are kept as they are rather than padded with repeats.

    Returns ``(B, D, h, w)``.
    """
    height, width = feature_maps[0].shape[-2:]
    pooled = []
    for maps in feature_maps:
        maps = F.avg_pool2d(
            maps,
            neighbourhood,
            stride=1,
            padding=neighbourhood // 2,
            count_include_pad=padding == "zeros",
        )
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        pooled.append(maps)
    features = torch.cat(pooled, dim=1)
    if feature_dim is not None and features.shape[1] > feature_dim:
        batch, channels = features.shape[:2]
        flat = features.permute(0, 2, 3, 1).reshape(-1, 1, channels)
        flat = F.adaptive_avg_pool1d(flat, feature_dim)
        features = flat.reshape(batch, height, width, feature_dim).permute(0, 3, 1, 2)
    return features.contiguous()


def stack_features(
    feature_maps: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Concatenate stages on the finest grid, no neighbourhood pooling (PaDiM): ``(B, D, h, w)``."""
    height, width = feature_maps[0].shape[-2:]
    resized = [
        maps
        if maps.shape[-2:] == (height, width)
        else F.interpolate(maps, size=(height, width), mode="nearest")
        for maps in feature_maps
    ]
    return torch.cat(resized, dim=1)


@torch.inference_mode()
def extract(
    extractor: FeatureExtractor, images: Sequence[np.ndarray], image_size: int
) -> list[torch.Tensor]:
    """Run the backbone on a batch of RGB ``uint8`` images; one feature map per stage."""
    batch = preprocess(images, image_size, extractor.mean, extractor.std)
    return extractor(batch)
