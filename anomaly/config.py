"""Structured configuration (omegaconf) for every command.

Every CLI flag is a key here; YAML files and ``key=value`` overrides merge onto these defaults,
are validated against the dataclass types, and the resolved config is saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anomaly.errors import ConfigError


@dataclass
class DataConfig:
    """Which images to use and how to split them."""

    category: str = "sealant"
    root: str | None = None  # folder of categories (MVTec AD or folder layout)
    cache_dir: str | None = None  # where built-in generated data is written
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    include_uncertain: bool = False  # elpv: count probability 1/3 and 2/3 cells as defects
    max_train_images: int | None = None  # cap on good training images (None = all)
    # Folder layout with a team's own names: folders (or shell patterns) of good and of defect
    # images, e.g. [ok_front] and ["def_*"]; null = good/ and every other folder.
    good_dirs: list[str] | None = None
    defect_dirs: list[str] | None = None
    # Score scale per group of parts: null (none) or "dataset" (the group the layout gives each
    # image: ELPV's cell type). Fitted models recognise a new part's group from its features.
    group_by: str | None = None


@dataclass
class BackboneConfig:
    name: str = "efficientnet_lite0"
    layers: list[int] | None = None  # feature stages by index; None = the model's default
    weights: str = "imagenet"  # "imagenet", "none" (random, for tests) or a path to a weight file


@dataclass
class PatchCoreConfig:
    coreset_ratio: float = 0.01
    projection_dim: int = 128
    chunk_images: int = 64
    coreset_candidates: int = 0  # 0 = every patch; k = k x a chunk's picks (linear-time fits)
    feature_dim: int = 1024
    # 3x3 patch averages at the map's border: "zeros" (as published) or "ignore" (older bundles)
    neighbourhood_padding: str = "zeros"
    num_neighbors: int = 9
    index: str = "flat"  # "flat" (exact) or "hnsw" (approximate, for large banks)
    ef_search: int = 64  # hnsw only: candidates per query; lower = faster, less exact
    blur_sigma: float = 4.0


@dataclass
class HybridConfig(PatchCoreConfig):
    """Arguments of :class:`anomaly.models.hybrid.Hybrid`: PatchCore's keys (its bank) plus the
    head's."""

    head_layers: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # pooled for the head
    patch_head_layers: list[int] = field(default_factory=lambda: [4])  # patches: the patch head
    min_defects: int = 2  # fewer labelled train defects: no head, PatchCore's scores
    # Use the head only if its validation gain holds in this share of bootstrap resamples.
    fusion_confidence: float = 0.95


@dataclass
class PadimConfig:
    """Keys are the arguments of :class:`anomaly.models.padim.PaDiM` beyond the shared ones."""

    n_features: int = 100  # random channel subset of the stacked stages (<= 176 for lite0)
    covariance_epsilon: float = 0.01  # added to every covariance diagonal
    memory_budget_mb: float = 1024.0  # refuse fits whose covariance sums would need more
    blur_sigma: float = 4.0
    # "map_max": the hottest pixel of the blurred anomaly map (anomalib's rule); "distance": the
    # largest per-position Mahalanobis distance (the rule of bundles saved before the key).
    image_score: str = "map_max"


