"""``anomaly fit --engine ray``: shards of the good images reduced on Ray workers, merged here.

The merges themselves (PaDiM's sums, PatchCore's coreset of coresets) are tested without Ray;
the Ray tests fit the small parts category once locally and once on a local Ray (two CPUs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_parts_category

from anomaly.artifacts.bundle import load_bundle, read_metadata
from anomaly.commands.cli import main
from anomaly.components.coreset import merge_coresets
from anomaly.models.base import AnomalyModel, split_shards
from anomaly.models.padim import PaDiM, PadimSums

FAST = ["image_size=64", "patchcore.coreset_ratio=0.25", "runtime.progress=false"]
# PaDiM small enough to fit in seconds, still a full covariance per position.
PADIM = ["--model", "padim", "padim.n_features=24", *FAST]


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
    whole.flush()  # 8 images: under UPDATE_IMAGES, still pending
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


def test_the_merge_keeps_a_later_shard_only_where_earlier_picks_do_not_cover_it() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16, dtype=np.float32) * 10

    def cluster(index: int, n: int) -> np.ndarray:
        return centres[index] + 0.01 * rng.standard_normal((n, 16)).astype(np.float32)

    first = np.concatenate([cluster(0, 20), cluster(1, 20)])
    # The second shard repeats both patterns and brings a third, in a few vectors only.
    second = np.concatenate([cluster(0, 18), cluster(1, 18), cluster(2, 4)])
    merged = merge_coresets([first, second], n_patches=300, ratio=0.01, chunk_size=40)
    nearest = np.linalg.norm(merged[:, None] - centres[None], axis=2).argmin(axis=1)
    assert len(merged) == 3 and set(nearest) == {0, 1, 2}  # one vector per pattern


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


# ------------------------------------------------------------------ the command, without Ray
@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rayfit") / "data"
    make_parts_category(root / "parts")
    return root


def _fit(data_root: Path, out: Path, *extra: str) -> list[str]:
    command = ["fit", "--category", "parts", "--data-root", str(data_root), "--out", str(out)]
    return [*command, "data.val_fraction=0.5", *extra]


@pytest.mark.parametrize("model", ["hybrid", "baseline"])
def test_models_ray_cannot_fit_are_refused_in_one_line(data_root, tmp_path, capsys, model):
    out = tmp_path / "bundle"
    assert main(_fit(data_root, out, "--model", model, "--engine", "ray", *FAST)) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert f"{model} cannot be fitted on Ray" in message and "engine.name=local" in message
    assert not out.exists()


def test_without_ray_the_fit_error_names_the_extra(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if `import ray` found nothing
    out = tmp_path / "bundle"
    assert main(_fit(data_root, out, "--engine", "ray", *FAST)) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "pip install 'anomaly[ray]'" in message
    assert not out.exists()


# ------------------------------------------------------------------ on Ray
def test_padim_ray_fit_equals_the_local_fit_even_when_a_worker_dies(
    ray_cluster, data_root, tmp_path, monkeypatch
):
    from anomaly.engines.ray import DIE_ONCE_ENV

    # One thread each, as each Ray worker (one CPU) runs: the features are then the same floats.
    same = ["runtime.num_threads=1"]
    assert main(_fit(data_root, tmp_path / "local", *PADIM, *same)) == 0
    marker = tmp_path / "a worker died"
    monkeypatch.setenv(DIE_ONCE_ENV, str(marker))
    assert main(_fit(data_root, tmp_path / "ray", *PADIM, *same, "--engine", "ray")) == 0
    assert marker.exists()  # a shard's worker did die; Ray ran the shard again
    local, ray = load_bundle(tmp_path / "local"), load_bundle(tmp_path / "ray")
    np.testing.assert_allclose(ray.mean_, local.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ray.inv_cholesky_, local.inv_cholesky_, rtol=1e-5, atol=1e-5)
    engine = read_metadata(tmp_path / "ray")["training"]["engine"]
    assert engine["name"] == "ray" and engine["shards"] == 2
    assert engine["statistics"] == "exact: float64 sums of 2 shards around one shift"


def test_patchcore_ray_fit_keeps_the_bank_size_and_the_auroc(ray_cluster, data_root, tmp_path):
    assert main(_fit(data_root, tmp_path / "local", *FAST)) == 0
    assert main(_fit(data_root, tmp_path / "ray", *FAST, "--engine", "ray")) == 0
    local, ray = read_metadata(tmp_path / "local"), read_metadata(tmp_path / "ray")
    assert local["training"]["engine"] == {"name": "local"}
    engine = ray["training"]["engine"]
    assert {key: engine[key] for key in ("name", "workers", "shards")} == {
        "name": "ray",
        "workers": 2,
        "shards": 2,
    }
    # Each shard of 6 images (384 patches) keeps its share, 96: the union is the bank's size.
    assert engine["bank"] == "coreset of 2 shard coresets (192 -> 192 vectors)"
    # 12 train images of 8 x 8 patches: ceil(0.25 * 768) = 192 vectors, as the local bank.
    assert load_bundle(tmp_path / "ray").memory_bank_.size == 192
    assert load_bundle(tmp_path / "local").memory_bank_.size == 192
    local_auroc = local["evaluation"]["test"]["auroc"]
    assert ray["evaluation"]["test"]["auroc"] == pytest.approx(local_auroc, abs=0.05)
