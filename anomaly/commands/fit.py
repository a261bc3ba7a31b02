"""Fit one category end to end: split, fit on good images, calibrate, test, save the bundle."""

from __future__ import annotations

import logging
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from anomaly.artifacts.bundle import bundle_size_bytes, load_bundle, read_config, save_bundle
from anomaly.commands.score import collect_files
from anomaly.components.tiling import Tiling, untiled_model_error
from anomaly.config import to_yaml
from anomaly.data import load_dataset
from anomaly.data.dataset import Dataset, Sample
from anomaly.decision.calibration import check_targets
from anomaly.engines import wants_ray
from anomaly.errors import AnomalyError, BundleError, DataError
from anomaly.evaluation.search_check import check_exact_search, search_check_line
from anomaly.evaluation.split import (
    SplitScores,
    score_split,
    split_fingerprint,
    split_metrics,
)
from anomaly.io.files import file_sha256, make_staging_dir, replace_directory
from anomaly.io.images import load_image
from anomaly.models import model_class
from anomaly.models.base import AnomalyModel, good_subset

if TYPE_CHECKING:
    from anomaly.engines.ray import RayFitEngine

logger = logging.getLogger(__name__)


def build_model(config: DictConfig) -> AnomalyModel:
    """Instantiate the configured model: shared keys plus the model's own config section."""
    name = config.model
    cls = model_class(name)
    specific = OmegaConf.to_container(config[name], resolve=True) if name in config else {}
    tiling = Tiling(config.tiling.tile_size, config.tiling.stride, config.keep_aspect).check()
    if cls.tiles_images:
        specific.update(
            tile_size=tiling.tile_size, tile_stride=tiling.stride, keep_aspect=tiling.keep_aspect
        )
    elif tiling.active:
        raise untiled_model_error(name)
    return cls(
        backbone=config.backbone.name,
        layers=None if config.backbone.layers is None else list(config.backbone.layers),
        weights=config.backbone.weights,
        image_size=config.image_size,
        group_by=config.data.group_by,
        batch_size=config.runtime.batch_size,
        num_threads=config.runtime.num_threads,
        seed=config.runtime.seed,
        progress=config.runtime.progress,
        **specific,
    )


@dataclass
class FitResult:
    model: AnomalyModel
    bundle_dir: Path
    summary: dict[str, Any]

    def text(self) -> str:
        """A short human summary of the fit."""
        s = self.summary
        cal = self.model.calibration_
        kind = "labelled" if self.model.supervised else "good"
        lines = [
            f"{s['model']} on {s['category']}: {s['n_train_images']} {kind} training images, "
            f"fit {s['fit_seconds']:.1f} s",
        ]
        lines.extend(self.model.summary_lines())
        lines.append(f"calibration: {cal.summary()}")
        if not cal.target_supported:
            lines.append(f"  note: {cal.note}")
        if s.get("search_check") is not None:
            lines.append(search_check_line(s["search_check"]))
        test = s["test"]
        op = test.get("operating_point") or {}
        if test.get("auroc") is not None:
            lines.append(
                f"test image AUROC {test['auroc']:.4f} ({test['n_good']} good, "
                f"{test['n_defect']} defect)"
            )
        if op.get("miss_rate") is not None or op.get("false_alarm_rate") is not None:
            # Either can be missing: a test split without good (or defective) images.
            lines.append(
                f"test at threshold: miss rate {_rate(op.get('miss_rate'), 'defect')}, "
                f"false-alarm rate {_rate(op.get('false_alarm_rate'), 'good')}"
            )
        if test.get("pixel_auroc") is not None:
            kind = f" (on {test['mask_kind']})" if test.get("mask_kind") else ""
            lines.append(
                f"test pixel AUROC {test['pixel_auroc']:.4f}, AUPRO {test['aupro']:.4f}{kind}"
            )
        named = test.get("defect_types") or {}
        if named.get("accuracy") is not None:
            lines.append(
                f"test defect type named correctly for {named['accuracy']:.1%} of the typed "
                f"defects ({len(named['per_type'])} types)"
            )
        lines.append(
            f"inference {test['ms_per_image']:.0f} ms/image; bundle "
            f"{s['bundle_mb']:.1f} MB at {self.bundle_dir}"
        )
        return "\n".join(lines)


