"""Score image files and folders into a run directory: CSV, heatmaps of rejected parts, JSON.

A bad file never stops the run: it gets an ERROR row with the reason and the rest is scored.
The run directory's layout and formats are :mod:`anomaly.artifacts.rundir`'s; every file is
written atomically with the usual file mode, so an interrupted run leaves complete files or
none, and ``scores.csv`` appears only when the run has finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from anomaly.artifacts.bundle import load_bundle, read_config
from anomaly.artifacts.heatmap import SCALE_MAX
from anomaly.artifacts.rundir import SCORES_CSV, RunWriter, ScoreRow
from anomaly.data import load_dataset
from anomaly.data.dataset import Sample
from anomaly.engines import wants_ray
from anomaly.engines.scoring import LocalEngine, ScoredImage, ScoringEngine
from anomaly.errors import AnomalyError
from anomaly.io.images import find_images
from anomaly.models.base import AnomalyModel

if TYPE_CHECKING:
    from anomaly.engines.ray import RayEngine

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
    engine: ScoringEngine | None = None,
) -> ScoreRun:
    """Score every image under ``paths`` with ``model`` and write the run directory ``out_dir``.

    ``ground_truth`` optionally maps file paths to dataset samples, whose label, defect type and
    mask are copied into the CSV (for reports and evaluation). Rows are recorded durably as
    they are scored; with ``resume`` a run into ``out_dir`` that was killed is continued (the
    same inputs and model), and no image is scored twice. The CSV is in input order either way.
    ``engine`` scores the batches (default: in this process); whichever it is, the rows and
    heatmaps are written here, so the run directory does not depend on it.
    """
    model.check_is_fitted()
    engine = engine or LocalEngine(model)
    out = Path(out_dir)
    files, rows = collect_files(paths)
    run = ScoreRun(out_dir=out, rows=rows)
    calibration = model.calibration_
    fingerprint = run_fingerprint(model, files, heatmaps)
    with RunWriter(out, fingerprint, heatmaps=heatmaps, resume=resume) as writer:
        started = time.perf_counter()
        scored: dict[int, ScoreRow] = dict(writer.done)
        todo = [(i, file) for i, file in enumerate(files) if i not in scored]
        for results in engine.run(todo, heatmaps):
            new = [_record(result, writer, ground_truth) for result in results]
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
            "engine": engine.describe(),
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


def _record(
    result: ScoredImage, writer: RunWriter, ground_truth: dict[Path, Sample] | None
) -> tuple[int, ScoreRow]:
    """Complete a scored image's row where the run is driven: its heatmap written into this
    run's folder, the ground truth of its file copied in."""
    row = result.row
    if result.heatmap_png is not None:
        row.heatmap = writer.write_heatmap(result.index, row.file, result.heatmap_png)
    sample = (ground_truth or {}).get(Path(row.file))
    if sample is not None:
        row.label = sample.label
        row.defect_type = sample.defect_type
        row.mask = "" if sample.mask_path is None else str(sample.mask_path)
    return result.index, row


def _reason(error: Exception, path: str | Path) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def score(config: DictConfig) -> ScoreRun:
    """``anomaly score``: load the bundle ``config.model``, score ``config.paths`` (or the
    bundle's own ``config.split``, with its ground truth) into ``config.out`` (default
    ``runs/score-<time>``), and write the QA report when ``config.report`` is set and something
    was scored. With ``config.require_signature`` (a public key file) only a bundle signed with
    its private half is used. ``config.engine`` says where the batches are scored: here
    (``local``) or on a Ray cluster (``ray``, see :mod:`anomaly.engines.ray`)."""
    engine = _engine(config)  # before any work: a missing [ray] extra is said at once
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
    with engine or contextlib.nullcontext():
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
            engine=engine,
        )
    if config.report and run.n_scored:
        from anomaly.report import write_report  # the report's HTML code loads only when asked

        run.report = write_report(out)
    return run


def _engine(config: DictConfig) -> RayEngine | None:
    """The engine ``config.engine`` names: None for ``local`` (:func:`score_paths` scores in
    this process), a :class:`~anomaly.engines.ray.RayEngine` for ``ray``."""
    if not wants_ray(config.engine.name):
        return None
    from anomaly.engines.ray import RayEngine  # Ray loads only when it is asked for

    return RayEngine(
        config.model,
        address=config.engine.address,
        workers=config.engine.workers,
        cpus_per_worker=config.engine.cpus_per_worker,
        retries=config.engine.retries,
        batch_size=config.runtime.batch_size,
        num_threads=config.runtime.num_threads,
        require_signature=config.require_signature,
        progress=config.runtime.progress,
    )