@dataclass
class BaselineConfig:
    """Arguments of :class:`baselines.classifier.SupervisedClassifier` beyond the shared ones."""

    # The baseline's own architecture and input size: backbone.name and image_size hold the
    # unsupervised models' feature extractor. null = use backbone.name / image_size.
    # A registered backbone (mobilenet_v3_large | efficientnet_lite0 | resnet18 ...) or any timm
    # model name (resnet34, resnet50, vit_tiny_patch16_224 ...); ImageNet weights from pip where
    # they ship, else timm's cache or download, else from scratch with a warning.
    network: str | None = "mobilenet_v3_large"
    input_size: int | None = 224  # fixed-size networks (ViT) run at their own size instead
    head: str = "binary"  # "binary" (1 logit) | "two_class" (2 logits, softmax)
    imbalance: str = "class_weights"  # "class_weights" (n / 2n_c) | "sampler" | "none"
    epochs: int = 6
    patience: int = 2  # epochs without a lower validation miss rate before stopping
    stop_false_alarm_rate: float = 0.05  # early stopping tracks the val miss rate at this budget
    learning_rate: float = 0.001
    weight_decay: float = 0.0001
    train_batch_size: int = 32
    augment: bool = True  # flips and rotations of at most max_rotation degrees
    max_rotation: float = 10.0
    # Luminance copied to 3 channels, at fit and score alike: for parts whose colour only
    # varies with the background, fixture or lighting, so the network cannot key on it.
    grayscale: bool = False
    blur_sigma: float = 4.0  # Grad-CAM map smoothing


@dataclass
class TilingConfig:
    """Square tiles of the original image (patchcore, padim): see anomaly.components.tiling."""

    tile_size: int | None = None  # pixels of the original image; null = no tiling
    stride: int | None = None  # pixels between tiles; null = tile_size (no overlap)


@dataclass
class CalibrationConfig:
    target_miss_rate: float = 0.05
    fallback_false_alarm_rate: float = 0.05
    confidence: float = 0.95
    # With approximate search (patchcore.index=hnsw): score validation with exact search as
    # well and report the AUROC change and the verdicts that differ (warned when they matter).
    compare_exact_search: bool = True


@dataclass
class RuntimeConfig:
    num_threads: int = 0  # 0 = every core of this machine
    # 8 rather than 16: faster on a 2-core CPU and ~0.5 GB lower peak memory (ELPV benchmark).
    batch_size: int = 8
    seed: int = 0
    progress: bool = True


@dataclass
class EngineConfig:
    """Where scoring or fitting runs: ``local`` (this process) or ``ray`` (a Ray cluster, the
    [ray] extra).

    Scoring batches are ``runtime.batch_size`` images either way, so both engines give the same
    scores. A fit on Ray splits the good images into ``workers`` shards reduced apart and merged.
    """

    name: str = "local"  # local | ray
    address: str | None = None  # ray: null = start a local Ray; auto or ray://HOST:PORT = a cluster
    workers: int = 2  # ray: scoring actors, each holding one copy of the model; fit shards
    # ray: CPUs each actor reserves; its torch/faiss threads too, unless runtime.num_threads is set
    cpus_per_worker: float = 1.0
    retries: int = 3  # ray: restarts of an actor that died, and retries of its batch (fit shard)


