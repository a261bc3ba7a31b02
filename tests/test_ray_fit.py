"""Fitting in shards: the good images reduced apart and merged (PaDiM's sums, PatchCore's
coreset of coresets), tested without Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_parts_category

from anomaly.components.coreset import merge_coresets
from anomaly.models.base import AnomalyModel, split_shards
from anomaly.models.padim import PaDiM, PadimSums


class InProcessShards:
    """A fit engine that reduces each shard in this process, one after the other: the merge
    path of a sharded fit without Ray."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def describe(self) -> dict[str, str]:
        return {"name": "in-process"}

    def shard_count(self, n_images: int) -> int:
        return self.shards

    def map_shards(self, model: AnomalyModel, shards, context):
        for shard in shards:
            yield type(model)(**model.get_params()).fit_shard(shard, context)


# ------------------------------------------------------------------ merges, without Ray
def test_padim_sums_of_shards_merge_into_the_sums_of_all() -> None:
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.normal(5, 1, (600, 4, b)).astype(np.float32)) for b in (3, 5)]
    whole = PadimSums.zeros(600, 4)
    for batch in batches:
        whole.add(batch)
    shards = []
    for batch in batches:
        shard = PadimSums.zeros(600, 4)
        shard.shift = whole.shift  # the common shift the driver hands every shard
        shard.add(batch)
        shards.append(shard)
    merged = PadimSums.zeros(600, 4).merge(shards[0]).merge(shards[1])
    assert merged.n == whole.n == 8
    torch.testing.assert_close(merged.sum, whole.sum, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(merged.sum_outer, whole.sum_outer, strict=True):  # two chunks
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    other = PadimSums.zeros(600, 4)
    other.add(batches[1])  # its own shift: the first batch's mean of another shard
    with pytest.raises(ValueError, match="different shifts"):
        merged.merge(other)


def test_coreset_of_coresets_keeps_the_target_size_out_of_the_union() -> None:
    rng = np.random.default_rng(0)
    banks = [rng.standard_normal((n, 16)).astype(np.float32) for n in (30, 45)]
    union = np.concatenate(banks)
    merged = merge_coresets(banks, n_patches=190, ratio=0.1, projection_dim=8)
    assert merged.shape == (19, 16)  # ceil(0.1 * 190)
    assert len({row.tobytes() for row in merged}) == 19  # distinct rows ...
    assert {row.tobytes() for row in merged} <= {row.tobytes() for row in union}  # ... of it
    # A target above the union keeps the union whole.
    np.testing.assert_array_equal(merge_coresets(banks, 1000, 0.1), union)
    with pytest.raises(ValueError, match="no shard coresets"):
        merge_coresets([], 10, 0.1)


def test_shards_are_contiguous_and_even() -> None:
    assert split_shards(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_shards([0, 1], 4) == [[0], [1]]  # never an empty shard


def test_padim_fitted_in_shards_equals_the_local_fit(tmp_path: Path) -> None:
    root = make_parts_category(tmp_path / "parts", n_train=10, n_good=0, n_defect=0)
    images = sorted(str(p) for p in (root / "train" / "good").glob("*.png"))
    params = {"image_size": 64, "n_features": 16, "weights": "none", "batch_size": 4}
    params |= {"num_threads": 1, "progress": False}
    local = PaDiM(**params).fit(images)
    sharded = PaDiM(**params).fit_sharded(images, InProcessShards(3))
    np.testing.assert_allclose(sharded.mean_, local.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded.inv_cholesky_, local.inv_cholesky_, rtol=1e-5, atol=1e-5)
    assert sharded.n_train_images_ == 10
    assert sharded.fit_engine_ == {
        "name": "in-process",
        "shards": 3,
        "statistics": "exact: float64 sums of 3 shards around one shift",
    }
