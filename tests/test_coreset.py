"""Greedy k-center coreset: far-apart picks, streaming warm start, determinism."""

from __future__ import annotations

import numpy as np
import torch

from anomaly.components.coreset import ProjectedBank, StreamingCoreset, greedy_kcenter


def _clusters(centres: np.ndarray, per_cluster: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    points = [c + 0.01 * rng.standard_normal((per_cluster, centres.shape[1])) for c in centres]
    return torch.from_numpy(np.concatenate(points).astype(np.float32))


def _covering_radius(points: np.ndarray, centres: np.ndarray) -> float:
    distances = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)
    return float(distances.min(axis=1).max())


def _one_pass(points: torch.Tensor, ratio: float, projection_dim: int, seed: int = 0) -> np.ndarray:
    """The bank PatchCore keeps when all patches come in one chunk: the paper's global pass."""
    coreset = StreamingCoreset(ratio, projection_dim=projection_dim, seed=seed)
    coreset.add(points)
    return coreset.bank().numpy()


def test_greedy_picks_one_point_in_each_far_cluster():
    centres = np.eye(6, 16, dtype=np.float32) * 10
    points = _clusters(centres, per_cluster=50)
    chosen = greedy_kcenter(points, 6)
    assert sorted(set(chosen // 50)) == list(range(6))


def test_greedy_covers_better_than_random_sampling():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((2000, 8)).astype(np.float32) ** 3  # heavy tails
    bank = _one_pass(torch.from_numpy(points), ratio=0.02, projection_dim=8)
    random = rng.choice(len(points), size=len(bank), replace=False)
    assert _covering_radius(points, bank) < _covering_radius(points, points[random])


def test_streaming_does_not_spend_picks_on_patterns_already_covered():
    centres = np.eye(3, 16, dtype=np.float32) * 10
    first = _clusters(centres[:2], per_cluster=50, seed=0)
    # The second chunk repeats the two known patterns and brings one new one.
    second = torch.cat([_clusters(centres[:2], 45, seed=1), _clusters(centres[2:], 10, seed=2)])
    coreset = StreamingCoreset(ratio=0.02, projection_dim=16, seed=0)
    coreset.add(first)
    coreset.add(second)
    bank = coreset.bank().numpy()
    assert len(bank) == 4
    nearest_centre = np.linalg.norm(bank[:, None] - centres[None], axis=2).argmin(axis=1)
    assert set(nearest_centre) == {0, 1, 2}


def test_coreset_is_deterministic_for_a_seed():
    points = torch.from_numpy(
        np.random.default_rng(3).standard_normal((500, 32)).astype(np.float32)
    )
    a = _one_pass(points, 0.1, projection_dim=8, seed=7)
    b = _one_pass(points, 0.1, projection_dim=8, seed=7)
    assert np.array_equal(a, b)
    assert len(np.unique(a, axis=0)) == len(a) == 50
    other = _one_pass(points, 0.1, projection_dim=8, seed=8)
    assert not np.array_equal(a, other)  # the seed decides the start and the projection


def test_candidates_change_nothing_when_they_cover_the_whole_chunk():
    points = torch.from_numpy(
        np.random.default_rng(4).standard_normal((600, 16)).astype(np.float32)
    )
    banks = []
    for candidates in (0, 50):  # 50 x 6 picks per chunk >= its 200 patches: every patch
        coreset = StreamingCoreset(0.03, projection_dim=8, seed=1, candidates=candidates)
        for start in range(0, 600, 200):
            coreset.add(points[start : start + 200])
        banks.append(coreset.bank().numpy())
    np.testing.assert_array_equal(banks[0], banks[1])


def test_candidates_still_skip_patterns_the_bank_covers():
    centres = np.eye(3, 16, dtype=np.float32) * 10
    first = _clusters(centres[:2], per_cluster=50, seed=0)
    second = torch.cat([_clusters(centres[:2], 45, seed=1), _clusters(centres[2:], 10, seed=2)])
    coreset = StreamingCoreset(ratio=0.02, projection_dim=16, seed=0, candidates=2)
    coreset.add(first)
    coreset.add(second)  # 2 picks among 4 candidates out of 100 patches
    bank = coreset.bank().numpy()
    nearest_centre = np.linalg.norm(bank[:, None] - centres[None], axis=2).argmin(axis=1)
    assert len(bank) == 4 and set(nearest_centre) == {0, 1, 2}


def test_bank_distances_agree_for_small_and_large_query_batches():
    rng = np.random.default_rng(5)
    bank = ProjectedBank(8)
    for _ in range(3):  # grown in steps, as chunks add their picks
        bank.add(torch.from_numpy(rng.standard_normal((700, 8)).astype(np.float32)))
    queries = torch.from_numpy(rng.standard_normal((ProjectedBank.FAISS_MIN_QUERIES, 8)))
    queries = queries.float()
    large = bank.min_distances(queries)  # faiss's search
    small = torch.cat([bank.min_distances(queries[i : i + 100]) for i in range(0, 4096, 100)])
    stored = np.concatenate([bank.index.reconstruct_n(0, bank.size)])
    exact = ((queries.numpy()[:, None] - stored[None]) ** 2).sum(axis=2).min(axis=1)
    np.testing.assert_allclose(small.numpy(), exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(large.numpy(), exact, rtol=1e-4, atol=1e-4)
