"""A category's images with their labels, defect types, masks and train/val/test split.

Unsupervised models fit on ``dataset.select("train", label=0)``, calibration uses ``"val"`` and
reported figures use ``"test"``; a supervised baseline may also use the train defects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly.errors import DataError

#: The split names, in the order they are used.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: ``defect_type`` of good parts.
GOOD = "good"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class Sample:
    """One image of a category.

    Attributes:
        path: the image file.
        label: 0 = good, 1 = defect.
        defect_type: ``"good"`` for good parts, else the defect class (e.g. ``"crack"``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        mask_path: pixel mask of the defect (nonzero = defect), when known.
        group: a sub-population to stratify on (e.g. ELPV cell type), when known.
        mask_kind: how coarse the mask is when it is not drawn to the pixel: ``"box masks"``
            (rectangles from detection labels), which the pixel metrics then state.
    """

    path: Path
    label: int
    defect_type: str
    split: str
    mask_path: Path | None = None
    group: str | None = None
    mask_kind: str | None = None

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ so callers may pass plain strings.
        object.__setattr__(self, "path", Path(self.path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        if self.label not in (0, 1) or isinstance(self.label, float):
            raise DataError(f"{self.path}: label {self.label!r} is not 0 (good) or 1 (defect)")
        # A plain int keeps summaries and CSV rows JSON-able when a numpy integer is passed.
        object.__setattr__(self, "label", int(self.label))
        _check_split(self.split)
        if (self.label == 0) != (self.defect_type == GOOD):
            raise DataError(
                f"{self.path}: label {self.label} does not match defect type {self.defect_type!r}"
            )


@dataclass(frozen=True)
class Dataset:
    """The samples of one category, each assigned to a split.

    Attributes:
        name: category name.
        samples: every sample, in a deterministic order.
        layout: where it came from: ``"mvtec"``, ``"folder"``, ``"elpv"``, ...
    """

    name: str
    samples: tuple[Sample, ...]
    layout: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", tuple(self.samples))
        # A file in two splits would leak training data into the figures.
        counts = Counter(s.path for s in self.samples)
        twice = sorted(p for p, n in counts.items() if n > 1)
        if twice:
            raise DataError(f"dataset {self.name!r}: {twice[0]} is listed more than once")

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, split: str, label: int | None = None) -> list[Sample]:
        """Samples of ``split`` (and of ``label`` when given), in dataset order.

        Raises:
            DataError: ``split`` is not a split name.
        """
        _check_split(split)
        return [s for s in self.samples if s.split == split and (label is None or s.label == label)]

    @property
    def has_masks(self) -> bool:
        """Whether any sample has a pixel mask (pixel-level metrics are possible)."""
        return any(s.mask_path is not None for s in self.samples)

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect classes present (``"good"`` excluded)."""
        return sorted({s.defect_type for s in self.samples if s.label == 1})

    def summary(self) -> dict[str, Any]:
        """Counts per split, JSON-able.

        Returns:
            ``{split: {"good": n, "defect": n, "defect_types": {type: n}}}`` for every split,
            ``defect_types`` counting the defect samples only, keys sorted.
        """
        out: dict[str, Any] = {}
        for split in SPLITS:
            samples = self.select(split)
            types = Counter(s.defect_type for s in samples if s.label == 1)
            out[split] = {
                "good": sum(1 for s in samples if s.label == 0),
                "defect": sum(types.values()),
                "defect_types": dict(sorted(types.items())),
            }
        return out
