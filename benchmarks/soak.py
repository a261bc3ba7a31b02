"""Soak run: score many small images with one process, kill it midway, resume, count the rows.

    python benchmarks/soak.py                 # 20,000 images of 64 px, killed at 10,000
    python benchmarks/soak.py --images 2000   # a quick look

Generates the images (seeded: textured parts, 2% with a dark blob) and a small folder category
to fit PatchCore on, under ``--work`` (default ``runs/soak``; reused when present). Then runs
``anomaly score`` in a child process, samples its resident memory (``VmRSS``) and the rows it
has recorded, kills it (SIGKILL: no clean-up) once ``--kill-at`` rows are recorded, runs
``anomaly score --resume`` and checks the finished ``scores.csv``: every image exactly once,
in input order. Prints peak RSS after 2,000 rows, at the kill and at the end of the resumed
run, and whether memory stayed flat (within 10%).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

CLI = [sys.executable, "-m", "anomaly.commands.cli"]


def part(rng: np.random.Generator, size: int, defect: bool) -> np.ndarray:
    """A textured grey part; a defect adds a dark blob."""
    x = np.linspace(0, 4 * np.pi, size)
    base = 120 + 40 * np.sin(x)[None, :] + rng.normal(0, 4, (size, size))
    image = np.clip(base, 0, 255).astype(np.uint8)
    if defect:
        y0, x0 = rng.integers(4, size - 14, 2)
        image[y0 : y0 + 10, x0 : x0 + 10] = 20
    return image


def generate(folder: Path, count: int, size: int, defect_share: float, seed: int) -> None:
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"part_{i:06d}.png"), part(rng, size, rng.random() < defect_share))


def fit(work: Path, size: int) -> Path:
    bundle = work / "bundle"
    if (bundle / "metadata.json").is_file():
        return bundle
    category = work / "category" / "parts"
    generate(category / "good", 300, size, 0.0, seed=1)
    rng = np.random.default_rng(2)
    (category / "blob").mkdir(parents=True, exist_ok=True)
    for i in range(60):
        cv2.imwrite(str(category / "blob" / f"blob_{i:03d}.png"), part(rng, size, True))
    command = [*CLI, "fit", "--category", "parts", "--data-root", str(work / "category")]
    command += ["--out", str(bundle), f"image_size={size}", "runtime.progress=false"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return bundle


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def recorded_rows(run_dir: Path) -> int:
    try:
        return (run_dir / ".partial" / "rows.csv").read_bytes().count(b"\r\n") - 1
    except OSError:
        return 0


def watch(command: list[str], run_dir: Path, kill_at: int | None, marks: list[int]) -> dict:
    """Run ``command``, sampling its RSS; SIGKILL it at ``kill_at`` recorded rows. Returns the
    peak RSS (MB) seen by the time each of ``marks`` rows was recorded, and at the end."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[str, float] = {}
    peak = 0.0
    killed = False
    while child.poll() is None:
        peak = max(peak, rss_mb(child.pid))
        rows = recorded_rows(run_dir)
        for mark in marks:
            if rows >= mark and str(mark) not in peaks:
                peaks[str(mark)] = peak
        if kill_at is not None and rows >= kill_at:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
            child.wait()
            break
        time.sleep(0.1)
    peaks["end"] = peak
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if not killed and child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{stderr[-2000:]}")
    return {"peaks_mb": peaks, "killed_at_rows": recorded_rows(run_dir) if killed else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--kill-at", type=int, default=None, help="rows (default: half)")
    parser.add_argument("--work", default="runs/soak")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    work = Path(args.work)
    kill_at = args.kill_at or args.images // 2
    started = time.perf_counter()
    generate(work / "images", args.images, args.size, 0.02, seed=0)
    bundle = fit(work, args.size)
    run_dir = work / "run"
    score = [*CLI, "score", str(work / "images"), "--model", str(bundle), "--out", str(run_dir)]
    score += ["runtime.progress=false"]
    first = watch(score, run_dir, kill_at, marks=[2000, kill_at])
    second = watch([*score, "--resume"], run_dir, None, marks=[])
    with (run_dir / "scores.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    files = [row["file"] for row in rows]
    expected = sorted(str(p) for p in (work / "images").glob("*.png"))
    info = json.loads((run_dir / "run.json").read_text())
    at_2000 = first["peaks_mb"].get("2000")
    at_end = second["peaks_mb"]["end"]
    figures = {
        "images": args.images,
        "rows_in_scores_csv": len(rows),
        "every_image_exactly_once_in_order": files == expected,
        "killed_at_rows": first["killed_at_rows"],
        "resumed_rows": info.get("resumed_rows"),
        "peak_rss_mb_after_2000_rows": at_2000,
        "peak_rss_mb_at_kill": first["peaks_mb"].get(str(kill_at)),
        "peak_rss_mb_resumed_run_to_the_end": at_end,
        "memory_flat_within_10pct": None if not at_2000 else abs(at_end - at_2000) <= 0.1 * at_2000,
        "verdicts": info.get("counts"),
        "ms_per_image_resumed_run": info.get("ms_per_image"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = figures["every_image_exactly_once_in_order"] and len(rows) == args.images
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
