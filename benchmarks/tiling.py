"""Squashed vs tiled PatchCore on high-resolution images, in one run.

Fits PatchCore on ``sealant_line`` (2048x640 parts) once per way of feeding the images to the
model: squashed whole to 256x256 (the default), ``keep_aspect`` (squares of the short side),
and square tiles (``tiling.tile_size``); each fit and each scoring pass runs in its own process,
so its peak RSS is its own. Prints, per variant: tiles per image, fit seconds and peak RSS,
scoring ms/image and peak RSS, test image AUROC, miss and false-alarm rates at the calibrated
threshold, pixel AUROC; then image and pixel AUROC per defect type (the smallest type first)
and per defect size bucket (mask area, % of the image). Pixel metrics here use maps and masks
at 512 pixels on the long side (``anomaly evaluate`` uses 256), so small defects keep pixels.

Then the tile-count check: one 1024x1024 image scored with the finest tiled bundle against
(number of tiles) x one tile's time (a 256x256 image scored alone by the same bundle).

    python benchmarks/tiling.py
    python benchmarks/tiling.py --variants squash,tiles320 --json runs/benchmark/tiling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import fit_variant, num, pct  # benchmarks/_common.py: scripts run from this folder

#: name -> config overrides. Tile stride = tile size (no overlap) unless said otherwise.
VARIANTS = {
    "squash": [],
    "keep_aspect": ["keep_aspect=true"],
    "tiles320": ["tiling.tile_size=320"],
    "tiles256": ["tiling.tile_size=256"],
}
#: Defect size buckets: upper bounds of the mask area, % of the image.
SIZE_BUCKETS = (0.1, 0.3, 1.0, 100.0)
EVAL_SIZE = 512


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ``ru_maxrss`` would carry over the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fit(bundle: str, category: str, overrides: list[str]) -> dict:
    """Fit and calibrate one variant (``anomaly fit``), in this process."""
    result, seconds = fit_variant(category, bundle, overrides)
    return {
        "fit_seconds": seconds,
        "fit_rss_mb": _peak_rss_mb(),
        "bank": result.model.memory_bank_.size,
        "tiles": (result.model.tiling_ or {}).get("tiles_per_image", 1),
    }


def _small(array: np.ndarray, interpolation: int) -> np.ndarray:
    import cv2

    height, width = array.shape
    scale = min(1.0, EVAL_SIZE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=interpolation)


def measure(bundle: str) -> dict:
    """Score the bundle's test split in this process: timing, RSS, image and pixel metrics."""
    import cv2

    from anomaly.artifacts.bundle import load_bundle, read_config
    from anomaly.data import load_dataset
    from anomaly.decision.verdict import is_anomalous
    from anomaly.evaluation import metrics
    from anomaly.io.images import load_image, load_mask

    model = load_bundle(bundle)
    model.progress = False
    samples = load_dataset(read_config(bundle)).select("test")
    model.score_arrays([load_image(samples[0].path)])  # warm-up
    scores, maps, masks, areas = [], [], [], []
    seconds = 0.0
    for start in range(0, len(samples), model.batch_size):
        chunk = samples[start : start + model.batch_size]
        images = [load_image(s.path) for s in chunk]
        began = time.perf_counter()
        batch_scores, batch_maps = model.score_arrays(images)
        seconds += time.perf_counter() - began
        scores.extend(batch_scores.tolist())
        for sample, anomaly_map in zip(chunk, batch_maps, strict=True):
            if sample.mask_path is None:
                mask = np.zeros(anomaly_map.shape, dtype=bool)
            else:
                mask = load_mask(sample.mask_path, anomaly_map.shape)
            areas.append(100.0 * mask.mean())
            maps.append(_small(anomaly_map.astype(np.float32), cv2.INTER_AREA))
            masks.append(_small(mask.astype(np.uint8), cv2.INTER_NEAREST) > 0)
    labels = np.array([s.label for s in samples])
    types = np.array([s.defect_type for s in samples])
    scores_array, areas_array = np.array(scores), np.array(areas)
    point = metrics.operating_point(labels, scores_array, model.threshold_)
    good = labels == 0

    def subset(keep: np.ndarray) -> dict:
        """Image AUROC, recall at the threshold and pixel AUROC of these defects vs all good."""
        rows = np.flatnonzero(keep | good)
        return {
            "n": int(keep.sum()),
            "auroc": metrics.image_auroc(labels[rows], scores_array[rows]),
            "caught": float(is_anomalous(scores_array[keep], model.threshold_).mean()),
            "pixel_auroc": metrics.pixel_auroc([maps[i] for i in rows], [masks[i] for i in rows]),
            "median_area": float(np.median(areas_array[keep])),
        }

    by_type = {t: subset(types == t) for t in sorted(set(types) - {"good"})}
    buckets, lower = {}, 0.0
    for upper in SIZE_BUCKETS:
        keep = (labels == 1) & (areas_array >= lower) & (areas_array < upper)
        if keep.any():
            buckets[f"{lower:g}-{upper:g}%"] = subset(keep)
        lower = upper
    return {
        "n_images": len(samples),
        "ms_per_image": 1000 * seconds / len(samples),
        "score_rss_mb": _peak_rss_mb(),
        "auroc": metrics.image_auroc(labels, scores_array),
        "miss_rate": point.miss_rate,
        "false_alarm_rate": point.false_alarm_rate,
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "by_type": by_type,
        "by_size": buckets,
    }


