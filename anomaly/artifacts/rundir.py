"""The score run directory: the one schema that ``anomaly score`` writes and the report reads.

::

    DIR/scores.csv   one row per input file, columns CSV_COLUMNS (see ScoreRow)
    DIR/heatmaps/    <index>_<stem>.png overlay of each rejected part (index: 5 digits)
    DIR/run.json     model, calibration, counts, seconds, ... (numpy-aware JSON)
    DIR/.lock        while a run writes: its pid and host (see RunWriter)
    DIR/.partial/    while a run writes (or after it was killed): heatmaps, rows so far

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
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly.errors import DataError, RunDirBusyError
from anomaly.io import jsonio
from anomaly.io.files import (
    csv_text,
    directory_mode,
    file_mode,
    replace_directory,
    write_bytes,
    write_csv_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

SCORES_CSV = "scores.csv"
RUN_JSON = "run.json"
LOCK_FILE = ".lock"
#: Where a run works until it finishes (see RunWriter): heatmaps, rows so far, its fingerprint.
PARTIAL_DIR, PARTIAL_ROWS, PARTIAL_STATE = ".partial", "rows.csv", "state.json"
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
#: Columns of an unfinished run's rows: the input index, then every column a row can have.
PARTIAL_COLUMNS = ("index", *CSV_COLUMNS, *TYPE_COLUMNS)
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


class RunWriter:
    """One scoring run's writes into its folder: one run's files always go together, and a run
    that is killed keeps what it scored.

    Entering claims the folder with a lock file (``.lock``: a second run into the same folder
    is refused while the first lives; a lock left by a run that died on this machine is taken
    over, with a warning). The run works in ``.partial/``: heatmaps go to
    ``.partial/heatmaps/`` and every scored row is appended to ``.partial/rows.csv``, flushed
    and fsynced batch by batch (:meth:`append`). :meth:`finish` then removes the previous
    run's ``scores.csv``, swaps the heatmaps in as ``heatmaps/``
    (:func:`~anomaly.io.files.replace_directory`), writes ``run.json`` and ``scores.csv`` last
    and removes ``.partial/``. Until then the previous run stays whole; a run killed before
    the end leaves it so, plus ``.partial/`` for ``resume``; one killed inside :meth:`finish`
    leaves no ``scores.csv``: never a CSV whose heatmap column points at another run's
    pictures.

    With ``resume`` the rows of an interrupted run with the same ``fingerprint`` (the inputs
    and the model, see ``anomaly.commands.score``) are taken back (:attr:`done`), so no image
    is scored twice; another fingerprint is refused. Without it an interrupted run's rows are
    discarded, with a warning that says how many.
    """

    def __init__(
        self,
        run_dir: str | Path,
        fingerprint: str = "",
        heatmaps: bool = True,
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.fingerprint = fingerprint
        self.heatmaps = heatmaps
        self.resume = resume
        #: Rows taken back from an interrupted run, by input index.
        self.done: dict[int, ScoreRow] = {}
        self._lock: Path | None = None
        self._partial = self.run_dir / PARTIAL_DIR

    def __enter__(self) -> RunWriter:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _claim(self.run_dir / LOCK_FILE)
        try:
            self._open_partial()
        except BaseException:
            self._release()
            raise
        return self

    def _open_partial(self) -> None:
        state_path, rows_path = self._partial / PARTIAL_STATE, self._partial / PARTIAL_ROWS
        if self._partial.exists() and self.resume:
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError) as error:
                raise DataError(f"{state_path}: cannot resume from it ({error})") from error
            if state.get("fingerprint") != self.fingerprint:
                raise DataError(
                    f"{self.run_dir}: cannot resume: the interrupted run scored other inputs or "
                    "with another model; run without --resume to start over"
                )
            self.done = _read_partial_rows(rows_path)
            _cut_to_last_line(rows_path)  # appending after a line the kill cut would merge two
            logger.info("%s: resuming after %d scored rows", self.run_dir, len(self.done))
            return
        if self._partial.exists():
            kept = len(_read_partial_rows(self._partial / PARTIAL_ROWS))
            logger.warning(
                "%s: discarding the %d rows of an interrupted run (--resume continues it)",
                self.run_dir,
                kept,
            )
            shutil.rmtree(self._partial)
        elif self.resume:
            logger.warning(
                "%s: no interrupted run to resume; starting from the start", self.run_dir
            )
        (self._partial / HEATMAPS_DIR).mkdir(parents=True)
        write_text_atomic(state_path, json.dumps({"fingerprint": self.fingerprint}))
        write_csv_atomic(rows_path, PARTIAL_COLUMNS, [])

    def append(self, rows: Sequence[tuple[int, ScoreRow]]) -> None:
        """Record scored ``(input index, row)`` pairs durably (a flush and an fsync per call)."""
        if not rows:
            return
        cells = [{"index": i, **row.as_csv()} for i, row in rows]
        body = csv_text(PARTIAL_COLUMNS, cells, header=False)  # the file has its header
        with (self._partial / PARTIAL_ROWS).open("a", encoding="utf-8", newline="") as stream:
            stream.write(body)
            stream.flush()
            os.fsync(stream.fileno())

    def write_heatmap(self, index: int, file: str | Path, png: bytes) -> str:
        """Write the overlay of input ``index``, encoded as ``png`` (where it was scored, which
        may be another machine); returns its name for the CSV."""
        name = heatmap_name(index, file)
        write_bytes(self._partial / name, png)
        return name

    def finish(self, rows: Sequence[ScoreRow], info: dict[str, Any], defect_types: bool) -> None:
        """Publish the run: its heatmaps, ``run.json``, then ``scores.csv``."""
        (self.run_dir / SCORES_CSV).unlink(missing_ok=True)  # the previous run ends here
        os.chmod(self._partial / HEATMAPS_DIR, directory_mode())
        replace_directory(self._partial / HEATMAPS_DIR, self.run_dir / HEATMAPS_DIR)
        write_run_info(self.run_dir, info)
        write_scores(self.run_dir, rows, defect_types)  # last: its presence means finished
        shutil.rmtree(self._partial, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None


def _cut_to_last_line(path: Path) -> None:
    """Drop an unfinished last line of ``path`` (one without its ``\r\n``)."""
    data = path.read_bytes()
    keep = data.rfind(b"\r\n") + 2 if b"\r\n" in data else 0
    if keep < len(data):
        with path.open("r+b") as stream:
            stream.truncate(keep)
            os.fsync(stream.fileno())


def _read_partial_rows(path: Path) -> dict[int, ScoreRow]:
    """The complete rows of an interrupted run's ``rows.csv`` (a line cut short by the kill,
    without its line end, is dropped: that image is scored again)."""
    try:
        with path.open(encoding="utf-8", newline="") as stream:  # keep the \r\n line ends
            text = stream.read()
    except (OSError, UnicodeDecodeError):
        return {}
    text = text[: text.rfind("\r\n") + 2] if "\r\n" in text else ""
    rows: dict[int, ScoreRow] = {}
    for cells in csv.DictReader(io.StringIO(text, newline="")):
        try:
            index = int(cells["index"])
        except (KeyError, TypeError, ValueError):
            continue
        rows[index] = ScoreRow.from_csv({k: (v or "").strip() for k, v in cells.items() if k})
    return rows


def _claim(lock: Path) -> Path:
    """Create ``lock`` exclusively (pid, host, start); refuse while its owner lives."""
    content = json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    ).encode()
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None:
                raise RunDirBusyError(
                    f"{lock.parent}: another run (pid {owner['pid']} on {owner['host']}) is "
                    "writing into this folder; wait for it or choose another --out"
                ) from None
            logger.warning("%s: taking over the lock of a run that is no longer running", lock)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        return lock
    raise RunDirBusyError(
        f"{lock.parent}: could not claim the folder (lock {lock} keeps coming back)"
    )


def _lock_owner(lock: Path) -> dict[str, Any] | None:
    """The lock's owner while it may still run; None for a lock nobody holds any more."""
    try:
        owner = json.loads(lock.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable or half-written: its writer died between create and write, or is just
        # writing it; an owner that is mid-write will have finished within a second.
        age = time.time() - lock.stat().st_mtime if lock.exists() else 10.0
        return {"pid": "?", "host": "?"} if age < 1.0 else None
    if host != socket.gethostname():
        return owner  # another machine's run on a shared folder: cannot tell, so it holds
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return owner  # alive, another user's
    return owner


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
