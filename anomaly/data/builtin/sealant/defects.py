"""The six dispensing errors: where and how big each one is, and the mask of what it changed.

A defect is drawn completely here (no randomness is left for render time) from its own random
stream, so adding one never shifts the part's draws. Its mask comes from the drawing itself:
the part is rendered with and without the defect (identical noise) and the mask is every pixel
that differs by more than ``MASK_LEVEL``, with narrow gaps closed (see :func:`defect_mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from anomaly.data.builtin.sealant.scene import BeadPath, Scene, on_plate
from anomaly.errors import DataError

#: Dispensing errors, in the order used for seeds and folder listings.
DEFECT_TYPES: tuple[str, ...] = ("gap", "thinning", "excess", "bubble", "smear", "offset")
#: A pixel belongs to the mask when a channel differs by more than this (0..1 scale, ~6/255).
MASK_LEVEL = 6.0 / 255.0


@dataclass(frozen=True)
class Defect:
    """One dispensing error, fully drawn (no randomness left at render time)."""

    kind: str
    start: float = 0.0  # arc length where the affected stretch starts, pixels
    length: float = 0.0  # affected stretch length, pixels
    # Kind-specific: thinning width factor, offset displacement (px), excess elongation (px),
    # bubble depth (x bead height), smear direction (radians).
    amount: float = 0.0
    centre: tuple[float, float] = (0.0, 0.0)  # point defects and smear start, image pixels
    radius: float = 0.0  # excess/bubble radius, smear width (px)
    extra: tuple[float, ...] = ()  # excess: (height factor,); smear: (opacity, wobble phase)


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def _pick_start(rng: np.random.Generator, path: BeadPath, length: float, margin: float) -> float:
    """Start of a stretch that fits on the path, ``margin`` away from an open path's ends."""
    total = float(path.arc[-1])
    if path.closed:
        return float(rng.uniform(0, total - length))
    return float(rng.uniform(margin, total - margin - length))


def draw_defect(
    rng: np.random.Generator, kind: str, severity: float, scene: Scene, path: BeadPath
) -> Defect:
    """Draw where and how big one defect is; ``severity`` 1 is obvious, 0 subtle."""
    r = scene.bead_radius
    k = scene.scale
    t = severity
    if kind == "gap":
        # Visible break from ~3 px (a hairline interruption) to ~28 px.
        gap = _lerp(3.0, 28.0, t) * k
        length = gap + 2 * r
        return Defect(kind, start=_pick_start(rng, path, length, 4 * r), length=length)
    if kind == "thinning":
        length = _lerp(5.0, 11.0, t) * r
        return Defect(
            kind,
            start=_pick_start(rng, path, length, 4 * r),
            length=length,
            amount=_lerp(0.72, 0.3, t),
        )
    if kind == "excess":
        idx = int(rng.integers(len(path.arc)))
        radius_factor = _lerp(1.35, 2.6, t)
        side = rng.uniform(-0.35, 0.35) * r
        centre = path.points[idx] + path.normals[idx] * side
        along = rng.uniform(0.0, 1.2) * r  # blobs are often elongated along the travel
        return Defect(
            kind,
            start=float(path.arc[idx]),
            centre=(float(centre[0]), float(centre[1])),
            radius=radius_factor * r,
            amount=along,
            extra=(float(rng.uniform(1.0, 1.35)),),  # blob height relative to the bead
        )
    if kind == "bubble":
        idx = int(rng.integers(len(path.arc)))
        side = rng.uniform(-0.3, 0.3) * r
        centre = path.points[idx] + path.normals[idx] * side
        return Defect(
            kind,
            start=float(path.arc[idx]),
            centre=(float(centre[0]), float(centre[1])),
            radius=_lerp(0.55, 1.05, t) * r,
            amount=_lerp(0.5, 1.6, t),  # crater depth relative to the bead height
        )
    if kind == "smear":
        return _smear(rng, t, scene, path)
    if kind == "offset":
        length = _lerp(6.0, 14.0, t) * r
        shift = _lerp(0.9, 3.0, t) * r * (1 if rng.random() < 0.5 else -1)
        return Defect(
            kind, start=_pick_start(rng, path, length, 4 * r), length=length, amount=shift
        )
    raise DataError(f"unknown sealant defect type {kind!r}; expected one of {DEFECT_TYPES}")


def _smear(rng: np.random.Generator, t: float, scene: Scene, path: BeadPath) -> Defect:
    """Sealant wiped onto the part surface next to, but not on, the bead."""
    r = scene.bead_radius
    k = scene.scale
    length = _lerp(8.0, 32.0, t) * k
    width = _lerp(2.0, 5.0, t) * k
    for _ in range(200):
        idx = int(rng.integers(len(path.arc)))
        side = 1 if rng.random() < 0.5 else -1
        dist = r + width + rng.uniform(4.0, 22.0) * k
        start = path.points[idx] + path.normals[idx] * side * dist
        direction = rng.uniform(0, 2 * math.pi)
        end = start + length * np.array([math.cos(direction), math.sin(direction)])
        stroke = np.linspace(start, end, 12)
        # Keep the whole stroke on the plate and clear of the bead and the mounting holes.
        gap = np.min(np.linalg.norm(stroke[:, None, :] - path.points[None, ::4], axis=2), axis=1)
        if np.min(gap) < r + width + 3 * k:
            continue
        if not on_plate(scene, stroke, margin=width + 6 * k):
            continue
        return Defect(
            "smear",
            centre=(float(start[0]), float(start[1])),
            radius=width,
            length=length,
            amount=direction,
            extra=(_lerp(0.55, 0.95, t), float(rng.uniform(0, 2 * math.pi))),
        )
    raise DataError("sealant smear: found no free spot on the part (size too small?)")


#: Gaps in a changed region up to this wide (pixels) are part of the defect region.
_MASK_BRIDGE = np.array(
    [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], bool
)


def defect_mask(changed: np.ndarray) -> np.ndarray:
    """Defect region from the pixels a defect changed: close narrow gaps, fill enclosed holes.

    Some pixels inside a defect keep their value by chance or by physics (the crest of a
    thinned bead still faces the camera and shades the same), which would split one defect
    into slivers. A closing with a 5 px disk bridges such gaps of up to ~4 px, and holes
    enclosed by the region are filled; nothing farther than that from a changed pixel is added.
    """
    mask = np.zeros_like(changed, dtype=bool)
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return mask
    # Worked on the changed pixels' box only (a large frame's defect is a small part of it),
    # widened so that the closing never reaches the box's edge: the same result, much faster.
    pad = 2 * _MASK_BRIDGE.shape[0]
    top, bottom = max(rows[0] - pad, 0), rows[-1] + pad + 1
    left, right = max(cols[0] - pad, 0), cols[-1] + pad + 1
    box = changed[top:bottom, left:right]
    closed = ndimage.binary_closing(box, structure=_MASK_BRIDGE)
    mask[top:bottom, left:right] = ndimage.binary_fill_holes(closed | box)
    return mask
