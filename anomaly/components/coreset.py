"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

The greedy rule repeatedly adds the point farthest from everything chosen so far, which keeps
rare patch patterns that random subsampling would drop. Distances are computed on a seeded random
projection (the paper's approximation) to cut memory traffic.

The published method runs one greedy pass over every training patch, so its time grows with
(patches x coreset size), i.e. with the square of the number of images. Here the pass streams over
chunks of images instead: each chunk's patches start from their distance to the bank chosen so
far, then the chunk adds its share of the coreset greedily. Patterns already covered cost no
picks, and fit time and memory grow linearly with the number of images.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

logger = logging.getLogger(__name__)


class RandomProjection:
    """Seeded Gaussian projection ``(D,) -> (k,)`` that roughly preserves Euclidean distances."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0) -> None:
        self.in_dim = in_dim
        self.out_dim = min(out_dim, in_dim)
        if self.out_dim == in_dim:
            self.matrix = None  # projecting would not make distances any cheaper
        else:
            rng = np.random.default_rng(seed)
            matrix = rng.standard_normal((in_dim, self.out_dim)).astype(np.float32)
            self.matrix = torch.from_numpy((matrix / np.sqrt(self.out_dim)).astype(np.float32))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.matrix is None else features @ self.matrix


def greedy_kcenter(
    points: torch.Tensor,
    n_select: int,
    min_distances: torch.Tensor | None = None,
    start: int = 0,
) -> np.ndarray:
    """Greedy k-center over ``points`` ``(N, k)``; returns ``n_select`` indices into ``points``.

    ``min_distances`` ``(N,)`` holds each point's squared distance to already-selected centres
    (``None`` = none selected yet, start at index ``start``). Each step costs one matrix-vector
    product over the points, so the loop is memory-bound and vectorised.
    """
    n_points = points.shape[0]
    n_select = min(n_select, n_points)
    selected = np.empty(n_select, dtype=np.int64)
    if n_select == 0:
        return selected
    squared_norms = (points * points).sum(dim=1)
    if min_distances is None:
        min_distances = torch.full((n_points,), float("inf"))
        current = start
    else:
        min_distances = min_distances.clone()
        current = int(torch.argmax(min_distances))
    for step in range(n_select):
        selected[step] = current
        centre = points[current]
        distances = squared_norms - 2.0 * (points @ centre) + torch.dot(centre, centre)
        torch.minimum(min_distances, distances, out=min_distances)
        min_distances[current] = -1.0  # a chosen point is never chosen again
        current = int(torch.argmax(min_distances))
    return selected


class StreamingCoreset:
    """Stream chunks of patch features through greedy k-center selection.

    ``add(chunk)`` takes the patch features ``(n, D)`` of a chunk of images and keeps
    ``ceil(ratio * n)`` of them; ``bank()`` returns the kept features ``(M, D)``. One ``add`` of
    every patch is the paper's single global greedy pass.
    """

    def __init__(self, ratio: float, projection_dim: int = 128, seed: int = 0) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset_ratio={ratio}: must be in (0, 1]")
        self.ratio = ratio
        self.projection_dim = projection_dim
        self.seed = seed
        self._projection: RandomProjection | None = None
        self._projected_bank: faiss.IndexFlatL2 | None = None
        self._kept: list[torch.Tensor] = []
        self._rng = np.random.default_rng(seed)
        self.n_seen = 0

    def prime(self, bank: torch.Tensor) -> None:
        """Start from an existing bank ``(M, D)``: later chunks keep only patches far from it.

        The bank's vectors count as already selected but are not returned by :meth:`bank`, which
        then holds only the new picks (this is how good images are added to a fitted model).
        """
        bank = bank.float().contiguous()
        if self.ratio >= 1.0 or bank.shape[0] == 0:
            return
        self._start_projection(bank.shape[1])
        self._projected_bank.add(self._projection(bank).contiguous().numpy())

    def _start_projection(self, dim: int) -> None:
        """Create the seeded projection and its index on the first features seen."""
        if self._projection is None:
            self._projection = RandomProjection(dim, self.projection_dim, self.seed)
            self._projected_bank = faiss.IndexFlatL2(self._projection.out_dim)

    def add(self, features: torch.Tensor) -> None:
        features = features.float().contiguous()
        n_points = features.shape[0]
        self.n_seen += n_points
        if self.ratio >= 1.0:
            self._kept.append(features.clone())
            return
        self._start_projection(features.shape[1])
        projected = self._projection(features).contiguous()
        n_select = max(1, int(np.ceil(self.ratio * n_points)))
        if self._projected_bank.ntotal == 0:
            min_distances = None
        else:
            # Batched search takes faiss's matrix-multiply path: one call for the whole chunk.
            distances, _ = self._projected_bank.search(projected.numpy(), 1)
            min_distances = torch.from_numpy(distances[:, 0].copy())
        start = int(self._rng.integers(n_points))
        chosen = greedy_kcenter(projected, n_select, min_distances, start=start)
        self._projected_bank.add(projected[chosen].numpy())
        self._kept.append(features[chosen].clone())

    def bank(self) -> torch.Tensor:
        if not self._kept:
            raise ValueError("no features were added to the coreset")
        return torch.cat(self._kept)


def merge_coresets(
    banks: list[np.ndarray],
    n_patches: int,
    ratio: float,
    projection_dim: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """One bank from the coresets of shards of the training patches: a coreset of coresets.

    ``banks`` are the shards' coresets ``(M_i, D)``, kept from ``n_patches`` patches in all;
    a final greedy k-center pass over their union (on the same seeded projection) keeps
    ``ceil(ratio * n_patches)`` vectors, the size one pass over every patch keeps, or the whole
    union when it is smaller. Returns rows of the union, in the order they were picked.

    Approximate: a shard's coreset covers its own patches only, so the union covers every patch
    within the largest shard covering radius, and the final pass adds its own radius on top.
    """
    if not banks or not any(len(bank) for bank in banks):
        raise ValueError("no shard coresets to merge")
    union = torch.from_numpy(np.ascontiguousarray(np.concatenate(banks), dtype=np.float32))
    n_select = max(1, int(np.ceil(ratio * n_patches)))
    if n_select >= len(union):
        return union.numpy()
    projected = RandomProjection(union.shape[1], projection_dim, seed)(union).contiguous()
    start = int(np.random.default_rng(seed).integers(len(union)))
    chosen = greedy_kcenter(projected, n_select, start=start)
    return union[chosen].numpy()