def _rate(value: float | None, kind: str) -> str:
    return f"{value:.1%}" if value is not None else f"n/a (no {kind} test images)"


def fit_category(config: DictConfig) -> FitResult:
    """Fit, calibrate, test and save the model ``config`` describes; returns the summary."""
    model = build_model(config)
    # Every value the config holds is checked before the data is read or a network is built.
    model.check_params()
    cal = config.calibration
    check_targets(cal.target_miss_rate, cal.fallback_false_alarm_rate, cal.confidence)
    engine = fit_engine(config, model)  # a model Ray cannot fit, or no Ray: said at once
    dataset = load_dataset(config)
    if not dataset.select("train", label=0):
        raise DataError(f"category {dataset.name!r} has no good training images")
    val = dataset.select("val")
    if not val:
        raise DataError(f"category {dataset.name!r} has no validation images to calibrate on")
    started = time.perf_counter()
    logger.info("fitting %s on category %s", model.model_name, dataset.name)
    # The model picks what it learns from: the good train images (data.max_train_images caps
    # them) or, for a supervised model, every labelled train image with validation to stop on.
    if engine is None:
        model.fit_samples(
            dataset.select("train"),
            val,
            max_good_images=config.data.max_train_images,
            subset_seed=config.data.seed,
        )
    else:
        # The same good images as fit_samples takes; Ray only extracts and reduces features.
        good = good_subset(dataset.select("train"), config.data.max_train_images, config.data.seed)
        logger.info("fitting on %d good images in %d shards on Ray", len(good), engine.workers)
        with engine:
            model.fit_sharded([sample.path for sample in good], engine)
    return _calibrate_test_save(model, config, dataset, started)


def fit_engine(config: DictConfig, model: AnomalyModel) -> RayFitEngine | None:
    """Where ``config.engine`` fits ``model``: None for this process (``local``), a
    :class:`~anomaly.engines.ray.RayFitEngine` for ``ray`` (PatchCore and PaDiM only)."""
    if not wants_ray(config.engine.name):
        return None
    model.check_can_fit_in_shards()
    from anomaly.engines.ray import RayFitEngine  # Ray loads only when it is asked for

    return RayFitEngine(
        address=config.engine.address,
        workers=config.engine.workers,
        cpus_per_worker=config.engine.cpus_per_worker,
        retries=config.engine.retries,
        num_threads=config.runtime.num_threads,
    )


def calibrate_on_validation(
    model: AnomalyModel, val: list[Sample], calibration: DictConfig
) -> SplitScores:
    """Score the validation split and calibrate ``model`` on it with the ``calibration``
    config section (target miss rate, fallback, confidence); returns the validation scores."""
    val_scores = score_split(model, val)
    model.calibrate_from_scores(
        val_scores.scores,
        val_scores.labels,
        val_scores.map_maxima,
        target_miss_rate=calibration.target_miss_rate,
        fallback_false_alarm_rate=calibration.fallback_false_alarm_rate,
        confidence=calibration.confidence,
    )
    return val_scores


