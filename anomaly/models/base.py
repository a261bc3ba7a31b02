"""The estimator contract shared by every anomaly model.

scikit-learn style: ``__init__`` stores hyper-parameters only; ``fit(good_images)`` learns and
returns ``self``; learned state lives in attributes ending in ``_``. ``calibrate`` sets the
decision threshold on labelled validation images; ``predict`` gives scores, anomaly maps and
(once calibrated) verdicts.

A model splits in two at its features (:mod:`anomaly.runtime`). ``_embed`` (PyTorch) turns the
backbone's feature maps into the model's named features; it is part of the feature graph that
fitting runs, torch scoring runs, and ``anomaly export`` traces. Everything after it works on
numpy arrays, the same code whatever runtime computed them: ``_fit_begin``/``_fit_batch``/
``_fit_end`` to learn and ``_score_features`` to score. Image loading, batching, threads,
progress, calibration and maps are here, once.

Fitting needs PyTorch; scoring a bundle whose graph was exported (ONNX Runtime, OpenVINO) does
not import it: torch and the backbone code are imported inside the methods that need them.

A fitted model goes to disk and back through its own methods: ``state_tensors`` and
``write_extra_files`` give what a bundle stores, ``bundle_metadata`` the model's part of its
metadata, and the classmethod ``from_bundle`` rebuilds the fitted model from them, so
:mod:`anomaly.artifacts.bundle` only verifies and moves files and never touches model state.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from anomaly.components.groups import GroupScales
from anomaly.components.maps import AnomalyMaps, anomaly_map, stitched_anomaly_map
from anomaly.components.threads import limited_threads
from anomaly.components.tiling import Box, Tiling, cut_tiles, untiled_model_error
from anomaly.decision import calibration as calibration_module
from anomaly.decision import verdict as verdict_rule
from anomaly.errors import BundleError, ConfigError, DataError, NotFittedError, UnsupportedError
from anomaly.io.batches import batches
from anomaly.io.images import load_image

if TYPE_CHECKING:
    import torch

    from anomaly.components.backbones import FeatureExtractor
    from anomaly.data.dataset import Sample
    from anomaly.runtime import FeatureRuntime

logger = logging.getLogger(__name__)

ImageInput = np.ndarray | str | Path
#: Where a part's group comes from (``data.group_by``): None, no groups; ``"dataset"``, the
#: group the dataset's layout gives each image (ELPV: the cell type, mono or poly).
GROUP_BY = (None, "dataset")
_Model = TypeVar("_Model", bound="AnomalyModel")


@dataclass
class Prediction:
    """Scores of a batch of images.

    ``scores`` ``(n,)`` are raw image scores (higher = more anomalous); ``anomaly_maps`` holds one
    ``(H, W)`` float32 map per image at that image's own size (an
    :class:`~anomaly.components.maps.AnomalyMaps`, which keeps a large prediction's maps as
    their patch scores and draws each when read). Once the model is calibrated,
    ``threshold`` and ``pixel_threshold`` are set and the normalised views and verdicts exist.
    """

    scores: np.ndarray
    anomaly_maps: Sequence[np.ndarray]
    threshold: float | None = None
    pixel_threshold: float | None = None
    #: The defect types the model tells apart (empty for a model that names none), and the
    #: ``(n, len(defect_types))`` probability of each per image.
    defect_types: tuple[str, ...] = ()
    type_probabilities: np.ndarray | None = None

    @property
    def predicted_types(self) -> list[str] | None:
        """The most likely defect type per image, or None when the model names no types.

        Given for every image, as if it were a defect: whether it is one is the verdict's
        business, and a QA team reads the type of rejected parts only."""
        if self.type_probabilities is None or not self.defect_types:
            return None
        return [self.defect_types[i] for i in self.type_probabilities.argmax(axis=1)]

    @property
    def predicted_type_probabilities(self) -> np.ndarray | None:
        """The probability of each image's most likely defect type ``(n,)``."""
        if self.type_probabilities is None or not self.defect_types:
            return None
        return self.type_probabilities.max(axis=1)

    @property
    def normalized_scores(self) -> np.ndarray | None:
        """Scores divided by the threshold: 1.0 is the decision boundary."""
        return None if self.threshold is None else self.scores / self.threshold

    @property
    def is_anomalous(self) -> np.ndarray | None:
        """Rejected (NG) flags ``(n,)`` by :mod:`anomaly.decision.verdict`'s rule."""
        if self.threshold is None:
            return None
        return verdict_rule.is_anomalous(self.scores, self.threshold)

    @property
    def verdicts(self) -> list[str] | None:
        """``"OK"``/``"NG"`` per image by :mod:`anomaly.decision.verdict`'s rule."""
        return (
            None if self.threshold is None else verdict_rule.verdicts(self.scores, self.threshold)
        )

    @property
    def map_maxima(self) -> np.ndarray:
        return np.array([float(m.max()) for m in self.anomaly_maps])


