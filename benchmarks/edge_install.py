"""The torch-free scorer as a line PC gets it: install size and peak RSS of scoring ELPV.

Creates a fresh virtual environment, installs this repository with the ``[edge]`` extra only
(no torch, timm, scikit-learn, scipy or matplotlib), checks that none of those came in, and
scores the test images of an exported ELPV bundle with that environment's ``anomaly score``.
Prints the size of the installed packages and the scorer's peak RSS.

    python benchmarks/runtimes.py --category elpv          # makes the exported bundles
    python benchmarks/edge_install.py --model runs/benchmark/elpv/patchcore-onnx-fp32
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
FITTING_ONLY = ("torch", "timm", "sklearn", "scipy", "matplotlib", "joblib", "onnx")
#: Runs ``anomaly score`` in-process and prints the peak RSS (VmHWM) when it is done.
SCORE = """
import sys
from pathlib import Path
from anomaly.commands.cli import main
code = main(sys.argv[1:])
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
print("PEAK_RSS_KB", hwm[0].split()[1])
sys.exit(code)
"""


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported bundle (anomaly export)")
    parser.add_argument("--split", default="test", help="which split's images to score")
    args = parser.parse_args()
    from anomaly.artifacts.bundle import read_config
    from anomaly.data import load_dataset

    samples = load_dataset(read_config(args.model)).select(args.split)
    with tempfile.TemporaryDirectory(prefix="anomaly-edge-") as work:
        work = Path(work)
        images = work / "images"
        images.mkdir()
        for i, sample in enumerate(samples):  # the files as a line PC would see them
            (images / f"{i:05d}{Path(sample.path).suffix}").symlink_to(Path(sample.path))
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        started = time.perf_counter()
        subprocess.run([*pip, f"{REPOSITORY}[edge]"], check=True)
        install_s = time.perf_counter() - started
        site = next((venv / "lib").glob("python*/site-packages"))
        present = [name for name in FITTING_ONLY if (site / name).exists()]
        size = _size_mb(site) - sum(
            _size_mb(site / name) for name in ("pip", "setuptools") if (site / name).exists()
        )
        largest = sorted(
            ((p.name, _size_mb(p)) for p in site.iterdir() if p.is_dir()), key=lambda x: -x[1]
        )[:6]
        result = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                SCORE,
                "score",
                str(images),
                "--model",
                str(args.model),
                "--out",
                str(work / "run"),
                "runtime.progress=false",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
        print(result.stdout.strip().splitlines()[0] if result.stdout.strip() else result.stderr)
        print(
            f"edge install: {size:.0f} MB of packages (pip and setuptools excluded), "
            f"installed in {install_s:.0f} s; fitting-only packages present: {present or 'none'}"
        )
        print("largest: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in largest))
        if peak:
            print(
                f"scoring {len(samples)} {args.split} images: exit code {result.returncode}, "
                f"peak RSS {int(peak[0].split()[1]) / 1024:.0f} MB"
            )
        else:
            print(f"scoring failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
