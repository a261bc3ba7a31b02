"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection
and Localization", ICPR 2020).

Memory, for ``P`` grid positions and ``d = n_features`` dimensions (``P = 64 x 64 = 4096`` at
``image_size=256`` on the stride-4 stage 1 of EfficientNet-Lite0, ``d = 100``):

* fitted model in memory: ``P * (d + d^2) * 4`` bytes (float32 mean and inverse Cholesky
  factor) = 158 MiB at the defaults; in the bundle the factor's lower triangle only,
  ``P * (d + d (d + 1) / 2) * 4`` bytes = 80 MiB;
* fit: running sums ``P * (d + d^2) * 8`` bytes (float64) = 316 MiB at the defaults. They are
  freed chunk by chunk as the model is built, so the peak is the sums plus a few chunk-sized
  temporaries (``POSITION_CHUNK * d^2`` values) and the vectors of the images not yet added
  to them (``UPDATE_IMAGES * P * d`` float32, 52 MB), on top of the backbone's activations.

Both grow with ``P * d^2``: quadratically in ``image_size`` and in ``n_features``. The fit
refuses a configuration whose estimate exceeds ``memory_budget_mb`` before allocating anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.errors import BundleError, DataError
from anomaly.models.base import AnomalyModel, ImageInput

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Positions processed together when accumulating, factorising and scoring: bounds the
#: temporaries to ``chunk * d^2`` values (41 MB of float64 at ``d = 100``).
POSITION_CHUNK = 512
#: Images whose patch vectors are held back and added to the outer-product sums together:
#: one update reads and writes all the float64 sums (330 MB at the default 64x64 x 100), so
#: updating every batch of 8 made the fit memory-bound; 32 at a time costs 52 MB of float32
#: vectors at that size.
UPDATE_IMAGES = 32
#: How an image's score comes from its patches (``PaDiM(image_score=...)``).
IMAGE_SCORES = ("map_max", "distance")


