"""Score image files and folders into a run directory: CSV, heatmaps of rejected parts, JSON.

A bad file never stops the run: it gets an ERROR row with the reason and the rest is scored.
The run directory's layout and formats are :mod:`anomaly.artifacts.rundir`'s; every file is
written atomically with the usual file mode, so an interrupted run leaves complete files or
none, and ``scores.csv`` appears only when the run has finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from anomaly.artifacts.bundle import load_bundle, read_config
from anomaly.artifacts.heatmap import SCALE_MAX, overlay
from anomaly.artifacts.rundir import SCORES_CSV, RunWriter, ScoreRow
from anomaly.data import load_dataset
from anomaly.data.dataset import Sample
from anomaly.decision.verdict import ERROR, NG, NOT_FINITE, verdict
from anomaly.errors import AnomalyError, ImageReadError
from anomaly.io.batches import batches
from anomaly.io.images import find_images, load_image
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)


@dataclass
class ScoreRun:
    """What a scoring run produced."""

    out_dir: Path
    rows: list[ScoreRow] = field(default_factory=list)
    seconds: float = 0.0
    #: The QA report written for the run (``report=true``), if any.
    report: Path | None = None
    #: Rows taken back from an interrupted run (``resume``), not scored again.
    resumed: int = 0

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
        if self.resumed:
            lines.insert(1, f"resumed: {self.resumed} rows kept from the interrupted run")
        if counts.get("UNCALIBRATED"):
            lines.append("model is not calibrated: no verdicts (run calibrate or `anomaly fit`)")
        for row in [r for r in self.rows if r.verdict == "ERROR"][:5]:
            lines.append(f"  error: {row.file}: {row.error}")
        lines.append(f"results: {self.out_dir / SCORES_CSV}")
        return "\n".join(lines)


def collect_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[ScoreRow]]:
    """Image files under ``paths``, and ERROR rows for paths that gave none and for folders
    that could not be walked."""
    files: list[Path] = []
    errors: list[ScoreRow] = []
    for path in paths:
        problems: list[tuple[Path, str]] = []
        try:
            files.extend(find_images([path], problems=problems))
        except AnomalyError as error:
            errors.append(ScoreRow(file=str(path), error=_reason(error, path)))
        # A folder that could not be walked is an input that was not scored: a row says so.
        errors.extend(ScoreRow(file=str(where), error=reason) for where, reason in problems)
    return files, errors


def score_paths(
    model: AnomalyModel,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    heatmaps: bool = True,
    ground_truth: dict[Path, Sample] | None = None,
    run_info: dict[str, Any] | None = None,
    resume: bool = False,
) -> ScoreRun:
    """Score every image under ``paths`` with ``model`` and write the run directory ``out_dir``.

    ``ground_truth`` optionally maps file paths to dataset samples, whose label, defect type and
    mask are copied into the CSV (for reports and evaluation). Rows are recorded durably as
    they are scored; with ``resume`` a run into ``out_dir`` that was killed is continued (the
    same inputs and model), and no image is scored twice. The CSV is in input order either way.
    """
    model.check_is_fitted()
    out = Path(out_dir)
    files, rows = collect_files(paths)
    run = ScoreRun(out_dir=out, rows=rows)
    calibration = model.calibration_
    fingerprint = run_fingerprint(model, files, heatmaps)
    with RunWriter(out, fingerprint, heatmaps=heatmaps, resume=resume) as writer:
        started = time.perf_counter()
        scored: dict[int, ScoreRow] = dict(writer.done)
        todo = [(i, file) for i, file in enumerate(files) if i not in scored]
        for batch in batches(todo, model.batch_size, "scoring", model.progress):
            new = _score_batch(model, batch, writer, calibration, ground_truth)
            writer.append(new)
            scored.update(new)
        run.rows.extend(scored[i] for i in range(len(files)))
        run.seconds = time.perf_counter() - started
        run.resumed = len(writer.done)
        info = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model.model_name,
            "calibration": None if calibration is None else calibration.to_dict(),
            "heatmap_scale_max": SCALE_MAX,
            "counts": run.counts,
            "n_files": len(run.rows),
            "resumed_rows": run.resumed,
            "seconds": round(run.seconds, 3),
            "ms_per_image": round(1000 * run.seconds / max(1, run.n_scored - run.resumed), 2),
            **(run_info or {}),
        }
        writer.finish(run.rows, info, defect_types=bool(model.defect_types_))
    return run


def run_fingerprint(model: AnomalyModel, files: Sequence[Path], heatmaps: bool) -> str:
    """What a resumed run must share with the one it continues: the input files in order, the
    model (name, parameters, threshold) and whether heatmaps are written."""
    calibration = model.calibration_
    content = {
        "files": [str(f) for f in files],
        "model": model.model_name,
        "params": model.get_params(),
        "threshold": None if calibration is None else float(calibration.threshold),
        "heatmaps": heatmaps,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _score_batch(
    model: AnomalyModel,
    batch: list[tuple[int, Path]],
    writer: RunWriter,
    calibration: Any,
    ground_truth: dict[Path, Sample] | None,
) -> list[tuple[int, ScoreRow]]:
    """Score ``(input index, file)`` pairs; returns ``(input index, row)`` pairs."""
    rows: list[tuple[int, ScoreRow]] = []
    loaded: list[tuple[ScoreRow, np.ndarray, int]] = []
    for index, file in batch:
        row = ScoreRow(file=str(file))
        sample = (ground_truth or {}).get(Path(file))
        if sample is not None:
            row.label = sample.label
            row.defect_type = sample.defect_type
            row.mask = "" if sample.mask_path is None else str(sample.mask_path)
        rows.append((index, row))
        try:
            loaded.append((row, load_image(file), index))
        except ImageReadError as error:
            row.error = error.reason
    if not loaded:
        return rows
    images = [image for _, image, _ in loaded]
    try:
        prediction = model.score_batch(images)
    except Exception as error:  # one odd image must not cost the batch: retry one by one
        logger.warning("batch failed (%s); scoring its images one by one", error)
        _score_one_by_one(model, loaded, writer, calibration)
        return rows
    for position, (row, image, index) in enumerate(loaded):
        _fill(row, image, index, prediction, position, writer, calibration)
    return rows


def _score_one_by_one(model, loaded, writer, calibration) -> None:
    for row, image, index in loaded:
        try:
            prediction = model.score_batch([image])
        except Exception as error:
            row.error = f"could not be scored: {error}"
            continue
        _fill(row, image, index, prediction, 0, writer, calibration)


def _fill(row, image, index, prediction, position, writer, calibration) -> None:
    """Fill ``row`` from image ``position`` of a batch's ``prediction``."""
    score = float(prediction.scores[position])
    if not math.isfinite(score):  # fails closed, calibrated or not: never a silent pass
        row.verdict, row.error = ERROR, f"{NOT_FINITE} ({score})"
        return
    row.score = score
    if calibration is None:
        row.verdict = "UNCALIBRATED"
        return
    row.normalized_score = score / calibration.threshold
    row.verdict = verdict(score, calibration.threshold)
    if row.verdict != NG:
        return
    types = prediction.predicted_types
    if types is not None:  # the type of a rejected part is what a QA team triages by
        row.predicted_type = types[position]
        row.predicted_type_probability = float(prediction.predicted_type_probabilities[position])
    if writer.heatmaps:
        picture = overlay(image, prediction.anomaly_maps[position] / calibration.pixel_threshold)
        row.heatmap = writer.write_heatmap(index, row.file, picture)


