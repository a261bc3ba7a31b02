"""Thumbnails and detail images of the report, written as JPEG files next to the HTML.

Images are files rather than data URIs so that a report of 10,000 parts stays a few MB of HTML
that a browser opens at once, and ``loading="lazy"`` can fetch only what is on screen. Each
source image is decoded once per part; large JPEGs are decoded at reduced resolution
(libjpeg's DCT scaling through OpenCV's ``IMREAD_REDUCED_*`` flags), which is where most of the
time goes for camera-sized images. OpenCV releases the GIL while decoding, resizing and
encoding, so a small thread pool runs in parallel without the start-up and pickling cost of a
process pool.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

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

# Reduced-decoding flags by factor, largest first: we pick the largest reduction that still
# leaves at least the requested size.
_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


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


def _read_bytes(path: Path) -> np.ndarray:
    # np.fromfile + imdecode rather than cv2.imread: imread cannot open non-ASCII paths on
    # Windows and says nothing about why it failed.
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ValueError("file is empty")
    return data


def _reduction_flag(data: np.ndarray, target: int) -> int:
    """Decode flag giving an image whose longest side is still >= ``target`` pixels.

    Only for JPEG, where OpenCV's reduced modes are libjpeg's DCT scaling (decoding less, and
    properly filtered); for other formats they decode in full and then subsample, which is no
    faster and aliases, so those are decoded in full and shrunk with area averaging.
    """
    if data[:3].tobytes() != b"\xff\xd8\xff":
        return cv2.IMREAD_COLOR
    try:
        with Image.open(io.BytesIO(data[:65536].tobytes())) as probe:  # header only
            longest = max(probe.size)
    except Exception:  # a header Pillow cannot parse: let OpenCV decode it fully
        return cv2.IMREAD_COLOR
    for factor, flag in _REDUCED:
        if longest // factor >= target:
            return flag
    return cv2.IMREAD_COLOR


def read_rgb(path: Path, target: int) -> np.ndarray:
    """Read ``path`` as RGB ``uint8``, decoded no larger than needed for ``target`` pixels."""
    if not path.is_file():
        raise FileNotFoundError("file not found")
    data = _read_bytes(path)
    # EXIF orientation is ignored: the heatmap was computed on the stored pixel grid, and a
    # rotated photo beside an unrotated heatmap would point the QA team at the wrong spot.
    bgr = cv2.imdecode(data, _reduction_flag(data, target) | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError("not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink ``image`` so its longest side is at most ``size``; never enlarges."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale >= 1.0:
        return image
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    # INTER_AREA: averaging avoids the aliasing that makes thin scratches vanish in thumbnails.
    return cv2.resize(image, new, interpolation=cv2.INTER_AREA)


def write_jpeg(image: np.ndarray, files_dir: Path, relative: str) -> Picture:
    """Encode RGB ``image`` to ``files_dir/relative`` (a POSIX path, as used in the HTML)."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    encoded.tofile(str(files_dir / relative))
    return Picture(relative, image.shape[1], image.shape[0])


def truth_overlay(image: np.ndarray, mask_path: Path) -> tuple[np.ndarray, float]:
    """``image`` with the ground-truth mask tinted and outlined; also the defect area fraction."""
    if not mask_path.is_file():
        raise FileNotFoundError("file not found")
    mask = cv2.imdecode(_read_bytes(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("not a readable image")
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
        image = read_rgb(part.path, DETAIL_SIZE if is_ng else thumbnail_size)
    except Exception as exc:  # any failure becomes a reason shown in the report
        image = None
        if part.verdict != "ERROR":  # the error row already says why it could not be read
            result.problems.append(f"image {part.file}: {exc}")
    if image is not None:
        try:
            result.thumbnail = write_jpeg(
                fit(image, thumbnail_size), files_dir, f"{THUMBS_DIR}/{part.index}.jpg"
            )
            if is_ng:
                detail = fit(image, DETAIL_SIZE)
                result.image = write_jpeg(detail, files_dir, f"{DETAIL_DIR}/{part.index}_image.jpg")
                if part.mask is not None:
                    try:
                        truth, result.truth_area = truth_overlay(detail, part.mask)
                        result.truth = write_jpeg(
                            truth, files_dir, f"{DETAIL_DIR}/{part.index}_truth.jpg"
                        )
                    except Exception as exc:
                        result.problems.append(f"mask {part.mask}: {exc}")
        except Exception as exc:  # e.g. disk full; say so for this part
            result.problems.append(f"writing images of {part.file}: {exc}")
    if is_ng:
        if part.heatmap is None:
            result.problems.append(f"heatmap of {part.file}: none recorded in scores.csv")
        else:
            try:
                heat = fit(read_rgb(part.heatmap, DETAIL_SIZE), DETAIL_SIZE)
                result.heatmap = write_jpeg(
                    heat, files_dir, f"{DETAIL_DIR}/{part.index}_heatmap.jpg"
                )
            except Exception as exc:
                result.problems.append(f"heatmap {part.heatmap}: {exc}")
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
