"""How cost grows with the work, and what Ray adds: the figures issue 16 asks for, in one run.

Three parts, each measured in fresh processes so that every peak RSS is that process's own:

``fit``  PatchCore fitted locally on 1,000, 3,000 and 10,000 good images: ELPV's good training
         cells under the 8 flips and 90-degree rotations (7,240 images), and past that the same
         shifted by 8 pixels (circularly). Fit seconds and peak RSS for each, with
         ``patchcore.coreset_candidates=2 patchcore.chunk_images=4`` (the setting for large
         fits) and, at ``--default-sizes``, with the default one pass for comparison. Each bank
         then scores ELPV's test split with the exact (flat) index and with HNSW: ms/image and
         test image AUROC for both.
``ray``  1,000 image files (ELPV test cells, flipped and rotated) scored by ``anomaly score``
         with the local engine, then with Ray on 1 and 2 workers: wall seconds, images/s,
         whether every score equals the local run's, driver and per-worker peak RSS (VmHWM,
         polled), and the workers needed for 1 million images an hour.
``rayfit`` ``anomaly fit --category elpv`` locally and with ``--engine ray``: fit seconds and
         test AUROC of each.

    python benchmarks/scale.py                       # all three parts (about 35 min, 2 cores)
    python benchmarks/scale.py --parts fit --sizes 1000 3000
    python benchmarks/scale.py --parts ray --model runs/benchmark/elpv/patchcore

Figures are printed and written to ``runs/benchmark/scale/results.json``; the load average is
printed with each part (a shared 2-core box is noisy).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

OUT = Path("runs/benchmark/scale")
#: The CLI of the Python running this script (its virtual environment need not be on PATH).
ANOMALY = str(Path(sys.executable).parent / "anomaly")
SCALABLE = ["patchcore.coreset_candidates=2", "patchcore.chunk_images=4"]


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def write_cells(split: str, n: int, folder: Path) -> Path:
    """``n`` ELPV cells of ``split`` (its good ones only for ``train``) as PNG files in
    ``folder``: each cell as it is, then under the other symmetries of the square (rotated by
    90 degrees, then flipped), then the same shifted by 8 pixels (circularly), and so on.
    Files already there are kept (written once, reused)."""
    import cv2

    from anomaly.config import FitConfig, build_config
    from anomaly.data import load_dataset
    from anomaly.io.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    config = build_config(FitConfig, None, [], **{"data.category": "elpv"})
    samples = load_dataset(config).select(split)
    cells = [s.path for s in samples if split != "train" or s.label == 0]
    for i in range(n):
        path = folder / f"cell{i:05d}.png"
        if path.is_file():
            continue
        variant = i // len(cells)
        image = np.rot90(load_image(cells[i % len(cells)]), variant % 4)
        if (variant // 4) % 2:
            image = image[:, ::-1]
        image = np.roll(image, 8 * (variant // 8), axis=(0, 1))
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    return folder


def fit_child(n: int, overrides: list[str], ef_search: int) -> dict:
    """Fit PatchCore on ``n`` augmented cells, then score ELPV's test split with both indexes."""
    from sklearn.metrics import roc_auc_score

    from anomaly.commands.fit import build_model
    from anomaly.components.memory_bank import MemoryBank
    from anomaly.config import FitConfig, build_config
    from anomaly.data import load_dataset
    from anomaly.io.images import load_image

    config = build_config(FitConfig, None, overrides, **{"data.category": "elpv"})
    dataset = load_dataset(config)
    files = [OUT / "train" / f"cell{i:05d}.png" for i in range(n)]
    model = build_model(config)
    model.progress = False
    started = time.perf_counter()
    model.fit(files)
    fit_seconds = time.perf_counter() - started
    fit_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    test = dataset.select("test")
    labels = np.array([s.label > 0 for s in test])
    images = [load_image(s.path) for s in test]
    result = {
        "images": n,
        "overrides": overrides,
        "fit_seconds": round(fit_seconds, 1),
        "fit_peak_rss_mb": round(fit_rss),
        "bank": model.memory_bank_.size,
    }
    exact = model.memory_bank_
    approximate = MemoryBank("hnsw", ef_search=ef_search).fit(exact.all_vectors())
    for name, bank in (("flat", exact), (f"hnsw{ef_search}", approximate)):
        model.memory_bank_ = bank
        size = model.batch_size
        model.score_arrays(images[:size])  # warm-up
        started = time.perf_counter()
        scores = np.concatenate(
            [model.score_arrays(images[i : i + size])[0] for i in range(0, len(images), size)]
        )
        result[f"{name}_ms_per_image"] = round(
            1000 * (time.perf_counter() - started) / len(images), 1
        )
        result[f"{name}_test_auroc"] = round(float(roc_auc_score(labels, scores)), 4)
    return result


