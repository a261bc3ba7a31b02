"""Thumbnails and detail images of the report, written as JPEG files next to the HTML.

Images are files rather than data URIs so that a report of 10,000 parts stays a few MB of HTML
that a browser opens at once, and ``loading="lazy"`` can fetch only what is on screen. Each
source image is decoded once per part by :func:`anomaly.io.images.load_image`, the decoder the
model's input went through, so a 16-bit or float image is shown as the model saw it; its
``max_side`` option decodes large JPEGs at reduced resolution, which is where most of the time
goes for camera-sized images. OpenCV releases the GIL while decoding, resizing and encoding, so
a small thread pool runs in parallel without the start-up and pickling cost of a process pool.

The pictures are written into the staging folder that :func:`anomaly.report.write_report`
publishes whole, with :func:`anomaly.io.files.write_bytes` (the usual file mode).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anomaly.errors import ImageReadError
from anomaly.io.files import encode_jpeg, write_bytes
from anomaly.io.images import load_image, load_mask, shrink_to_fit
from anomaly.report.rundata import Part

logger = logging.getLogger(__name__)

#: Longest side of the images in an NG part's detail section (CSS shows them at up to ~400 px;
#: the extra resolution keeps a small defect visible on high-density screens and when zooming).
DETAIL_SIZE = 640
JPEG_QUALITY = 85
#: Ground-truth colour (RGB): green is not used by the outline of the heatmap (white) and stays
#: distinct from the jet colours of the overlay it is compared with, since it is on a plain image.
TRUTH_RGB = (0, 220, 0)
THUMBS_DIR = "thumbs"
DETAIL_DIR = "detail"


@dataclass(frozen=True)
class Picture:
    """An image file written for the report: path relative to the files folder, pixel size.

    Relative to the folder, not the HTML, because the folder is built under a temporary name
    and renamed into place when complete.
    """

    src: str
    width: int
    height: int


@dataclass
class PartImages:
    """What was produced for one part; ``problems`` says what could not be, and why."""

    index: int
    thumbnail: Picture | None = None
    image: Picture | None = None
    heatmap: Picture | None = None
    truth: Picture | None = None
    truth_area: float | None = None  # fraction of the image marked defective by the mask
    problems: list[str] = field(default_factory=list)


def _reason(error: Exception) -> str:
    """Why a file could not be used, without repeating its path (the report names it)."""
    return error.reason if isinstance(error, ImageReadError) else str(error)


def write_jpeg(image: np.ndarray, files_dir: Path, relative: str) -> Picture:
    """Encode RGB ``image`` to ``files_dir/relative`` (a POSIX path, as used in the HTML)."""
    write_bytes(files_dir / relative, encode_jpeg(image, JPEG_QUALITY))
    return Picture(relative, image.shape[1], image.shape[0])


def truth_overlay(image: np.ndarray, mask_path: Path) -> tuple[np.ndarray, float]:
    """``image`` with the ground-truth mask tinted and outlined; also the defect area fraction."""
    # load_mask: the same rule as the evaluation (any nonzero raw sample marks a defect), so a
    # 16-bit mask holding 1 or a coloured mask is shown as it was counted.
    mask = load_mask(mask_path).astype(np.uint8) * 255
    area = float(np.count_nonzero(mask)) / mask.size
    height, width = image.shape[:2]
    if mask.shape != (height, width):
        # Area interpolation then "> 0": a one-pixel defect line survives the shrinking.
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    region = mask > 0
    out = image.copy()
    tint = np.array(TRUTH_RGB, dtype=np.float32)
    out[region] = (0.6 * out[region] + 0.4 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(
        region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, TRUTH_RGB, max(1, round(min(height, width) / 150)))
    return out, area


def render_part(part: Part, files_dir: Path, thumbnail_size: int) -> PartImages:
    """Write the thumbnail of ``part`` and, for an NG part, its detail images.

    Never raises for a bad input file: a report of many parts must not fail on one, so each
    failure is recorded in ``problems`` with its reason and the report shows it.
    """
    result = PartImages(part.index)
    is_ng = part.verdict == "NG"
    try:
        image = load_image(part.path, DETAIL_SIZE if is_ng else thumbnail_size)
    except Exception as exc:  # any failure becomes a reason shown in the report
        image = None
        if part.verdict != "ERROR":  # the error row already says why it could not be read
            result.problems.append(f"image {part.file}: {_reason(exc)}")
    if image is not None:
        try:
            result.thumbnail = write_jpeg(
                shrink_to_fit(image, thumbnail_size), files_dir, f"{THUMBS_DIR}/{part.index}.jpg"
            )
            if is_ng:
                detail = image  # already at most DETAIL_SIZE
                result.image = write_jpeg(detail, files_dir, f"{DETAIL_DIR}/{part.index}_image.jpg")
                if part.mask is not None:
                    try:
                        truth, result.truth_area = truth_overlay(detail, part.mask)
                        result.truth = write_jpeg(
                            truth, files_dir, f"{DETAIL_DIR}/{part.index}_truth.jpg"
                        )
                    except Exception as exc:
                        result.problems.append(f"mask {part.mask}: {_reason(exc)}")
        except Exception as exc:  # e.g. disk full; say so for this part
            result.problems.append(f"writing images of {part.file}: {exc}")
    if is_ng:
        if part.heatmap is None:
            result.problems.append(f"heatmap of {part.file}: none recorded in scores.csv")
        else:
            try:
                heat = load_image(part.heatmap, DETAIL_SIZE)
                result.heatmap = write_jpeg(
                    heat, files_dir, f"{DETAIL_DIR}/{part.index}_heatmap.jpg"
                )
            except Exception as exc:
                result.problems.append(f"heatmap {part.heatmap}: {_reason(exc)}")
    return result


def render_all(
    parts: Iterable[Part],
    files_dir: Path,
    thumbnail_size: int,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[int, PartImages]:
    """Render every part's images into ``files_dir``; returns them by part index.

    ``workers`` defaults to two threads (fewer on a one-CPU machine): nearly all the time is
    spent decoding, resizing and encoding in OpenCV, whose bindings release the GIL around
    every call, so threads run in parallel without a process pool's start-up and pickling.
    Two matches the 2-core line PCs this is sized for and leaves the rest of a bigger machine
    to whatever else it is doing.
    """
    (files_dir / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    (files_dir / DETAIL_DIR).mkdir(parents=True, exist_ok=True)
    parts = list(parts)
    if workers is None:
        # sched_getaffinity: the CPUs this process may use (a container's share), not the host's.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(2, cpus or 1)
    results: dict[int, PartImages] = {}
    if workers <= 1:
        for done, part in enumerate(parts, 1):
            results[part.index] = render_part(part, files_dir, thumbnail_size)
            if progress:
                progress(done)
        return results
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report") as pool:
        rendered = pool.map(lambda p: render_part(p, files_dir, thumbnail_size), parts)
        for done, result in enumerate(rendered, 1):
            results[result.index] = result
            if progress:
                progress(done)
    return results