def _calibrate_test_save(
    model: AnomalyModel,
    config: DictConfig,
    dataset: Dataset,
    started: float,
    history: dict[str, Any] | None = None,
) -> FitResult:
    """Calibrate on the validation split, score the test split, save the bundle.

    ``started`` is when fitting began (validation scoring is not counted as fitting);
    ``history`` is stored with the bundle's data record (e.g. good images added later).
    """
    test = dataset.select("test")
    val_scores = calibrate_on_validation(model, dataset.select("val"), config.calibration)
    fit_seconds = time.perf_counter() - started - val_scores.seconds
    search_check = None
    # .get: the config of a bundle saved before the key (anomaly add) does not have it.
    if config.calibration.get("compare_exact_search", True):
        search_check = check_exact_search(model, dataset.select("val"), val_scores)
    test_metrics: dict[str, Any] = {"n_images": 0, "ms_per_image": val_scores.ms_per_image}
    if test:
        test_scores = score_split(model, test)
        test_metrics = split_metrics(test_scores, model.threshold_, config.calibration.confidence)
    out = Path(config.out or Path("runs") / dataset.name / model.model_name)
    data_info = {
        "category": dataset.name,
        "layout": dataset.layout,
        "summary": dataset.summary(),
        "split_fingerprints": {
            split: split_fingerprint(dataset.select(split)) for split in ("train", "val", "test")
        },
        **(history or {}),
    }
    summary: dict[str, Any] = {
        "model": model.model_name,
        "category": dataset.name,
        "n_train_images": model.n_train_images_,
        "fit_seconds": round(fit_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "test": test_metrics,
        **model.describe(),
    }
    if search_check is not None:
        summary["search_check"] = search_check
    bundle = save_bundle(model, out, to_yaml(config), {"data": data_info, "evaluation": summary})
    summary["bundle_mb"] = round(bundle_size_bytes(bundle) / 2**20, 2)
    return FitResult(model=model, bundle_dir=bundle, summary=summary)


def add_good_images(
    bundle_dir: str | Path,
    paths: list[str | Path],
    out: str | Path | None = None,
    runtime: DictConfig | None = None,
) -> tuple[FitResult, list[tuple[str, str]]]:
    """Add good images to a fitted PatchCore bundle, recalibrate, re-test and save it.

    The model's own validation and test splits (from the bundle's config) recalibrate and
    re-test it, so an added image that is also one of those is refused: it would make the
    figures lie. Unreadable files are skipped and returned as ``(file, reason)``. ``out``
    defaults to ``bundle_dir``; the bundle it replaces is kept in ``<out>.previous``.
    """
    bundle_dir = Path(bundle_dir)
    model = load_bundle(bundle_dir)
    model.check_can_add_images()
    config = read_config(bundle_dir)
    if runtime is not None:
        config.runtime = OmegaConf.merge(config.runtime, runtime)
    model.set_runtime(
        config.runtime.batch_size, config.runtime.num_threads, config.runtime.progress
    )
    files, errors = collect_files(paths)
    skipped = [(row.file, row.error) for row in errors]
    readable: list[Path] = []
    for path in files:
        try:
            load_image(path)
        except AnomalyError as error:
            skipped.append((str(path), str(error)))
            continue
        readable.append(path)
    for path, reason in skipped:
        logger.warning("skipped %s: %s", path, reason)
    if not readable:
        raise DataError(f"no readable good images to add under {', '.join(map(str, paths))}")
    dataset = load_dataset(config)
    held_out = {
        file_sha256(Path(s.path)): s.path for s in dataset.select("val") + dataset.select("test")
    }
    digests = {path: file_sha256(path) for path in readable}
    leaked = [f"{p} (= {held_out[h]})" for p, h in digests.items() if h in held_out]
    if leaked:
        raise DataError(
            f"{len(leaked)} image(s) to add are validation/test images of this model, which "
            f"calibrate and test it: {'; '.join(leaked[:5])}"
        )
    added = list(model.metadata_.get("data", {}).get("added_images", []))
    added += [{"file": str(p.resolve()), "sha256": h} for p, h in digests.items()]
    started = time.perf_counter()
    model.partial_fit(readable)
    config.out = str(out or bundle_dir)
    target = Path(config.out)
    if target.exists():
        _keep_previous(target)
    result = _calibrate_test_save(model, config, dataset, started, {"added_images": added})
    return result, skipped


def _keep_previous(bundle: Path) -> None:
    """Copy ``bundle`` to ``<bundle>.previous`` (replacing an older copy) before it is replaced.

    The copy is built in a staging directory and swapped in whole, so a crash leaves the older
    copy or the new one, never a mix.
    """
    previous = bundle.with_name(bundle.name + ".previous")
    if previous.exists() and not previous.is_dir():
        raise BundleError(f"{previous}: exists and is not a bundle directory; not overwriting it")
    staging = make_staging_dir(previous)
    try:
        shutil.copytree(bundle, staging, dirs_exist_ok=True)
        replace_directory(staging, previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
