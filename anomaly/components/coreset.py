"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

The greedy rule repeatedly adds the point farthest from everything chosen so far, which keeps
rare patch patterns that random subsampling would drop. Distances are computed on a seeded random
projection (the paper's approximation) to cut memory traffic.

The published method runs one greedy pass over every training patch, so its time grows with
(patches x coreset size), i.e. with the square of the number of images. Here the pass streams over
chunks of images instead: each chunk's patches start from their distance to the bank chosen so
far, then the chunk adds its share of the coreset greedily. Patterns already covered cost no
picks. Measuring every patch against the bank still grows with the bank, so for large fits
``candidates=k`` measures only ``k`` times a chunk's share: the chunk first picks those
candidates greedily among its own patches (a finer cover of the chunk than its share needs),
and its share is then picked among them. The work per image is then a greedy pass whose size
the chunk sets plus a few candidates' search, and fit time stays close to linear in the number
of images (``benchmarks/scale.py`` measures both).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Bank rows compared with the candidates at once (bounds the distance matrix's memory).
_BANK_BLOCK = 16_384


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


class ProjectedBank:
    """The projected vectors chosen so far, and each query's squared distance to the nearest.

    The vectors live in a faiss flat index. A large batch of queries (every patch of a chunk)
    goes through faiss's exact search; a small one (a chunk's few candidates) is compared with
    the index's own storage by blocked matrix products instead, which for a few hundred queries
    is several times faster than faiss's search.
    """

    #: Queries from which faiss's search is used.
    FAISS_MIN_QUERIES = 4096

    def __init__(self, dim: int) -> None:
        self.index = faiss.IndexFlatL2(dim)
        self._norms = np.empty(0, dtype=np.float32)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: torch.Tensor) -> None:
        vectors = vectors.contiguous().numpy()
        self.index.add(vectors)
        self._norms = np.concatenate([self._norms, (vectors * vectors).sum(axis=1)])

    def min_distances(self, queries: torch.Tensor) -> torch.Tensor:
        queries = queries.contiguous()
        if len(queries) >= self.FAISS_MIN_QUERIES:
            distances, _ = self.index.search(queries.numpy(), 1)
            return torch.from_numpy(distances[:, 0].copy())
        # A view of the index's vectors, no copy.
        stored = faiss.rev_swig_ptr(self.index.get_xb(), self.size * self.index.d)
        vectors = torch.from_numpy(stored).view(self.size, self.index.d)
        norms = torch.from_numpy(self._norms)
        nearest = torch.full((len(queries),), float("inf"))
        for start in range(0, self.size, _BANK_BLOCK):
            stop = min(start + _BANK_BLOCK, self.size)
            # |b|^2 - 2 q.b for the block, then the row minimum; |q|^2 is added once at the end.
            block = torch.addmm(
                norms[start:stop].unsqueeze(0), queries, vectors[start:stop].T, alpha=-2.0
            )
            torch.minimum(nearest, block.min(dim=1).values, out=nearest)
        return (nearest + (queries * queries).sum(dim=1)).clamp_(min=0.0)


class StreamingCoreset:
    """Stream chunks of patch features through greedy k-center selection.

    ``add(chunk)`` takes the patch features ``(n, D)`` of a chunk of images and keeps
    ``ceil(ratio * n)`` of them; ``bank()`` returns the kept features ``(M, D)``. One ``add`` of
    every patch is the paper's single global greedy pass. ``candidates`` (0 = every patch)
    bounds how many of a chunk's patches, as a multiple of its picks, are measured against the
    bank (see the module's docstring).
    """

    def __init__(
        self,
        ratio: float,
        projection_dim: int = 128,
        seed: int = 0,
        candidates: int = 0,
    ) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset_ratio={ratio}: must be in (0, 1]")
        if candidates < 0:
            raise ValueError(f"candidates={candidates}: must be 0 (every patch) or more")
        self.ratio = ratio
        self.projection_dim = projection_dim
        self.seed = seed
        self.candidates = candidates
        self._projection: RandomProjection | None = None
        self._projected_bank: ProjectedBank | None = None
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
        self._projected_bank.add(self._projection(bank))

    def _start_projection(self, dim: int) -> None:
        """Create the seeded projection and the projected bank on the first features seen."""
        if self._projection is None:
            self._projection = RandomProjection(dim, self.projection_dim, self.seed)
            self._projected_bank = ProjectedBank(self._projection.out_dim)

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
        start = int(self._rng.integers(n_points))
        if self._projected_bank.size == 0:
            chosen = greedy_kcenter(projected, n_select, start=start)
        else:
            n_candidates = self.candidates * n_select
            if 0 < n_candidates < n_points:
                candidates = greedy_kcenter(projected, n_candidates, start=start)
            else:
                candidates = np.arange(n_points)
            candidate_points = projected[candidates].contiguous()
            distances = self._projected_bank.min_distances(candidate_points)
            chosen = candidates[greedy_kcenter(candidate_points, n_select, distances)]
        self._projected_bank.add(projected[chosen])
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
    chunk_size: int = 8192,
) -> np.ndarray:
    """One bank from the coresets of shards of the training patches: a coreset of coresets.

    ``banks`` are the shards' coresets ``(M_i, D)``, kept from ``n_patches`` patches in all.
    Their union is streamed, ``chunk_size`` vectors at a time (a chunk keeps a large share of
    its vectors, so its greedy pass grows with its square: small chunks keep the merge linear),
    through the same streaming greedy pass (on the same seeded projection), which keeps
    ``ceil(ratio * n_patches)`` vectors, the size one pass over every patch keeps, or the whole
    union when it is smaller. Later shards' vectors are thus kept only where the earlier
    shards' picks do not cover them, as in a local fit.
    Returns rows of the union.

    Approximate: a shard's coreset covers its own patches only, so the union covers every patch
    within the largest shard covering radius, and the final pass adds its own radius on top.
    """
    if not banks or not any(len(bank) for bank in banks):
        raise ValueError("no shard coresets to merge")
    union = torch.from_numpy(np.ascontiguousarray(np.concatenate(banks), dtype=np.float32))
    n_select = max(1, int(np.ceil(ratio * n_patches)))
    if n_select >= len(union):
        return union.numpy()
    coreset = StreamingCoreset(n_select / len(union), projection_dim, seed)
    for start in range(0, len(union), chunk_size):
        coreset.add(union[start : start + chunk_size])
    # Each chunk rounds its share up: drop the surplus, the last chunk's latest picks.
    return coreset.bank()[:n_select].numpy()
