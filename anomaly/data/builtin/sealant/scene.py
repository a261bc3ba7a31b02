"""One part's scene: its random normal variation, the plate and holes, and the bead's path.

Every random draw of a defect-free image happens in :func:`draw_scene` (the square ``sealant``
part) or :func:`draw_line_scene` (the long ``sealant_line`` part), so a defect render of the
same seed reuses the part exactly. All geometry scales with the frame: numbers in the code are
reference pixels, 256 of them across the frame's short side. Normal variation is deliberately
wide (part position and rotation jitter, two path variants, bead width and wander, lighting,
textures) so that a per-pixel comparison with a mean image does not solve the task.

Both parts share everything after the draw: the plate and its four mounting holes, the path
(resampled, with normals and the robot's wander), and the whole of rendering and defects. The
square part's bead runs around the plate (a closed loop or a U); the long part's runs along it
(one straight run, or a hairpin: two runs joined by a turn at one end).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly.errors import DataError

_REFERENCE_SIZE = 256.0
_PATH_STEP = 0.5  # path sampling, reference pixels: fine enough to place defects precisely


@dataclass(frozen=True)
class Scene:
    """Every random draw of a defect-free image, so a defect render can reuse it exactly."""

    width: int  # frame size, pixels
    height: int
    scale: float  # pixels per reference pixel (short side / 256)
    # Square part: "loop" (closed path) or "u" (open). Long part: "run" or "hairpin" (open).
    variant: str
    centre: tuple[float, float]
    angle: float  # part rotation, radians
    part_half: tuple[float, float]
    part_radius: float
    path_half: tuple[float, float]  # half extent of the path's outline, along the part's axes
    path_radius: float  # corner radius ("loop", "u"), radius of the hairpin's turn
    curve_depth: float  # inward dip of the curved side, or the long runs' bow, pixels
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


def _long_cycles(rng: np.random.Generator) -> float:
    """Cycles per path length of the long part: its path is several times the square's."""
    return float(rng.integers(2, 11))


def _palette(rng: np.random.Generator) -> tuple[np.ndarray, float, float, float]:
    """A part's first draws: colour tint, part gain, bead grey and background grey."""
    u = rng.uniform
    return u(-0.015, 0.015, 3), u(0.88, 1.08), u(0.08, 0.14), u(0.13, 0.22)


def _look(
    rng: np.random.Generator,
    k: float,
    palette: tuple[np.ndarray, float, float, float],
    blur: tuple[float, float],
) -> dict[str, Any]:
    """A part's last draws, shared by both parts: colours, light, optics and sensor.

    Returned as the :class:`Scene` fields they fill; drawn in one fixed order (a dict's values
    are evaluated in order), which every seed's images depend on. ``blur`` is the range of the
    optical blur in reference pixels.
    """
    tint, part_gain, bead_grey, bg_grey = palette
    u = rng.uniform
    return {
        "bead_color": (bead_grey, bead_grey * u(0.97, 1.03), bead_grey * u(1.0, 1.1)),
        "part_color": tuple(float(np.clip(0.56 * part_gain + t, 0, 1)) for t in tint),
        "background_color": (bg_grey, bg_grey * u(1.0, 1.08), bg_grey * u(1.02, 1.15)),
        "light_tilt": math.radians(u(8, 28)),
        "light_azimuth": u(0, 2 * math.pi),
        "gain": u(0.85, 1.1),
        "gradient": (u(-0.18, 0.18), u(-0.18, 0.18)),
        "vignetting": u(0.08, 0.3),
        "blur_sigma": u(*blur) * k,
        "read_noise": u(0.006, 0.014),
        "shot_noise": u(0.008, 0.02),
        "texture_seed": int(rng.integers(2**31)),
        "noise_seed": int(rng.integers(2**31)),
    }


def draw_scene(rng: np.random.Generator, size: int) -> Scene:
    """Draw the normal (defect-free) variation of one square part (the ``sealant`` category)."""
    k = size / _REFERENCE_SIZE
    u = rng.uniform
    palette = _palette(rng)
    return Scene(
        width=size,
        height=size,
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
        **_look(rng, k, palette, blur=(0.45, 0.8)),
    )


def draw_line_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """Draw the normal variation of one long part (the ``sealant_line`` category).

    A long plate fills the frame's width (2048 x 640 is 819 x 256 reference pixels: the square
    part's width and bead at 2.5 times the resolution, about 3.5 times as long). The
    bead is one straight run along the plate or a hairpin of two runs, with a gentle bow. The
    part lies either way round (turned by 180 degrees), so the hairpin's turn and the bow's
    side vary, and its small tilt (at most 1.2 degrees) keeps its ends inside the frame.
    """
    if width < height:
        raise DataError(f"sealant_line frame {width}x{height}: the width must be the long side")
    k = height / _REFERENCE_SIZE
    long_half = width / 2 / k  # half the frame's width, reference pixels
    u = rng.uniform
    palette = _palette(rng)
    variant = "run" if rng.random() < 0.5 else "hairpin"
    part_a = long_half - u(16, 20)
    path_a = part_a - u(30, 40)  # the runs stop short of the plate's ends, past the holes
    # The hairpin's runs sit between the plate's axis and the holes; a single run on the axis.
    path_b = u(48, 60) if variant == "hairpin" else 0.0
    return Scene(
        width=width,
        height=height,
        scale=k,
        variant=variant,
        centre=(width / 2 + u(-10, 10) * k, height / 2 + u(-8, 8) * k),
        angle=math.radians(u(-1.2, 1.2)) + (math.pi if rng.random() < 0.5 else 0.0),
        part_half=(part_a * k, u(100, 104) * k),
        part_radius=u(10, 16) * k,
        path_half=(path_a * k, path_b * k),
        path_radius=path_b * k,
        curve_depth=u(4, 14) * k,
        bead_radius=u(4.2, 5.2) * k,
        bead_aspect=u(0.55, 0.7),
        width_waves=tuple((u(0.01, 0.04), _long_cycles(rng), u(0, 2 * math.pi)) for _ in range(3)),
        wander_waves=tuple(
            (u(0.3, 0.8) * k, _long_cycles(rng), u(0, 2 * math.pi)) for _ in range(3)
        ),
        # A sharp high-resolution camera: 0.6-1 px of blur, half the square part's optics.
        **_look(rng, k, palette, blur=(0.25, 0.4)),
    )


