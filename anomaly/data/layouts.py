"""Load a category from a folder on disk: MVTec AD layout, plain folder layout, or (through
:mod:`anomaly.data.yolo`) a YOLO / Ultralytics tree with ``data.yaml``.

MVTec AD::

    <cat>/train/good/                    good training images (what unsupervised models fit on)
    <cat>/train/<defect>/                optional, supervised use only
    <cat>/validation/<good|defect>/      optional (``val/`` accepted too)
    <cat>/test/<good|defect>/
    <cat>/ground_truth/<defect>/<stem>_mask.png   (``<stem>.png`` accepted too)

Without ``validation/``, a seeded part of ``test/``, stratified by defect type, becomes the
validation split.

Folder::

    <cat>/good/                          good images
    <cat>/<defect>/                      one folder per defect type (sub-folders are walked)
    <cat>/ground_truth/<defect>/<stem>_mask.png   optional

split seeded and stratified by (label, defect type) into train/val/test. A team's own folder
names work as they are: ``data.good_dirs=[ok_front]`` names the good folders and
``data.defect_dirs=["def_*"]`` the defect folders (shell-style patterns; folders matching
neither are then left out, with a warning), so ``ok_front/`` and ``def_front/`` need no
renaming; each defect folder's name is its defect type.

Class folders are walked recursively; a mask mirrors its image's path below the class folder.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anomaly.data.dataset import GOOD, Dataset, Sample
from anomaly.data.splits import check_fraction, stratified_split, train_val_test_fractions
from anomaly.data.yolo import DATA_YAML, load_yolo
from anomaly.errors import DataError
from anomaly.io.images import list_images

logger = logging.getLogger(__name__)

GROUND_TRUTH = "ground_truth"
_MVTEC_HINT = "MVTec AD layout: <category>/train/good/ and <category>/test/<good|defect>/"
_FOLDER_HINT = "folder layout: <category>/good/ plus one folder per defect type"

# (image, label, defect_type, mask) before a split is chosen.
_Item = tuple[Path, int, str, Path | None]


def _category_root(category_dir: str | Path) -> Path:
    root = Path(category_dir).expanduser()
    if not root.exists():
        raise DataError(f"{root}: category folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, expected a category folder")
    return root


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _check_patterns(key: str, patterns: Sequence[str] | None) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str) or not all(isinstance(p, str) and p for p in patterns):
        raise DataError(f"data.{key}={patterns!r}: expected a list of folder names or patterns")
    if not patterns:
        raise DataError(f"data.{key}=[]: name at least one folder (or leave it unset)")
    return tuple(patterns)


def detect_layout(category_dir: str | Path, good_dirs: Sequence[str] | None = None) -> str:
    """Tell which on-disk layout ``category_dir`` uses.

    Returns:
        ``"yolo"`` when it has ``data.yaml`` (:mod:`anomaly.data.yolo`); ``"mvtec"`` when it
        has ``train/`` (or, failing that and without a good folder, ``test/``); ``"folder"``
        when it has ``good/`` or a folder ``good_dirs`` names.

    Raises:
        DataError: the folder is missing or matches neither layout.
    """
    root = _category_root(category_dir)
    good_dirs = _check_patterns("good_dirs", good_dirs)
    if (root / DATA_YAML).is_file():
        return "yolo"
    if (root / "train").is_dir():
        return "mvtec"
    folders = _subdirs(root)
    if (root / GOOD).is_dir() or (good_dirs and any(_matches(d.name, good_dirs) for d in folders)):
        return "folder"
    names = ", ".join(d.name for d in folders) or "none"
    if good_dirs:
        raise DataError(
            f"{root}: no folder matches data.good_dirs={list(good_dirs)} (folders here: {names})"
        )
    if (root / "test").is_dir():
        return "mvtec"
    raise DataError(
        f"{root}: not a dataset folder: expected the {_MVTEC_HINT}, or the {_FOLDER_HINT}; "
        f"for other folder names set data.good_dirs and data.defect_dirs (folders here: {names})"
    )


def _find_mask(ground_truth: Path, defect_type: str, relative: Path) -> Path | None:
    """Mask of the image at ``<class folder>/<relative>``, or ``None`` when there is none."""
    folder = ground_truth / defect_type / relative.parent
    for candidate in (folder / f"{relative.stem}_mask.png", folder / f"{relative.stem}.png"):
        if candidate.is_file():
            return candidate
    return None


def _class_items(
    split_dir: Path,
    ground_truth: Path,
    *,
    skip: tuple[str, ...] = (),
    good_dirs: Sequence[str] = (GOOD,),
    defect_dirs: Sequence[str] | None = None,
) -> list[_Item]:
    """Images of every class folder under ``split_dir``: a folder ``good_dirs`` matches -> 0;
    any other (or, when ``defect_dirs`` is given, one it matches) -> 1, its name the type."""
    items: list[_Item] = []
    ignored: list[str] = []
    loose = [p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        logger.warning(
            "%s: %d file(s) outside any class folder ignored (e.g. %s)",
            split_dir,
            len(loose),
            sorted(loose)[0].name,
        )
    for class_dir in _subdirs(split_dir):
        # ground_truth/ holds masks, never a class, wherever it sits.
        if class_dir.name in skip or class_dir.name == GROUND_TRUTH:
            continue
        good = _matches(class_dir.name, good_dirs)
        if defect_dirs is not None:
            defect = _matches(class_dir.name, defect_dirs)
            if good and defect:
                raise DataError(
                    f"{class_dir}: matches both data.good_dirs={list(good_dirs)} and "
                    f"data.defect_dirs={list(defect_dirs)}; a folder is good or defect, not both"
                )
            if not (good or defect):
                ignored.append(class_dir.name)
                continue
        images = list_images(class_dir)
        if not images:
            logger.warning("%s: no images, class folder ignored", class_dir)
            continue
        # Good parts are "good" whatever their folder is called (the file path keeps the
        # team's name); a defect folder's name is its defect type.
        defect_type = GOOD if good else class_dir.name
        label = 0 if good else 1
        for path in images:
            mask = None
            if label == 1:
                mask = _find_mask(ground_truth, defect_type, path.relative_to(class_dir))
            items.append((path, label, defect_type, mask))
    if ignored:
        logger.warning(
            "%s: folder(s) %s match neither data.good_dirs nor data.defect_dirs: left out",
            split_dir,
            ", ".join(ignored),
        )
    return items


def _warn_shared_masks(items: list[_Item]) -> None:
    # Masks are keyed by defect type and stem only, so two images with the same stem in
    # different splits (train/crack/000.png, test/crack/000.png) would share one mask.
    owners: dict[Path, Path] = {}
    for path, _, _, mask in items:
        if mask is None:
            continue
        if mask in owners:
            logger.warning("%s: mask used by both %s and %s", mask, owners[mask], path)
        else:
            owners[mask] = path


def _sample(item: _Item, split: str) -> Sample:
    path, label, defect_type, mask = item
    return Sample(path=path, label=label, defect_type=defect_type, split=split, mask_path=mask)


def load_mvtec(
    category_dir: str | Path,
    *,
    name: str | None = None,
    val_fraction: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """Load a category in MVTec AD layout.

    ``train/good`` gives the train split (label 0); ``train/<defect>`` gives train defects
    (label 1, for supervised use only). ``validation/`` (or ``val/``) is the val split when
    present; otherwise ``val_fraction`` of ``test/``, stratified by defect type and seeded,
    becomes val and the rest stays test. Defect images get their mask when
    ``ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``) exists; good images never do.

    Args:
        category_dir: the category folder.
        name: dataset name; defaults to the folder name.
        val_fraction: share of ``test/`` moved to val (0..1) when there is no val folder.
        seed: seed of that split.

    Returns:
        The dataset, layout ``"mvtec"``.

    Raises:
        DataError: the folder is missing or has no good training images.
        ConfigError: ``val_fraction`` is not within 0..1.
    """
    root = _category_root(category_dir)
    val_share = check_fraction("val_fraction", val_fraction)
    ground_truth = root / GROUND_TRUTH
    train_good_dir = root / "train" / GOOD
    train_good = list_images(train_good_dir) if train_good_dir.is_dir() else []
    if not train_good:
        raise DataError(f"{train_good_dir}: no good training images ({_MVTEC_HINT})")

    samples = [Sample(path=p, label=0, defect_type=GOOD, split="train") for p in train_good]
    train_items = _class_items(root / "train", ground_truth, skip=(GOOD,))
    samples += [_sample(item, "train") for item in train_items]

    test_dir = root / "test"
    test_items = _class_items(test_dir, ground_truth) if test_dir.is_dir() else []
    val_dirs = [root / d for d in ("validation", "val") if (root / d).is_dir()]
    if len(val_dirs) > 1:
        logger.warning("%s: both validation/ and val/ exist; using validation/", root)
    if val_dirs:
        val_items = _class_items(val_dirs[0], ground_truth)
        samples += [_sample(item, "val") for item in val_items]
        samples += [_sample(item, "test") for item in test_items]
    else:
        val_items = []
        fractions = {"val": val_share, "test": 1.0 - val_share}
        strata = [(label, defect_type) for _, label, defect_type, _ in test_items]
        splits = stratified_split(strata, fractions, seed)
        samples += [_sample(item, split) for item, split in zip(test_items, splits, strict=True)]
    if not test_items:
        logger.warning("%s: no test images (%s/<good|defect>/)", root, test_dir)
    _warn_shared_masks(train_items + val_items + test_items)
    return Dataset(name=name or root.name, samples=tuple(samples), layout="mvtec")


def load_folder(
    category_dir: str | Path,
    *,
    name: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    good_dirs: Sequence[str] | None = None,
    defect_dirs: Sequence[str] | None = None,
) -> Dataset:
    """Load a category in folder layout: ``good/`` plus one folder per defect type, or the
    team's own names (``good_dirs``, ``defect_dirs``: folder names or shell-style patterns).

    ``ground_truth/`` (masks, same naming as MVTec AD) is not a class. The images are split
    seeded and stratified by (label, defect type) into train / val / test with fractions
    ``(1 - val_fraction - test_fraction, val_fraction, test_fraction)``; train defects are for
    supervised use only.

    Args:
        category_dir: the category folder.
        name: dataset name; defaults to the folder name.
        val_fraction: share of each class that goes to val.
        test_fraction: share of each class that goes to test.
        seed: seed of the split.
        good_dirs: folders of good images (default ``["good"]``).
        defect_dirs: folders of defect images; default every other folder. When given,
            folders matching neither list are left out (with a warning).

    Returns:
        The dataset, layout ``"folder"``.

    Raises:
        DataError: the folder is missing, or has no good images (for training).
        ConfigError: the fractions are out of range or leave nothing to train on.
    """
    root = _category_root(category_dir)
    fractions = train_val_test_fractions(val_fraction, test_fraction)
    good_names = _check_patterns("good_dirs", good_dirs) or (GOOD,)
    defect_names = _check_patterns("defect_dirs", defect_dirs)
    good_folders = [d for d in _subdirs(root) if _matches(d.name, good_names)]
    has_good = any(list_images(d) for d in good_folders)
    if good_dirs is None and not has_good:
        raise DataError(f"{root / GOOD}: no good images ({_FOLDER_HINT})")
    if not has_good:
        folders = ", ".join(d.name for d in _subdirs(root)) or "none"
        raise DataError(
            f"{root}: no good images in a folder matching data.good_dirs={list(good_names)} "
            f"(folders here: {folders}; {_FOLDER_HINT}, or set data.good_dirs)"
        )
    good_dir = good_folders[0]
    items = _class_items(root, root / GROUND_TRUTH, good_dirs=good_names, defect_dirs=defect_names)
    strata = [(label, defect_type) for _, label, defect_type, _ in items]
    splits = stratified_split(strata, fractions, seed)
    samples = [_sample(item, split) for item, split in zip(items, splits, strict=True)]
    if not any(s.split == "train" and s.label == 0 for s in samples):
        raise DataError(
            f"{good_dir}: too few good images to leave one for training "
            f"(val_fraction={val_fraction}, test_fraction={test_fraction})"
        )
    return Dataset(name=name or root.name, samples=tuple(samples), layout="folder")


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mvtec": load_mvtec,
    "folder": load_folder,
    "yolo": load_yolo,
}


def load_directory(category_dir: str | Path, **kwargs: Any) -> Dataset:
    """Load a category folder with the loader of its layout (see :func:`detect_layout`).

    Keyword arguments go to :func:`load_mvtec` or :func:`load_folder`; the shared ones that
    the chosen loader has no use for (``test_fraction`` for MVTec AD, whose test split is on
    disk) are dropped, and any other unknown option is ignored with a warning.

    Note that for MVTec AD ``val_fraction`` is the share of ``test/`` moved to val, whereas for
    the folder layout it is the share of every class.
    """
    layout = detect_layout(category_dir, kwargs.get("good_dirs"))
    loader = _LOADERS[layout]
    accepted = set(inspect.signature(loader).parameters)
    shared = {"name", "val_fraction", "test_fraction", "seed", "cache_dir"}
    unknown = sorted(set(kwargs) - accepted - shared)
    if unknown:
        logger.warning("%s: option(s) %s ignored by the %s layout", category_dir, unknown, layout)
    return loader(category_dir, **{k: v for k, v in kwargs.items() if k in accepted})
