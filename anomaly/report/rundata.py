"""Read a score run directory (``scores.csv``, ``heatmaps/``, ``run.json``) for the report.

The format is the one ``anomaly score`` writes (docs/architecture.md, "Score run directory").
Reading is lenient where a report can still be useful: an unparsable number or a missing
calibration field becomes ``None`` and is shown as "—", because a QA team would rather see a
report with one blank cell than no report. A missing ``scores.csv`` or ``run.json``, or a CSV
without its core columns, is an error: there is nothing meaningful to show then.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly.errors import DataError

logger = logging.getLogger(__name__)

#: Columns without which a row cannot be shown at all.
REQUIRED_COLUMNS = ("file", "score", "verdict")
#: ``UNCALIBRATED``: scored by a model without a threshold, so there is a score but no verdict.
VERDICTS = ("OK", "NG", "ERROR", "UNCALIBRATED")


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
    def has_ground_truth(self) -> bool:
        """Whether any row carries a label or a mask (then the report shows ground truth)."""
        return any(p.label is not None or p.mask is not None for p in self.parts)


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None for empty, non-numeric, NaN or infinite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_label(value: str) -> int | None:
    number = as_float(value)
    if number is None:
        return None
    return 1 if number >= 0.5 else 0


def _resolve(value: str, base: Path | None) -> Path | None:
    """Path from a CSV cell; relative paths are taken against ``base`` (None: the cwd)."""
    value = value.strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path.absolute()


def _read_meta(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; is {run_dir} a score run directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _read_parts(run_dir: Path, threshold: float | None) -> tuple[Part, ...]:
    path = run_dir / "scores.csv"
    try:
        # utf-8-sig: a CSV round-tripped through a spreadsheet often gains a BOM.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; is {run_dir} a score run directory?") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc

    parts = []
    for index, row in enumerate(rows):
        cell = {key: (value or "").strip() for key, value in row.items() if key is not None}
        score = as_float(cell.get("score"))
        normalized = as_float(cell.get("normalized_score"))
        if normalized is None and score is not None and threshold:
            normalized = score / threshold
        verdict = cell.get("verdict", "").upper()
        if verdict not in VERDICTS:
            # An unknown verdict is most likely a row that failed half-way; show it as an error
            # rather than silently counting it as OK or NG.
            logger.warning(
                "%s row %d: unknown verdict %r, shown as ERROR", path, index + 2, verdict
            )
            error = cell.get("error") or f"unknown verdict {verdict!r} in scores.csv"
            verdict = "ERROR"
        else:
            error = cell.get("error", "")
        if verdict == "ERROR" and not error:
            error = "no reason recorded"
        parts.append(
            Part(
                index=index,
                file=cell.get("file", ""),
                path=_resolve(cell.get("file", ""), None) or Path(),
                score=score,
                normalized=normalized,
                verdict=verdict,
                heatmap=_resolve(cell.get("heatmap", ""), run_dir),
                error=error,
                label=_as_label(cell.get("label", "")),
                defect_type=cell.get("defect_type", ""),
                mask=_resolve(cell.get("mask", ""), None),
            )
        )
    return tuple(parts)


def read_run(run_dir: Path) -> RunData:
    """Read ``run_dir``; raises :class:`DataError` naming the file when it cannot be used."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory; expected a score run directory")
    meta = _read_meta(run_dir)
    calibration = meta.get("calibration")
    if not isinstance(calibration, dict):
        logger.warning("%s: run.json has no calibration; threshold details will be blank", run_dir)
        calibration = {}
    threshold = as_float(calibration.get("threshold"))
    if threshold is not None and threshold <= 0:
        logger.warning("%s: calibration threshold %r is not positive; ignored", run_dir, threshold)
        threshold = None
        calibration = {**calibration, "threshold": None}
    parts = _read_parts(run_dir, threshold)
    return RunData(run_dir=run_dir, parts=parts, meta=meta, calibration=calibration)