def run_fit_part(
    sizes: list[int], default_sizes: list[int], ef_search: int, extra: list[str]
) -> list[dict]:
    write_cells("train", max(sizes + default_sizes), OUT / "train")
    rows = []
    jobs = [(n, [*SCALABLE, *extra]) for n in sizes] + [(n, extra) for n in default_sizes]
    for n, overrides in jobs:
        print(
            f"fit {n} images {' '.join(overrides) or '(default one pass)'} ... {load()}", flush=True
        )
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child-fit",
                    str(n),
                    "--ef-search",
                    str(ef_search),
                    *overrides,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        row = json.loads(out)
        row["load_after"] = load()
        print("   ", row, flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- Ray scoring
class PeakRss:
    """Polls /proc for the process tree under ``root``: the largest VmHWM of each process."""

    def __init__(self, root: int) -> None:
        self.root, self.peaks, self.names = root, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _tree(self) -> set[int]:
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    parents[int(entry.name)] = int(fields[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, grew = {self.root}, True
        while grew:
            more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
            tree |= more
            grew = bool(more)
        return tree

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        kb = int(line.split()[1])
                        self.peaks[pid] = max(self.peaks.get(pid, 0), kb)
                        self.names[pid] = cmdline.decode(errors="replace")[:80]
            time.sleep(0.5)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        workers = [kb for pid, kb in self.peaks.items() if "ray::" in self.names[pid]]
        return {
            "driver_peak_rss_mb": round(self.peaks.get(self.root, 0) / 1024),
            "worker_peak_rss_mb": round(max(workers) / 1024) if workers else None,
        }


def score_run(model: str, folder: Path, engine: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        ANOMALY,
        "score",
        str(folder),
        "--model",
        model,
        "--out",
        str(out),
        "--no-heatmaps",
        *engine,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    rss = PeakRss(process.pid)
    _, errors = process.communicate()
    wall = time.perf_counter() - started
    memory = rss.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{errors[-2000:]}")
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"wall_seconds": round(wall, 1), "rows": rows, **memory}


def run_ray_part(model: str, n: int) -> dict:
    folder = write_cells("test", n, OUT / f"images{n}")  # only ever these n files
    print(f"scoring {n} files with {model}, {load()}", flush=True)
    runs = {}
    for name, engine in (
        ("local", []),
        ("ray 1 worker", ["--engine", "ray", "engine.workers=1"]),
        ("ray 2 workers", ["--engine", "ray", "engine.workers=2"]),
    ):
        runs[name] = score_run(model, folder, engine, OUT / f"score-{name.replace(' ', '-')}")
        print(f"   {name}: {runs[name]['wall_seconds']} s, {load()}", flush=True)
    # Ray's actors run 1 thread each (engine.cpus_per_worker=1), the local run 2: BLAS sums in
    # another order, so scores agree to float rounding rather than bit for bit.
    local = runs["local"]["rows"]
    figures = {}
    for name, run in runs.items():
        rows = run.pop("rows")
        same_files = [r["file"] for r in rows] == [r["file"] for r in local]
        mine = np.array([float(r["score"]) for r in rows])
        theirs = np.array([float(r["score"]) for r in local])
        figures[name] = {
            **run,
            "images_per_second": round(n / run["wall_seconds"], 2),
            "wall_over_local": round(run["wall_seconds"] / runs["local"]["wall_seconds"], 2),
            "same_files_same_order": same_files,
            "max_relative_score_difference": float(
                np.max(np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-12))
            ),
            "verdicts_differ": sum(
                a["verdict"] != b["verdict"] for a, b in zip(rows, local, strict=True)
            ),
        }
    per_worker = figures["ray 1 worker"]["images_per_second"]
    figures["scaling_1_to_2_workers"] = round(
        figures["ray 2 workers"]["images_per_second"] / per_worker, 2
    )
    figures["workers_for_1M_images_per_hour"] = int(np.ceil(1_000_000 / 3600 / per_worker))
    return figures


def run_rayfit_part(overrides: list[str]) -> dict:
    figures = {}
    for name, extra in (("local", []), ("ray", ["--engine", "ray"])):
        out = OUT / f"elpv-fit-{name}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"anomaly fit --category elpv {' '.join(extra)} ... {load()}", flush=True)
        started = time.perf_counter()
        subprocess.run(
            [
                ANOMALY,
                "fit",
                "--category",
                "elpv",
                "--out",
                str(out),
                *extra,
                *overrides,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        metadata = json.loads((out / "metadata.json").read_text())
        figures[name] = {
            "wall_seconds": round(time.perf_counter() - started, 1),
            "fit_seconds": metadata["training"]["fit_seconds"],
            "test_auroc": round(metadata["evaluation"]["test"]["auroc"], 4),
            "engine": metadata["training"].get("engine"),
            "load_after": load(),
        }
        print("   ", figures[name], flush=True)
    figures["auroc_ray_minus_local"] = round(
        figures["ray"]["test_auroc"] - figures["local"]["test_auroc"], 4
    )
    figures["fit_ray_over_local"] = round(
        figures["ray"]["fit_seconds"] / figures["local"]["fit_seconds"], 2
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["fit", "ray", "rayfit"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 3000, 10000])
    parser.add_argument("--default-sizes", nargs="*", type=int, default=[1000])
    parser.add_argument("--ef-search", type=int, default=16)
    parser.add_argument("--model", default="runs/benchmark/elpv/patchcore")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--child-fit", type=int, help=argparse.SUPPRESS)
    # Anything else is a config key=value for every fit (e.g. patchcore.neighbourhood_padding=
    # ignore, the setting the README's figures of 2026-12-02 (5) were measured with).
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.child_fit:
        print(json.dumps(fit_child(args.child_fit, overrides, args.ef_search)))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    print(f"{os.cpu_count()} CPUs, {load()}")
    if "fit" in args.parts:
        results["fit"] = run_fit_part(args.sizes, args.default_sizes, args.ef_search, overrides)
        results_path.write_text(json.dumps(results, indent=1))
    if "ray" in args.parts:
        results["ray"] = run_ray_part(args.model, args.images)
        print(json.dumps(results["ray"], indent=1))
        results_path.write_text(json.dumps(results, indent=1))
    if "rayfit" in args.parts:
        results["rayfit"] = run_rayfit_part(overrides)
    results_path.write_text(json.dumps(results, indent=1))
    print(f"written {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