class AnomalyModel:
    """Base class: backbone features in, image scores and anomaly maps out."""

    model_name: ClassVar[str] = ""
    #: True for models that learn from defect labels too (the supervised baseline).
    supervised: ClassVar[bool] = False
    #: True for a model that learns its labels on top of a bank of the good images and can
    #: learn them again on the same bank (``fit_labels``, the hybrid): a learning curve then
    #: fits the bank once for all its points.
    labels_on_bank: ClassVar[bool] = False
    #: A score threshold the model's own output defines regardless of calibration (a
    #: classifier's probability 0.5); ``None`` for anomaly scores, which have none.
    native_threshold: ClassVar[float | None] = None
    default_layers: ClassVar[tuple[int, ...]] = (2, 3)
    #: True for models that score through a feature graph and numpy code (:mod:`anomaly.runtime`),
    #: which ``anomaly export`` can put in ONNX Runtime or OpenVINO; False for a model that
    #: scores its own way (the supervised baseline's Grad-CAM needs gradients).
    has_feature_graph: ClassVar[bool] = True
    #: Defect types the fitted model tells apart (see :attr:`Prediction.defect_types`); only a
    #: model that learns from typed defect labels names any.
    defect_types_: tuple[str, ...] = ()
    #: Per-group score scales (``group_by``), None when the model was fitted without groups.
    group_scales_: GroupScales | None = None
    #: True for models that can cut images into tiles (:mod:`anomaly.components.tiling`);
    #: such a model takes ``tile_size``, ``tile_stride`` and ``keep_aspect`` in ``__init__``.
    tiles_images: ClassVar[bool] = False
    #: True for models whose statistics belong to a position in the image (PaDiM): tiled,
    #: every image must then have the training images' number of tiles.
    position_aware: ClassVar[bool] = False
    # Tiling parameters, for models that take none (whole images, squashed).
    tile_size: int | None = None
    tile_stride: int | None = None
    keep_aspect: bool = False
    #: Where the fit ran (``{"name": "local"}``, or the engine, its shards and how their
    #: summaries merged), recorded in the bundle's ``training``.
    fit_engine_: dict[str, Any] = {"name": "local"}  # noqa: RUF012 (replaced, never mutated)
    #: The tiling as fitted (:meth:`Tiling.describe` of the first training image); None when
    #: images are squashed whole.
    tiling_: dict[str, Any] | None = None

    # ------------------------------------------------------------------ parameters
    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] | None = None,
        weights: str = "imagenet",
        image_size: int = 256,
        blur_sigma: float = 4.0,
        group_by: str | None = None,
        batch_size: int = 8,
        num_threads: int = 0,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _store_params(self, arguments: dict[str, Any]) -> None:
        """Store every ``__init__`` argument found in ``arguments`` under its own name.

        A model's ``__init__`` lists its parameters explicitly (``get_params`` reads them from
        the signature, as scikit-learn does) and then calls ``self._store_params(locals())``
        as its first statement: ``__init__`` only stores, and the shared parameters are not
        forwarded to ``super().__init__`` one by one in every model.
        """
        for name in self._param_names():
            if name in arguments:
                setattr(self, name, arguments[name])

    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            if "__init__" in vars(klass) and issubclass(klass, AnomalyModel):
                for name, parameter in inspect.signature(klass.__init__).parameters.items():
                    keyword = parameter.kind is parameter.POSITIONAL_OR_KEYWORD
                    if name != "self" and keyword and name not in names:
                        names.append(name)
        return names

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (JSON-able), as in scikit-learn."""
        params = {name: getattr(self, name) for name in self._param_names()}
        if params.get("layers") is not None:
            params["layers"] = [int(layer) for layer in params["layers"]]
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Sequence[ImageInput], y: Any = None) -> AnomalyModel:
        """Learn what good parts look like from ``images`` (good parts only).

        ``images`` are RGB ``uint8`` arrays ``(H, W, 3)`` or paths to image files. ``y`` is
        ignored (the model is unsupervised); it is accepted for scikit-learn compatibility.
        """
        images = list(images)
        if not images:
            raise DataError("fit needs at least one good image; got none")
        self._check_params()
        torch = _import_torch("fit")  # before limited_threads, which then limits its pool too
        with limited_threads(self.num_threads):
            torch.manual_seed(self.seed)
            started = time.perf_counter()
            self._start_fit(images[0])
            self._fit_begin()
            self.group_scales_ = None
            self._train_descriptors: list[np.ndarray] = []
            for batch in self._batches(images, desc=f"{self.model_name}: features"):
                for _, features in self._features(batch):
                    self._fit_batch(features)
                    if self.group_by is not None:  # kept for fit_samples' group classifier
                        self._train_descriptors.append(group_descriptors(features))
            self._fit_end()
            if self.group_by is None:
                del self._train_descriptors
        self.fit_engine_ = {"name": "local"}
        return self._fitted(len(images), started)

    def _start_fit(self, first_image: ImageInput, tiling: dict[str, Any] | None = None) -> None:
        """The network, its feature graph and the tiling (``tiling``, or that of
        ``first_image``): what every fit sets up before :meth:`_fit_begin`."""
        self.extractor_ = self._make_extractor()
        self.runtime_ = self._torch_runtime()
        if tiling is None and self.tiling().active:
            tiling = self.tiling().describe(*_as_array(first_image).shape[:2])
        # Set before _fit_begin: a position-aware model sizes its statistics by it.
        self.tiling_ = tiling

    def _fitted(self, n_images: int, started: float) -> AnomalyModel:
        self.n_train_images_ = n_images
        self.fit_seconds_ = time.perf_counter() - started
        self.backbone_sha256_ = self.extractor_.weights_sha256()
        self.weights_source_ = self.extractor_.weights_source
        self.calibration_ = None
        logger.info(
            "%s fitted on %d images in %.1f s", self.model_name, n_images, self.fit_seconds_
        )
        return self

    #: Parameters added after bundles were first saved, with the value those bundles were
    #: fitted with (a new default must not change how an old bundle scores).
    legacy_params: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ sharded fitting
    #: True for models whose fit reduces shards of the good images apart and merges the
    #: shards' summaries (:meth:`fit_sharded`): PatchCore and PaDiM.
    shardable: ClassVar[bool] = False

    def fit_sharded(self, images: Sequence[ImageInput], engine: FitEngine) -> AnomalyModel:
        """Fit on ``images`` split into contiguous shards that ``engine`` reduces apart (each
        with :meth:`fit_shard` on a copy of this model), merging their summaries here.

        What must be common to every shard (the tiling; PaDiM's shift) is computed here first
        and handed to each shard. Calibration is left to the caller, as after :meth:`fit`.
        """
        images = list(images)
        if not images:
            raise DataError("fit needs at least one good image; got none")
        self.check_can_fit_in_shards()
        self._check_params()
        torch = _import_torch("fit")
        with limited_threads(self.num_threads):
            torch.manual_seed(self.seed)
            started = time.perf_counter()
            self._start_fit(images[0])
            self._fit_begin()
            context = {"tiling": self.tiling_, **self._shard_context(images)}
            self._use_shard_context(context)
            shards = split_shards(images, engine.shard_count(len(images)))
            notes = self._fit_shards(engine.map_shards(self, shards, context))
        self.fit_engine_ = {**engine.describe(), "shards": len(shards), **notes}
        return self._fitted(len(images), started)

    def fit_shard(self, images: Sequence[ImageInput], context: dict[str, Any]) -> Any:
        """Reduce one shard of the good images to the summary :meth:`fit_sharded` merges (run
        by a worker, on a model built with this one's parameters)."""
        torch = _import_torch("fit")
        with limited_threads(self.num_threads):
            torch.manual_seed(self.seed)
            self._start_fit(images[0], context["tiling"])
            self._fit_begin()
            self._use_shard_context(context)
            for batch in self._batches(list(images), desc=f"{self.model_name}: shard"):
                for _, features in self._features(batch):
                    self._fit_batch(features)
            return self._shard_summary()

    def check_can_fit_in_shards(self) -> None:
        """Raise :class:`UnsupportedError` unless :meth:`fit_sharded` works for this model."""
        why = None
        if not self.shardable:
            why = (
                f"{self.model_name} cannot be fitted on Ray (engine.name=ray fits patchcore "
                "and padim)"
            )
        elif self.group_by is not None:
            # The group classifier learns from every train image's descriptors, kept locally.
            why = f"group_by={self.group_by!r} cannot be fitted on Ray yet"
        if why:
            raise UnsupportedError(f"{why}; fit it with engine.name=local")

    def _shard_context(self, images: list[ImageInput]) -> dict[str, Any]:
        """What every shard needs besides the tiling for the summaries to merge (after
        :meth:`_fit_begin`, on the driver)."""
        return {}

    def _use_shard_context(self, context: dict[str, Any]) -> None:
        """Take :meth:`_shard_context`'s values (after :meth:`_fit_begin`)."""

    def _shard_summary(self) -> Any:
        """A shard's reduced features, after its :meth:`_fit_batch` calls."""
        raise NotImplementedError

    def _fit_shards(self, summaries: Iterable[Any]) -> dict[str, str]:
        """Merge the shards' summaries into the fitted model (in place of the batches and
        :meth:`_fit_end`); returns how, for the bundle's record of the fit."""
        raise NotImplementedError

    def fit_samples(
        self,
        train: Sequence[Sample],
        validation: Sequence[Sample],
        max_good_images: int | None = None,
        subset_seed: int = 0,
    ) -> AnomalyModel:
        """Fit on a dataset's samples, as ``anomaly fit`` does; returns ``self``.

        An unsupervised model learns from the good samples of ``train`` only: all of them, or
        a random subset of ``max_good_images`` drawn with ``subset_seed`` and kept in dataset
        order (``data.max_train_images`` and ``data.seed``). ``validation`` is not used here:
        it is left for calibration. A model that learns from labels overrides this method.
        """
        good = good_subset(train, max_good_images, subset_seed)
        logger.info("fitting %s on %d good images", self.model_name, len(good))
        self.fit([sample.path for sample in good])
        if self.group_by is not None:
            self._fit_groups(good, validation)
        return self

    def _fit_groups(self, good: Sequence[Sample], validation: Sequence[Sample]) -> None:
        """Learn to recognise the groups of the good train images ``good`` (in the order
        :meth:`fit` saw them) and each group's score scale on the good ``validation`` images.

        The validation images only set means and spreads here (as they set the threshold
        later); nothing is trained on them.
        """
        val_good = [sample for sample in validation if sample.label == 0]
        self.group_scales_ = None  # raw scores for the statistics
        scores, features = [], []
        for batch in self._batches([s.path for s in val_good], desc="groups: validation"):
            batch_scores, _, batch_features = self._score_pass(batch)
            scores.append(batch_scores)
            features.append(group_descriptors(batch_features))
        self._set_group_scales(
            good,
            np.concatenate(scores) if scores else np.empty(0),
            np.concatenate(features) if features else np.empty((0, 0)),
            [sample.group for sample in val_good],
        )

    def _set_group_scales(
        self,
        good: Sequence[Sample],
        val_scores: np.ndarray,
        val_features: np.ndarray,
        val_groups: Sequence[str | None],
    ) -> None:
        """Fit the group classifier on the train descriptors and the per-group scales on the
        good validation images' scores and descriptors (their true groups only measure how
        well groups are recognised)."""
        missing = [sample.path for sample in good if not sample.group]
        if missing:
            raise DataError(
                f"group_by={self.group_by!r}: {len(missing)} good train image(s) have no group, "
                f"e.g. {missing[0]} (the dataset's layout gives none)"
            )
        scales = GroupScales().fit(
            np.concatenate(self._train_descriptors), [str(sample.group) for sample in good]
        )
        del self._train_descriptors
        self.group_notes_ = scales.fit_scales(val_scores, val_features, val_groups)
        for note in self.group_notes_:
            logger.warning("%s", note)
        self.group_scales_ = scales
        logger.info("groups %s: scores standardised per group", ", ".join(scales.names_))

    def set_runtime(
        self,
        batch_size: int | None = None,
        num_threads: int | None = None,
        progress: bool | None = None,
    ) -> AnomalyModel:
        """Change how a (loaded) model runs, not what it learned; ``None`` keeps a setting."""
        if batch_size is not None:
            self.batch_size = batch_size
        if num_threads is not None:
            self.num_threads = num_threads
            # An exported graph's engine fixed its thread count when it was loaded.
            if hasattr(self, "runtime_"):
                self.runtime_ = self.runtime_.with_threads(num_threads)
        if progress is not None:
            self.progress = progress
        return self

    def partial_fit(self, images: Sequence[ImageInput]) -> AnomalyModel:
        """Add good images to a fitted model without refitting, where the model can.

        PatchCore can (its memory bank grows); models that keep only summary statistics of the
        training images cannot, and say so.
        """
        self.check_can_add_images()
        raise NotImplementedError  # an incremental model overrides partial_fit

    #: Whether ``partial_fit`` can add good images to the fitted model.
    incremental: ClassVar[bool] = False

    def check_can_add_images(self) -> None:
        """Raise :class:`UnsupportedError` unless ``partial_fit`` works for this model."""
        if not self.incremental:
            raise UnsupportedError(
                f"{type(self).__name__} cannot add images to a fitted model: it keeps no "
                "per-image state to extend; fit it again on all good images"
            )
        if self.group_scales_ is not None:
            raise UnsupportedError(
                f"{type(self).__name__} fitted with group_by={self.group_by!r} cannot add "
                "images: its per-group score scales would no longer match the bank; fit it "
                "again on all good images"
            )

    def calibrate(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int],
        target_miss_rate: float = 0.05,
        fallback_false_alarm_rate: float = 0.05,
        confidence: float = 0.95,
    ) -> AnomalyModel:
        """Set the decision threshold on labelled validation images (1 = defect, 0 = good).

        These images must not have been used by ``fit``. See
        :func:`anomaly.decision.calibration.calibrate`
        for the rule and for what happens when there are too few defects.
        """
        labels_array = np.asarray(labels, dtype=int)
        if len(labels_array) != len(images):
            raise DataError(f"calibrate got {len(images)} images but {len(labels_array)} labels")
        prediction = self.predict(images)
        return self.calibrate_from_scores(
            prediction.scores,
            labels_array,
            prediction.map_maxima,
            target_miss_rate=target_miss_rate,
            fallback_false_alarm_rate=fallback_false_alarm_rate,
            confidence=confidence,
        )

    def calibrate_from_scores(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        map_maxima: np.ndarray,
        target_miss_rate: float = 0.05,
        fallback_false_alarm_rate: float = 0.05,
        confidence: float = 0.95,
    ) -> AnomalyModel:
        """Calibrate from scores already computed on the validation images."""
        labels = np.asarray(labels, dtype=int)
        self.calibration_ = calibration_module.calibrate(
            scores[labels == 0],
            scores[labels == 1],
            map_maxima[labels == 0],
            map_maxima[labels == 1],
            target_miss_rate=target_miss_rate,
            fallback_false_alarm_rate=fallback_false_alarm_rate,
            confidence=confidence,
        )
        logger.info("calibrated: %s", self.calibration_.summary())
        return self

    @property
    def threshold_(self) -> float | None:
        calibration = getattr(self, "calibration_", None)
        return None if calibration is None else calibration.threshold

    # ------------------------------------------------------------------ inference
    def predict(self, images: Sequence[ImageInput]) -> Prediction:
        """Score ``images``: image scores, anomaly maps at each image's size, verdicts, and
        defect types where the model names them."""
        self.check_is_fitted()
        scores, maps, types = [], [], []
        for batch in self._batches(list(images), desc=f"{self.model_name}: scoring"):
            part = self.score_batch(batch)
            scores.append(part.scores)
            # Compact at once: each batch's drawn maps are freed with the batch, and the
            # prediction keeps every image's patch scores, its map drawn again when read.
            maps.append(AnomalyMaps.concatenate([part.anomaly_maps]))
            types.append(part.type_probabilities)
            del part  # its drawn maps go before the next batch is scored
        if not scores:
            return self._prediction(np.empty(0), [])
        return self._prediction(
            np.concatenate(scores),
            AnomalyMaps.concatenate(maps),
            None if any(t is None for t in types) else np.concatenate(types),
        )

    def score_batch(self, images: Sequence[np.ndarray]) -> Prediction:
        """Score one batch of loaded RGB images: scores, one map per image, the threshold and,
        for a model that names defect types, their probabilities."""
        scores, maps = self.score_arrays(images)
        return self._prediction(scores, maps)

    def score_arrays(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, AnomalyMaps]:
        """Score one batch of loaded RGB images: scores ``(B,)`` and one map per image."""
        scores, maps, _ = self._score_pass(images)
        return scores, maps

    def _score_pass(
        self, images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, AnomalyMaps, dict[str, np.ndarray]]:
        """Scores, maps at each image's size, and the features they came from (a model that
        reads more from the same pass, such as defect types, uses the latter).

        The one scoring pathway: the runtime (PyTorch, ONNX Runtime or OpenVINO) computes the
        features; everything from there on is this numpy code, whichever runtime it was."""
        self.check_is_fitted()
        if not images:
            return np.empty(0), AnomalyMaps([]), {}
        if self.tiling_ is None:
            ((_, features),) = self._features(images)
            scores, patch_grids = self._scores(features)
            maps = AnomalyMaps.draw(
                [
                    partial(anomaly_map, grid, self.image_size, image.shape[:2], self.blur_sigma)
                    for grid, image in zip(patch_grids, images, strict=True)
                ]
            )
            return self._image_scores(scores, maps), maps, features
        # Tiled: each run of images with the same number of tiles is scored together.
        scores, sources = np.empty(len(images)), []
        vectors: dict[str, list[np.ndarray]] = {}
        start = 0
        for boxes, features in self._features(images):
            stop = start + len(boxes)
            scores[start:stop], grids = self._scores(features)
            for grid, image, image_boxes in zip(grids, images[start:stop], boxes, strict=True):
                tiles = grid.reshape(len(image_boxes), -1, grid.shape[-1])  # (T, h, w)
                sources.append(
                    partial(
                        stitched_anomaly_map,
                        tiles,
                        image_boxes,
                        self.image_size,
                        image.shape[:2],
                        self.blur_sigma,
                    )
                )
            for name, value in features.items():
                if value.ndim == 2:  # per-image vectors (group descriptors) stay comparable
                    vectors.setdefault(name, []).append(value)
            start = stop
        maps = AnomalyMaps.draw(sources)
        vectors = {name: np.concatenate(parts) for name, parts in vectors.items()}
        return self._image_scores(scores, maps), maps, vectors

    def _image_scores(self, scores: np.ndarray, maps: Sequence[np.ndarray]) -> np.ndarray:
        """The image scores from the patch scores' ``scores`` and the finished ``maps``: the
        former, unless a model scores an image by its map (PaDiM's ``image_score``)."""
        return scores

    def _scores(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and patch grids of a batch's features, group scales applied."""
        with limited_threads(self.num_threads):
            scores, patch_grids = self._score_features(features)
        if self.group_scales_ is not None:
            descriptors = group_descriptors(features)
            scores = self.group_scales_.apply(scores, descriptors)
            patch_grids = self.group_scales_.apply(np.asarray(patch_grids), descriptors)
        return scores, patch_grids

    # ------------------------------------------------------------------ tiles
    def tiling(self) -> Tiling:
        """How this model turns an image into its square inputs (checked)."""
        return Tiling(self.tile_size, self.tile_stride, self.keep_aspect).check()

    def _features(
        self, images: Sequence[np.ndarray]
    ) -> Iterator[tuple[list[list[Box]], dict[str, np.ndarray]]]:
        """The model's features of a batch of images, with each image's tile boxes.

        Untiled: one item, the runtime's features of the whole batch. Tiled: one item per run
        of consecutive images with the same number of tiles, of at most ``batch_size`` tiles
        (or one image) each, in order; an image's ``T``
        tiles are stacked along the height of its feature maps (``(B, C, T h, w)``), so each
        model's scoring covers every tile of an image as one grid, and per-image vectors
        (``(B*T, C)``) are averaged over the image's tiles.
        """
        tiling = self.tiling()
        if not tiling.active:
            with limited_threads(self.num_threads):
                features = self.runtime_(images)
            yield [[Box(0, 0, *image.shape[:2])] for image in images], features
            return
        boxes = [tiling.boxes(*image.shape[:2]) for image in images]
        start = 0
        while start < len(images):
            count = len(boxes[start])
            # At most batch_size tiles' worth of images at once: the numpy scoring after the
            # graph (PatchCore's queries, PaDiM's products) then holds one batch, not T.
            limit = start + max(1, self.batch_size // count)
            stop = start
            while stop < min(limit, len(images)) and len(boxes[stop]) == count:
                stop += 1
            self._check_tile_count(count, images[start].shape[:2])
            tiles = [
                tile
                for image, image_boxes in zip(images[start:stop], boxes[start:stop], strict=True)
                for tile in cut_tiles(image, image_boxes)
            ]
            with limited_threads(self.num_threads):
                # Tiles in chunks of batch_size: memory stays that of one batch of images.
                parts = [
                    self.runtime_(tiles[i : i + self.batch_size])
                    for i in range(0, len(tiles), self.batch_size)
                ]
            yield (
                boxes[start:stop],
                {
                    name: _stack_tiles(np.concatenate([p[name] for p in parts]), count)
                    for name in parts[0]
                },
            )
            start = stop

    @property
    def tiles_per_image(self) -> int:
        """Tiles of a training-size image as fitted (1 when images are squashed whole)."""
        return self.tiling_["tiles_per_image"] if self.tiling_ else 1

    def input_tiles(self, image: np.ndarray) -> list[np.ndarray]:
        """What the feature graph sees of ``image`` before resizing: its tiles, or the whole
        image when the model does not tile (int8 calibration feeds the graph these)."""
        return cut_tiles(image, self.tiling().boxes(*image.shape[:2]))

    def _check_tile_count(self, count: int, shape: tuple[int, ...]) -> None:
        """A position-aware model scores only images with its training images' tile count."""
        fitted = self.tiling_
        if self.position_aware and fitted and count != fitted["tiles_per_image"]:
            height, width = fitted["image_shape"]
            raise DataError(
                f"{self.model_name} learned statistics for each of the {fitted['tiles_per_image']}"
                f" tile positions of its {height}x{width} training images; an image of "
                f"{shape[0]}x{shape[1]} pixels gives {count} tiles: score images of the training "
                "size, or fit with patchcore (position-free)"
            )

    def _prediction(
        self,
        scores: np.ndarray,
        maps: Sequence[np.ndarray],
        type_probabilities: np.ndarray | None = None,
    ) -> Prediction:
        calibration = getattr(self, "calibration_", None)
        return Prediction(
            scores=scores,
            anomaly_maps=maps,
            threshold=None if calibration is None else calibration.threshold,
            pixel_threshold=None if calibration is None else calibration.pixel_threshold,
            defect_types=tuple(self.defect_types_) if type_probabilities is not None else (),
            type_probabilities=type_probabilities,
        )

    def exact_search(self) -> AbstractContextManager[None] | None:
        """A context in which the model scores with exact nearest-neighbour search, or None for
        a model that never searches approximately (the fit then has nothing to compare)."""
        return None

    # ------------------------------------------------------------------ self-description
    def memory_bytes(self) -> int:
        """Bytes of the learned state in memory (backbone weights excluded).

        Default: the arrays the bundle saves. A model that holds more (a faiss index) or holds
        its arrays differently overrides this.
        """
        return sum(int(np.asarray(v).nbytes) for v in self.bundle_tensors().values())

    def external_weights_bytes(self) -> int:
        """Bytes of frozen weights the model loads from elsewhere (not stored in its bundle);
        0 for an exported model, whose graph file in the bundle holds its weights."""
        extractor = getattr(self, "extractor_", None)
        if extractor is None:
            return 0
        tensors = [*extractor.parameters(), *extractor.buffers()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def initialisation(self) -> str:
        """Where the model's network weights come from, in words."""
        source = getattr(self, "weights_source_", "")
        if source == "random":
            text = "random weights"
        elif source.startswith(("package:", "timm:")):
            text = f"ImageNet ({source})"
        else:
            text = source
        runtime = self.runtime_.describe() if hasattr(self, "runtime_") else {"engine": "torch"}
        if runtime["engine"] != "torch":
            text += f", exported to {runtime['engine']} at {runtime['precision']}"
        return f"{self.backbone}, frozen, {text}"

    def describe(self) -> dict[str, Any]:
        """What a summary or a comparison reports about the fitted model (JSON-able).

        Keys every model gives: ``initialisation``, ``n_train_good``, ``n_train_defects``
        (labelled defects learned from; 0 for unsupervised models), ``fit_cpu_seconds``
        (``None`` when not measured), ``model_memory_mb`` and ``external_weights_mb``. A model
        adds its own facts (PatchCore: ``memory_bank_size``, ``feature_dim``) by overriding.
        """
        self.check_is_fitted()
        return {
            "initialisation": self.initialisation(),
            "n_train_good": int(self.n_train_images_),
            "n_train_defects": 0,
            "fit_cpu_seconds": None,
            "model_memory_mb": round(self.memory_bytes() / 2**20, 2),
            "external_weights_mb": round(self.external_weights_bytes() / 2**20, 2),
            **({} if self.group_scales_ is None else self.group_scales_.describe()),
        }

    def summary_lines(self) -> list[str]:
        """Lines of the model's own facts for the summary ``anomaly fit`` prints."""
        lines = []
        if self.tiling_ is not None:
            t = self.tiling_
            height, width = t["image_shape"]
            lines.append(
                f"tiling: {t['tiles_per_image']} tiles of {t['tile_pixels']} px (stride "
                f"{t['stride'] or t['tile_pixels']}) per {height}x{width} image, each at "
                f"{self.image_size} px"
            )
        scales = self.group_scales_
        if scales is None:
            return lines
        accuracy = scales.validation_accuracy_
        recognised = "" if np.isnan(accuracy) else f", {accuracy:.1%} on good validation images"
        return [
            *lines,
            f"groups ({self.group_by}): {', '.join(scales.names_)}; each part's group recognised "
            f"from its features (train accuracy {scales.train_accuracy_:.1%}{recognised}), its "
            "score standardised within the group on the good validation images",
        ]

    # ------------------------------------------------------------------ bundles
    def bundle_metadata(self) -> dict[str, Any]:
        """The model's part of a bundle's ``metadata.json``: what :meth:`from_bundle` reads.

        ``model`` (registry name), ``params`` (``get_params``), ``backbone`` (name, weights
        source and the SHA-256 of the weights the model was fitted with), ``training``
        (``n_images``, ``fit_seconds``) and ``calibration`` (``None`` when not calibrated).
        """
        self.check_is_fitted()
        calibration = getattr(self, "calibration_", None)
        return {
            "model": self.model_name,
            "params": self.get_params(),
            "backbone": {
                "name": self.backbone,
                "weights_source": self.weights_source_,
                "weights_sha256": self.backbone_sha256_,
            },
            "runtime": self.runtime_.describe() if self.has_feature_graph else {"engine": "torch"},
            "training": {
                "n_images": self.n_train_images_,
                "fit_seconds": round(self.fit_seconds_, 3),
                "engine": self.fit_engine_,
            },
            "calibration": None if calibration is None else calibration.to_dict(),
            **({} if self.tiling_ is None else {"tiling": self.tiling_}),
        }

    @classmethod
    def from_bundle(
        cls: type[_Model],
        bundle_dir: Path,
        metadata: dict[str, Any],
        tensors: dict[str, np.ndarray],
    ) -> _Model:
        """Rebuild the fitted (and, when it was, calibrated) model a bundle holds.

        :func:`anomaly.artifacts.bundle.load_bundle` calls this once it has verified every
        file: ``metadata`` is the bundle's ``metadata.json``, ``tensors`` its safetensors
        arrays. The model is built from the saved parameters, its learned state restored
        (:meth:`load_state`), its network rebuilt, and the network's weights checked against
        the fingerprint saved at fit time; the bundle's whole metadata stays in ``metadata_``.

        Raises:
            BundleError: the bundle holds another model, or the backbone weights found now
                differ from those the model was fitted with.
        """
        name = metadata.get("model")
        if name != cls.model_name:
            raise BundleError(f"{bundle_dir}: holds a {name!r} model, not {cls.model_name!r}")
        # A parameter added since the bundle was saved takes the value the bundle was fitted
        # with, not today's default: an old bundle keeps scoring as it did.
        model = cls(**{**cls.legacy_params, **metadata["params"]})
        model.load_state(tensors, bundle_dir)
        model.group_scales_ = GroupScales.from_tensors(tensors, bundle_dir)
        if (model.group_scales_ is None) != (model.group_by is None):
            raise BundleError(f"{bundle_dir}: group_by={model.group_by!r} but group scales differ")
        runtime = metadata.get("runtime") or {"engine": "torch"}
        expected_weights = metadata["backbone"]["weights_sha256"]
        if runtime.get("engine") == "torch":
            _import_torch("score a bundle that was not exported")
            model.extractor_ = model._restore_extractor(tensors, bundle_dir)
            if model.extractor_.weights_sha256() != expected_weights:
                raise BundleError(
                    f"{bundle_dir}: backbone {model.backbone} weights differ from those the "
                    "model was fitted with; scores would not be comparable"
                )
            if model.has_feature_graph:
                model.runtime_ = model._torch_runtime()
        else:
            # The exported graph carries the weights it was checked with; its checksum in the
            # bundle is what keeps them the fitted ones.
            from anomaly.runtime.engines import load_runtime

            model.runtime_ = load_runtime(bundle_dir, runtime, model.image_size, model.num_threads)
        model.backbone_sha256_ = expected_weights
        model.weights_source_ = metadata["backbone"].get("weights_source", "")
        model._check_loaded_state(bundle_dir)
        model.tiling_ = metadata.get("tiling")
        if (model.tiling_ is None) == model.tiling().active:
            raise BundleError(
                f"{bundle_dir}: the parameters and the recorded tiling disagree "
                f"(tiling {model.tiling_!r})"
            )
        model.n_train_images_ = metadata["training"]["n_images"]
        model.fit_seconds_ = metadata["training"]["fit_seconds"]
        # Bundles made before the fit engine was recorded were all fitted locally.
        model.fit_engine_ = metadata["training"].get("engine", {"name": "local"})
        calibration = metadata.get("calibration")
        model.calibration_ = (
            None if calibration is None else calibration_module.Calibration.from_dict(calibration)
        )
        model.metadata_ = metadata
        return model

    def check_is_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the model was fitted or loaded from a bundle."""
        if not hasattr(self, "extractor_") and not hasattr(self, "runtime_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(good_images) or load a bundle"
            )

    # ------------------------------------------------------------------ hooks
    def check_params(self) -> AnomalyModel:
        """Raise a clear error for any hyper-parameter no fit could use; returns ``self``.
        ``fit`` checks too; commands call this first, before any data is read."""
        self._check_params()
        return self

    def _check_params(self) -> None:
        if self.image_size < 32:
            raise DataError(f"image_size={self.image_size}: must be at least 32 pixels")
        if self.batch_size < 1:
            raise DataError(f"batch_size={self.batch_size}: must be at least 1")
        if self.group_by not in GROUP_BY:
            raise ConfigError(
                f"data.group_by={self.group_by!r}: expected one of "
                f"{', '.join(repr(v) for v in GROUP_BY)}"
            )
        if self.tiling().active and not self.tiles_images:
            raise untiled_model_error(self.model_name)

    def _fit_begin(self) -> None:
        """Prepare to learn; ``extractor_`` is built already."""
        raise NotImplementedError

    def _fit_batch(self, features: dict[str, np.ndarray]) -> None:
        """Learn from one batch of the model's features (:meth:`embed`'s outputs)."""
        raise NotImplementedError

    def _fit_end(self) -> None:
        raise NotImplementedError

    def _embed(self, feature_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's named features from the backbone's maps (PyTorch, part of the graph)."""
        raise NotImplementedError

    def embed(self, feature_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every output of the model's feature graph: :meth:`_embed`'s features and, when the
        model is fitted with groups, each image's descriptor (each stage's mean over space)."""
        outputs = self._embed(feature_maps)
        if self.group_by is not None:
            import torch

            outputs["descriptors"] = torch.cat([m.mean(dim=(2, 3)) for m in feature_maps], dim=1)
        return outputs

    def _score_features(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores ``(B,)`` and patch-score grids ``(B, h, w)`` from the model's
        features (numpy: the same code whatever runtime computed them)."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Learned arrays of the model itself (see :meth:`bundle_tensors`)."""
        raise NotImplementedError

    def bundle_tensors(self) -> dict[str, np.ndarray]:
        """Every array the bundle's safetensors file holds: the model's own state and, when
        fitted with groups, the group scales (restored by :meth:`from_bundle`)."""
        groups = {} if self.group_scales_ is None else self.group_scales_.to_tensors()
        return {**self.state_tensors(), **groups}

    def load_state(self, tensors: dict[str, np.ndarray], bundle_dir: Path) -> None:
        """Restore learned state from the bundle (the inverse of ``state_tensors``/extra files)."""
        raise NotImplementedError

    def _check_loaded_state(self, bundle_dir: Path) -> None:
        """Raise :class:`BundleError` when the learned state cannot score with this network
        (checked once at load, so a faulty bundle never reaches a part). Default: nothing."""

    def _restore_extractor(
        self, tensors: dict[str, np.ndarray], bundle_dir: Path
    ) -> FeatureExtractor:
        """The network of a model being loaded (:meth:`from_bundle` checks its weights).

        Default: the frozen backbone, rebuilt from the parameters as ``fit`` built it. A model
        whose network is learned and saved in the bundle rebuilds it from ``tensors``.
        """
        return self._make_extractor()

    #: Extra files (beyond the safetensors) a fitted model writes into its bundle.
    extra_files: ClassVar[tuple[str, ...]] = ()

    def write_extra_files(self, bundle_dir: Path) -> None:
        """Write ``extra_files`` into ``bundle_dir``, and an exported runtime's graph files
        (a subclass that writes its own calls this too)."""
        runtime = getattr(self, "runtime_", None)
        for source in runtime.files() if hasattr(runtime, "files") else []:
            shutil.copyfile(source, bundle_dir / source.name)

    def check_exportable(self) -> None:
        """Raise :class:`UnsupportedError` unless this fitted model can be exported (its
        scoring is a feature graph followed by numpy code). The default models can."""
        self.check_is_fitted()
        if not self.has_feature_graph:
            raise UnsupportedError(
                f"{self.model_name}: only models that score through a feature graph "
                "(patchcore, padim, hybrid) can be exported"
            )
        if getattr(self, "extractor_", None) is None:
            raise UnsupportedError(
                f"{self.model_name}: this model was already exported; export its torch bundle"
            )

    def require_torch_runtime(self, action: str) -> None:
        """Raise :class:`UnsupportedError` when the model scores through an exported graph:
        ``action`` (adding images, refitting) needs the PyTorch backbone."""
        engine = self.runtime_.engine if hasattr(self, "runtime_") else "torch"
        if engine != "torch":
            raise UnsupportedError(
                f"{action} needs the PyTorch model: this bundle scores with an exported {engine} "
                "graph; do it on the bundle it was exported from and export again"
            )

    # ------------------------------------------------------------------ helpers
    def _extractor_layers(self) -> Sequence[int]:
        """The backbone stages the extractor returns (a model using more overrides this)."""
        return self.layers or self.default_layers

    def _make_extractor(self) -> FeatureExtractor:
        import torch

        from anomaly.components.backbones import create_feature_extractor

        if self.weights == "none":
            # Random weights must be the same at fit and at load, or the bundle's weight check
            # (rightly) refuses the model.
            torch.manual_seed(self.seed)
        return create_feature_extractor(self.backbone, self._extractor_layers(), self.weights)

    def _torch_runtime(self) -> FeatureRuntime:
        """The feature graph of ``extractor_`` and :meth:`embed`, run in PyTorch."""
        from anomaly.runtime.torch_graph import TorchRuntime

        return TorchRuntime(self.extractor_, self.embed, self.image_size)

    def _batches(self, images: list[ImageInput], desc: str) -> Iterator[list[np.ndarray]]:
        for chunk in batches(
            images, self.batch_size, desc, self.progress, tiles_per_item=self.tiles_per_image
        ):
            yield [_as_array(image) for image in chunk]


def _stack_tiles(values: np.ndarray, count: int) -> np.ndarray:
    """``(B*T, C, h, w)`` tile features -> ``(B, C, T h, w)``; ``(B*T, C)`` -> tile mean."""
    if values.ndim == 2:
        return values.reshape(-1, count, values.shape[1]).mean(axis=1)
    tiles, channels, height, width = values.shape
    grouped = values.reshape(tiles // count, count, channels, height, width)
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3, 4)).reshape(
        tiles // count, channels, count * height, width
    )


def group_descriptors(features: dict[str, np.ndarray]) -> np.ndarray:
    """The group descriptors of a batch's features, as float64 ``(B, C)``."""
    return np.asarray(features["descriptors"], dtype=np.float64)


def _import_torch(action: str) -> Any:
    """``torch``, or a clear error saying which install brings it."""
    try:
        import torch
    except ImportError as error:
        raise UnsupportedError(
            f"to {action} PyTorch is needed: pip install 'anomaly[fit]' (a line PC with only "
            "the [edge] install scores bundles made by `anomaly export`)"
        ) from error
    return torch


def split_shards(images: Sequence[ImageInput], count: int) -> list[list[ImageInput]]:
    """``images`` in ``count`` contiguous shards of sizes differing by one at most (fewer when
    there are fewer images), in order."""
    count = max(1, min(count, len(images)))
    size, extra = divmod(len(images), count)
    bounds = itertools.accumulate((size + (i < extra) for i in range(count)), initial=0)
    return [list(images[a:b]) for a, b in itertools.pairwise(bounds)]


class FitEngine(Protocol):
    """Where the shards of a sharded fit are reduced (:meth:`AnomalyModel.fit_sharded`)."""

    def describe(self) -> dict[str, Any]:
        """What the bundle records as the fit's ``engine``."""
        ...

    def shard_count(self, n_images: int) -> int: ...

    def map_shards(
        self, model: AnomalyModel, shards: list[list[ImageInput]], context: dict[str, Any]
    ) -> Iterator[Any]:
        """Each shard's ``model.fit_shard(shard, context)``, on a copy of ``model`` built from
        its parameters, in any order."""
        ...


def good_subset(
    samples: Sequence[Sample], max_images: int | None = None, seed: int = 0
) -> list[Sample]:
    """The good samples of ``samples``: all of them, or a random subset of ``max_images``
    drawn with ``seed`` and kept in their order (``data.max_train_images``, ``data.seed``)."""
    good = [sample for sample in samples if sample.label == 0]
    if max_images is not None and max_images < len(good):
        keep = np.random.default_rng(seed).choice(len(good), size=max_images, replace=False)
        good = [good[i] for i in sorted(keep)]
    return good


def _as_array(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_image(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(
            f"image array of shape {array.shape}: expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    if array.shape[2] == 4:
        array = array[:, :, :3]
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        raise DataError(
            f"image array of dtype {array.dtype}: expected uint8 (use anomaly.io.images)"
        )
    return np.ascontiguousarray(array)