@dataclass(frozen=True)
class BeadPath:
    """Dense, evenly spaced polyline of the nominal bead centre line, in image pixels."""

    points: np.ndarray  # (N, 2) x, y
    normals: np.ndarray  # (N, 2) unit, to the left of the direction of travel
    arc: np.ndarray  # (N,) arc length from the start, pixels
    closed: bool


def _arc_points(cx: float, cy: float, r: float, a0: float, a1: float) -> np.ndarray:
    n = max(8, int(abs(a1 - a0) * r))
    a = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _bow(t: np.ndarray, depth: float) -> np.ndarray:
    """A smooth bump of ``depth`` at ``t`` = 0, flat at ``t`` = +-1: a bead routed round a boss."""
    return depth * 0.5 * (1 + np.cos(np.pi * t))


def _line_outline(scene: Scene) -> tuple[np.ndarray, bool]:
    """Long part's path in the part frame: one bowed run, or a hairpin (two runs, one turn)."""
    a, b = scene.path_half
    t = np.linspace(-1.0, 1.0, 400)
    if scene.variant == "run":
        # Centred on the axis: bowed by half the depth to either side.
        return np.stack([a * t, _bow(t, scene.curve_depth) - scene.curve_depth / 2], 1), False
    # Hairpin: the top run (bowed inwards) out to the turn, a half circle, the bottom run back.
    rc = scene.path_radius
    x = -a + (t + 1) * (a - rc / 2)  # from -a to where the turn starts, a - rc
    top = np.stack([x, -b + _bow(t, scene.curve_depth)], axis=1)
    turn = _arc_points(a - rc, 0.0, rc, -np.pi / 2, np.pi / 2)
    bottom = np.stack([x[::-1], np.full_like(x, b)], axis=1)
    return np.concatenate([top, turn, bottom]), False


def _path_outline(scene: Scene) -> tuple[np.ndarray, bool]:
    """Path vertices in the part frame: straight runs, rounded corners and one curved side."""
    if scene.variant in ("run", "hairpin"):
        return _line_outline(scene)
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


def _to_image(scene: Scene, points: np.ndarray) -> np.ndarray:
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.asarray(scene.centre)


def wave_sum(
    s: np.ndarray, total: float, waves: Iterable[tuple[float, float, float]]
) -> np.ndarray:
    """Sum of ``(amplitude, cycles, phase)`` sines along arc length ``s`` of a ``total`` path.

    The bead's width and lateral wander are such sums; whole cycles per path length make a
    closed path's variation join at its start without a step.
    """
    out = np.zeros_like(s)
    for amplitude, freq, phase in waves:
        out += amplitude * np.sin(2 * np.pi * freq * s / total + phase)
    return out


def bead_path(scene: Scene) -> BeadPath:
    """Nominal bead centre line in image coordinates, with the robot's small lateral wander."""
    outline, closed = _path_outline(scene)
    pts, arc = _resample(_to_image(scene, outline), _PATH_STEP * scene.scale)
    normals = _normals(pts, closed)
    wander = wave_sum(arc, float(arc[-1]), scene.wander_waves)
    pts = pts + normals * wander[:, None]
    return BeadPath(points=pts, normals=normals, arc=arc, closed=closed)


def mounting_holes(scene: Scene) -> np.ndarray:
    """Mounting holes (u, v, radius) in the part frame, between path and plate edge."""
    a, b = scene.part_half
    k = scene.scale
    inset = 11.0 * k
    radius = 5.0 * k
    return np.array(
        [[sx * (a - inset), sy * (b - inset), radius] for sx in (-1, 1) for sy in (-1, 1)]
    )


def _part_frame(scene: Scene, xy: np.ndarray) -> np.ndarray:
    """Image points ``xy`` in the part frame (centred on the part, along its rotated axes)."""
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    rel = xy - np.asarray(scene.centre)
    return np.stack([rel[..., 0] * c + rel[..., 1] * s, -rel[..., 0] * s + rel[..., 1] * c], -1)


def part_grid(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Part-frame coordinates (u, v) of every pixel centre, float32."""
    x = np.arange(scene.width, dtype=np.float32)[None, :] - np.float32(scene.centre[0])
    y = np.arange(scene.height, dtype=np.float32)[:, None] - np.float32(scene.centre[1])
    c, s = np.float32(math.cos(scene.angle)), np.float32(math.sin(scene.angle))
    return x * c + y * s, -x * s + y * c


def on_plate(scene: Scene, xy: np.ndarray, margin: float) -> bool:
    """Whether all points ``xy`` (image pixels) lie ``margin`` inside the plate, off the holes.

    A smear is drawn only where this holds, so it never hangs off the part or into a hole.
    """
    uv = _part_frame(scene, xy)
    a, b = scene.part_half
    if np.any(np.abs(uv[:, 0]) > a - margin) or np.any(np.abs(uv[:, 1]) > b - margin):
        return False
    holes = mounting_holes(scene)
    d = np.linalg.norm(uv[:, None, :] - holes[None, :, :2], axis=2)
    return bool(np.all(d > holes[None, :, 2] + margin))
