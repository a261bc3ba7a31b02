"""The score run directory: the one schema that ``anomaly score`` writes and the report reads.

::

    DIR/scores.csv   one row per input file, columns CSV_COLUMNS (see ScoreRow)
    DIR/heatmaps/    <index>_<stem>.png overlay of each rejected part (index: 5 digits)
    DIR/run.json     model, calibration, counts, seconds, ... (numpy-aware JSON)

Writing and reading live together so that a column cannot be renamed, reordered or formatted
differently on one side only. Every file is written atomically with the usual file mode
(:mod:`anomaly.io.files`); ``scores.csv`` is written last, when the run has finished.

Reading is lenient where a report can still be useful: an unparsable number becomes ``None``
and an unknown verdict an ``ERROR`` row that says so, because a QA team would rather see a
report with one blank cell than no report. A missing ``scores.csv`` or ``run.json``, or a CSV
without its core columns, is an error: there is nothing meaningful to show then.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.errors import DataError
from anomaly.io import jsonio
from anomaly.io.files import write_csv_atomic, write_png_atomic, write_text_atomic

logger = logging.getLogger(__name__)

SCORES_CSV = "scores.csv"
RUN_JSON = "run.json"
HEATMAPS_DIR = "heatmaps"

#: Columns of ``scores.csv``, in file order.
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
#: Appended to :data:`CSV_COLUMNS` when the model names defect types (only then: files of every
#: other model keep the format they always had).
TYPE_COLUMNS = ("predicted_type", "predicted_type_probability")
#: Columns without which a row cannot be shown at all.
REQUIRED_COLUMNS = ("file", "score", "verdict")
#: ``UNCALIBRATED``: scored by a model without a threshold, so there is a score but no verdict.
VERDICTS = ("OK", "NG", "ERROR", "UNCALIBRATED")


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


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


@dataclass
class ScoreRow:
    """One row of ``scores.csv``: a scored (or unreadable) input file.

    ``heatmap`` is relative to the run directory; ``file`` and ``mask`` are as given to the
    scorer (relative ones are relative to its working directory).
    """

    file: str
    score: float | None = None
    normalized_score: float | None = None
    verdict: str = "ERROR"
    heatmap: str = ""
    error: str = ""
    label: int | None = None
    defect_type: str = ""
    mask: str = ""
    #: For a rejected part, when the model names defect types: the most likely one.
    predicted_type: str = ""
    predicted_type_probability: float | None = None

    def as_csv(self) -> dict[str, Any]:
        """The row's cells as written: numbers to 6 significant digits, None as empty."""
        return {
            "file": self.file,
            "score": _number(self.score),
            "normalized_score": _number(self.normalized_score),
            "verdict": self.verdict,
            "heatmap": self.heatmap,
            "error": self.error,
            "label": "" if self.label is None else self.label,
            "defect_type": self.defect_type,
            "mask": self.mask,
            "predicted_type": self.predicted_type,
            "predicted_type_probability": _number(self.predicted_type_probability),
        }

    @classmethod
    def from_csv(cls, cells: dict[str, str]) -> ScoreRow:
        """Parse a row as read (stripped cells; missing optional columns count as empty).

        An unknown verdict is most likely a row that failed half-way: it becomes ``ERROR``
        with a reason rather than being counted as OK or NG.
        """
        verdict = cells.get("verdict", "").upper()
        error = cells.get("error", "")
        if verdict not in VERDICTS:
            error = error or f"unknown verdict {verdict!r} in {SCORES_CSV}"
            verdict = "ERROR"
        return cls(
            file=cells.get("file", ""),
            score=as_float(cells.get("score")),
            normalized_score=as_float(cells.get("normalized_score")),
            verdict=verdict,
            heatmap=cells.get("heatmap", ""),
            error=error,
            label=_as_label(cells.get("label", "")),
            defect_type=cells.get("defect_type", ""),
            mask=cells.get("mask", ""),
            predicted_type=cells.get("predicted_type", ""),
            predicted_type_probability=as_float(cells.get("predicted_type_probability")),
        )


def heatmap_name(index: int, file: str | Path) -> str:
    """Run-directory-relative name of the heatmap of input number ``index`` (0-based).

    The index keeps names unique when two folders hold files of the same name; the stem,
    reduced to safe characters, lets a person find the part from the file name.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file).stem)[:80] or "image"
    return f"{HEATMAPS_DIR}/{index:05d}_{stem}.png"


def write_heatmap(run_dir: str | Path, index: int, file: str | Path, picture: np.ndarray) -> str:
    """Write the RGB overlay ``picture`` of input ``index``; returns its name for the CSV."""
    name = heatmap_name(index, file)
    write_png_atomic(Path(run_dir) / name, picture)
    return name


def write_scores(run_dir: str | Path, rows: Iterable[ScoreRow], defect_types: bool = False) -> Path:
    """Write ``scores.csv`` (header :data:`CSV_COLUMNS`, plus :data:`TYPE_COLUMNS` for a model
    that names ``defect_types``; one line per row) atomically."""
    columns = CSV_COLUMNS + TYPE_COLUMNS if defect_types else CSV_COLUMNS
    cells = ({c: row.as_csv()[c] for c in columns} for row in rows)
    return write_csv_atomic(Path(run_dir) / SCORES_CSV, columns, cells)


def write_run_info(run_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``run.json`` (indented; numpy values become plain numbers) atomically."""
    return write_text_atomic(Path(run_dir) / RUN_JSON, jsonio.dumps(info))


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` as a dict; raises :class:`DataError` naming the file when it is unusable."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; is {run_dir} a score run directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def read_scores(run_dir: str | Path) -> list[ScoreRow]:
    """The rows of ``scores.csv`` in file order; see the module docstring for the leniency.

    Raises :class:`DataError` when the file is missing, unreadable, or lacks one of
    :data:`REQUIRED_COLUMNS`.
    """
    run_dir = Path(run_dir)
    path = run_dir / SCORES_CSV
    try:
        # utf-8-sig: a CSV round-tripped through a spreadsheet often gains a BOM.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            records = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; is {run_dir} a score run directory?") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    rows = []
    for number, record in enumerate(records, start=2):  # line 1 is the header
        cells = {key: (value or "").strip() for key, value in record.items() if key is not None}
        row = ScoreRow.from_csv(cells)
        written = cells.get("verdict", "").upper()
        if row.verdict != written:
            logger.warning("%s row %d: unknown verdict %r, shown as ERROR", path, number, written)
        rows.append(row)
    return rows
