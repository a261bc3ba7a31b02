"""Built-in category ``elpv``: solar cells in electroluminescence images (elpv-dataset).

The ``elpv-dataset`` package ships 2,624 grayscale 300x300 PNG cells and ``data/labels.csv``,
whitespace-separated: ``images/cellNNNN.png  <defect probability>  <mono|poly>``. Experts rated
each cell's defect probability as 0, 1/3, 2/3 or 1.

- probability 0 -> good (label 0), probability 1 -> defect (label 1, defect type ``"defect"``);
- 1/3 and 2/3 are uncertain ratings. By default (``include_uncertain=False`` or ``"none"``) they
  are left out, because calibrating a miss rate against a coin-flip label says little. With
  ``include_uncertain=True`` (or ``"defect"``) every rating above 0 is a defect; the uncertain
  ones get defect type ``"uncertain"`` so that reports can show them apart.

At default options this gives 1,508 good and 715 defect cells. ``group`` is the cell type
(``"mono"`` or ``"poly"``, which look very different); the split is seeded and stratified by
(label, defect type, cell type), 60/20/20 by default.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from anomaly.data.dataset import GOOD, Dataset, Sample
from anomaly.data.splits import stratified_split, train_val_test_fractions
from anomaly.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PACKAGE = "elpv_dataset"
CELL_TYPES = ("mono", "poly")
# Ratings are stored as 0.0, 0.333..., 0.666..., 1.0; compare with a tolerance.
_TOLERANCE = 1e-6


def elpv_data_dir() -> Path:
    """Folder of the installed package's ``labels.csv`` and ``images/``.

    Raises:
        DataError: the package is not installed or its data folder is missing.
    """
    # find_spec locates the package without importing it (its import pulls in Pillow/numpy).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "built-in category 'elpv' needs the elpv-dataset package: pip install elpv-dataset"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (data_dir / "labels.csv").is_file():
        raise DataError(f"{data_dir / 'labels.csv'}: missing; reinstall elpv-dataset")
    return data_dir


def _uncertain_policy(include_uncertain: bool | str) -> bool:
    """Whether uncertain ratings are kept (as defects)."""
    if isinstance(include_uncertain, bool):
        return include_uncertain
    if isinstance(include_uncertain, str) and include_uncertain.lower() in ("none", "defect"):
        return include_uncertain.lower() == "defect"
    raise ConfigError(
        f"include_uncertain={include_uncertain!r} must be false/'none' (drop 1/3 and 2/3 "
        "ratings) or true/'defect' (count them as defects)"
    )


def read_labels(labels_csv: Path) -> list[tuple[Path, float, str]]:
    """Parse ``labels.csv`` into ``(image path, defect probability, cell type)`` rows.

    Raises:
        DataError: naming the file and line of a malformed row or a missing image.
    """
    rows: list[tuple[Path, float, str]] = []
    base = labels_csv.parent
    for number, line in enumerate(labels_csv.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{labels_csv}:{number}"
        if len(fields) != 3:
            raise DataError(f"{where}: expected 'path probability type', got {line.strip()!r}")
        name, probability_text, cell_type = fields
        try:
            probability = float(probability_text)
        except ValueError as exc:
            raise DataError(f"{where}: probability {probability_text!r} is not a number") from exc
        if not 0 <= probability <= 1:
            raise DataError(f"{where}: probability {probability} is outside 0..1")
        if cell_type not in CELL_TYPES:
            raise DataError(f"{where}: cell type {cell_type!r} is not one of {CELL_TYPES}")
        path = base / name
        if not path.is_file():
            raise DataError(f"{where}: image {path} is missing")
        rows.append((path, probability, cell_type))
    if not rows:
        raise DataError(f"{labels_csv}: no rows")
    return rows


def load_elpv(
    data_dir: Path | None = None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    include_uncertain: bool | str = False,
    **_: Any,
) -> Dataset:
    """Load the built-in ``elpv`` category.

    Args:
        data_dir: unused; the images ship inside the elpv-dataset package (the argument keeps
            the signature shared by the built-in loaders).
        val_fraction: share of each stratum that goes to val.
        test_fraction: share of each stratum that goes to test; train gets the rest.
        seed: seed of the split.
        include_uncertain: ``False``/``"none"`` drops the 1/3 and 2/3 ratings;
            ``True``/``"defect"`` counts them as defects (defect type ``"uncertain"``).

    Returns:
        Dataset ``"elpv"``, layout ``"elpv"``, no masks, ``group`` = cell type.

    Raises:
        DataError: the package or its data is missing or malformed.
        ConfigError: an option is invalid.
    """
    del data_dir  # Kept for the shared loader signature only.
    keep_uncertain = _uncertain_policy(include_uncertain)
    fractions = train_val_test_fractions(val_fraction, test_fraction)
    rows = read_labels(elpv_data_dir() / "labels.csv")

    items: list[tuple[Path, int, str, str]] = []
    for path, probability, cell_type in rows:
        if probability <= _TOLERANCE:
            items.append((path, 0, GOOD, cell_type))
        elif probability >= 1 - _TOLERANCE:
            items.append((path, 1, "defect", cell_type))
        elif keep_uncertain:
            items.append((path, 1, "uncertain", cell_type))
    logger.debug("elpv: %d of %d cells kept", len(items), len(rows))

    strata = [(label, defect_type, cell_type) for _, label, defect_type, cell_type in items]
    splits = stratified_split(strata, fractions, seed)
    samples = tuple(
        Sample(path=path, label=label, defect_type=defect_type, split=split, group=cell_type)
        for (path, label, defect_type, cell_type), split in zip(items, splits, strict=True)
    )
    return Dataset(name="elpv", samples=samples, layout="elpv")