def padim_memory_bytes(positions: int, dims: int) -> dict[str, int]:
    """Memory of a PaDiM model on ``positions`` grid positions with ``dims`` features each.

    Returns ``{"model": bytes of the learned float32 arrays in memory, "bundle": bytes of them
    in the bundle (triangle packed), "fit": peak bytes of the fit's float64 running sums plus
    its chunk-sized temporaries}`` (backbone activations not included).
    """
    model = positions * (dims + dims * dims) * 4
    bundle = positions * (dims + dims * (dims + 1) // 2) * 4
    sums = positions * (dims + dims * dims) * 8
    temporaries = 3 * min(positions, POSITION_CHUNK) * dims * dims * 8
    pending = 2 * UPDATE_IMAGES * positions * dims * 4  # held back, and their one copy
    return {"model": model, "bundle": bundle, "fit": sums + temporaries + pending}


@dataclass
class PadimSums:
    """The streaming float64 sums a PaDiM fit keeps, per grid position: the count ``n``, the
    sum of ``x - shift`` ``(P, d)`` and the sum of its outer products, in chunks of
    :data:`POSITION_CHUNK` positions ``(chunk, d, d)``.

    Sums of ``x - shift`` rather than ``x``: shifting by a per-position reference (the first
    batch's mean) keeps ``S2 / n - m m^T`` free of cancellation when the mean is large compared
    with the spread, which float64 alone would not guarantee. Sums around one shift add up, so
    shards of the training images fitted apart :meth:`merge` into the sums of them all.
    """

    sum: torch.Tensor
    # One tensor per chunk of positions, so that _fit_end can free each as soon as its
    # factors are computed: the sums and the model never have to coexist in full.
    sum_outer: list[torch.Tensor | None]
    shift: torch.Tensor | None = None  # (P, d); None = the first batch's mean, when it comes
    n: int = 0
    # Batches ``(P, d, B)`` not yet in the sums (see UPDATE_IMAGES); flush() adds them.
    pending: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def zeros(cls, positions: int, dims: int) -> PadimSums:
        import torch

        return cls(
            sum=torch.zeros(positions, dims, dtype=torch.float64),
            sum_outer=[
                torch.zeros(min(POSITION_CHUNK, positions - start), dims, dims, dtype=torch.float64)
                for start in range(0, positions, POSITION_CHUNK)
            ],
        )

    def add(self, embedded: torch.Tensor) -> None:
        """Add a batch of patch vectors ``(P, d, B)`` (to the sums once :data:`UPDATE_IMAGES`
        images are pending, or at :meth:`flush`)."""
        if self.shift is None:
            self.shift = embedded.double().mean(dim=2)  # (P, d)
        self.pending.append(embedded)
        self.n += embedded.shape[2]
        if sum(batch.shape[2] for batch in self.pending) >= UPDATE_IMAGES:
            self.flush()

    def flush(self) -> PadimSums:
        """Add the pending batches to the sums; returns ``self``."""
        import torch

        if not self.pending:
            return self
        embedded = torch.cat(self.pending, dim=2) if len(self.pending) > 1 else self.pending[0]
        self.pending = []
        # Chunk by chunk, so the float64 temporaries stay at chunk size.
        for index, start in enumerate(range(0, embedded.shape[0], POSITION_CHUNK)):
            stop = start + POSITION_CHUNK
            part = embedded[start:stop].double() - self.shift[start:stop, :, None]
            self.sum[start:stop] += part.sum(dim=2)
            # In place: S2[p] += X_p X_p^T with no (chunk, d, d) temporary.
            self.sum_outer[index].baddbmm_(part, part.transpose(1, 2))
        return self

    def merge(self, other: PadimSums) -> PadimSums:
        """Add ``other``'s sums to these, in place; returns ``self``. Both must be sums around
        the same shift (float64 addition: exact to rounding, in any order of shards)."""
        import torch

        if self.sum.shape != other.sum.shape:
            raise ValueError(
                f"padim sums of {tuple(other.sum.shape)} do not merge with {tuple(self.sum.shape)}"
            )
        self.flush()
        other.flush()
        if other.n == 0:
            return self
        if self.shift is None:
            self.shift = other.shift
        elif other.shift is None or not torch.equal(self.shift, other.shift):
            raise ValueError("padim sums around different shifts do not merge")
        self.sum += other.sum
        for mine, theirs in zip(self.sum_outer, other.sum_outer, strict=True):
            mine += theirs
        self.n += other.n
        return self


class PaDiM(AnomalyModel):
    """One multivariate Gaussian per patch position over multi-stage backbone features.

    Each image becomes a grid ``(h, w)`` of feature vectors: the chosen backbone stages are
    brought to the finest stage's grid and concatenated, and a seeded random subset of
    ``n_features`` channels is kept. Fitting estimates, at every position, the mean and the
    covariance (plus ``covariance_epsilon * I``) of the good images' vectors from streaming
    float64 sums. A test patch's score is its Mahalanobis distance to its position's Gaussian;
    the image score is the maximum of the blurred anomaly map (``image_score``).

    Example:
        >>> model = PaDiM(n_features=100).fit(good_images)                  # doctest: +SKIP
        >>> model.calibrate(val_images, val_labels, target_miss_rate=0.05)  # doctest: +SKIP
        >>> prediction = model.predict(new_images)                          # doctest: +SKIP

    Args:
        n_features: channels kept (a seeded random subset of the concatenated stages); at most
            the stages' total (176 for stages 1, 2, 3 of EfficientNet-Lite0).
        covariance_epsilon: added to the covariance diagonal so it is invertible even where the
            good images barely vary (and to damp directions seen in few images).
        memory_budget_mb: refuse to fit when the estimated fit memory (see
            :func:`padim_memory_bytes`) exceeds this many MiB.
        tile_size, tile_stride, keep_aspect: cut images into square tiles (see
            :mod:`anomaly.components.tiling`): one Gaussian per position of every tile, so
            memory grows with the tile count and every image must have the training size.
        image_score: ``"map_max"``, an image scores the hottest pixel of its blurred anomaly
            map (as anomalib scores PaDiM; the score is then what the heatmap shows at its
            peak); ``"distance"``, the largest per-position Mahalanobis distance. The blur
            pools neighbouring positions, so a lone noisy position counts less: validation
            AUROC 0.9034 vs 0.8994 on ELPV and 0.9788 vs 0.9750 on sealant (README).
        Other arguments: see :class:`anomaly.models.base.AnomalyModel`.
    """

    model_name: ClassVar[str] = "padim"
    #: Bundles saved before ``image_score`` existed scored by the largest distance.
    legacy_params: ClassVar[dict[str, Any]] = {"image_score": "distance"}
    # Stride 4, 8 and 16 stages of EfficientNet-Lite0 (24 + 40 + 112 = 176 channels): the
    # stride-4 grid localises small defects; the deeper stages add context, as in the paper's
    # first three ResNet stages.
    default_layers: ClassVar[tuple[int, ...]] = (1, 2, 3)
    tiles_images: ClassVar[bool] = True  # one Gaussian per position of every tile
    position_aware: ClassVar[bool] = True
    shardable: ClassVar[bool] = True  # shards' sums around one shift merge exactly

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] | None = None,
        weights: str = "imagenet",
        image_size: int = 256,
        n_features: int = 100,
        covariance_epsilon: float = 0.01,
        memory_budget_mb: float = 1024.0,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        keep_aspect: bool = False,
        blur_sigma: float = 4.0,
        image_score: str = "map_max",
        group_by: str | None = None,
        batch_size: int = 8,
        num_threads: int = 0,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _check_params(self) -> None:
        super()._check_params()
        if self.n_features < 1:
            raise DataError(f"n_features={self.n_features}: must be at least 1")
        if not self.covariance_epsilon > 0:
            raise DataError(
                f"covariance_epsilon={self.covariance_epsilon}: must be > 0 so every "
                "covariance is invertible"
            )
        if not self.memory_budget_mb > 0:
            raise DataError(f"memory_budget_mb={self.memory_budget_mb}: must be > 0")
        if self.image_score not in IMAGE_SCORES:
            raise DataError(f"image_score={self.image_score!r}: choose {' or '.join(IMAGE_SCORES)}")

    # ------------------------------------------------------------------ fit
    def _fit_begin(self) -> None:
        channels, height, width = self._probe_grid()
        dims = self.n_features
        if dims > channels:
            raise DataError(
                f"n_features={dims}: backbone {self.backbone} stages "
                f"{list(self.extractor_.layers)} give only {channels} channels"
            )
        positions = height * width
        self.check_memory(positions, dims, (height, width))
        self.patch_grid_ = (height, width)
        rng = np.random.default_rng(self.seed)
        self.channels_ = np.sort(rng.choice(channels, size=dims, replace=False)).astype(np.int64)
        self._sums = PadimSums.zeros(positions, dims)
        logger.info(
            "padim: %dx%d positions x %d of %d channels; fit sums %.0f MiB, model %.0f MiB",
            height,
            width,
            dims,
            channels,
            positions * (dims + dims * dims) * 8 / 2**20,
            padim_memory_bytes(positions, dims)["model"] / 2**20,
        )

    def check_memory(self, positions: int, dims: int, grid: tuple[int, int] | None = None) -> None:
        """Raise :class:`DataError` when fitting ``positions x dims`` would exceed the budget."""
        need = padim_memory_bytes(positions, dims)
        budget = self.memory_budget_mb * 2**20
        if need["fit"] > budget:
            where = f"{grid[0]}x{grid[1]} = " if grid else ""
            raise DataError(
                f"padim at image_size={self.image_size} with n_features={dims}: {where}"
                f"{positions} positions x {dims}^2 covariance entries need "
                f"{need['fit'] / 2**20:.0f} MiB to fit (model {need['model'] / 2**20:.0f} MiB), "
                f"over memory_budget_mb={self.memory_budget_mb:g}. Lower image_size or "
                "padim.n_features, use coarser layers, or raise padim.memory_budget_mb"
            )

    def _probe_grid(self) -> tuple[int, int, int]:
        """``(channels, h, w)`` of the stacked features at ``image_size``, from one blank image.

        Known before the first batch so that the memory check runs before anything is allocated.
        """
        import torch

        from anomaly.components.features import preprocess

        blank = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        batch = preprocess([blank], self.image_size, self.extractor_.mean, self.extractor_.std)
        with torch.inference_mode():
            maps = self.extractor_(batch)
        height, width = maps[0].shape[-2:]
        # Tiled, an image's tiles are stacked along the height (models.base._features).
        return sum(m.shape[1] for m in maps), self.tiles_per_image * height, width

    def _embed(self, feature_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The stages stacked on the finest grid, the chosen channels: ``(B, d, h, w)``."""
        import torch

        from anomaly.components.features import stack_features

        features = stack_features(feature_maps)  # (B, C, h, w)
        return {"patches": features.index_select(1, torch.from_numpy(self.channels_))}

    @staticmethod
    def _by_position(features: dict[str, np.ndarray]) -> np.ndarray:
        """The features as contiguous ``(P, d, B)`` float32, positions row-major (contiguous so
        that the batched products run on the fast BLAS path)."""
        patches = features["patches"]
        batch, dims = patches.shape[:2]
        flat = patches.reshape(batch, dims, -1).transpose(2, 1, 0)
        return np.ascontiguousarray(flat, dtype=np.float32)

    def _fit_batch(self, features: dict[str, np.ndarray]) -> None:
        import torch

        self._sums.add(torch.from_numpy(self._by_position(features)))

    # ------------------------------------------------------------------ sharded fit
    def _shard_context(self, images: list[ImageInput]) -> dict[str, Any]:
        """The common shift every shard sums around: the first batch's mean, as a local fit
        takes it, so the merged sums are the local fit's (the shift only has to be shared,
        but this one also keeps the factors equal to the local fit's to float rounding)."""
        import torch

        first = next(self._batches(images[: self.batch_size], desc="padim: shift"))
        _, features = next(self._features(first))
        shift = torch.from_numpy(self._by_position(features)).double().mean(dim=2)
        return {"shift": shift.numpy()}

    def _use_shard_context(self, context: dict[str, Any]) -> None:
        import torch

        # A copy: Ray hands a worker read-only arrays out of its object store.
        self._sums.shift = torch.from_numpy(np.array(context["shift"], dtype=np.float64))

    def _shard_summary(self) -> PadimSums:
        summary, self._sums = self._sums, None
        return summary.flush()

    def _fit_shards(self, summaries: Iterable[Any]) -> dict[str, Any]:
        count = 0
        for summary in summaries:  # one at a time: the driver holds one shard's sums at most
            self._sums.merge(summary)
            count += 1
        self._fit_end()
        return {"statistics": f"exact: float64 sums of {count} shards around one shift"}

    def _fit_end(self) -> None:
        import torch

        sums, self._sums = self._sums.flush(), None
        n = sums.n
        positions, dims = sums.sum.shape
        mean_shifted = sums.sum / n  # (P, d)
        # Unbiased covariance; a single image has none, leaving epsilon * I.
        denominator = max(n - 1, 1)
        # Dense in memory: unpacking a triangle on every scored batch would cost as much as
        # the product itself; the bundle stores the triangle only (see state_tensors).
        # np.empty commits pages only as chunks are written, while their sums are freed.
        factors = np.empty((positions, dims, dims), dtype=np.float32)
        eye = torch.eye(dims, dtype=torch.float64)
        for index, start in enumerate(range(0, positions, POSITION_CHUNK)):
            stop = min(start + POSITION_CHUNK, positions)
            m = mean_shifted[start:stop]
            sum_outer, sums.sum_outer[index] = sums.sum_outer[index], None
            # S2 / n - m m^T, scaled to the unbiased estimate; in place, no (chunk, d, d) copy.
            covariance = sum_outer.baddbmm_(m[:, :, None], m[:, None, :], alpha=-n)
            del sum_outer
            covariance = covariance.div_(denominator).add_(eye, alpha=self.covariance_epsilon)
            # Sigma = L L^T, so (x - mu)^T Sigma^-1 (x - mu) = |L^-1 (x - mu)|^2: a sum of squares
            # (never negative, unlike a float32 quadratic form with the inverse covariance).
            cholesky, info = torch.linalg.cholesky_ex(covariance)
            if bool((info != 0).any()):
                bad = start + int(torch.nonzero(info)[0, 0])
                raise DataError(
                    f"padim: covariance at position {divmod(bad, self.patch_grid_[1])} is not "
                    f"positive definite; raise padim.covariance_epsilon "
                    f"(now {self.covariance_epsilon:g})"
                )
            # A contiguous identity: with a broadcast (stride 0) one the solve is ~8x slower.
            identity = eye.expand_as(cholesky).contiguous()
            inverse = torch.linalg.solve_triangular(cholesky, identity, upper=False)
            factors[start:stop] = inverse.float().numpy()
        self.mean_ = (mean_shifted + sums.shift).float().numpy()  # (P, d)
        self.inv_cholesky_ = factors  # (P, d, d), lower triangular
        self.n_train_patches_ = n * positions
        logger.info(
            "padim model: %d positions x %d dims, %.1f MiB of float32 arrays",
            positions,
            dims,
            self.memory_bytes() / 2**20,
        )

    def memory_bytes(self) -> int:
        """Bytes of the learned arrays (what the model holds in memory beyond the backbone)."""
        return int(self.mean_.nbytes + self.inv_cholesky_.nbytes + self.channels_.nbytes)

    # ------------------------------------------------------------------ score
    def _score_features(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        embedded = self._by_position(features)  # (P, d, B)
        positions, _, batch = embedded.shape
        if positions != self.mean_.shape[0]:
            raise DataError(
                f"padim: features have {positions} positions but the model was fitted on "
                f"{self.mean_.shape[0]} ({self.patch_grid_[0]}x{self.patch_grid_[1]}); "
                f"image_size must stay {self.image_size}"
            )
        centred = embedded - self.mean_[:, :, None]
        distances = np.empty((positions, batch), dtype=np.float32)
        for start in range(0, positions, POSITION_CHUNK):
            stop = min(start + POSITION_CHUNK, positions)
            # |L^-1 (x - mu)|: the Mahalanobis distance, for all positions of the chunk at once.
            whitened = np.matmul(self.inv_cholesky_[start:stop], centred[start:stop])
            distances[start:stop] = np.sqrt(np.square(whitened).sum(axis=1))
        height, width = self.patch_grid_
        grids = np.ascontiguousarray(distances.T).reshape(batch, height, width)
        scores = grids.reshape(batch, -1).max(axis=1).astype(np.float64)
        return scores, grids

    def _image_scores(self, scores: np.ndarray, maps: Sequence[np.ndarray]) -> np.ndarray:
        if self.image_score == "distance":
            return scores
        return np.array([float(anomaly_map.max()) for anomaly_map in maps], dtype=np.float64)

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, np.ndarray]:
        dims = self.mean_.shape[1]
        rows, cols = np.tril_indices(dims)
        # The upper triangle is zero: storing the lower one halves the bundle.
        packed = self.inv_cholesky_.reshape(-1, dims * dims)[:, rows * dims + cols]
        return {
            "mean": self.mean_,
            "inv_cholesky_tril": packed,  # (P, d (d + 1) / 2), lower triangle row by row
            "channels": self.channels_,
            "patch_grid": np.asarray(self.patch_grid_, dtype=np.int64),
        }

    def load_state(self, tensors: dict[str, np.ndarray], bundle_dir: Path) -> None:
        missing = [
            k for k in ("mean", "inv_cholesky_tril", "channels", "patch_grid") if k not in tensors
        ]
        if missing:
            raise BundleError(f"{bundle_dir}: padim arrays missing: {', '.join(missing)}")
        mean = np.ascontiguousarray(tensors["mean"], dtype=np.float32)
        packed = np.ascontiguousarray(tensors["inv_cholesky_tril"], dtype=np.float32)
        channels = np.asarray(tensors["channels"], dtype=np.int64)
        grid = tuple(int(v) for v in tensors["patch_grid"])
        positions, dims = mean.shape
        if (
            len(grid) != 2
            or grid[0] * grid[1] != positions
            or channels.shape != (dims,)
            or packed.shape != (positions, dims * (dims + 1) // 2)
        ):
            raise BundleError(
                f"{bundle_dir}: padim arrays do not fit together (mean {mean.shape}, "
                f"inv_cholesky_tril {packed.shape}, channels {channels.shape}, grid {grid})"
            )
        if not (np.isfinite(mean).all() and np.isfinite(packed).all()):
            raise BundleError(f"{bundle_dir}: padim statistics hold non-finite values (NaN or inf)")
        rows, cols = np.tril_indices(dims)
        factors = np.zeros((positions, dims * dims), dtype=np.float32)
        factors[:, rows * dims + cols] = packed
        self.mean_, self.channels_ = mean, channels
        self.inv_cholesky_ = factors.reshape(positions, dims, dims)
        self.patch_grid_ = grid
