"""Score image files and folders into a run directory: CSV, heatmaps of rejected parts, JSON.

A bad file never stops the run: it gets an ERROR row with the reason and the rest is scored.
Every file is written atomically (temporary name, then rename), so an interrupted run leaves
complete files or none; ``scores.csv`` appears only when the run has finished.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from anomaly.artifacts.heatmap import SCALE_MAX, overlay
from anomaly.data.dataset import Sample
from anomaly.errors import AnomalyError, ImageReadError
from anomaly.io.images import find_images, load_image
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    "file",
    "score",
    "normalized_score",
    "verdict",
    "heatmap",
    "error",
    "label",
    "defect_type",
    "mask",
)


@dataclass
class ScoreRow:
    file: str
    score: float | None = None
    normalized_score: float | None = None
    verdict: str = "ERROR"
    heatmap: str = ""
    error: str = ""
    label: int | None = None
    defect_type: str = ""
    mask: str = ""

    def as_csv(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "score": "" if self.score is None else f"{self.score:.6g}",
            "normalized_score": (
                "" if self.normalized_score is None else f"{self.normalized_score:.6g}"
            ),
            "verdict": self.verdict,
            "heatmap": self.heatmap,
            "error": self.error,
            "label": "" if self.label is None else self.label,
            "defect_type": self.defect_type,
            "mask": self.mask,
        }


@dataclass
class ScoreRun:
    """What a scoring run produced."""

    out_dir: Path
    rows: list[ScoreRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        counts = {"OK": 0, "NG": 0, "ERROR": 0, "UNCALIBRATED": 0}
        for row in self.rows:
            counts[row.verdict] = counts.get(row.verdict, 0) + 1
        return counts

    @property
    def n_scored(self) -> int:
        return sum(row.score is not None for row in self.rows)

    def summary(self) -> str:
        counts = self.counts
        scored = self.n_scored
        per_image = 1000 * self.seconds / scored if scored else float("nan")
        lines = [
            f"scored {scored} of {len(self.rows)} files in {self.seconds:.1f} s "
            f"({per_image:.0f} ms/image)",
            f"OK {counts['OK']}  NG {counts['NG']}  errors {counts['ERROR']}",
        ]
        if counts.get("UNCALIBRATED"):
            lines.append("model is not calibrated: no verdicts (run calibrate or `anomaly fit`)")
        for row in [r for r in self.rows if r.verdict == "ERROR"][:5]:
            lines.append(f"  error: {row.file}: {row.error}")
        lines.append(f"results: {self.out_dir / 'scores.csv'}")
        return "\n".join(lines)


def collect_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[ScoreRow]]:
    """Image files under ``paths``, and ERROR rows for paths that gave none."""
    files: list[Path] = []
    errors: list[ScoreRow] = []
    for path in paths:
        try:
            files.extend(find_images([path]))
        except AnomalyError as error:
            errors.append(ScoreRow(file=str(path), error=_reason(error, path)))
    return files, errors


def score_paths(
    model: AnomalyModel,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    heatmaps: bool = True,
    ground_truth: dict[Path, Sample] | None = None,
    run_info: dict[str, Any] | None = None,
) -> ScoreRun:
    """Score every image under ``paths`` with ``model`` and write the run directory ``out_dir``.

    ``ground_truth`` optionally maps file paths to dataset samples, whose label, defect type and
    mask are copied into the CSV (for reports and evaluation).
    """
    model._check_fitted()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, rows = collect_files(paths)
    run = ScoreRun(out_dir=out, rows=rows)
    calibration = getattr(model, "calibration_", None)
    started = time.perf_counter()
    bar = tqdm(
        total=len(files), desc="scoring", unit="img", disable=not model.progress or not files
    )
    with bar:
        for start in range(0, len(files), model.batch_size):
            batch_files = files[start : start + model.batch_size]
            run.rows.extend(
                _score_batch(model, batch_files, start, out, heatmaps, calibration, ground_truth)
            )
            bar.update(len(batch_files))
    run.seconds = time.perf_counter() - started
    _write_csv(out / "scores.csv", run.rows)
    info = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model.model_name,
        "calibration": None if calibration is None else calibration.to_dict(),
        "heatmap_scale_max": SCALE_MAX,
        "counts": run.counts,
        "n_files": len(run.rows),
        "seconds": round(run.seconds, 3),
        "ms_per_image": round(1000 * run.seconds / max(1, run.n_scored), 2),
        **(run_info or {}),
    }
    write_text_atomic(out / "run.json", json.dumps(info, indent=2))
    return run


def _score_batch(
    model: AnomalyModel,
    files: list[Path],
    offset: int,
    out: Path,
    heatmaps: bool,
    calibration: Any,
    ground_truth: dict[Path, Sample] | None,
) -> list[ScoreRow]:
    rows: list[ScoreRow] = []
    loaded: list[tuple[ScoreRow, np.ndarray, int]] = []
    for position, file in enumerate(files):
        row = ScoreRow(file=str(file))
        sample = (ground_truth or {}).get(Path(file))
        if sample is not None:
            row.label = sample.label
            row.defect_type = sample.defect_type
            row.mask = "" if sample.mask_path is None else str(sample.mask_path)
        rows.append(row)
        try:
            loaded.append((row, load_image(file), offset + position))
        except ImageReadError as error:
            row.error = error.reason
    if not loaded:
        return rows
    images = [image for _, image, _ in loaded]
    try:
        scores, maps = model.score_arrays(images)
    except Exception as error:  # one odd image must not cost the batch: retry one by one
        logger.warning("batch failed (%s); scoring its images one by one", error)
        return _score_one_by_one(model, loaded, out, heatmaps, calibration, rows)
    for (row, image, index), score, anomaly_map in zip(loaded, scores, maps, strict=True):
        _fill(row, image, index, float(score), anomaly_map, out, heatmaps, calibration)
    return rows


def _score_one_by_one(model, loaded, out, heatmaps, calibration, rows) -> list[ScoreRow]:
    for row, image, index in loaded:
        try:
            scores, maps = model.score_arrays([image])
        except Exception as error:
            row.error = f"could not be scored: {error}"
            continue
        _fill(row, image, index, float(scores[0]), maps[0], out, heatmaps, calibration)
    return rows


def _fill(row, image, index, score, anomaly_map, out, heatmaps, calibration) -> None:
    row.score = score
    if calibration is None:
        row.verdict = "UNCALIBRATED"
        return
    row.normalized_score = score / calibration.threshold
    row.verdict = "NG" if score >= calibration.threshold else "OK"
    if row.verdict == "NG" and heatmaps:
        name = f"heatmaps/{index:05d}_{_safe_stem(Path(row.file).stem)}.png"
        picture = overlay(image, anomaly_map / calibration.pixel_threshold)
        write_png_atomic(out / name, picture)
        row.heatmap = name


def _write_csv(path: Path, rows: Iterable[ScoreRow]) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row.as_csv())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB ``uint8`` image as PNG through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded.tobytes())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"


def _reason(error: Exception, path: str | Path) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text
