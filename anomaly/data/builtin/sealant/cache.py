"""The ``sealant`` category on disk: which images, their seeds, and a cache that knows its version.

The machinery (:func:`generate_category`, :func:`ensure_category`) serves every generated
category: a spec (:class:`SealantSpec` here, ``SealantLineSpec`` in ``line.py``) names the
category, renders one image and gives the record its cache is checked against.

A category is written once in the MVTec AD layout with our ``validation/`` and
``train/<defect>/`` extensions (see ``docs/architecture.md``), next to a ``VERSION`` record of
everything its pixels depend on, and is regenerated only when that record changes (generator
version, seed, size or counts). Each image's seed comes from (seed, split, type, index) alone,
so an image is the same whatever the counts, the rendering order or the number of workers.

The folder is built in a hidden staging directory beside the target and moved into place in
one rename (:mod:`anomaly.io.files`), so a reader never sees a half-written category and an
interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import cv2
import numpy as np

from anomaly.data.builtin.sealant.defects import DEFECT_TYPES
from anomaly.data.builtin.sealant.render import render_part
from anomaly.io.files import (
    make_staging_dir,
    replace_directory,
    write_png_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:  # imported lazily at run time: layouts.py is a separate module.
    from anomaly.data.dataset import Dataset

logger = logging.getLogger(__name__)

#: Bump whenever the pixels produced for a given seed change; cached copies then regenerate.
SEALANT_VERSION = "1.0.0"
#: Name of the category folder under the data directory.
CATEGORY = "sealant"
VERSION_FILE = "VERSION"

_PARALLEL_MIN_JOBS = 96  # below this, starting worker processes costs more than it saves
#: File-name prefix of each split folder's images.
_SPLIT_PREFIX = {"train": "train", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class SealantCounts:
    """How many images each split holds (defect counts are per defect type)."""

    train_good: int = 200
    train_defect: int = 4
    val_good: int = 100
    val_defect: int = 4
    test_good: int = 150
    test_defect: int = 6


class CategorySpec(Protocol):
    """A generated category as the cache sees it: its name, its images, and its record.

    Implementations are frozen dataclasses, so a spec travels to worker processes as is and
    two specs of the same category are equal exactly when their images are.
    """

    category: ClassVar[str]  # folder name under the data directory
    seed: int
    counts: SealantCounts

    def record(self) -> dict[str, Any]:
        """The ``VERSION`` file's content; a cached copy is reused only when it is equal."""
        ...

    def render(
        self, seed: int, defect: str | None, severity: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of one part of this category (as :func:`render_part`)."""
        ...

    def frame(self) -> tuple[int, int]:
        """Image ``(width, height)``, for log lines."""
        ...


@dataclass(frozen=True)
class SealantSpec:
    """Everything a generated category's pixels depend on, besides ``SEALANT_VERSION``.

    One value for :func:`generate_sealant` and :func:`ensure_sealant`, so that the category
    written and the one a cached copy is checked against cannot drift apart.
    """

    category: ClassVar[str] = CATEGORY
    seed: int = 0
    size: int = 256
    counts: SealantCounts = field(default_factory=SealantCounts)

    def render(
        self, seed: int, defect: str | None, severity: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One square part, :func:`render_part` at this spec's size."""
        return render_part(seed, self.size, defect, severity)

    def frame(self) -> tuple[int, int]:
        """Image ``(width, height)``."""
        return self.size, self.size

    def record(self) -> dict[str, Any]:
        """The ``VERSION`` file's content; a cached copy is reused only when it is equal."""
        return {
            # The package's name, fixed: a cache keeps matching whichever module writes it.
            "generator": "anomaly.data.builtin.sealant",
            "version": SEALANT_VERSION,
            "seed": self.seed,
            "size": self.size,
            "counts": asdict(self.counts),
            "defect_types": list(DEFECT_TYPES),
        }


@dataclass(frozen=True)
class _Job:
    folder: str  # "train" | "validation" | "test"
    stem: str
    defect: str | None
    severity: float | None
    seed: int


def image_seed(seed: int, split: str, defect: str, index: int) -> int:
    """Per-image seed from (global seed, split, defect type, index), independent of order."""
    tag = zlib.crc32(f"{split}/{defect}".encode())
    state = np.random.SeedSequence([seed, tag, index]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def _jobs(seed: int, counts: SealantCounts) -> list[_Job]:
    """Every image of the category: good ones first, then each defect type, per split."""
    plan = {
        "train": (counts.train_good, counts.train_defect),
        "validation": (counts.val_good, counts.val_defect),
        "test": (counts.test_good, counts.test_defect),
    }
    jobs = []
    for folder, (n_good, n_defect) in plan.items():
        prefix = _SPLIT_PREFIX[folder]
        for kind, n in (("good", n_good), *((kind, n_defect) for kind in DEFECT_TYPES)):
            for i in range(n):
                defect = None if kind == "good" else kind
                # Severities spread evenly from obvious to subtle within each split and type.
                severity = None if defect is None else 1.0 - (i + 0.5) / n
                stem = f"{prefix}_{kind}_{i:03d}"
                jobs.append(_Job(folder, stem, defect, severity, image_seed(seed, folder, kind, i)))
    return jobs


def _run_chunk(root: Path, spec: CategorySpec, jobs: list[_Job]) -> int:
    """Render and write ``jobs`` under ``root``; a worker process's whole task.

    Only folders that get images are made (by the writer): the loader warns about empty class
    folders.
    """
    for job in jobs:
        image, mask = spec.render(job.seed, job.defect, job.severity)
        kind = job.defect or "good"
        write_png_atomic(root / job.folder / kind / f"{job.stem}.png", image)
        if job.defect is not None:
            mask_path = root / "ground_truth" / kind / f"{job.stem}_mask.png"
            write_png_atomic(mask_path, mask.astype(np.uint8) * 255)
    return len(jobs)


def _worker_init() -> None:
    # One OpenCV thread per worker: the workers already occupy the cores.
    cv2.setNumThreads(1)


def _render_all(root: Path, spec: CategorySpec, jobs: list[_Job], workers: int) -> None:
    if workers <= 1 or len(jobs) < _PARALLEL_MIN_JOBS:
        _run_chunk(root, spec, jobs)
        return
    # spawn, not fork: a forked child can hang in OpenCV's thread pool once the parent has used
    # it. Interleaved chunks balance the cheap good and the twice-rendered defect images.
    chunks = [jobs[i::workers] for i in range(workers)]
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        for future in [pool.submit(_run_chunk, root, spec, chunk) for chunk in chunks]:
            future.result()


def _read_version(category_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((category_dir / VERSION_FILE).read_text())
    except (OSError, ValueError):
        return None


def _install(staging: Path, target: Path, spec: CategorySpec) -> None:
    """Move the finished ``staging`` folder to ``target``, replacing what is there.

    Two processes may generate the same category at once (two runs on a fresh data folder);
    when the other one's rename lands first ours fails, and theirs is kept if it is the same
    category. Any other failure is raised.
    """
    try:
        replace_directory(staging, target)
    except OSError:
        if _read_version(target) != spec.record():
            raise
        logger.debug("another process installed the same %s at %s first", spec.category, target)
        shutil.rmtree(staging, ignore_errors=True)


def generate_category(out_dir: Path, spec: CategorySpec, *, workers: int = 1) -> Path:
    """Generate ``spec``'s category into ``out_dir/<category>`` (replacing it); return that folder.

    Images go to a staging folder next to the target, which is then renamed into place, so a
    reader never sees a half-written category and an interrupted run leaves the old one intact.
    ``workers`` > 1 renders in that many spawned processes (when there are at least
    ``_PARALLEL_MIN_JOBS`` images). The default is 1: on 2 free cores two workers halve the
    ~20 s of a full ``sealant`` set, on a busy machine they gain nothing, and spawned workers
    re-import the caller's ``__main__``, which fails in scripts without an ``if __name__ ==
    "__main__"`` guard. (fork is not used: a forked child can hang in OpenCV's thread pool.)
    """
    target = Path(out_dir) / spec.category
    jobs = _jobs(spec.seed, spec.counts)
    started = time.perf_counter()
    staging = make_staging_dir(target)
    try:
        _render_all(staging, spec, jobs, workers)
        write_text_atomic(staging / VERSION_FILE, json.dumps(spec.record(), indent=2) + "\n")
        _install(staging, target, spec)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "generated %d %s images (v%s, seed %d, %dx%d px) in %s in %.1f s",
        len(jobs),
        spec.category,
        spec.record()["version"],
        spec.seed,
        *spec.frame(),
        target,
        time.perf_counter() - started,
    )
    return target


def ensure_category(data_dir: Path, spec: CategorySpec, *, workers: int = 1) -> Path:
    """Return ``data_dir/<category>``, generating it first if missing or from another record."""
    target = Path(data_dir) / spec.category
    found = _read_version(target)
    if found == spec.record():
        logger.debug("reusing %s category at %s", spec.category, target)
        return target
    if found is None and target.exists():
        logger.info("%s has no readable %s; regenerating", target, VERSION_FILE)
    elif found is not None:
        logger.info("%s was generated by %s; regenerating", target, found)
    return generate_category(data_dir, spec, workers=workers)


def generate_sealant(out_dir: Path, spec: SealantSpec | None = None, *, workers: int = 1) -> Path:
    """Generate the category into ``out_dir/sealant`` (see :func:`generate_category`)."""
    return generate_category(out_dir, spec or SealantSpec(), workers=workers)


def ensure_sealant(data_dir: Path, spec: SealantSpec | None = None, *, workers: int = 1) -> Path:
    """Return ``data_dir/sealant``, generating it first if missing or from another spec/version."""
    return ensure_category(data_dir, spec or SealantSpec(), workers=workers)


def load_sealant(
    data_dir: Path,
    *,
    val_fraction: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
    **_: Any,
) -> Dataset:
    """Load the built-in ``sealant`` category, generating it under ``data_dir`` on first use.

    The category is read by the same MVTec loader as user data. Its fixed ``validation/`` and
    ``test/`` folders define the splits, so ``test_fraction`` is unused and ``seed`` only
    matters to the loader; the images themselves always come from generator seed 0.
    """
    from anomaly.data.layouts import load_mvtec

    category_dir = ensure_sealant(Path(data_dir))
    return load_mvtec(category_dir, name=CATEGORY, val_fraction=val_fraction, seed=seed)
