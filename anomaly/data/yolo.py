"""Load a category in YOLO / Ultralytics layout, as teams receive detection-labelled data.

::

    <cat>/data.yaml                      path (optional), train, val, test (optional), names
    <cat>/images/<split>/*.jpg           (any folders data.yaml names)
    <cat>/labels/<split>/*.txt           one line per object: class cx cy w h (normalised),
                                         or class x1 y1 x2 y2 ... (a polygon)

An image with no label file, or an empty one, is a good part; an image with objects is a defect,
its defect type the class name of its largest object. The objects become a pixel mask: a box
is a filled rectangle, a polygon a filled polygon. Box masks are coarser than drawn masks (every
box pixel counts as defect), so the samples say so and every pixel metric computed from them
is marked "box masks". The masks are written once, as PNG files, into the data cache (never
into the team's folders) and rewritten when a label file is newer.

The label file of ``.../images/<split>/x.jpg`` is ``.../labels/<split>/x.txt`` (the last
``images`` folder of the path becomes ``labels``), as in Ultralytics. A malformed line, a class
id that ``names`` lacks, or an object outside the image is an error naming the file and line.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from anomaly.data.dataset import GOOD, Dataset, Sample
from anomaly.data.splits import check_fraction, stratified_split
from anomaly.errors import DataError
from anomaly.io.files import write_png_atomic
from anomaly.io.images import image_shape, list_images

logger = logging.getLogger(__name__)

DATA_YAML = "data.yaml"
#: Tolerance on normalised coordinates (labelling tools round to 6 digits).
_EPS = 1e-6
#: What the samples' masks are, for the pixel metrics' statement.
BOX_MASKS = "box masks"


def load_yolo(
    category_dir: str | Path,
    *,
    name: str | None = None,
    val_fraction: float = 0.5,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Load ``category_dir/data.yaml`` and its images and labels.

    ``train``/``val``/``test`` of ``data.yaml`` (a folder, a ``.txt`` list of images, or a list
    of either, relative to ``path`` or to the YAML's folder) give the splits; without ``test``,
    ``val_fraction`` of ``val`` (stratified by defect type, seeded) stays val and the rest
    becomes test. Masks go to ``cache_dir/yolo-masks/``.

    Raises:
        DataError: a missing or malformed ``data.yaml``, no train images, no good train
            images, or a bad label file (named with its line).
    """
    root = Path(category_dir).expanduser()
    config = _read_config(root / DATA_YAML)
    names = _class_names(config, root / DATA_YAML)
    base = Path(str(config.get("path") or root)).expanduser()
    base = base if base.is_absolute() else (root / base)
    masks_root = _masks_root(root, cache_dir)
    splits: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        if config.get(split) in (None, ""):
            if split != "test":
                raise DataError(
                    f"{root / DATA_YAML}: no {split!r} entry (images of the {split} split)"
                )
            continue
        splits[split] = _split_images(config[split], base, root / DATA_YAML, split)
    samples: list[Sample] = []
    for split, images in splits.items():
        samples += [_sample(path, split, names, masks_root, base) for path in images]
    if "test" not in splits:
        share = check_fraction("val_fraction", val_fraction)
        val = [s for s in samples if s.split == "val"]
        rest = [s for s in samples if s.split != "val"]
        chosen = stratified_split(
            [(s.label, s.defect_type) for s in val], {"val": share, "test": 1 - share}, seed
        )
        samples = rest + [replace(s, split=split) for s, split in zip(val, chosen, strict=True)]
    if not any(s.split == "train" and s.label == 0 for s in samples):
        raise DataError(f"{root / DATA_YAML}: no good train images (train images without objects)")
    return Dataset(name=name or root.name, samples=tuple(samples), layout="yolo")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a mapping with train, val and names")
    return config


def _class_names(config: dict[str, Any], path: Path) -> dict[int, str]:
    names = config.get("names")
    if isinstance(names, list):
        result = dict(enumerate(names))
    elif isinstance(names, dict):
        try:
            result = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError) as error:
            raise DataError(f"{path}: names keys must be class ids (integers)") from error
    else:
        raise DataError(f"{path}: 'names' must list the class names (a list or an id: name map)")
    bad = [v for v in result.values() if not isinstance(v, str) or not v or v == GOOD]
    if bad:
        raise DataError(f"{path}: class name {bad[0]!r} is not usable as a defect type")
    return result


