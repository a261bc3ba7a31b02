"""Torch eager vs ONNX Runtime vs OpenVINO on the same test images, in one run.

Fits (or reuses) a PatchCore bundle, exports it with ``anomaly export`` to each runtime, then
scores the test split once per runtime, each in a fresh process so that its peak RSS is its
own. Prints, per runtime: ms/image of the feature graph (backbone and pooling), of the search
(faiss) and of the maps, and of the whole model; peak RSS; test AUROC; the largest relative
score difference from torch and the test verdicts that differ. Every runtime is measured
``--rounds`` times, the order rotated each round; the best round is reported, with the load.

With ``--ef-search N`` a second PatchCore is fitted with an approximate HNSW index
(``patchcore.index=hnsw patchcore.ef_search=N``; the same coreset, so the same bank vectors) and
exported too: the rows marked ``hnsw`` show what approximate search buys and costs in AUROC.

    python benchmarks/runtimes.py --category elpv --ef-search 16
    python benchmarks/runtimes.py --model runs/benchmark/elpv/patchcore --exports onnx:int8
    python benchmarks/runtimes.py --category sealant --rounds 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import fit_variant  # benchmarks/_common.py: scripts run from this folder

#: (format, precision) exported and compared with the torch bundle (``--exports``).
EXPORTS = "onnx:fp32,onnx:int8,openvino:fp32,openvino:int8,openvino:bf16"


def measure(bundle: str) -> dict:
    """Score the bundle's test split in this process; timings per stage and peak RSS."""
    from anomaly.artifacts.bundle import load_bundle, read_config
    from anomaly.components.maps import anomaly_map
    from anomaly.components.threads import limited_threads
    from anomaly.data import load_dataset
    from anomaly.evaluation import metrics
    from anomaly.io.images import load_image
    from anomaly.runtime.inputs import resize_batch

    model = load_bundle(bundle)
    model.progress = False
    samples = load_dataset(read_config(bundle)).select("test")
    images = [load_image(s.path) for s in samples]
    labels = np.array([s.label for s in samples])
    size = model.batch_size
    batches = [images[i : i + size] for i in range(0, len(images), size)]
    model.score_arrays(batches[0])  # warm-up: first-call allocations, lazy initialisation
    features_s = search_s = maps_s = resize_s = 0.0
    scores = []
    started = time.perf_counter()
    for batch in batches:
        with limited_threads(model.num_threads):
            t0 = time.perf_counter()
            features = model.runtime_(batch)
            t1 = time.perf_counter()
            batch_scores, grids = model._score_features(features)
            t2 = time.perf_counter()
        for grid, image in zip(grids, batch, strict=True):
            anomaly_map(grid, model.image_size, image.shape[:2], model.blur_sigma)
        t3 = time.perf_counter()
        features_s, search_s, maps_s = features_s + t1 - t0, search_s + t2 - t1, maps_s + t3 - t2
        scores.append(batch_scores)
    whole_s = time.perf_counter() - started
    for batch in batches:  # the resize alone (inside "features" above), timed apart
        t0 = time.perf_counter()
        resize_batch(batch, model.image_size)
        resize_s += time.perf_counter() - t0
    scores = np.concatenate(scores)
    n = len(images)
    runtime = model.runtime_.describe()
    return {
        "bundle": bundle,
        "engine": runtime["engine"],
        "precision": runtime.get("effective_precision", runtime.get("precision", "fp32")),
        "n_images": n,
        "features_ms": 1000 * features_s / n,
        "graph_ms": 1000 * (features_s - resize_s) / n,
        "search_ms": 1000 * search_s / n,
        "maps_ms": 1000 * maps_s / n,
        "whole_ms": 1000 * whole_s / n,
        "peak_rss_mb": _peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "auroc": metrics.image_auroc(labels, scores),
        "threshold": model.threshold_,
        "index": getattr(model, "index", "-"),
        "ef_search": getattr(model, "ef_search", None),
        "scores": scores.tolist(),
    }


