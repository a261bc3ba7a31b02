"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.components.memory_bank import INDEX_TYPES, MemoryBank
from anomaly.components.threads import limited_threads
from anomaly.errors import BundleError, DataError
from anomaly.models.base import AnomalyModel, ImageInput

if TYPE_CHECKING:
    import torch

    from anomaly.components.coreset import StreamingCoreset

logger = logging.getLogger(__name__)

BANK_FILE = "memory_bank.faiss"
#: How a patch's 3x3 average treats the part of its window beyond the feature map
#: (:func:`anomaly.components.features.patch_features`).
NEIGHBOURHOOD_PADDINGS = ("zeros", "ignore")


@dataclass
class ShardCoreset:
    """What a shard of a sharded PatchCore fit returns: the streaming coreset of its patches
    ``(M, D)``, how many patches it saw and their grid."""

    bank: np.ndarray
    n_patches: int
    patch_grid: tuple[int, ...]


class PatchCore(AnomalyModel):
    """Nearest-neighbour anomaly detection against a coreset memory bank of good patches.

    Each image becomes a grid of locally aware patch features (3x3 neighbourhood averages of two
    mid-level backbone stages). Fitting keeps a greedy k-center coreset of the good images'
    patches in a faiss index; a test patch's score is its distance to the nearest bank vector,
    the image score the largest patch score re-weighted by how isolated that bank vector is.

    Example:
        >>> model = PatchCore(coreset_ratio=0.01).fit(good_images)         # doctest: +SKIP
        >>> model.calibrate(val_images, val_labels, target_miss_rate=0.05)  # doctest: +SKIP
        >>> prediction = model.predict(new_images)                          # doctest: +SKIP
        >>> prediction.verdicts, prediction.anomaly_maps[0].shape           # doctest: +SKIP

    Args:
        coreset_ratio: share of training patches kept in the memory bank, in (0, 1].
        projection_dim: dimension of the random projection the coreset distances use.
        chunk_images: images (tiles, when tiling) per streaming coreset chunk (memory and time
            grow linearly).
        coreset_candidates: 0 measures every patch of a chunk against the bank chosen so far
            (one pass, as published; time grows with images x bank); ``k`` measures only ``k``
            times the chunk's picks, chosen greedily in the chunk first, which keeps fit time
            close to linear in the images (2, with ``chunk_images=4``, for thousands of
            images; ``benchmarks/scale.py``).
        feature_dim: patch features wider than this are averaged down to it.
        neighbourhood_padding: ``"zeros"`` (as published: the 3x3 average of a border patch
            counts the window beyond the map as zeros, so edges are compared with edges) or
            ``"ignore"`` (averages only inside the map; bundles saved before this parameter
            existed were fitted so, and keep it).
        num_neighbors: neighbours of the nearest bank vector used to re-weight the image score
            (1 disables re-weighting).
        index: ``"flat"`` (exact search) or ``"hnsw"`` (approximate, for very large banks).
        ef_search: HNSW's candidates per query (``index="hnsw"`` only): lower is faster and less
            exact.
        tile_size, tile_stride, keep_aspect: cut images into square tiles (see
            :mod:`anomaly.components.tiling`); the bank holds every tile's patches and the
            image score is the largest patch score over all of an image's tiles.
        Other arguments: see :class:`anomaly.models.base.AnomalyModel`.
    """

    model_name: ClassVar[str] = "patchcore"
    default_layers: ClassVar[tuple[int, ...]] = (2, 3)
    extra_files: ClassVar[tuple[str, ...]] = (BANK_FILE,)
    incremental: ClassVar[bool] = True  # the memory bank grows in place (partial_fit)
    tiles_images: ClassVar[bool] = True  # one bank over every tile's patches
    shardable: ClassVar[bool] = True  # shards' coresets merge into one (fit_sharded)
    # Bundles saved before neighbourhood_padding existed averaged inside the map only.
    legacy_params: ClassVar[dict[str, Any]] = {"neighbourhood_padding": "ignore"}

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] | None = None,
        weights: str = "imagenet",
        image_size: int = 256,
        coreset_ratio: float = 0.01,
        projection_dim: int = 128,
        chunk_images: int = 64,
        coreset_candidates: int = 0,
        feature_dim: int = 1024,
        neighbourhood_padding: str = "zeros",
        num_neighbors: int = 9,
        index: str = "flat",
        ef_search: int = 64,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        keep_aspect: bool = False,
        blur_sigma: float = 4.0,
        group_by: str | None = None,
        batch_size: int = 8,
        num_threads: int = 0,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _check_params(self) -> None:
        super()._check_params()
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise DataError(f"coreset_ratio={self.coreset_ratio}: must be in (0, 1]")
        if self.coreset_candidates < 0:
            raise DataError(
                f"coreset_candidates={self.coreset_candidates}: must be 0 (every patch) or more"
            )
        if self.neighbourhood_padding not in NEIGHBOURHOOD_PADDINGS:
            raise DataError(
                f"neighbourhood_padding={self.neighbourhood_padding!r}: choose one of "
                f"{', '.join(NEIGHBOURHOOD_PADDINGS)}"
            )
        if self.index not in INDEX_TYPES:
            raise DataError(f"index={self.index!r}: choose one of {', '.join(INDEX_TYPES)}")
        if self.ef_search < 1:
            raise DataError(f"ef_search={self.ef_search}: must be at least 1")
        if self.num_neighbors < 1:
            raise DataError(f"num_neighbors={self.num_neighbors}: must be at least 1")

    # ------------------------------------------------------------------ features
    def _embed(self, feature_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        from anomaly.components.features import patch_features

        maps = self._bank_maps(feature_maps)
        patches = patch_features(maps, self.feature_dim, padding=self.neighbourhood_padding)
        return {"patches": patches}

    def _bank_maps(self, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The maps of the bank's stages among those the extractor returns."""
        stages = list(self._extractor_layers())
        return [feature_maps[stages.index(layer)] for layer in self._bank_layers()]

    # ------------------------------------------------------------------ fit
    def _fit_begin(self) -> None:
        self._coreset = self._streaming_coreset(self.coreset_ratio)
        self._pending: list[np.ndarray] = []
        self._pending_images = 0

    def _streaming_coreset(self, ratio: float) -> StreamingCoreset:
        from anomaly.components.coreset import StreamingCoreset

        return StreamingCoreset(
            ratio, self.projection_dim, self.seed, candidates=self.coreset_candidates
        )

    def _fit_batch(self, features: dict[str, np.ndarray]) -> None:
        patches = features["patches"]
        self.patch_grid_ = tuple(int(v) for v in patches.shape[-2:])
        self._pending.append(_flatten(patches))
        # Tiles count as images: a chunk holds chunk_images tiles' patches, whatever the tiling.
        self._pending_images += patches.shape[0] * self.tiles_per_image
        if self._pending_images >= max(1, self.chunk_images):
            self._flush()

    def _flush(self) -> None:
        import torch

        if self._pending:
            self._coreset.add(torch.from_numpy(np.concatenate(self._pending)))
            self._pending, self._pending_images = [], 0

    def _fit_end(self) -> None:
        self._flush()
        bank, n_patches = self._coreset.bank().numpy(), self._coreset.n_seen
        del self._coreset, self._pending
        self._build_bank(bank, n_patches)

    # ------------------------------------------------------------------ sharded fit
    def _shard_summary(self) -> ShardCoreset:
        """The shard's streaming coreset (same ratio, projection and seed as a local fit)."""
        self._flush()
        summary = ShardCoreset(self._coreset.bank().numpy(), self._coreset.n_seen, self.patch_grid_)
        del self._coreset, self._pending
        return summary

    def _fit_shards(self, summaries: Iterable[Any]) -> dict[str, str]:
        """The bank: a final greedy pass over the union of the shards' coresets keeping
        ``coreset_ratio`` of every shard's patches, streamed shard by shard like a local fit's
        chunks (a coreset of coresets, approximate)."""
        from anomaly.components.coreset import merge_coresets

        shards: list[ShardCoreset] = list(summaries)
        del self._coreset, self._pending
        n_patches = sum(shard.n_patches for shard in shards)
        union = sum(len(shard.bank) for shard in shards)
        self.patch_grid_ = shards[0].patch_grid
        bank = merge_coresets(
            [shard.bank for shard in shards],
            n_patches,
            self.coreset_ratio,
            self.projection_dim,
            self.seed,
        )
        self._build_bank(bank, n_patches)
        return {"bank": f"coreset of {len(shards)} shard coresets ({union} -> {len(bank)} vectors)"}

    def _build_bank(self, bank: np.ndarray, n_patches: int) -> None:
        self.n_train_patches_ = n_patches
        self.memory_bank_ = MemoryBank(self.index, ef_search=self.ef_search).fit(bank)
        logger.info(
            "memory bank: %d of %d patches (%.2f%%), %d dims",
            self.memory_bank_.size,
            self.n_train_patches_,
            100 * self.memory_bank_.size / max(1, self.n_train_patches_),
            self.memory_bank_.dim,
        )

    def memory_bytes(self) -> int:
        """The saved arrays plus the faiss index (its serialised size)."""
        return super().memory_bytes() + self.memory_bank_.nbytes()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "memory_bank_size": self.memory_bank_.size,
            "feature_dim": self.memory_bank_.dim,
        }

    def summary_lines(self) -> list[str]:
        bank = f"memory bank: {self.memory_bank_.size} patches of {self.memory_bank_.dim} dims"
        return [bank, *super().summary_lines()]

    def exact_search(self) -> AbstractContextManager[None] | None:
        return None if self.index == "flat" else self._exact_bank()

    @contextmanager
    def _exact_bank(self) -> Iterator[None]:
        """The same bank in a flat (exact) index while the context lasts."""
        self.check_is_fitted()
        approximate = self.memory_bank_
        self.memory_bank_ = approximate.exact()
        try:
            yield
        finally:
            self.memory_bank_ = approximate

    def partial_fit(self, images: Sequence[ImageInput]) -> PatchCore:
        """Add good images to the fitted memory bank without refitting; returns ``self``.

        The new images' patches go through the same streaming coreset, started from the current
        bank: ``coreset_ratio`` of them are added, chosen greedily as those farthest from
        everything already kept. Nearest-patch distances can only fall, so the old threshold
        would now let more defects through: the calibration is dropped, and the model must be
        calibrated again on validation images (never on the images added here).
        """
        self.check_is_fitted()
        self.require_torch_runtime("adding images")
        self.check_can_add_images()  # a subclass whose scores depend on this bank may refuse
        images = list(images)
        if not images:
            raise DataError("partial_fit needs at least one good image; got none")
        size_before = self.memory_bank_.size
        import torch

        with limited_threads(self.num_threads):
            self._fit_begin()
            self._coreset.prime(torch.from_numpy(self.memory_bank_.all_vectors()))
            for batch in self._batches(images, desc=f"{self.model_name}: adding"):
                for _, features in self._features(batch):
                    self._fit_batch(features)
            self._flush()
            self.memory_bank_.add(self._coreset.bank().numpy())
        self.n_train_patches_ = getattr(self, "n_train_patches_", 0) + self._coreset.n_seen
        self.n_train_images_ += len(images)
        del self._coreset, self._pending
        self.calibration_ = None
        logger.info(
            "added %d good images: memory bank %d -> %d vectors; calibrate again before use",
            len(images),
            size_before,
            self.memory_bank_.size,
        )
        return self

    # ------------------------------------------------------------------ score
    def _score_features(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        patches = features["patches"]
        batch, _, height, width = patches.shape
        queries = _flatten(patches)
        # One search for every patch of the batch: faiss's exact search multiplies matrices
        # (BLAS) only from 20 queries on and loops query by query below that.
        distances, nearest = self.memory_bank_.search(queries, k=1)
        patch_scores = distances[:, 0].reshape(batch, height * width)
        nearest = nearest[:, 0].reshape(batch, height * width)
        worst = patch_scores.argmax(axis=1)
        rows = np.arange(batch)
        image_scores = patch_scores[rows, worst]
        if self.num_neighbors > 1 and self.memory_bank_.size > 1:
            worst_features = queries.reshape(batch, height * width, -1)[rows, worst]
            image_scores = image_scores * self._isolation_weights(
                worst_features, nearest[rows, worst]
            )
        return image_scores.astype(np.float64), patch_scores.reshape(batch, height, width)

    def _isolation_weights(self, test_features: np.ndarray, bank_indices: np.ndarray) -> np.ndarray:
        """Paper eq. 7: down-weight a score whose nearest bank vector sits in a dense region.

        ``w = 1 - softmax(d)_0`` over the distances ``d`` from the test patch to ``m*`` (its nearest
        bank vector, position 0) and to ``m*``'s neighbours in the bank. An isolated ``m*`` (a rare
        nominal pattern) keeps the score near 1x; a crowded one scales it towards ``1 - 1/b``.
        """
        k = min(self.num_neighbors, self.memory_bank_.size)
        anchors = self.memory_bank_.vectors(bank_indices)
        _, support = self.memory_bank_.search(anchors, k=k)
        support_vectors = self.memory_bank_.vectors(support)  # (B, k, D)
        distances = np.linalg.norm(support_vectors - test_features[:, None, :], axis=2)
        distances -= distances.max(axis=1, keepdims=True)  # stable softmax
        weights = np.exp(distances)
        return 1.0 - weights[:, 0] / weights.sum(axis=1)

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, np.ndarray]:
        return {"patch_grid": np.asarray(self.patch_grid_, dtype=np.int64)}

    def write_extra_files(self, bundle_dir: Path) -> None:
        super().write_extra_files(bundle_dir)
        self.memory_bank_.save(bundle_dir / BANK_FILE)

    def load_state(self, tensors: dict[str, np.ndarray], bundle_dir: Path) -> None:
        try:
            self.memory_bank_ = MemoryBank.load(bundle_dir / BANK_FILE, self.ef_search)
        except ValueError as error:  # a readable index of a kind the bank does not use
            raise BundleError(f"{bundle_dir / BANK_FILE}: {error}") from error
        except Exception as error:  # faiss raises RuntimeError with a C++ trace
            raise BundleError(f"{bundle_dir / BANK_FILE}: not a readable faiss index") from error
        if "patch_grid" not in tensors:
            raise BundleError(f"{bundle_dir}: the model's arrays lack 'patch_grid'")
        self.patch_grid_ = tuple(int(v) for v in tensors["patch_grid"])

    def _check_loaded_state(self, bundle_dir: Path) -> None:
        """The bank must be a non-empty index of the kind the parameters name, of the width
        this backbone's patch features have, holding finite vectors only."""
        bank, path = self.memory_bank_, bundle_dir / BANK_FILE
        if bank.size == 0:
            raise BundleError(f"{path}: the memory bank is empty; every part would score alike")
        if bank.index_type != self.index:
            raise BundleError(
                f"{path}: a {bank.index_type!r} index, but the bundle's parameters say "
                f"{self.index!r}"
            )
        expected = self.runtime_.channels("patches")
        if bank.dim != expected:
            raise BundleError(
                f"{path}: bank vectors have {bank.dim} dims, but {self.backbone} stages "
                f"{list(self._bank_layers())} give {expected}-dim patch features"
            )
        for start in range(0, bank.size, 100_000):  # chunks: a large bank is not copied whole
            chunk = bank.index_.reconstruct_n(start, min(100_000, bank.size - start))
            if not np.isfinite(chunk).all():
                raise BundleError(f"{path}: the memory bank holds non-finite values (NaN or inf)")
        if len(self.patch_grid_) != 2 or min(self.patch_grid_) < 1:
            raise BundleError(f"{bundle_dir}: patch_grid {self.patch_grid_} is not a 2-D grid")

    def _bank_layers(self) -> tuple[int, ...]:
        """The backbone stages the memory bank's patch features come from."""
        return tuple(int(layer) for layer in (self.layers or self.default_layers))


def _flatten(features: np.ndarray) -> np.ndarray:
    """``(B, D, h, w)`` -> ``(B * h * w, D)`` contiguous float32."""
    flat = np.asarray(features).transpose(0, 2, 3, 1).reshape(-1, features.shape[1])
    return np.ascontiguousarray(flat, dtype=np.float32)
