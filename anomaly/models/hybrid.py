"""Hybrid: PatchCore on the good images plus a small head on the few labelled defects.

Inspection teams have many good images and a few labelled defects. PatchCore uses only the
former; a classifier fine-tuned on the latter needs hundreds of them and tens of minutes. The
hybrid keeps PatchCore as it is and adds, on the same frozen backbone pass, two class-weighted
logistic regressions on the labelled train images:

- the *pooled head*, on pooled features (mean and max over each stage of stages 1-4);
- the *patch head*, on each patch of the deepest stage's 8x8 grid (``patch_head_layers``). A
  defect covers a few patches of a defective image, so the patch head learns as a
  multiple-instance learner: first every patch of a defective image counts as a defect, then,
  for ``PATCH_ROUNDS`` rounds, only the ``PATCH_KEEP`` share of each defective image's patches
  that the current head ranks highest. An image's score is the mean of its ``k`` highest patch
  log-odds. On ELPV it lifts the fused validation AUROC from 0.948 (pooled head only) to 0.952
  and test AUROC from 0.968 to 0.971 (README, "Hybrid").

The three scores are fused on the validation split:

    score = bank_mean + bank_std * ((1 - a - b) * z(patchcore) + a * z(pooled) + b * z(patch))

where ``z`` standardises each score by the mean and spread of the validation *good* images and
``(a, b)`` are the weights, on a grid of steps of 0.05 with ``a + b <= 1``, with the highest
validation AUROC. The fused score is in PatchCore's units (``a = b = 0`` gives exactly
PatchCore's score), goes through the same calibration as every model, and the anomaly map is
PatchCore's, so heatmaps and reports work unchanged.

Every choice is made without the test split: each head's regularisation (and the patch head's
``k``) by stratified cross-validation inside the train split, the fusion weights on validation.
The same validation images then calibrate the threshold, so the calibrated miss rate rests on
two weights chosen on them too (a small optimism, stated in the summary).

With fewer than ``min_defects`` labelled train defects there is no head: the model says so and
scores exactly as PatchCore.

Where the train defects carry two or more defect types (MVTec-style ``train/<type>/`` folders,
YOLO classes, the built-in sealant's six types), a second, multinomial logistic regression on
the same standardised features names the most likely type of each part (``defect_types_``,
:attr:`~anomaly.models.base.Prediction.predicted_types`); QA teams triage rejected parts by
type. Its regularisation is chosen by cross-validated balanced accuracy inside the train
defects. It does not touch the score or the verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.components.threads import limited_threads
from anomaly.errors import BundleError, DataError
from anomaly.io.tensors import tensor_text, text_tensor
from anomaly.models.base import Prediction, good_subset, group_descriptors
from anomaly.models.patchcore import PatchCore

# Fitting the heads needs scikit-learn, joblib and torch; scoring (a line PC's [edge] install)
# needs numpy only: those are imported where the fit uses them.
if TYPE_CHECKING:
    import torch
    from sklearn.linear_model import LogisticRegression

    from anomaly.data.dataset import Sample

logger = logging.getLogger(__name__)

#: Fusion weights tried on validation (0 = PatchCore alone, 1 = head alone).
FUSION_GRID = tuple(round(0.05 * i, 2) for i in range(21))
#: Regularisation strengths (sklearn's C) tried by cross-validation inside the train split.
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Stratified bootstrap resamples of validation that test the head's gain (fusion_confidence).
BOOTSTRAP_RESAMPLES = 500
#: Patch head: regularisation strengths tried by cross-validation inside train (fewer than the
#: pooled head's: each fit sees tens of thousands of patches).
PATCH_C_GRID = (0.001, 0.01, 0.1)
#: Patch head: multiple-instance rounds, and the share of a defective image's patches that stay
#: defects in each (those its current head ranks highest).
PATCH_ROUNDS = 2
PATCH_KEEP = 0.25
#: Patch head: candidates for k, the number of highest patch log-odds an image's score averages.
PATCH_TOP_K = (1, 3, 8, 16, 32)
#: Patch head: most good train images whose patches are kept for it (a seeded uniform sample of
#: them beyond): 2,000 images of 64 patches x 320 channels are 164 MB, held for fit_labels.
PATCH_MAX_GOOD = 2000


class Hybrid(PatchCore):
    """PatchCore fused with a logistic-regression head trained on labelled train defects.

    Args:
        head_layers: backbone stages whose pooled features feed the pooled head.
        patch_head_layers: backbone stages whose patches feed the patch head (pooled to the
            coarsest of their grids); empty: no patch head.
        fusion_confidence: the share of bootstrap resamples of the validation split in which the
            fused score must beat PatchCore's (AUROC) for the head to be used; 0 disables it.
        min_defects: fewest labelled train defects for which a head is trained; below it the
            model is PatchCore and says so.
        Other arguments: see :class:`~anomaly.models.patchcore.PatchCore` (the bank part uses
        ``layers``, default stages 2 and 3).
    """

    model_name: ClassVar[str] = "hybrid"
    # Bundles saved before the patch head existed have none.
    legacy_params: ClassVar[dict[str, Any]] = {**PatchCore.legacy_params, "patch_head_layers": []}
    supervised: ClassVar[bool] = True  # learns from defect labels as well as good images
    labels_on_bank: ClassVar[bool] = True  # fit_labels: a new head on the same bank
    # Its head learns from every labelled image, not from reducible shards of the good ones.
    shardable: ClassVar[bool] = False
    incremental: ClassVar[bool] = False  # new good images would shift the fused score's scale
    tiles_images: ClassVar[bool] = False  # its head pools whole images (not tiled yet)

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
        head_layers: Sequence[int] = (1, 2, 3, 4),
        patch_head_layers: Sequence[int] = (4,),
        min_defects: int = 2,
        fusion_confidence: float = 0.95,
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

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        params["head_layers"] = [int(layer) for layer in params["head_layers"]]
        params["patch_head_layers"] = [int(layer) for layer in params["patch_head_layers"]]
        return params

    def _check_params(self) -> None:
        super()._check_params()
        if not self.head_layers:
            raise DataError("hybrid.head_layers: give at least one backbone stage")
        if self.min_defects < 2:
            raise DataError(f"hybrid.min_defects={self.min_defects}: must be at least 2")
        if not 0.0 <= self.fusion_confidence < 1.0:
            raise DataError(f"hybrid.fusion_confidence={self.fusion_confidence}: must be in [0, 1)")

    # ------------------------------------------------------------------ stages
    def _stages(self) -> tuple[int, ...]:
        heads = (*self.head_layers, *self.patch_head_layers)
        return tuple(sorted({*self._bank_layers(), *(int(x) for x in heads)}))

    def _extractor_layers(self) -> tuple[int, ...]:
        # One backbone pass serves both parts: the bank's stages and the head's.
        return self._stages()

    def _embed(self, feature_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """PatchCore's patch features, the pooled head's features ``(B, F)`` (the mean and the
        max over space of each head stage) and the patch head's ``(B, P, C)`` (each patch of
        the patch head's stages, on the coarsest of their grids)."""
        import torch
        import torch.nn.functional as F

        stages = self._stages()
        pooled = []
        for layer in self.head_layers:
            maps = feature_maps[stages.index(int(layer))]
            pooled += [maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))]
        outputs = {**super()._embed(feature_maps), "pooled": torch.cat(pooled, dim=1)}
        if self.patch_head_layers:
            grids = [feature_maps[stages.index(int(layer))] for layer in self.patch_head_layers]
            size = min((g.shape[-2], g.shape[-1]) for g in grids)
            grids = [g if g.shape[-2:] == size else F.adaptive_avg_pool2d(g, size) for g in grids]
            outputs["patch_grid"] = torch.cat(grids, dim=1).flatten(2).transpose(1, 2)
        return outputs

    # ------------------------------------------------------------------ fit
    def fit_samples(
        self,
        train: Sequence[Sample],
        validation: Sequence[Sample],
        max_good_images: int | None = None,
        subset_seed: int = 0,
    ) -> Hybrid:
        """Fit the bank on the good train images, the head on every labelled train image and
        the fusion weight on ``validation``; returns ``self``.

        ``validation`` images are never trained on: they only choose the fusion weight (and,
        later, calibrate). ``max_good_images`` caps the good images, as for PatchCore.
        """
        good = good_subset(train, max_good_images, subset_seed)
        defects = [sample for sample in train if sample.label == 1]
        self.fit([sample.path for sample in good])
        return self.fit_labels(good, defects, validation)

    def fit_labels(
        self, good: Sequence[Sample], defects: Sequence[Sample], validation: Sequence[Sample]
    ) -> Hybrid:
        """Train the head on ``good`` (the images :meth:`fit` saw, in its order) and the
        labelled ``defects``, and choose the fusion weight (and group scales) on
        ``validation``; returns ``self``.

        The bank is left as :meth:`fit` built it, so calling this again with other defects
        gives the model :meth:`fit_samples` would fit with them, without fitting the bank
        again: what a learning curve does at each of its points.
        """
        if getattr(self, "_good_pooled", None) is None or len(self._good_pooled) != len(good):
            raise DataError(
                "hybrid: fit_labels needs the pooled features of the good images fit() saw in "
                "this process (a loaded bundle does not keep them): fit the model first"
            )
        self.n_train_defects_ = len(defects)
        self.n_train_images_ = len(good) + len(defects)  # every labelled image it learned from
        descriptors = getattr(self, "_train_descriptors", None)
        try:
            self._fit_labels(good, defects, validation)
        finally:
            if descriptors is not None:  # group scales consume them; kept for the next call
                self._train_descriptors = descriptors
        return self

    def _fit_labels(
        self,
        good: Sequence[Sample],
        defects: Sequence[Sample],
        validation: Sequence[Sample],
    ) -> None:
        good_features = self._good_pooled
        if len(defects) < self.min_defects:
            self._no_head(good_features.shape[1], self._good_patches.shape[2])
            self.head_note_ = (
                f"{len(defects)} labelled train defect(s), fewer than the {self.min_defects} a "
                "head needs: no head, scores are PatchCore's"
            )
            logger.warning("hybrid: %s", self.head_note_)
            if self.group_by is not None:
                self._fit_groups(good, validation)
            return
        self.head_note_ = ""
        with limited_threads(self.num_threads):
            defect_features, defect_patches = self._head_features([s.path for s in defects])
            features = np.concatenate([good_features, defect_features])
            labels = np.r_[np.zeros(len(good_features), int), np.ones(len(defect_features), int)]
            self._fit_head(features, labels)
            self._fit_patch_head(self._good_patches, defect_patches)
            self._fit_type_head(defect_features, [sample.defect_type for sample in defects])
            val_scores, val_features = self._fit_fusion(validation)
        if self.group_by is not None:  # scales of the fused score, from the fusion's own pass
            val_good = [i for i, sample in enumerate(validation) if sample.label == 0]
            self._set_group_scales(
                good,
                val_scores[val_good],
                val_features[val_good],
                [validation[i].group for i in val_good],
            )
        logger.info(
            "hybrid: heads on %d good + %d defect train images (pooled C=%g, CV AUROC %.4f; "
            "patch C=%g, k=%d, CV AUROC %.4f); fusion weights %.2f / %.2f chosen on %d "
            "validation images",
            len(good),
            len(defects),
            self.head_c_,
            self.head_cv_auroc_,
            self.patch_head_c_,
            self.patch_head_k_,
            self.patch_head_cv_auroc_,
            self.fusion_weight_,
            self.patch_fusion_weight_,
            len(validation),
        )

    def fit(self, images: Sequence[Any], y: Any = None) -> Hybrid:
        """Fit the bank on good ``images``, without a head (scores are PatchCore's until
        :meth:`fit_samples` trains one on labelled defects); returns ``self``."""
        self._good_features: list[np.ndarray] = []
        self._good_grids: list[np.ndarray] = []
        self._good_seen = 0
        self._good_sampler = np.random.default_rng(self.seed)
        try:
            super().fit(images, y)
            # Kept for fit_samples, which trains the heads on them without a second pass.
            self._good_pooled = np.concatenate(self._good_features)
            self._good_patches = np.stack(self._good_grids)
            if self._good_seen > len(self._good_grids):
                logger.info(
                    "hybrid: the patch head learns from the patches of %d of the %d good train "
                    "images (a seeded sample: hybrid PATCH_MAX_GOOD)",
                    len(self._good_grids),
                    self._good_seen,
                )
        finally:
            del self._good_features, self._good_grids, self._good_sampler, self._good_seen
        self.n_train_good_ = self.n_train_images_
        self.n_train_defects_ = 0
        self.head_note_ = (
            "fitted on good images only: no head, scores are PatchCore's (fit_samples learns "
            "from labelled defects)"
        )
        self._no_head(self._good_pooled.shape[1], self._good_patches.shape[2])
        return self

    def _fit_batch(self, features: dict[str, np.ndarray]) -> None:
        super()._fit_batch(features)
        self._good_features.append(_pooled(features))
        for grid in _patch_grid(features):
            self._keep_good_patches(grid)

    def _keep_good_patches(self, grid: np.ndarray) -> None:
        """Keep one good image's patches, at most ``PATCH_MAX_GOOD`` images' in all: a uniform
        sample of every image seen (reservoir sampling), so memory stays bounded however many
        good images a team has; below the cap every image is kept, in order."""
        if self._good_seen < PATCH_MAX_GOOD:
            self._good_grids.append(grid.copy())  # a copy lets the batch's array go
        else:
            slot = int(self._good_sampler.integers(0, self._good_seen + 1))
            if slot < PATCH_MAX_GOOD:
                self._good_grids[slot] = grid.copy()
        self._good_seen += 1

    def _head_features(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """The pooled and the patch features of ``images``, from one pass."""
        pooled, grids = [], []
        for batch in self._batches(list(images), desc="hybrid: defect features"):
            features = self.runtime_(batch)
            pooled.append(_pooled(features))
            grids.append(_patch_grid(features))
        return np.concatenate(pooled), np.concatenate(grids)

    def _fit_head(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Standardise, choose C by stratified cross-validation inside train, refit on all."""
        from sklearn.model_selection import StratifiedKFold

        from anomaly.evaluation import metrics

        self.head_mean_ = features.mean(axis=0)
        self.head_scale_ = features.std(axis=0) + 1e-6
        x = (features - self.head_mean_) / self.head_scale_
        folds = StratifiedKFold(min(5, int(labels.sum())), shuffle=True, random_state=self.seed)
        best_c, best_auroc = C_GRID[0], -1.0
        candidates = [partial(_fit_decision, self._head(c), x, labels) for c in C_GRID]
        splits = list(folds.split(x, labels))
        predictions = _out_of_fold(candidates, len(labels), splits, self.num_threads)
        for c, out_of_fold in zip(C_GRID, predictions, strict=True):
            auroc = metrics.image_auroc(labels, out_of_fold) or 0.0
            if auroc > best_auroc:
                best_c, best_auroc = c, auroc
        head = self._head(best_c).fit(x, labels)
        self.head_c_, self.head_cv_auroc_ = float(best_c), float(best_auroc)
        self.head_coef_ = head.coef_[0].astype(np.float64)
        self.head_intercept_ = float(head.intercept_[0])

    def _fit_patch_head(self, good: np.ndarray, defects: np.ndarray) -> None:
        """The patch head on ``(N, P, C)`` patch features of the good and the defective train
        images: C and k by stratified cross-validation over images inside train (image AUROC
        of the out-of-fold top-k scores), then refit on all."""
        from sklearn.model_selection import StratifiedKFold

        from anomaly.evaluation import metrics

        channels = good.shape[2]
        self._no_patch_head(channels)
        if channels == 0:
            return
        flat = good.reshape(-1, channels)
        self.patch_head_mean_ = flat.mean(axis=0, dtype=np.float64)
        self.patch_head_scale_ = flat.std(axis=0, dtype=np.float64) + 1e-6
        # In place, in float32: a float64 copy of every train patch would double the peak.
        x = np.concatenate([good, defects])
        x -= self.patch_head_mean_.astype(np.float32)
        x /= self.patch_head_scale_.astype(np.float32)
        labels = np.r_[np.zeros(len(good), int), np.ones(len(defects), int)]
        folds = StratifiedKFold(min(3, len(defects)), shuffle=True, random_state=self.seed)
        splits = list(folds.split(np.zeros(len(labels)), labels))
        candidates = [
            partial(_patch_head_logits, x, labels, c=c, seed=self.seed) for c in PATCH_C_GRID
        ]
        predictions = _out_of_fold(candidates, len(labels), splits, self.num_threads)
        best_c, best_k, best_auroc = PATCH_C_GRID[0], PATCH_TOP_K[0], -1.0
        for c, out_of_fold in zip(PATCH_C_GRID, predictions, strict=True):
            for k in PATCH_TOP_K:
                auroc = metrics.image_auroc(labels, _top_k_mean(out_of_fold, k)) or 0.0
                if auroc > best_auroc + 1e-12:
                    best_c, best_k, best_auroc = c, k, auroc
        coef, intercept = _fit_patch_instances(x, labels, best_c, self.seed)
        self.patch_head_coef_, self.patch_head_intercept_ = coef, intercept
        self.patch_head_c_, self.patch_head_k_ = float(best_c), int(best_k)
        self.patch_head_cv_auroc_ = float(best_auroc)

    def _no_patch_head(self, channels: int) -> None:
        self.patch_head_mean_ = np.zeros(channels)
        self.patch_head_scale_ = np.ones(channels)
        self.patch_head_coef_ = np.zeros(channels)
        self.patch_head_intercept_ = 0.0
        self.patch_head_c_, self.patch_head_k_ = 0.0, 1
        self.patch_head_cv_auroc_ = float("nan")

    def _patch_scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The patch head's image scores: the mean of each image's k highest patch log-odds."""
        grid = _patch_grid(features)
        if grid.shape[2] == 0:
            return np.zeros(len(grid))
        logits = ((grid - self.patch_head_mean_) / self.patch_head_scale_) @ self.patch_head_coef_
        return _top_k_mean(logits + self.patch_head_intercept_, self.patch_head_k_)

    def _head(self, c: float) -> LogisticRegression:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)

    def _fit_type_head(self, features: np.ndarray, types: Sequence[str]) -> None:
        """A multinomial head naming the defect type, when the train defects have two or more
        types; C by cross-validated balanced accuracy (when every type has two images or more).
        """
        from sklearn.metrics import balanced_accuracy_score
        from sklearn.model_selection import StratifiedKFold

        from anomaly.components.linear import class_rows

        names = sorted({str(t) for t in types if t})
        self._no_type_head(features.shape[1])
        if len(names) < 2:
            return
        keep = np.array([bool(t) for t in types])
        x = (features[keep] - self.head_mean_) / self.head_scale_
        y = np.array([names.index(str(t)) for t in types if t])
        smallest = int(np.bincount(y).min())
        best_c, best_score = 0.1, float("nan")  # C when a type is too rare to cross-validate
        if smallest >= 2:
            folds = StratifiedKFold(min(5, smallest), shuffle=True, random_state=self.seed)
            best_score = -1.0
            candidates = [partial(_fit_decision, self._head(c), x, y) for c in C_GRID]
            splits = list(folds.split(x, y))
            predictions = _out_of_fold(candidates, len(y), splits, self.num_threads)
            for c, out_of_fold in zip(C_GRID, predictions, strict=True):
                predicted = out_of_fold.argmax(axis=1) if out_of_fold.ndim == 2 else out_of_fold > 0
                score = float(balanced_accuracy_score(y, predicted.astype(int)))
                if score > best_score + 1e-12:
                    best_c, best_score = c, score
        self.defect_types_ = tuple(names)
        self.type_coef_, self.type_intercept_ = class_rows(self._head(best_c).fit(x, y))
        self.type_c_, self.type_cv_accuracy_ = float(best_c), best_score

    def _no_type_head(self, n_features: int) -> None:
        self.defect_types_ = ()
        self.type_coef_ = np.zeros((0, n_features))
        self.type_intercept_ = np.zeros(0)
        self.type_c_, self.type_cv_accuracy_ = 0.0, float("nan")

    def _type_probabilities(self, features: dict[str, np.ndarray]) -> np.ndarray | None:
        if not self.defect_types_:
            return None
        logits = ((_pooled(features) - self.head_mean_) / self.head_scale_) @ self.type_coef_.T
        logits += self.type_intercept_
        logits -= logits.max(axis=1, keepdims=True)  # softmax, stable
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def _fit_fusion(self, validation: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        """Standardise both scores on the validation good images; choose the weight there.

        Returns the fused validation scores and the images' group descriptors, so that group
        scales (``group_by``) need no second pass."""
        from anomaly.evaluation import metrics

        labels = np.array([sample.label for sample in validation], dtype=int)
        parts: list[tuple[np.ndarray, ...]] = []
        features = []
        for batch in self._batches([s.path for s in validation], desc="hybrid: fusion"):
            batch_features = self.runtime_(batch)
            parts.append(self._components(batch_features)[:3])
            if self.group_by is not None:
                features.append(group_descriptors(batch_features))
        columns = zip(*parts, strict=True)
        bank_all, head_all, patch_all = (np.concatenate(column) for column in columns)
        features_all = np.concatenate(features) if features else np.empty((len(labels), 0))
        good = labels == 0
        if good.sum() < 2:
            raise DataError("hybrid: the validation split needs at least 2 good images")
        self.bank_stats_ = _stats(bank_all[good])
        self.head_stats_ = _stats(head_all[good])
        self.patch_head_stats_ = _stats(patch_all[good])
        self.fusion_weight_, self.patch_fusion_weight_ = 0.0, 0.0
        self.fusion_val_auroc_, self.fusion_support_ = None, float("nan")
        if metrics.missing_class_reason(labels) is not None:
            self.head_note_ = "validation lacks a class: fusion weight 0 (PatchCore's scores)"
            logger.warning("hybrid: %s", self.head_note_)
            return bank_all, features_all
        patch_grid = FUSION_GRID if self.patch_head_coef_.any() else (0.0,)
        best = -1.0
        # Ties keep the earlier pair, the smaller weights: PatchCore is the default.
        for total in FUSION_GRID:
            for patch in patch_grid:
                if patch > total + 1e-9:
                    continue
                weights = (round(total - patch, 2), patch)
                fused = self._fuse(bank_all, head_all, patch_all, weights)
                auroc = metrics.image_auroc(labels, fused) or 0.0
                if auroc > best + 1e-12:
                    (self.fusion_weight_, self.patch_fusion_weight_), best = weights, auroc
        self.fusion_val_auroc_ = float(best)
        self.fusion_support_ = self._fusion_support(labels, bank_all, head_all, patch_all)
        if self._uses_heads() and self.fusion_support_ < self.fusion_confidence:
            patchcore = metrics.image_auroc(labels, bank_all) or 0.0
            self.head_note_ = (
                f"the heads' validation gain (AUROC {patchcore:.4f} -> {best:.4f} at weights "
                f"{self.fusion_weight_:.2f} / {self.patch_fusion_weight_:.2f}) holds in only "
                f"{self.fusion_support_:.0%} of bootstrap resamples of the {len(labels)} "
                f"validation images, less than {self.fusion_confidence:.0%}: fusion weights 0 "
                "(PatchCore's scores)"
            )
            logger.warning("hybrid: %s", self.head_note_)
            self.fusion_weight_, self.patch_fusion_weight_ = 0.0, 0.0
        if not self._uses_heads():
            return bank_all, features_all  # what _score_features gives: PatchCore's scores
        weights = (self.fusion_weight_, self.patch_fusion_weight_)
        return self._fuse(bank_all, head_all, patch_all, weights), features_all

    def _uses_heads(self) -> bool:
        return self.fusion_weight_ > 0.0 or self.patch_fusion_weight_ > 0.0

    def _fusion_support(
        self, labels: np.ndarray, bank: np.ndarray, head: np.ndarray, patch: np.ndarray
    ) -> float:
        """Share of stratified bootstrap resamples of validation in which the chosen weight's
        fused AUROC beats PatchCore's: a few validation defects can make a head look useful by
        chance (sealant's 24 pick a weight of 0.65 that gains 0.026 AUROC on validation and
        loses 0.009 on test), so the head is used only when its gain is this stable."""
        from anomaly.evaluation import metrics

        if not self._uses_heads():
            return 1.0
        rng = np.random.default_rng(self.seed)
        fused = self._fuse(bank, head, patch, (self.fusion_weight_, self.patch_fusion_weight_))
        classes = [np.flatnonzero(labels == c) for c in (0, 1)]
        wins = 0
        for _ in range(BOOTSTRAP_RESAMPLES):
            idx = np.concatenate([rng.choice(members, members.size) for members in classes])
            gain = (metrics.image_auroc(labels[idx], fused[idx]) or 0.0) - (
                metrics.image_auroc(labels[idx], bank[idx]) or 0.0
            )
            wins += gain > 0
        return wins / BOOTSTRAP_RESAMPLES

    def _no_head(self, n_features: int, n_patch_features: int) -> None:
        self.head_mean_ = np.zeros(n_features)
        self.head_scale_ = np.ones(n_features)
        self.head_coef_ = np.zeros(n_features)
        self.head_intercept_ = 0.0
        self.head_c_, self.head_cv_auroc_ = 0.0, float("nan")
        self.bank_stats_ = (0.0, 1.0)
        self.head_stats_ = (0.0, 1.0)
        self.patch_head_stats_ = (0.0, 1.0)
        self.fusion_weight_, self.patch_fusion_weight_ = 0.0, 0.0
        self.fusion_val_auroc_, self.fusion_support_ = None, float("nan")
        self._no_type_head(n_features)
        self._no_patch_head(n_patch_features)

    # ------------------------------------------------------------------ score
    def _components(
        self, features: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """PatchCore's image scores, the pooled head's log-odds, the patch head's scores, and
        PatchCore's patch-score grids."""
        bank_scores, grids = super()._score_features(features)
        head = ((_pooled(features) - self.head_mean_) / self.head_scale_) @ self.head_coef_
        return bank_scores, head + self.head_intercept_, self._patch_scores(features), grids

    def _fuse(
        self,
        bank: np.ndarray,
        head: np.ndarray,
        patch: np.ndarray,
        weights: tuple[float, float],
    ) -> np.ndarray:
        """PatchCore's, the pooled head's and the patch head's scores, each standardised on
        the validation good images, weighted ``(1 - a - b, a, b)``, in PatchCore's units."""
        bank_mean, bank_std = self.bank_stats_
        z = (1.0 - sum(weights)) * (bank - bank_mean) / bank_std
        for weight, scores, (mean, std) in zip(
            weights, (head, patch), (self.head_stats_, self.patch_head_stats_), strict=True
        ):
            if weight:
                z = z + weight * (scores - mean) / std
        return bank_mean + bank_std * z

    def _score_features(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        bank_scores, head, patch, grids = self._components(features)
        if not self._uses_heads():
            return bank_scores, grids  # exactly PatchCore's scores, not a rescaled copy
        weights = (self.fusion_weight_, self.patch_fusion_weight_)
        return self._fuse(bank_scores, head, patch, weights), grids

    def score_batch(self, images: Sequence[np.ndarray]) -> Prediction:
        # The type head reads the very backbone pass the scores came from.
        scores, maps, features = self._score_pass(images)
        types = self._type_probabilities(features) if features else None
        return self._prediction(scores, maps, types)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "n_train_good": int(self.n_train_good_),
            "n_train_defects": int(self.n_train_defects_),
            "fusion_weight": self.fusion_weight_,
            "patch_fusion_weight": self.patch_fusion_weight_,
            "head_c": self.head_c_,
            "patch_head_c": self.patch_head_c_,
            "patch_head_k": self.patch_head_k_,
            "head_note": self.head_note_,
            "defect_types": list(self.defect_types_),
        }

    def summary_lines(self) -> list[str]:
        lines = super().summary_lines()
        if self.head_note_ and not self._uses_heads():
            lines.append(f"head: {self.head_note_}")
        else:
            patch_head = (
                f"patch head on stages {list(self.patch_head_layers)} (C="
                f"{self.patch_head_c_:g}, mean of the {self.patch_head_k_} highest patches, "
                f"train CV AUROC {self.patch_head_cv_auroc_:.4f}), weight "
                f"{self.patch_fusion_weight_:.2f}; "
                if self.patch_head_layers
                else ""
            )
            lines.append(
                f"head: logistic regression on pooled stages {list(self.head_layers)} (C="
                f"{self.head_c_:g}, train CV AUROC {self.head_cv_auroc_:.4f}), weight "
                f"{self.fusion_weight_:.2f}; {patch_head}from {self.n_train_good_} good + "
                f"{self.n_train_defects_} defect train images; weights chosen on validation "
                f"(AUROC {self.fusion_val_auroc_:.4f}, above PatchCore's in "
                f"{self.fusion_support_:.0%} of bootstrap resamples; the same validation images "
                "calibrate the threshold)"
            )
        if self.defect_types_:
            how = (
                f"train CV balanced accuracy {self.type_cv_accuracy_:.3f}"
                if np.isfinite(self.type_cv_accuracy_)
                else "a type has one train image: not cross-validated"
            )
            lines.append(
                f"defect types: {', '.join(self.defect_types_)} (logistic regression, "
                f"C={self.type_c_:g}, {how})"
            )
        return lines

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, np.ndarray]:
        return {
            **super().state_tensors(),
            "head_mean": self.head_mean_,
            "head_scale": self.head_scale_,
            "head_coef": self.head_coef_,
            "head_scalars": np.array(
                [
                    self.head_intercept_,
                    self.head_c_,
                    self.head_cv_auroc_,
                    *self.bank_stats_,
                    *self.head_stats_,
                    self.fusion_weight_,
                    np.nan if self.fusion_val_auroc_ is None else self.fusion_val_auroc_,
                    self.fusion_support_,
                ]
            ),
            "head_counts": np.array([self.n_train_good_, self.n_train_defects_], dtype=np.int64),
            "head_note": text_tensor(self.head_note_),
            "type_coef": self.type_coef_,
            "type_intercept": self.type_intercept_,
            "type_scalars": np.array([self.type_c_, self.type_cv_accuracy_]),
            "type_names": text_tensor("\n".join(self.defect_types_)),
            "patch_head_mean": self.patch_head_mean_,
            "patch_head_scale": self.patch_head_scale_,
            "patch_head_coef": self.patch_head_coef_,
            "patch_head_scalars": np.array(
                [
                    self.patch_head_intercept_,
                    self.patch_head_c_,
                    self.patch_head_k_,
                    self.patch_head_cv_auroc_,
                    *self.patch_head_stats_,
                    self.patch_fusion_weight_,
                ]
            ),
        }

    def load_state(self, tensors: dict[str, np.ndarray], bundle_dir: Any) -> None:
        super().load_state(tensors, bundle_dir)
        try:
            self.head_mean_ = tensors["head_mean"]
            self.head_scale_ = tensors["head_scale"]
            self.head_coef_ = tensors["head_coef"]
            scalars = [float(v) for v in tensors["head_scalars"]]
            counts = [int(v) for v in tensors["head_counts"]]
            note = tensor_text(tensors["head_note"])
        except (KeyError, UnicodeDecodeError) as error:
            raise BundleError(f"{bundle_dir}: not a hybrid bundle ({error})") from error
        (self.head_intercept_, self.head_c_, self.head_cv_auroc_) = scalars[:3]
        self.bank_stats_ = (scalars[3], scalars[4])
        self.head_stats_ = (scalars[5], scalars[6])
        self.fusion_weight_ = scalars[7]
        self.fusion_val_auroc_ = None if np.isnan(scalars[8]) else scalars[8]
        self.fusion_support_ = scalars[9] if len(scalars) > 9 else float("nan")  # older bundles
        self.n_train_good_, self.n_train_defects_ = counts
        self.head_note_ = note
        self._load_patch_head(tensors, bundle_dir)
        if "type_names" not in tensors:  # a bundle from before the type head names no types
            self._no_type_head(self.head_coef_.shape[0])
            return
        names = tensor_text(tensors["type_names"])
        self.defect_types_ = tuple(names.split("\n")) if names else ()
        self.type_coef_ = tensors["type_coef"].reshape(
            len(self.defect_types_), self.head_coef_.shape[0]
        )
        self.type_intercept_ = tensors["type_intercept"]
        self.type_c_, self.type_cv_accuracy_ = (float(v) for v in tensors["type_scalars"])
        if self.type_intercept_.shape != (len(self.defect_types_),):
            raise BundleError(f"{bundle_dir}: type head does not match its {names!r} types")

    def _load_patch_head(self, tensors: dict[str, np.ndarray], bundle_dir: Any) -> None:
        if "patch_head_coef" not in tensors:  # a bundle from before the patch head
            self._no_patch_head(0)
            self.patch_head_stats_, self.patch_fusion_weight_ = (0.0, 1.0), 0.0
            return
        self.patch_head_mean_ = tensors["patch_head_mean"]
        self.patch_head_scale_ = tensors["patch_head_scale"]
        self.patch_head_coef_ = tensors["patch_head_coef"]
        scalars = [float(v) for v in tensors["patch_head_scalars"]]
        if len(scalars) != 7 or self.patch_head_coef_.shape != self.patch_head_mean_.shape:
            raise BundleError(f"{bundle_dir}: the hybrid's patch head is malformed")
        self.patch_head_intercept_, self.patch_head_c_ = scalars[:2]
        self.patch_head_k_, self.patch_head_cv_auroc_ = int(scalars[2]), scalars[3]
        self.patch_head_stats_ = (scalars[4], scalars[5])
        self.patch_fusion_weight_ = scalars[6]


def _stats(scores: np.ndarray) -> tuple[float, float]:
    """Mean and spread (never 0) of scores of good images: the fusion standardises by them."""
    return float(scores.mean()), float(scores.std() + 1e-12)


def _top_k_mean(logits: np.ndarray, k: int) -> np.ndarray:
    """Each row's mean of its ``k`` largest values (``(N, P)`` -> ``(N,)``)."""
    k = min(k, logits.shape[1])
    return np.partition(logits, logits.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def _fit_patch_instances(
    x: np.ndarray, labels: np.ndarray, c: float, seed: int
) -> tuple[np.ndarray, float]:
    """The patch head's multiple-instance fit on standardised ``(N, P, C)`` patches.

    Round 0: every patch of a defective image is a defect. Each later round keeps, per
    defective image, the ``PATCH_KEEP`` share of its patches the current head ranks highest
    (the rest are most likely intact cell). Good patches are subsampled to as many as the
    defect patches (class weights balance the rest), the same rows in every round."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    channels = x.shape[2]
    positive = x[labels == 1]
    negative = x[labels == 0].reshape(-1, channels)
    keep = np.ones(positive.shape[:2], dtype=bool)
    head = LogisticRegression(C=c, class_weight="balanced", max_iter=1000)
    for round_ in range(PATCH_ROUNDS + 1):
        rows = positive[keep]
        chosen = rng.choice(len(negative), min(len(rows), len(negative)), replace=False)
        targets = np.r_[np.ones(len(rows)), np.zeros(len(chosen))]
        head.fit(np.concatenate([rows, negative[chosen]]), targets)
        if round_ < PATCH_ROUNDS:
            logits = positive @ head.coef_[0] + head.intercept_[0]
            keep = logits >= np.quantile(logits, 1.0 - PATCH_KEEP, axis=1, keepdims=True)
    return head.coef_[0].astype(np.float64), float(head.intercept_[0])


def _patch_head_logits(
    x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, *, c: float, seed: int
) -> np.ndarray:
    """Patch log-odds ``(len(test), P)`` of a patch head fitted on the ``train`` images."""
    coef, intercept = _fit_patch_instances(x[train], labels[train], c, seed)
    return x[test] @ coef + intercept


def _out_of_fold(
    candidates: Sequence[Callable[[np.ndarray, np.ndarray], np.ndarray]],
    n_samples: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    num_threads: int,
) -> list[np.ndarray]:
    """Each candidate's out-of-fold predictions for all ``n_samples`` (as
    ``cross_val_predict``). A candidate is ``fit_predict(train, test)``: it fits on the
    ``train`` rows and returns its predictions for the ``test`` rows. Every (candidate, fold)
    fit is a task spread over ``num_threads`` processes (0: all cores): the heads' model
    selection is most of the hybrid's fitting time beyond PatchCore's.
    """
    from joblib import Parallel, delayed

    fits = Parallel(n_jobs=num_threads or -1)(
        delayed(candidate)(train, test) for candidate in candidates for train, test in splits
    )
    results = []
    for i in range(len(candidates)):
        parts = fits[i * len(splits) : (i + 1) * len(splits)]
        out = np.zeros((n_samples, *parts[0].shape[1:]))
        for (_, test), prediction in zip(splits, parts, strict=True):
            out[test] = prediction
        results.append(out)
    return results


def _fit_decision(
    estimator: LogisticRegression, x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    """A fresh copy of ``estimator`` fitted on the ``train`` rows: its decision function on
    the ``test`` rows."""
    from sklearn.base import clone

    return clone(estimator).fit(x[train], y[train]).decision_function(x[test])


def _pooled(features: dict[str, np.ndarray]) -> np.ndarray:
    """The head's pooled features of a batch, as float64 ``(B, F)``."""
    return np.asarray(features["pooled"], dtype=np.float64)


def _patch_grid(features: dict[str, np.ndarray]) -> np.ndarray:
    """The patch head's features of a batch, float32 ``(B, P, C)``; ``C = 0`` without one."""
    grid = features.get("patch_grid")
    if grid is None:
        return np.zeros((len(features["pooled"]), 1, 0), dtype=np.float32)
    return np.asarray(grid, dtype=np.float32)
