"""The ``sealant_line`` category: a long sealant part photographed at high resolution.

A long plate with a bead dispensed along it (one run or a hairpin of two), in 2048 x 640 frames
(3.2:1), with the same six dispensing errors as ``sealant``, drawn by the same code at the same
sizes relative to the bead. Its point is resolution: a subtle bubble or smear covers a few
hundred pixels, a few hundredths of a percent of the frame, and all but vanishes when the frame
is squashed to a model's 256 x 256 input; a model that looks at tiles of the full frame can
still see it.

Everything on disk works as for ``sealant`` (:mod:`~anomaly.data.builtin.sealant.cache`: MVTec
AD layout, per-image seeds, a ``VERSION`` record, an atomic swap); this module only names the
category, its default counts and its record. Tests or callers that change settings at run time
(``SEALANT_LINE_VERSION``, ``ensure_sealant_line``) patch them in this module.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.data.builtin.sealant.cache import (
    SealantCounts,
    ensure_category,
    generate_category,
)
from anomaly.data.builtin.sealant.defects import DEFECT_TYPES
from anomaly.data.builtin.sealant.render import render_line_part

if TYPE_CHECKING:  # imported lazily at run time: layouts.py is a separate module.
    from anomaly.data.dataset import Dataset

#: Bump whenever the pixels produced for a given seed change; cached copies then regenerate.
SEALANT_LINE_VERSION = "1.0.0"
#: Name of the category folder under the data directory.
LINE_CATEGORY = "sealant_line"
#: Default counts: an image costs ~15 ``sealant`` images to render (1.3 Mpx against 65 kpx, a
#: defect image twice a good one), so far fewer than ``sealant``'s: the whole set renders in
#: about 3.5 CPU minutes (under 2 minutes with 2 workers), and is still enough to fit, to
#: calibrate on validation (3 a type) and to report per type (6 test images a type).
LINE_COUNTS = SealantCounts(
    train_good=80, train_defect=2, val_good=30, val_defect=3, test_good=40, test_defect=6
)


@dataclass(frozen=True)
class SealantLineSpec:
    """Everything a ``sealant_line`` category's pixels depend on, besides its version.

    ``width`` is the long side; a smaller frame of the same aspect draws the same parts (all
    geometry is in units of the height), which is what the tests use.
    """

    category: ClassVar[str] = LINE_CATEGORY
    seed: int = 0
    width: int = 2048
    height: int = 640
    counts: SealantCounts = LINE_COUNTS

    def render(
        self, seed: int, defect: str | None, severity: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One long part, :func:`render_line_part` in this spec's frame."""
        return render_line_part(seed, self.width, self.height, defect, severity)

    def frame(self) -> tuple[int, int]:
        """Image ``(width, height)``."""
        return self.width, self.height

    def record(self) -> dict[str, Any]:
        """The ``VERSION`` file's content; a cached copy is reused only when it is equal."""
        return {
            "generator": "anomaly.data.builtin.sealant.line",
            "version": SEALANT_LINE_VERSION,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "counts": asdict(self.counts),
            "defect_types": list(DEFECT_TYPES),
        }


def generate_sealant_line(
    out_dir: Path, spec: SealantLineSpec | None = None, *, workers: int = 1
) -> Path:
    """Generate the category into ``out_dir/sealant_line`` (see ``generate_category``)."""
    return generate_category(out_dir, spec or SealantLineSpec(), workers=workers)


def ensure_sealant_line(
    data_dir: Path, spec: SealantLineSpec | None = None, *, workers: int = 1
) -> Path:
    """Return ``data_dir/sealant_line``, generating it first if missing or out of date."""
    return ensure_category(data_dir, spec or SealantLineSpec(), workers=workers)


def load_sealant_line(
    data_dir: Path,
    *,
    val_fraction: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
    **_: Any,
) -> Dataset:
    """Load the built-in ``sealant_line`` category, generating it under ``data_dir`` on first use.

    As ``load_sealant``: read by the MVTec loader, splits from its fixed ``validation/`` and
    ``test/`` folders (``test_fraction`` unused), images always from generator seed 0. The
    first use renders on every core (about 3.5 CPU minutes: worth the worker processes).
    """
    from anomaly.data.layouts import load_mvtec

    category_dir = ensure_sealant_line(Path(data_dir), workers=os.cpu_count() or 1)
    return load_mvtec(category_dir, name=LINE_CATEGORY, val_fraction=val_fraction, seed=seed)
