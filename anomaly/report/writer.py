"""``write_report``: turn a score run directory into a QA report on disk."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime
from pathlib import Path

from anomaly.errors import ConfigError
from anomaly.io.files import make_staging_dir, replace_directory, write_text_atomic
from anomaly.report.images import render_all
from anomaly.report.page import build_html
from anomaly.report.rundata import read_run

logger = logging.getLogger(__name__)

#: Smallest thumbnail that still shows a part recognisably; below it the option is a mistake.
MIN_THUMBNAIL = 16


def files_dir_for(out: Path) -> Path:
    """Folder of the report's images: ``<stem>_files`` beside the HTML (``report_files``).

    Derived from the HTML's name so that two reports written into one folder do not share
    (and overwrite) each other's images.
    """
    return out.with_name(f"{out.stem}_files")


def write_report(run_dir: Path, out: Path | None = None, *, thumbnail_size: int = 160) -> Path:
    """Write a self-contained HTML report of a score run directory; returns the HTML's path.

    ``run_dir`` is a directory written by ``anomaly score`` (``scores.csv``, ``heatmaps/``,
    ``run.json``; see docs/architecture.md). Relative image and mask paths in ``scores.csv``
    are resolved against the current working directory, as ``anomaly score`` wrote them;
    heatmap paths against ``run_dir``.

    ``out`` is the HTML file (default ``run_dir/report.html``; an existing directory gets
    ``report.html`` inside it). The deliverable is the HTML **plus** the folder
    ``<stem>_files/`` beside it (``report_files/`` by default) holding the JPEG thumbnails
    (longest side ``thumbnail_size`` px) and the detail images of rejected parts, referenced by
    relative links: copy or zip both together. The page loads nothing else — no CDN, fonts or
    any network request (its Content-Security-Policy forbids them) — and is readable without
    JavaScript; a small inline script only adds sorting and filtering to the parts table.

    The images folder is built under a temporary name and swapped in whole, and the HTML is
    written to a temporary file and moved into place (:mod:`anomaly.io.files`), so an
    interrupted run leaves the previous report intact rather than a half-written one. The
    HTML, the folder and its images get the usual modes (umask honoured), so whoever can read
    the run directory can open the report.

    Files that cannot be read are listed in the report with their reason rather than failing
    it. Raises :class:`anomaly.errors.DataError` when ``run_dir`` is not a readable score run
    directory and :class:`anomaly.errors.ConfigError` for a too small ``thumbnail_size``.
    """
    if thumbnail_size < MIN_THUMBNAIL:
        raise ConfigError(f"thumbnail_size={thumbnail_size}: must be at least {MIN_THUMBNAIL}")
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir)  # first: a wrong run_dir must not leave a new folder behind
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        out = out / "report.html"
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("writing report of %d parts from %s to %s", len(run.parts), run_dir, out)

    files_dir = files_dir_for(out)
    building = make_staging_dir(files_dir)
    try:
        step = max(1, len(run.parts) // 10)

        def progress(done: int) -> None:
            if done % step == 0 or done == len(run.parts):
                logger.debug("report images: %d/%d parts", done, len(run.parts))

        images = render_all(run.parts, building, thumbnail_size, progress=progress)
        html = build_html(run, images, files_dir.name, datetime.now())
        replace_directory(building, files_dir)  # puts the previous images back if it fails
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    write_text_atomic(out, html)
    problems = sum(len(r.problems) for r in images.values())
    if problems:
        logger.warning(
            "report %s: %d picture(s) could not be made; listed in the report", out, problems
        )
    logger.info("report written to %s in %.1f s", out, time.perf_counter() - started)
    return out