def _peak_rss_mb() -> float:
    """This process's peak RSS. Not ``getrusage``'s ``ru_maxrss``: Linux carries it over
    ``execve`` from the parent, so a child started by a large parent reports the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(bundle: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--measure", bundle],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"measuring {bundle} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="elpv")
    parser.add_argument("--data-root")
    parser.add_argument("--model", help="a fitted PatchCore bundle (default: fit one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ef-search", type=int, help="also an HNSW bank with this ef_search")
    parser.add_argument("--exports", default=EXPORTS, help="format:precision,... to compare")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config of the fits")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from anomaly.commands.export import export_bundle
    from anomaly.config import ExportConfig, build_config

    source = args.model or f"runs/benchmark/{args.category}/patchcore"
    exports = [tuple(item.split(":")) for item in args.exports.split(",")]
    sources = [(source, list(args.overrides), exports)]
    if args.ef_search:  # the approximate bank in the fp32 exports only
        hnsw = [*args.overrides, "patchcore.index=hnsw", f"patchcore.ef_search={args.ef_search}"]
        fp32 = [(fmt, precision) for fmt, precision in exports if precision == "fp32"]
        sources.append((f"{source}-hnsw{args.ef_search}", hnsw, fp32))
    bundles = []
    for bundle, overrides, exports in sources:
        if args.model is None or bundle != source:
            print(f"fitting PatchCore {' '.join(overrides)} on {args.category} -> {bundle}")
            fit_variant(args.category, bundle, overrides, data_root=args.data_root)
        bundles.append(bundle)
        for fmt, precision in exports:
            out = f"{bundle}-{fmt}-{precision}"
            config = build_config(
                ExportConfig,
                None,
                ["runtime.progress=false"],
                model=bundle,
                format=fmt,
                precision=precision,
                out=out,
                force=True,  # measured either way; the record says when it would have refused
            )
            print(export_bundle(config).text())
            bundles.append(out)
    results: dict[str, list[dict]] = {b: [] for b in bundles}
    for round_index in range(args.rounds):
        order = bundles[round_index % len(bundles) :] + bundles[: round_index % len(bundles)]
        for bundle in order:
            results[bundle].append(_child(bundle))
    load = os.getloadavg()
    best = {b: min(runs, key=lambda r: r["whole_ms"]) for b, runs in results.items()}
    reference = best[source]
    ref_scores = np.array(reference["scores"])
    print(
        f"\n{args.category} test split, {reference['n_images']} images, best of {args.rounds} "
        f"round(s); load average {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} cores"
    )
    header = (
        f"{'runtime':<22}{'graph':>7}{'resize':>7}{'search':>8}{'maps':>7}{'whole':>8}"
        f"{'x graph':>8}{'x whole':>8}{'RSS MB':>8}{'AUROC':>8}{'max rel diff':>14}{'flips':>6}"
    )
    print(header)
    rows = []
    for bundle in bundles:
        r = best[bundle]
        scores = np.array(r["scores"])
        rel = float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))
        flips = int(((scores >= r["threshold"]) != (ref_scores >= reference["threshold"])).sum())
        name = f"{r['engine']} {r['precision']}"
        if r["index"] == "hnsw":
            name += f" hnsw{r['ef_search']}"
        print(
            f"{name:<22}{r['graph_ms']:>7.1f}{r['features_ms'] - r['graph_ms']:>7.1f}"
            f"{r['search_ms']:>8.1f}{r['maps_ms']:>7.1f}"
            f"{r['whole_ms']:>8.1f}{reference['graph_ms'] / r['graph_ms']:>8.1f}"
            f"{reference['whole_ms'] / r['whole_ms']:>8.1f}{r['peak_rss_mb']:>8.0f}"
            f"{r['auroc']:>8.4f}{rel:>14.2e}{flips:>6}"
        )
        rows.append({k: v for k, v in r.items() if k != "scores"} | {"max_rel_diff": rel})
    print(
        "(ms/image; graph = normalisation, backbone and pooling; resize = OpenCV, the same for "
        "all; x = times faster than torch; flips = test verdicts that differ, each model at "
        "its own calibrated threshold)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