def _split_images(entry: Any, base: Path, config_path: Path, key: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        where = Path(str(item)).expanduser()
        where = where if where.is_absolute() else base / where
        if where.is_dir():
            images += list_images(where)
        elif where.is_file() and where.suffix == ".txt":
            for line in where.read_text().splitlines():
                if line.strip():
                    listed = Path(line.strip())
                    images.append(listed if listed.is_absolute() else base / listed)
        else:
            raise DataError(f"{config_path}: {key}: {where} is neither a folder nor a .txt list")
    return images


def label_path(image: Path) -> Path:
    """The label file of ``image``: its last ``images`` folder becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")  # labels next to the images


def read_labels(path: Path, names: dict[int, str]) -> list[tuple[int, np.ndarray, bool]]:
    """``(class id, polygon (n, 2) normalised, is_box)`` per object of a label file."""
    objects = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        try:
            class_id = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError as error:
            raise DataError(f"{where}: not numbers: {line.strip()!r}") from error
        if class_id not in names:
            raise DataError(
                f"{where}: class id {class_id} is not in data.yaml's names "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(names.items()))})"
            )
        if len(values) == 4:
            cx, cy, w, h = values
            if w <= 0 or h <= 0:
                raise DataError(f"{where}: box of width {w} and height {h}: both must be > 0")
            polygon = np.array(
                [
                    [cx - w / 2, cy - h / 2],
                    [cx + w / 2, cy - h / 2],
                    [cx + w / 2, cy + h / 2],
                    [cx - w / 2, cy + h / 2],
                ]
            )
            is_box = True
        elif len(values) >= 6 and len(values) % 2 == 0:
            polygon, is_box = np.array(values).reshape(-1, 2), False
        else:
            raise DataError(
                f"{where}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
                f"got {len(fields)} values"
            )
        if polygon.min() < -_EPS or polygon.max() > 1 + _EPS:
            raise DataError(
                f"{where}: the object reaches outside the image (normalised coordinates "
                f"{polygon.min():.4g}..{polygon.max():.4g}, expected 0..1)"
            )
        objects.append((class_id, np.clip(polygon, 0.0, 1.0), is_box))
    return objects


def _sample(image: Path, split: str, names: dict[int, str], masks_root: Path, base: Path) -> Sample:
    labels = label_path(image)
    objects = read_labels(labels, names) if labels.is_file() else []
    if not objects:
        return Sample(path=image, label=0, defect_type=GOOD, split=split)
    height, width = image_shape(image)
    scale = np.array([width, height])

    def area(polygon: np.ndarray) -> float:
        extent = polygon.max(axis=0) - polygon.min(axis=0)
        return float(extent[0] * extent[1])

    largest = max(objects, key=lambda obj: area(obj[1]))
    try:
        relative = image.relative_to(base)
    except ValueError:
        relative = Path(image.name)
    mask_path = masks_root / split / relative.with_name(f"{relative.stem}_mask.png")
    if not mask_path.is_file() or mask_path.stat().st_mtime < labels.stat().st_mtime:
        mask = np.zeros((height, width), dtype=np.uint8)
        for _, polygon, _ in objects:
            points = np.round(polygon * scale).astype(np.int32)
            cv2.fillPoly(mask, [points], 255)
        write_png_atomic(mask_path, mask)
    note = BOX_MASKS if any(is_box for _, _, is_box in objects) else "polygon masks"
    return Sample(
        path=image,
        label=1,
        defect_type=names[largest[0]],
        split=split,
        mask_path=mask_path,
        mask_kind=note,
    )


def _masks_root(root: Path, cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        raise DataError(
            f"{root}: a YOLO category needs a cache folder for its masks (load it with "
            "anomaly.data.load_category, or pass cache_dir)"
        )
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "yolo-masks" / f"{root.name}-{key}"