def _reason(error: Exception, path: str | Path) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def score(config: DictConfig) -> ScoreRun:
    """``anomaly score``: load the bundle ``config.model``, score ``config.paths`` (or the
    bundle's own ``config.split``, with its ground truth) into ``config.out`` (default
    ``runs/score-<time>``), and write the QA report when ``config.report`` is set and something
    was scored. With ``config.require_signature`` (a public key file) only a bundle signed with
    its private half is used."""
    model = load_bundle(config.model, require_signature=config.require_signature)
    model.set_runtime(
        config.runtime.batch_size, config.runtime.num_threads, config.runtime.progress
    )
    paths: list[str | Path] = list(config.paths)
    ground_truth = None
    if config.split is not None:
        samples = load_dataset(read_config(config.model)).select(config.split)
        paths = [Path(s.path) for s in samples]
        ground_truth = {Path(s.path): s for s in samples}
    if not paths:
        raise AnomalyError("nothing to score: give image files or folders, or --split test")
    out = Path(config.out or f"runs/score-{datetime.now():%Y%m%d-%H%M%S}")
    run = score_paths(
        model,
        paths,
        out,
        heatmaps=config.heatmaps,
        ground_truth=ground_truth,
        resume=config.resume,
        run_info={
            "model_dir": str(Path(config.model).resolve()),
            "category": model.metadata_.get("data", {}).get("category"),
        },
    )
    if config.report and run.n_scored:
        from anomaly.report import write_report  # the report's HTML code loads only when asked

        run.report = write_report(out)
    return run