def tile_time(bundle: str, repeats: int) -> dict:
    """One 1024x1024 image vs one tile, scored by the same tiled bundle, interleaved."""
    import cv2

    from anomaly.artifacts.bundle import load_bundle, read_config
    from anomaly.data import load_dataset
    from anomaly.io.images import load_image

    model = load_bundle(bundle)
    model.progress = False
    sample = load_dataset(read_config(bundle)).select("test")[0]
    part = load_image(sample.path)
    big = cv2.resize(part[:, : part.shape[0]], (1024, 1024), interpolation=cv2.INTER_LINEAR)
    tile_px = model.tiling_["tile_pixels"]
    tile = np.ascontiguousarray(big[:tile_px, :tile_px])
    tiles = len(model.tiling().boxes(1024, 1024))
    model.score_arrays([big])  # warm-up
    model.score_arrays([tile])
    big_s, tile_s = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        model.score_arrays([big])
        big_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        model.score_arrays([tile])
        tile_s.append(time.perf_counter() - began)
    big_ms, tile_ms = 1000 * float(np.median(big_s)), 1000 * float(np.median(tile_s))
    return {
        "tiles": tiles,
        "tile_pixels": tile_px,
        "image_ms": big_ms,
        "tile_ms": tile_ms,
        "ratio": big_ms / (tiles * tile_ms),
    }


def _child(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="sealant_line")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5, help="tile-count check repetitions")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--fit", nargs=2, metavar=("BUNDLE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--tile-time", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config of every fit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.fit:
        overrides = [*VARIANTS[args.fit[1]], *args.overrides]
        print(json.dumps(fit(args.fit[0], args.category, overrides)))
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    if args.tile_time:
        print(json.dumps(tile_time(args.tile_time, args.repeats)))
        return 0

    variants = args.variants.split(",")
    rows = {}
    for name in variants:
        bundle = f"runs/benchmark/{args.category}/patchcore-{name}"
        print(f"fitting {name} ({' '.join(VARIANTS[name]) or 'defaults'}) -> {bundle}", flush=True)
        rows[name] = {
            "bundle": bundle,
            **_child("--category", args.category, "--fit", bundle, name, *args.overrides),
        }
    for name in variants:  # scoring after every fit: one heavy job at a time, none overlapping
        rows[name].update(_child("--measure", rows[name]["bundle"]))
    tiled = [name for name in variants if rows[name]["tiles"] > 1]
    finest = max(tiled, key=lambda name: rows[name]["tiles"]) if tiled else None
    timing = (
        _child("--tile-time", rows[finest]["bundle"], "--repeats", str(args.repeats))
        if finest
        else None
    )
    load = os.getloadavg()

    first = rows[variants[0]]
    print(
        f"\n{args.category} test split, {first['n_images']} images; load average "
        f"{load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"{'variant':<12}{'tiles':>6}{'fit s':>7}{'fit MB':>8}{'ms/img':>8}{'score MB':>9}"
        f"{'bank':>8}{'AUROC':>8}{'miss':>7}{'FA':>7}{'pixel AUROC':>12}"
    )
    for name in variants:
        r = rows[name]
        print(
            f"{name:<12}{r['tiles']:>6}{r['fit_seconds']:>7.0f}{r['fit_rss_mb']:>8.0f}"
            f"{r['ms_per_image']:>8.0f}{r['score_rss_mb']:>9.0f}{r['bank']:>8}"
            f"{num(r['auroc']):>8}{pct(r['miss_rate']):>7}{pct(r['false_alarm_rate']):>7}"
            f"{num(r['pixel_auroc']):>12}"
        )
    types = sorted(first["by_type"], key=lambda t: first["by_type"][t]["median_area"])
    print("\nper defect type (smallest median area first): image AUROC / pixel AUROC")
    print(f"{'type':<10}{'area %':>8}" + "".join(f"{name:>22}" for name in variants))
    for t in types:
        cells = ""
        for n in variants:
            entry = rows[n]["by_type"][t]
            cells += f"{num(entry['auroc']) + ' / ' + num(entry['pixel_auroc']):>22}"
        print(f"{t:<10}{first['by_type'][t]['median_area']:>8.2f}{cells}")
    print("\nper defect size (mask area, % of the image): image AUROC / pixel AUROC / caught")
    print(f"{'size':<10}{'n':>4}" + "".join(f"{name:>30}" for name in variants))
    for bucket, entry in first["by_size"].items():
        cells = ""
        for n in variants:
            e = rows[n]["by_size"][bucket]
            text = f"{num(e['auroc'])} / {num(e['pixel_auroc'])} / {pct(e['caught'])}"
            cells += f"{text:>30}"
        print(f"{bucket:<10}{entry['n']:>4}{cells}")
    print(
        "(caught = share of the bucket's defects at or above the calibrated threshold; pixel "
        f"metrics on maps and masks at {EVAL_SIZE} px on the long side)"
    )
    if timing:
        print(
            f"\ntile-count check ({finest}): a 1024x1024 image = {timing['tiles']} tiles of "
            f"{timing['tile_pixels']} px: {timing['image_ms']:.0f} ms; one tile alone "
            f"{timing['tile_ms']:.0f} ms; ratio {timing['ratio']:.2f} of tiles x one tile "
            f"(target <= 1.2; median of {args.repeats})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "rows": rows, "timing": timing}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
