"""Built-in ``sealant`` category: procedural top-view photographs of dispensed sealant beads.

Inspection teams check dispensed sealant beads for printing errors, but their images are
private. This module draws a stand-in that a newcomer can run offline at once and that still
means something: a glossy bead dispensed along a path on a brushed/cast metal part, seen from
above under an imperfect light, with the dispensing errors a human inspector would catch at a
glance (gap, thinning, excess, bubble, smear, offset), from obvious to subtle, each with an
exact pixel mask.

How an image is made (all geometry scales with ``size``; numbers below are for 256 px):

* The scene is a height map (part plate with bevelled edges and mounting holes, plus the bead)
  and per-pixel materials (albedo, specular strength, shininess). The bead is a dome profile
  swept along a dense polyline with a radius per point, so a variable width, a gap, a neck or a
  displaced stretch is just a change of those points and radii, and the result stays smooth.
* Shading is Lambert + Blinn-Phong from normals of the height map, with a soft ambient
  occlusion at the bead foot, then a lighting gradient, vignetting, a slight optical blur and
  sensor noise (read + shot).
* Normal variation is deliberately wide (part position and rotation jitter, two path variants,
  bead width and wander, lighting, textures) so that a per-pixel comparison with a mean image
  does not solve the task; the defects are local and keep their look.

Masks come from the drawing itself: a defective image is rendered twice from the same seed,
with and without the defect (identical noise), and the mask is every pixel whose value differs
by more than ``MASK_LEVEL``, with gaps of a few pixels inside that region closed (see
:func:`defect_mask`). Outside the mask the saved image is the defect-free render, so it differs
from the good image of the same seed only inside the mask.

On disk the category is written once in the MVTec AD layout with our ``validation/`` and
``train/<defect>/`` extensions (see ``docs/architecture.md``) and is regenerated only when the
generator version, seed, size or counts change.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy import ndimage

from anomaly.errors import DataError

if TYPE_CHECKING:  # imported lazily at run time: layouts.py is a separate module.
    from anomaly.data.dataset import Dataset

logger = logging.getLogger(__name__)

#: Bump whenever the pixels produced for a given seed change; cached copies then regenerate.
SEALANT_VERSION = "1.0.0"
#: Dispensing errors, in the order used for seeds and folder listings.
DEFECT_TYPES: tuple[str, ...] = ("gap", "thinning", "excess", "bubble", "smear", "offset")
#: Name of the category folder under the data directory.
CATEGORY = "sealant"
#: A pixel belongs to the mask when a channel differs by more than this (0..1 scale, ~6/255).
MASK_LEVEL = 6.0 / 255.0
VERSION_FILE = "VERSION"

_REFERENCE_SIZE = 256.0
_PATH_STEP = 0.5  # path sampling, reference pixels: fine enough to place defects precisely
_SWEEP_STEP = 4  # the bead is swept over every 4th path point (2 px segments)
_PARALLEL_MIN_JOBS = 96  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class SealantCounts:
    """How many images each split holds (defect counts are per defect type)."""

    train_good: int = 200
    train_defect: int = 4
    val_good: int = 100
    val_defect: int = 4
    test_good: int = 150
    test_defect: int = 6


# --------------------------------------------------------------------------------------------
# Scene parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scene:
    """Every random draw of a defect-free image, so a defect render can reuse it exactly."""

    size: int
    scale: float  # pixels per reference pixel (size / 256)
    variant: str  # "loop" (closed path) or "u" (open path)
    centre: tuple[float, float]
    angle: float  # part rotation, radians
    part_half: tuple[float, float]
    part_radius: float
    path_half: tuple[float, float]
    path_radius: float
    curve_depth: float  # inward dip of the curved side, pixels
    bead_radius: float
    bead_aspect: float  # bead height / half width
    width_waves: tuple[tuple[float, float, float], ...]  # (amplitude, frequency, phase)
    wander_waves: tuple[tuple[float, float, float], ...]
    bead_color: tuple[float, float, float]
    part_color: tuple[float, float, float]
    background_color: tuple[float, float, float]
    light_tilt: float
    light_azimuth: float
    gain: float
    gradient: tuple[float, float]
    vignetting: float
    blur_sigma: float
    read_noise: float
    shot_noise: float
    texture_seed: int
    noise_seed: int


def _cycles(rng: np.random.Generator) -> float:
    """Whole cycles per path length, so the closed path's variations join without a step."""
    return float(rng.integers(1, 7))