@dataclass
class FitConfig:
    """``anomaly fit``: fit, calibrate and save one model for one category."""

    model: str = "patchcore"
    image_size: int = 256  # the model's square input; whole images are squashed to it
    # Keep the image's aspect ratio: cover it with squares of its short side, each resized to
    # image_size (patchcore, padim). tiling.tile_size sets smaller squares.
    keep_aspect: bool = False
    tiling: TilingConfig = field(default_factory=TilingConfig)
    out: str | None = None  # bundle directory; default runs/<category>/<model>
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)
    padim: PadimConfig = field(default_factory=PadimConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Where the features are extracted (patchcore, padim); calibration and the test run here.
    engine: EngineConfig = field(default_factory=EngineConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class CompareConfig(FitConfig):
    """``anomaly compare``: several models on one split, one table. Every ``fit`` key applies
    to the models it concerns (``model`` is ignored); ``out`` is the comparison's folder."""

    models: list[str] = field(default_factory=lambda: ["patchcore", "padim", "hybrid", "baseline"])
    runs_dir: str = "runs"  # bundles are reused from / saved to <runs_dir>/<category>/<model>
    refit: bool = False  # fit even when a bundle with the same split and config exists
    # Also train the models that learn from labels on 5, 10, 25, 50 and all train defects.
    learning_curve: bool = False
    learning_curve_defects: list[int] = field(default_factory=lambda: [5, 10, 25, 50])


@dataclass
class ScoreConfig:
    """``anomaly score``: score image files and folders with a fitted model."""

    paths: list[str] = field(default_factory=list)
    model: str = "runs/sealant/patchcore"  # bundle directory
    split: str | None = None  # score the bundle's own dataset split (train/val/test) instead
    out: str | None = None  # run directory; default runs/score-<timestamp>
    heatmaps: bool = True  # write an overlay PNG for every rejected part
    report: bool = False  # also write report.html
    resume: bool = False  # continue a run into `out` that was killed (same inputs and model)
    # Public key file: score only bundles signed with its private half (`anomaly sign`).
    require_signature: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class AddConfig:
    """``anomaly add``: add good images to a fitted PatchCore bundle, recalibrate, re-test."""

    paths: list[str] = field(default_factory=list)
    model: str = "runs/sealant/patchcore"  # bundle directory
    out: str | None = None  # default: the model's own directory (old one kept in <dir>.previous)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class ExportConfig:
    """``anomaly export``: a copy of a bundle whose features run in ONNX Runtime or OpenVINO."""

    model: str = "runs/sealant/patchcore"  # bundle directory (made by `anomaly fit`)
    format: str = "onnx"  # onnx (ONNX Runtime) | openvino
    precision: str = "fp32"  # fp32 | int8; openvino also bf16 | fp16 (checked, recorded)
    int8_images: int = 64  # good train images that calibrate int8 activation ranges
    out: str | None = None  # default <model>-<format>-<precision>
    # Refuse an export whose validation false-alarm rate (recalibrated to the same miss-rate
    # target) is more than this above the PyTorch model's, or that misses more defects.
    max_false_alarm_increase: float = 0.01
    force: bool = False  # save anyway (recorded in the bundle)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class EvaluateConfig:
    """``anomaly evaluate``: every metric of one or several bundles on one labelled split."""

    models: list[str] = field(default_factory=list)  # bundle directories; the first sets the split
    split: str = "test"  # which split of the dataset (train/val/test)
    category: str | None = None  # evaluate on this category instead of the first bundle's own
    data_root: str | None = None  # folder of categories, for ``category``
    out: str | None = None  # output folder; default runs/evaluate-<timestamp>
    plots: bool = True  # ROC, score histograms and confusion matrices as PNG
    confidence: float = 0.95  # of the Clopper-Pearson intervals
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def build_config(
    schema: type,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> DictConfig:
    """Merge defaults, a YAML file, ``key=value`` overrides and CLI flags, then validate.

    ``flags`` maps dotted config keys to values given as named CLI flags (``None`` = not given).
    Later sources win: defaults < file < overrides < flags.
    """
    try:
        config = OmegaConf.structured(schema)
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found")
            try:
                loaded = OmegaConf.load(path)
            except yaml.YAMLError as error:  # malformed YAML: one line, with where it broke
                raise ConfigError(f"{path}: not valid YAML ({_one_line(error)})") from error
            except OSError as error:  # omegaconf's word for a scalar document ("0", "text")
                raise ConfigError(f"{path}: not a mapping of config keys ({error})") from error
            if not isinstance(loaded, DictConfig):  # a list document ("- a")
                raise ConfigError(f"{path}: not a mapping of config keys (a list)")
            config = OmegaConf.merge(config, loaded)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"{item!r}: overrides must look like key=value")
        if overrides:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
        for key, value in flags.items():
            if value is not None:
                OmegaConf.update(config, key, value, merge=True)
    except (OmegaConfBaseException, yaml.YAMLError) as error:  # a value YAML cannot read, too
        raise ConfigError(f"invalid configuration: {_one_line(error)}") from error
    return config


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config, resolve=True)


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    key = getattr(error, "full_key", None)
    text = f"{key}: {message}" if key else message
    # A key or value typed with control characters stays visible, and the message one line.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
