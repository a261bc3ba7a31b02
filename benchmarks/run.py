"""Benchmark one model on one category and print the figures the README quotes.

Prints image AUROC on the test split, the test miss rate and false-alarm rate at the
calibrated threshold, pixel AUROC / AUPRO where masks exist, fit seconds, inference ms/image
(and the backbone's own forward time, to show what search and maps add), peak RSS and the
memory-bank size, then writes them as JSON.

    python benchmarks/run.py --category elpv
    python benchmarks/run.py --category sealant --model padim image_size=224
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from anomaly.artifacts.bundle import library_versions
from anomaly.commands.fit import fit_category
from anomaly.components.features import extract
from anomaly.config import FitConfig, build_config
from anomaly.io.files import write_text_atomic
from anomaly.io.images import load_image
from anomaly.io.jsonio import dumps


def backbone_ms_per_image(model, paths: list[Path], repeats: int = 3) -> float:
    """The backbone's forward time alone on one batch, best of ``repeats`` (ms per image)."""
    images = [load_image(p) for p in paths[: model.batch_size]]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            extract(model.extractor_, images, model.image_size)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(images)


def model_ms_per_image(model, paths: list[Path], repeats: int = 3) -> float:
    """The whole model (backbone, search, maps) on the same batch, best of ``repeats``."""
    images = [load_image(p) for p in paths[: model.batch_size]]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model.score_arrays(images)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="elpv")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--data-root")
    parser.add_argument("--out", help="bundle directory (default runs/benchmark/<cat>/<model>)")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = args.out or f"runs/benchmark/{args.category}/{args.model}"
    config = build_config(
        FitConfig,
        None,
        args.overrides,
        **{
            "data.category": args.category,
            "model": args.model,
            "data.root": args.data_root,
            "out": out,
        },
    )
    result = fit_category(config)
    model, summary = result.model, result.summary
    from anomaly.data import load_dataset

    test_paths = [s.path for s in load_dataset(config).select("test")]
    backbone_ms = backbone_ms_per_image(model, test_paths)
    steady_ms = model_ms_per_image(model, test_paths)
    test = summary["test"]
    op = test.get("operating_point") or {}
    figures = {
        "category": args.category,
        "model": args.model,
        "overrides": args.overrides,
        "n_train_images": summary["n_train_images"],
        "image_auroc": test.get("auroc"),
        "test_miss_rate": op.get("miss_rate"),
        "test_miss_rate_ci": op.get("miss_rate_ci"),
        "test_false_alarm_rate": op.get("false_alarm_rate"),
        "target_miss_rate": config.calibration.target_miss_rate,
        "pixel_auroc": test.get("pixel_auroc"),
        "aupro": test.get("aupro"),
        "per_defect_type_auroc": test.get("per_defect_type_auroc"),
        "defect_type_accuracy": (test.get("defect_types") or {}).get("accuracy"),
        "fit_seconds": summary["fit_seconds"],
        "inference_ms_per_image_end_to_end": test.get("ms_per_image"),
        "inference_ms_per_image_batch": round(steady_ms, 1),
        "backbone_ms_per_image": round(backbone_ms, 1),
        "inference_over_backbone": round(steady_ms / backbone_ms, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "memory_bank_size": summary.get("memory_bank_size"),
        "bundle_mb": summary["bundle_mb"],
        # Figures move with library versions (a fresh install resolves the newest), so they are
        # printed with them.
        "versions": library_versions(),
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if value < 10 else f"{value:.1f}"
        print(f"{key:<{width}}  {value}")
    if args.json:
        write_text_atomic(args.json, dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