def _scene(rng: np.random.Generator, size: int) -> _Scene:
    """Draw the normal (defect-free) variation of one part."""
    k = size / _REFERENCE_SIZE
    u = rng.uniform
    tint = u(-0.015, 0.015, 3)
    part_gain = u(0.88, 1.08)
    bead_grey = u(0.08, 0.14)
    bg_grey = u(0.13, 0.22)
    return _Scene(
        size=size,
        scale=k,
        variant="loop" if rng.random() < 0.6 else "u",
        centre=(size / 2 + u(-10, 10) * k, size / 2 + u(-10, 10) * k),
        angle=math.radians(u(-5.0, 5.0)),
        part_half=(u(108, 112) * k, u(100, 104) * k),
        part_radius=u(10, 16) * k,
        path_half=(u(84, 88) * k, u(74, 78) * k),
        path_radius=u(14, 22) * k,
        curve_depth=u(12, 18) * k,
        bead_radius=u(4.2, 5.2) * k,
        bead_aspect=u(0.55, 0.7),
        width_waves=tuple((u(0.01, 0.04), _cycles(rng), u(0, 2 * math.pi)) for _ in range(3)),
        wander_waves=tuple((u(0.2, 0.6) * k, _cycles(rng), u(0, 2 * math.pi)) for _ in range(3)),
        bead_color=(bead_grey, bead_grey * u(0.97, 1.03), bead_grey * u(1.0, 1.1)),
        part_color=tuple(float(np.clip(0.56 * part_gain + t, 0, 1)) for t in tint),
        background_color=(bg_grey, bg_grey * u(1.0, 1.08), bg_grey * u(1.02, 1.15)),
        light_tilt=math.radians(u(8, 28)),
        light_azimuth=u(0, 2 * math.pi),
        gain=u(0.85, 1.1),
        gradient=(u(-0.18, 0.18), u(-0.18, 0.18)),
        vignetting=u(0.08, 0.3),
        blur_sigma=u(0.45, 0.8) * k,
        read_noise=u(0.006, 0.014),
        shot_noise=u(0.008, 0.02),
        texture_seed=int(rng.integers(2**31)),
        noise_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------------
# Bead path
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Path:
    """Dense, evenly spaced polyline of the nominal bead centre line, in image pixels."""

    points: np.ndarray  # (N, 2) x, y
    normals: np.ndarray  # (N, 2) unit, to the left of the direction of travel
    arc: np.ndarray  # (N,) arc length from the start, pixels
    closed: bool


def _arc_points(cx: float, cy: float, r: float, a0: float, a1: float) -> np.ndarray:
    n = max(8, int(abs(a1 - a0) * r))
    a = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _path_outline(scene: _Scene) -> tuple[np.ndarray, bool]:
    """Path vertices in the part frame: straight runs, rounded corners and one curved side."""
    a, b = scene.path_half
    rc = scene.path_radius
    # Top side (y = -b): a smooth inward dip, as when a bead is routed around a boss.
    top_x = np.linspace(-(a - rc), a - rc, 80)
    top_y = -b + scene.curve_depth * 0.5 * (1 + np.cos(np.pi * top_x / (a - rc)))
    top = np.stack([top_x, top_y], axis=1)
    right = np.array([[a, -(b - rc)], [a, b - rc]])
    bottom = np.array([[a - rc, b], [-(a - rc), b]])
    left = np.array([[-a, b - rc], [-a, -(b - rc)]])
    # Corners, clockwise in image coordinates (y down).
    c_tr = _arc_points(a - rc, -(b - rc), rc, -np.pi / 2, 0)
    c_br = _arc_points(a - rc, b - rc, rc, 0, np.pi / 2)
    c_bl = _arc_points(-(a - rc), b - rc, rc, np.pi / 2, np.pi)
    c_tl = _arc_points(-(a - rc), -(b - rc), rc, np.pi, 1.5 * np.pi)
    if scene.variant == "loop":
        pts = np.concatenate([top, c_tr, right, c_br, bottom, c_bl, left, c_tl, top[:1]])
        return pts, True
    # U: starts and ends part way down the sides, open at the top.
    start = np.array([[a, -(b - rc) * 0.55]])
    end = np.array([[-a, -(b - rc) * 0.55]])
    pts = np.concatenate([start, right[1:], c_br, bottom, c_bl, left[:1], end])
    return pts, False


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced points (and their arc length) along a polyline."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    points = points[keep]
    arc = np.concatenate([[0.0], np.cumsum(seg[seg > 1e-9])])
    s = np.arange(0.0, arc[-1], step)
    return np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], 1), s


def _normals(points: np.ndarray, closed: bool) -> np.ndarray:
    if closed:
        tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
    else:
        tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)


