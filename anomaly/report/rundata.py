"""Read a score run directory for the report, through :mod:`anomaly.artifacts.rundir`.

The schema (file names, columns, how a cell is parsed) is the run directory's own, so the
report reads exactly what ``anomaly score`` writes. This module adds what only a report needs:
paths resolved for opening, normalised scores filled in from the threshold where the CSV has
none, and a sanity check of the calibration. It is lenient where a report can still be useful
(see :mod:`anomaly.artifacts.rundir`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly.artifacts.rundir import VERDICTS, ScoreRow, as_float, read_run_info, read_scores
from anomaly.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["VERDICTS", "Part", "RunData", "as_float", "read_run"]


@dataclass(frozen=True)
class Part:
    """One row of ``scores.csv``: a scored (or unreadable) part."""

    index: int  # 0-based row number in scores.csv; stable, used for anchors and file names
    file: str  # the path exactly as written in the CSV, shown to the user
    path: Path  # ``file`` resolved against the current working directory
    score: float | None
    normalized: float | None
    verdict: str  # one of VERDICTS
    heatmap: Path | None  # absolute path of the overlay PNG, None when the CSV has none
    error: str
    label: int | None  # 0 good, 1 defect, None unknown
    defect_type: str
    mask: Path | None
    predicted_type: str = ""  # the model's most likely defect type, for a rejected part
    predicted_type_probability: float | None = None


@dataclass(frozen=True)
class RunData:
    """Everything the report shows, read from one run directory."""

    run_dir: Path
    parts: tuple[Part, ...]
    meta: dict[str, Any]  # run.json as read
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """Image-level decision threshold (raw score units), None when run.json lacks it."""
        return as_float(self.calibration.get("threshold"))

    def count(self, verdict: str) -> int:
        """Number of parts with ``verdict``."""
        return sum(1 for part in self.parts if part.verdict == verdict)

    @property
    def has_predicted_types(self) -> bool:
        """Whether the model named defect types (then the report shows them)."""
        return any(p.predicted_type for p in self.parts)

    @property
    def has_ground_truth(self) -> bool:
        """Whether any row carries a label or a mask (then the report shows ground truth)."""
        return any(p.label is not None or p.mask is not None for p in self.parts)


def _resolve(value: str, base: Path | None) -> Path | None:
    """Path from a CSV cell; relative paths are taken against ``base`` (None: the cwd)."""
    value = value.strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path.absolute()


def _part(index: int, row: ScoreRow, run_dir: Path, threshold: float | None) -> Part:
    normalized = row.normalized_score
    if normalized is None and row.score is not None and threshold:
        normalized = row.score / threshold
    error = row.error
    if row.verdict == "ERROR" and not error:
        error = "no reason recorded"
    return Part(
        index=index,
        file=row.file,
        path=_resolve(row.file, None) or Path(),
        score=row.score,
        normalized=normalized,
        verdict=row.verdict,
        heatmap=_resolve(row.heatmap, run_dir),
        error=error,
        label=row.label,
        defect_type=row.defect_type,
        mask=_resolve(row.mask, None),
        predicted_type=row.predicted_type,
        predicted_type_probability=row.predicted_type_probability,
    )


def read_run(run_dir: Path) -> RunData:
    """Read ``run_dir``; raises :class:`DataError` naming the file when it cannot be used."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory; expected a score run directory")
    meta = read_run_info(run_dir)
    calibration = meta.get("calibration")
    if not isinstance(calibration, dict):
        logger.warning("%s: run.json has no calibration; threshold details will be blank", run_dir)
        calibration = {}
    threshold = as_float(calibration.get("threshold"))
    if threshold is not None and threshold <= 0:
        logger.warning("%s: calibration threshold %r is not positive; ignored", run_dir, threshold)
        threshold = None
        calibration = {**calibration, "threshold": None}
    parts = tuple(
        _part(index, row, run_dir, threshold) for index, row in enumerate(read_scores(run_dir))
    )
    return RunData(run_dir=run_dir, parts=parts, meta=meta, calibration=calibration)