def _to_image(scene: _Scene, points: np.ndarray) -> np.ndarray:
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.asarray(scene.centre)


def _waves(s: np.ndarray, total: float, waves: Iterable[tuple[float, float, float]]) -> np.ndarray:
    out = np.zeros_like(s)
    for amplitude, freq, phase in waves:
        out += amplitude * np.sin(2 * np.pi * freq * s / total + phase)
    return out


def _bead_path(scene: _Scene) -> _Path:
    """Nominal bead centre line in image coordinates, with the robot's small lateral wander."""
    outline, closed = _path_outline(scene)
    pts, arc = _resample(_to_image(scene, outline), _PATH_STEP * scene.scale)
    normals = _normals(pts, closed)
    wander = _waves(arc, float(arc[-1]), scene.wander_waves)
    pts = pts + normals * wander[:, None]
    return _Path(points=pts, normals=normals, arc=arc, closed=closed)


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Defect:
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


def _pick_start(rng: np.random.Generator, path: _Path, length: float, margin: float) -> float:
    """Start of a stretch that fits on the path, ``margin`` away from an open path's ends."""
    total = float(path.arc[-1])
    if path.closed:
        return float(rng.uniform(0, total - length))
    return float(rng.uniform(margin, total - margin - length))


def _defect(
    rng: np.random.Generator, kind: str, severity: float, scene: _Scene, path: _Path
) -> _Defect:
    """Draw where and how big one defect is; ``severity`` 1 is obvious, 0 subtle."""
    r = scene.bead_radius
    k = scene.scale
    t = severity
    if kind == "gap":
        # Visible break from ~3 px (a hairline interruption) to ~28 px.
        gap = _lerp(3.0, 28.0, t) * k
        length = gap + 2 * r
        return _Defect(kind, start=_pick_start(rng, path, length, 4 * r), length=length)
    if kind == "thinning":
        length = _lerp(5.0, 11.0, t) * r
        return _Defect(
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
        return _Defect(
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
        return _Defect(
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
        return _Defect(
            kind, start=_pick_start(rng, path, length, 4 * r), length=length, amount=shift
        )
    raise DataError(f"unknown sealant defect type {kind!r}; expected one of {DEFECT_TYPES}")


def _smear(rng: np.random.Generator, t: float, scene: _Scene, path: _Path) -> _Defect:
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
        if not _on_plate(scene, stroke, margin=width + 6 * k):
            continue
        return _Defect(
            "smear",
            centre=(float(start[0]), float(start[1])),
            radius=width,
            length=length,
            amount=direction,
            extra=(_lerp(0.55, 0.95, t), float(rng.uniform(0, 2 * math.pi))),
        )
    raise DataError("sealant smear: found no free spot on the part (size too small?)")


def _part_frame(scene: _Scene, xy: np.ndarray) -> np.ndarray:
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    rel = xy - np.asarray(scene.centre)
    return np.stack([rel[..., 0] * c + rel[..., 1] * s, -rel[..., 0] * s + rel[..., 1] * c], -1)


def _part_grid(scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Part-frame coordinates (u, v) of every pixel centre, float32."""
    axis = np.arange(scene.size, dtype=np.float32)
    x = axis[None, :] - np.float32(scene.centre[0])
    y = axis[:, None] - np.float32(scene.centre[1])
    c, s = np.float32(math.cos(scene.angle)), np.float32(math.sin(scene.angle))
    return x * c + y * s, -x * s + y * c


def _on_plate(scene: _Scene, xy: np.ndarray, margin: float) -> bool:
    uv = _part_frame(scene, xy)
    a, b = scene.part_half
    if np.any(np.abs(uv[:, 0]) > a - margin) or np.any(np.abs(uv[:, 1]) > b - margin):
        return False
    holes = _holes(scene)
    d = np.linalg.norm(uv[:, None, :] - holes[None, :, :2], axis=2)
    return bool(np.all(d > holes[None, :, 2] + margin))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _holes(scene: _Scene) -> np.ndarray:
    """Mounting holes (u, v, radius) in the part frame, between path and plate edge."""
    a, b = scene.part_half
    k = scene.scale
    inset = 11.0 * k
    radius = 5.0 * k
    return np.array(
        [[sx * (a - inset), sy * (b - inset), radius] for sx in (-1, 1) for sy in (-1, 1)]
    )


def _sweep(
    height: np.ndarray,
    points: np.ndarray,
    radii: np.ndarray,
    peaks: np.ndarray,
    exponent: float = 0.75,
) -> None:
    """Raise ``height`` to a dome profile swept along the polyline ``points``.

    Each segment is a capsule whose radius and peak height vary linearly between its ends; the
    profile at distance ``d`` from the segment is ``peak * (1 - (d / r)^2)^exponent``. Sweeping
    segments instead of stamping discs gives a smooth tube without ripples from sparse points,
    and a segment with a zero-radius end is skipped, so a cut path ends in a rounded cap.
    """
    if len(points) < 2:
        return
    a, b = points[:-1], points[1:]
    ra, rb, pa, pb = radii[:-1], radii[1:], peaks[:-1], peaks[1:]
    keep = (ra > 0.05) & (rb > 0.05)
    if not keep.any():
        return
    a, b, ra, rb, pa, pb = a[keep], b[keep], ra[keep], rb[keep], pa[keep], pb[keep]
    reach = math.ceil(float(max(ra.max(), rb.max()))) + 1
    lo = np.floor(np.minimum(a, b)).astype(np.int64) - reach
    extent = int(np.ceil(np.abs(b - a).max())) + 2 * reach + 2
    off = np.arange(extent)
    ox, oy = np.meshgrid(off, off)
    ix = lo[:, 0:1] + ox.ravel()[None, :]
    iy = lo[:, 1:2] + oy.ravel()[None, :]
    d = b - a
    length2 = np.maximum((d * d).sum(axis=1), 1e-12)[:, None]
    t = ((ix - a[:, 0:1]) * d[:, 0:1] + (iy - a[:, 1:2]) * d[:, 1:2]) / length2
    t = np.clip(t, 0.0, 1.0)
    dist2 = (ix - a[:, 0:1] - t * d[:, 0:1]) ** 2 + (iy - a[:, 1:2] - t * d[:, 1:2]) ** 2
    r = ra[:, None] + t * (rb - ra)[:, None]
    inside = 1.0 - dist2 / (r * r)
    h, w = height.shape
    valid = (inside > 0) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    peak = pa[:, None] + t * (pb - pa)[:, None]
    values = (peak[valid] * np.power(inside[valid], exponent)).astype(height.dtype)
    np.maximum.at(height.reshape(-1), (iy * w + ix)[valid], values)


def _smooth_window(s: np.ndarray, start: float, length: float, ramp: float) -> np.ndarray:
    """1 inside [start, start + length], falling smoothly to 0 over ``ramp`` at both ends."""
    up = np.clip((s - start) / max(ramp, 1e-6), 0, 1)
    down = np.clip((start + length - s) / max(ramp, 1e-6), 0, 1)
    w = np.minimum(up, down)
    return w * w * (3 - 2 * w)


def _bead_line(
    scene: _Scene, path: _Path, defect: _Defect | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points, radii and peak heights of the bead, with a path defect applied."""
    r0 = scene.bead_radius
    s = path.arc
    total = float(s[-1])
    radii = r0 * (1 + _waves(s, total, scene.width_waves))
    points = path.points
    if not path.closed:
        # The dispenser ramps flow up at the start and down at the end: rounded, tapered ends.
        ramp = np.clip(np.minimum(s, total - s) / (2 * r0), 0, 1)
        radii = radii * (0.6 + 0.4 * np.sqrt(ramp))
    if defect is not None:
        if defect.kind == "gap":
            inside = (s >= defect.start) & (s <= defect.start + defect.length)
            # Flow stops and restarts: the bead necks slightly before breaking.
            taper = 1 - 0.35 * _smooth_window(s, defect.start - r0, defect.length + 2 * r0, r0)
            radii = np.where(inside, 0.0, radii * taper)
        elif defect.kind == "thinning":
            window = _smooth_window(s, defect.start, defect.length, defect.length * 0.4)
            radii = radii * (1 - (1 - defect.amount) * window)
        elif defect.kind == "offset":
            window = _smooth_window(s, defect.start, defect.length, defect.length * 0.3)
            points = points + path.normals * (defect.amount * window)[:, None]
    peaks = radii * scene.bead_aspect
    return points, radii, peaks


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with correlation length about ``sigma`` pixels."""
    if sigma >= 3:
        # Low-frequency noise is drawn coarse and upsampled: much cheaper than a wide blur.
        coarse = max(4, math.ceil(size / sigma))
        noise = rng.standard_normal((coarse, coarse), dtype=np.float32)
        smooth = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        noise = rng.standard_normal((size, size), dtype=np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (smooth - smooth.mean()) / (smooth.std() + 1e-6)


def _materials(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Part height map, albedo, specular strength and shininess without the bead."""
    size, k = scene.size, scene.scale
    rng = np.random.default_rng(scene.texture_seed)
    u, v = _part_grid(scene)

    # Signed distance to the rounded-rectangle plate (negative inside), then bevelled height.
    a, b = scene.part_half
    rc = scene.part_radius
    qx, qy = np.abs(u) - (a - rc), np.abs(v) - (b - rc)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    sd = outside + np.minimum(np.maximum(qx, qy), 0) - rc
    bevel = 2.5 * k
    plate = np.clip(-sd / bevel, 0, 1)
    plate = plate * plate * (3 - 2 * plate)
    # The four holes sit symmetrically about the part centre: one distance covers them all.
    hu, hv, hr = _holes(scene)[-1].tolist()
    dh = np.hypot(np.abs(u) - hu, np.abs(v) - hv) - hr
    hole_depth = np.clip(-dh / (1.5 * k), 0, 1)
    hole_depth = hole_depth * hole_depth * (3 - 2 * hole_depth)
    height = 6.0 * k * plate * (1 - hole_depth)

    # Brushed finish: fine noise stretched along the part's u axis, plus cast mottling.
    # Drawn axis-aligned on a padded canvas (box blurs are cheap), then turned with the part.
    pad = size // 8
    canvas = size + 2 * pad
    brushed = rng.standard_normal((canvas, canvas), dtype=np.float32)
    streak = max(3, int(30 * k)) | 1
    brushed = cv2.blur(cv2.blur(brushed, (streak, 1)), (streak, 1))
    brushed = cv2.GaussianBlur(brushed, (0, 0), sigmaX=0.1, sigmaY=0.6 * k)
    brushed /= brushed.std() + 1e-6
    rot = cv2.getRotationMatrix2D((canvas / 2, canvas / 2), -math.degrees(scene.angle), 1.0)
    rot[:, 2] -= pad
    brushed = cv2.warpAffine(brushed, rot, (size, size), borderMode=cv2.BORDER_REFLECT)
    mottling = _texture(rng, size, 24 * k)
    grain = _texture(rng, size, 0.7 * k)
    metal = 1 + 0.035 * brushed + 0.05 * mottling + 0.012 * grain
    back = 1 + 0.09 * _texture(rng, size, 6 * k) + 0.05 * grain

    part_rgb = np.asarray(scene.part_color, np.float32)
    back_rgb = np.asarray(scene.background_color, np.float32)
    on_part = plate[..., None]
    albedo = on_part * part_rgb * metal[..., None] + (1 - on_part) * back_rgb * back[..., None]
    hole = (hole_depth * plate)[..., None]
    albedo = albedo * (1 - 0.8 * hole)
    specular = 0.1 * plate * (1 - hole_depth) + 0.03
    shininess = 6.0 * plate + 3.0
    return height, albedo, specular, shininess


def _light_field(scene: _Scene) -> np.ndarray:
    """Illumination over the frame: global gain, a linear gradient and lens vignetting."""
    axis = (np.arange(scene.size, dtype=np.float32) + 0.5) / scene.size - 0.5
    xn, yn = axis[None, :], axis[:, None]
    field = scene.gain * (1 + 2 * scene.gradient[0] * xn + 2 * scene.gradient[1] * yn)
    return (field * (1 - 2 * scene.vignetting * (xn * xn + yn * yn))).astype(np.float32)


def _shade(
    scene: _Scene,
    height: np.ndarray,
    albedo: np.ndarray,
    specular: np.ndarray,
    shininess: np.ndarray,
) -> np.ndarray:
    """Lambert + Blinn-Phong shading of the height map under the scene's light, RGB in 0..1."""
    gy, gx = np.gradient(height)
    inv_norm = 1 / np.sqrt(gx * gx + gy * gy + 1)
    tilt, az = scene.light_tilt, scene.light_azimuth
    light = [math.sin(tilt) * math.cos(az), math.sin(tilt) * math.sin(az), math.cos(tilt)]
    half = np.array([light[0], light[1], light[2] + 1.0])
    half = (half / np.linalg.norm(half)).tolist()
    # n = (-gx, -gy, 1) / |.|, so n . l = (-gx lx - gy ly + lz) / |.|
    diffuse = np.clip((light[2] - gx * light[0] - gy * light[1]) * inv_norm, 0, None)
    n_dot_h = np.clip((half[2] - gx * half[0] - gy * half[1]) * inv_norm, 1e-6, None)
    spec = specular * np.exp(shininess * np.log(n_dot_h))
    # Ambient occlusion: pixels lower than their neighbourhood (the bead's foot) get less light.
    k = scene.scale
    around = cv2.GaussianBlur(height, (0, 0), 3.0 * k, borderType=cv2.BORDER_REFLECT)
    occlusion = 1 - 0.5 * np.clip((around - height) / (3.0 * k), 0, 1)
    field = _light_field(scene)
    image = albedo * ((0.3 + 0.75 * diffuse) * occlusion * field)[..., None]
    image += (spec * field)[..., None]
    return cv2.GaussianBlur(image, (0, 0), scene.blur_sigma)


def _render(
    scene: _Scene,
    path: _Path,
    materials: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    defect: _Defect | None,
) -> np.ndarray:
    """Noise-free image (float32 RGB, may exceed 0..1 before the sensor clips it)."""
    base_height, albedo, specular, shininess = materials
    size, k = scene.size, scene.scale
    bead = np.zeros((size, size), np.float32)
    points, radii, peaks = _bead_line(scene, path, defect)
    pick = np.arange(0, len(points), _SWEEP_STEP)
    if path.closed:
        pick = np.append(pick, 0)  # close the loop without a seam
    _sweep(bead, points[pick], radii[pick], peaks[pick])
    bead_rgb = np.asarray(scene.bead_color, np.float32)
    cavity = np.zeros_like(bead)
    film = np.zeros_like(bead)
    film_alpha = 0.0

    if defect is not None and defect.kind == "excess":
        # A blob: a dome wider and taller than the bead, often drawn out along the travel.
        direction = path.normals[int(np.searchsorted(path.arc, defect.start))]
        along = np.array([-direction[1], direction[0]])
        c = np.asarray(defect.centre)
        centres = np.stack([c - along * defect.amount / 2, c + along * defect.amount / 2])
        radii_b = np.full(2, defect.radius)
        peaks_b = radii_b * scene.bead_aspect * defect.extra[0]
        _sweep(bead, centres, radii_b, peaks_b, exponent=0.6)
    elif defect is not None and defect.kind == "bubble":
        # A burst bubble: a crater with a slight lip, dark inside where sealant is left; deep
        # ones go through and show the bright metal below.
        axis = np.arange(size, dtype=np.float32)
        dx = (axis[None, :] - defect.centre[0]) / defect.radius
        dy = (axis[:, None] - defect.centre[1]) / defect.radius
        d = np.sqrt(dx * dx + dy * dy)
        bowl = np.sqrt(np.clip(1 - d * d, 0, None))
        peak_here = scene.bead_aspect * scene.bead_radius
        on_bead = np.clip(bead / (0.5 * peak_here), 0, 1)
        lip = 0.2 * peak_here * np.exp(-(((d - 1.0) / 0.3) ** 2)) * on_bead
        bead = np.clip(bead - defect.amount * peak_here * bowl, 0, None) + lip
        cavity = bowl * np.clip(bead / (0.3 * peak_here), 0, 1)
    elif defect is not None and defect.kind == "smear":
        # A thin glossy film wiped onto the part: low, partly transparent, irregular width.
        c = np.asarray(defect.centre)
        direction = np.array([math.cos(defect.amount), math.sin(defect.amount)])
        steps = np.arange(0, defect.length, 0.5 * k)
        normal = np.array([-direction[1], direction[0]])
        phase = defect.extra[1]
        wobble = np.sin(steps / max(defect.length, 1e-6) * 5 + phase) * defect.radius * 0.3
        centres = c + steps[:, None] * direction + wobble[:, None] * normal
        # Wide where the nozzle touched, tapering out along the wipe.
        taper = 1 - 0.6 * steps / max(defect.length, 1e-6)
        radii_s = defect.radius * taper * (1 + 0.25 * np.sin(steps * 0.7 / k + phase))
        _sweep(film, centres, radii_s, np.full(len(steps), 0.9 * k), exponent=0.5)
        film_alpha = defect.extra[0]

    # Bead coverage blends the part's albedo into the sealant's (soft edge ~1 px).
    coverage = np.clip(bead / (0.35 * scene.bead_aspect * scene.bead_radius), 0, 1)[..., None]
    albedo = albedo * (1 - coverage) + bead_rgb * coverage
    if film_alpha > 0:
        film_cov = film_alpha * np.clip(film / (0.4 * k), 0, 1)[..., None]
        albedo = albedo * (1 - film_cov) + bead_rgb * film_cov
    albedo = albedo * (1 - 0.75 * cavity)[..., None]
    on_film = film_alpha * np.clip(film / (0.4 * k), 0, 1)
    gloss = np.clip(coverage[..., 0] + on_film, 0, 1)
    # A smeared film is thinner and duller than the bead: a sheen, not a mirror-bright top.
    shine = np.clip(1.1 * coverage[..., 0] + 0.35 * on_film, 0, 1.1)
    specular = specular * (1 - gloss) + shine * (1 - 0.8 * cavity)
    shininess = shininess * (1 - gloss) + 70.0 * gloss
    height = base_height + bead + film
    return _shade(scene, height, albedo, specular, shininess)


def _sensor(scene: _Scene, image: np.ndarray) -> np.ndarray:
    """Add read and shot noise (the same draw for a clean and a defect render) and clip."""
    rng = np.random.default_rng(scene.noise_seed)
    z = rng.standard_normal(image.shape, dtype=np.float32)
    sigma = scene.read_noise + scene.shot_noise * np.sqrt(np.clip(image, 0, None))
    return np.clip(image + sigma * z, 0, 1)


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
    closed = ndimage.binary_closing(changed, structure=_MASK_BRIDGE)
    return ndimage.binary_fill_holes(closed | changed)


def render_part(
    rng_seed: int, size: int = 256, defect: str | None = None, severity: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one top-view photograph of a sealant bead and its defect mask.

    ``rng_seed`` fixes everything about the part; with ``defect`` set, the same seed gives the
    same part with that defect added, and the image differs from the defect-free one only
    inside the returned mask (see :func:`defect_mask`). ``severity`` in [0, 1] (1 = obvious,
    0 = subtle) sets the defect's size; ``None`` draws it from the seed. Returns an RGB
    ``uint8`` image ``(size, size, 3)`` and a ``bool`` mask ``(size, size)`` (all ``False``
    for a good part).
    """
    if size < 64:
        raise DataError(f"sealant image size {size} is too small; use at least 64 pixels")
    if defect is not None and defect not in DEFECT_TYPES:
        raise DataError(f"unknown sealant defect type {defect!r}; expected one of {DEFECT_TYPES}")
    if severity is not None and not 0.0 <= severity <= 1.0:
        raise DataError(f"sealant severity {severity} is outside [0, 1]")
    scene = _scene(np.random.default_rng(rng_seed), size)
    path = _bead_path(scene)
    materials = _materials(scene)
    clean = _sensor(scene, _render(scene, path, materials, None))
    if defect is None:
        return _to_uint8(clean), np.zeros((size, size), bool)
    # Defect draws come from their own stream so they never shift the part's own draws.
    drng = np.random.default_rng([rng_seed, 1 + DEFECT_TYPES.index(defect)])
    level = float(drng.uniform(0, 1)) if severity is None else float(severity)
    spec = _defect(drng, defect, level, scene, path)
    dirty = _sensor(scene, _render(scene, path, materials, spec))
    mask = defect_mask(np.abs(dirty - clean).max(axis=2) > MASK_LEVEL)
    # Changes outside the mask (below MASK_LEVEL) are dropped, so the image differs from the
    # defect-free one only inside the mask.
    image = np.where(mask[..., None], dirty, clean)
    return _to_uint8(image), mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    folder: str  # "train" | "validation" | "test"
    stem: str
    defect: str | None
    severity: float | None
    seed: int


_SPLIT_PREFIX = {"train": "train", "validation": "val", "test": "test"}


def image_seed(seed: int, split: str, defect: str, index: int) -> int:
    """Per-image seed from (global seed, split, defect type, index), independent of order."""
    tag = zlib.crc32(f"{split}/{defect}".encode())
    state = np.random.SeedSequence([seed, tag, index]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def _jobs(seed: int, counts: SealantCounts) -> list[_Job]:
    plan = {
        "train": (counts.train_good, counts.train_defect),
        "validation": (counts.val_good, counts.val_defect),
        "test": (counts.test_good, counts.test_defect),
    }
    jobs = []
    for folder, (n_good, n_defect) in plan.items():
        prefix = _SPLIT_PREFIX[folder]
        for i in range(n_good):
            jobs.append(
                _Job(
                    folder,
                    f"{prefix}_good_{i:03d}",
                    None,
                    None,
                    image_seed(seed, folder, "good", i),
                )
            )
        for kind in DEFECT_TYPES:
            for i in range(n_defect):
                # Severities spread evenly from obvious to subtle within each split and type.
                severity = 1.0 - (i + 0.5) / n_defect
                jobs.append(
                    _Job(
                        folder,
                        f"{prefix}_{kind}_{i:03d}",
                        kind,
                        severity,
                        image_seed(seed, folder, kind, i),
                    )
                )
    return jobs


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise DataError(f"{path}: could not encode PNG")
    # Bytes rather than cv2.imwrite, which mangles non-ASCII paths on some platforms.
    path.write_bytes(encoded.tobytes())


def _run_job(root: str, size: int, job: _Job) -> None:
    image, mask = render_part(job.seed, size, job.defect, job.severity)
    base = Path(root)
    kind = job.defect or "good"
    _write_png(base / job.folder / kind / f"{job.stem}.png", image)
    if job.defect is not None:
        _write_png(
            base / "ground_truth" / kind / f"{job.stem}_mask.png", mask.astype(np.uint8) * 255
        )


def _run_chunk(root: str, size: int, jobs: list[_Job]) -> int:
    for job in jobs:
        _run_job(root, size, job)
    return len(jobs)


def _version_record(seed: int, size: int, counts: SealantCounts) -> dict[str, Any]:
    return {
        "generator": "anomaly.data.builtin.sealant",
        "version": SEALANT_VERSION,
        "seed": seed,
        "size": size,
        "counts": asdict(counts),
        "defect_types": list(DEFECT_TYPES),
    }


def _read_version(category_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((category_dir / VERSION_FILE).read_text())
    except (OSError, ValueError):
        return None


def generate_sealant(
    out_dir: Path,
    *,
    seed: int = 0,
    size: int = 256,
    counts: SealantCounts | None = None,
    workers: int = 1,
) -> Path:
    """Generate the category into ``out_dir/sealant`` (replacing it) and return that folder.

    Images go to a temporary folder next to the target, which is then renamed into place, so a
    reader never sees a half-written category and an interrupted run leaves the old one intact.
    ``workers`` > 1 renders in that many spawned processes (when there are at least
    ``_PARALLEL_MIN_JOBS`` images). The default is 1: on 2 free cores two workers halve the
    ~20 s of a full set, on a busy machine they gain nothing, and spawned workers re-import
    the caller's ``__main__``, which fails in scripts without an ``if __name__ == "__main__"``
    guard. (fork is not used: a forked child can hang in OpenCV's thread pool.)
    """
    counts = counts or SealantCounts()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / CATEGORY
    jobs = _jobs(seed, counts)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}-tmp-", dir=out_dir))
    try:
        # Only folders that get images: the loader warns about empty class folders.
        for job in jobs:
            (tmp / job.folder / (job.defect or "good")).mkdir(parents=True, exist_ok=True)
            if job.defect is not None:
                (tmp / "ground_truth" / job.defect).mkdir(parents=True, exist_ok=True)
        _render_all(str(tmp), size, jobs, workers)
        record = _version_record(seed, size, counts)
        (tmp / VERSION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "generated %d sealant images (v%s, seed %d, %d px) in %s in %.1f s",
        len(jobs),
        SEALANT_VERSION,
        seed,
        size,
        target,
        time.perf_counter() - started,
    )
    return target


def _worker_init() -> None:
    # One OpenCV thread per worker: the workers already occupy the cores.
    cv2.setNumThreads(1)


def _render_all(root: str, size: int, jobs: list[_Job], workers: int) -> None:
    if workers <= 1 or len(jobs) < _PARALLEL_MIN_JOBS:
        _run_chunk(root, size, jobs)
        return
    # spawn, not fork: a forked child can hang in OpenCV's thread pool once the parent has used
    # it. Interleaved chunks balance the cheap good and the twice-rendered defect images.
    chunks = [jobs[i::workers] for i in range(workers)]
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        for future in [pool.submit(_run_chunk, root, size, chunk) for chunk in chunks]:
            future.result()


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first, then removed."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}-old-", dir=target.parent))
        os.replace(target, old / CATEGORY)
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process finished first (the target is a non-empty folder again): keep theirs.
        if not target.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_sealant(
    data_dir: Path,
    *,
    seed: int = 0,
    size: int = 256,
    counts: SealantCounts | None = None,
    workers: int = 1,
) -> Path:
    """Return ``data_dir/sealant``, generating it first if missing or from another version."""
    counts = counts or SealantCounts()
    target = Path(data_dir) / CATEGORY
    found = _read_version(target)
    expected = _version_record(seed, size, counts)
    if found == expected:
        logger.debug("reusing sealant category at %s", target)
        return target
    if found is None and target.exists():
        logger.info("%s has no readable %s; regenerating", target, VERSION_FILE)
    elif found is not None:
        logger.info("%s was generated by %s; regenerating", target, found)
    return generate_sealant(data_dir, seed=seed, size=size, counts=counts, workers=workers)


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
