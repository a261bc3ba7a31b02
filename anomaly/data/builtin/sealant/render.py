"""Drawing one photograph: materials, the swept bead, Lambert + Blinn-Phong shading, the sensor.

The scene is a height map (part plate with bevelled edges and mounting holes, plus the bead)
and per-pixel materials (albedo, specular strength, shininess). The bead is a dome profile
swept along a dense polyline with a radius per point, so a variable width, a gap, a neck or a
displaced stretch is just a change of those points and radii, and the result stays smooth.
Shading is Lambert + Blinn-Phong from normals of the height map, with a soft ambient occlusion
at the bead foot, then a lighting gradient, vignetting, a slight optical blur and sensor noise
(read + shot). Any change here that moves a pixel for a given seed must bump
``SEALANT_VERSION`` (in ``cache.py``) and ``SEALANT_LINE_VERSION`` (in ``line.py``) so cached
copies regenerate.

Everything here works on a ``height x width`` frame; :func:`render_part` draws the square
``sealant`` part and :func:`render_line_part` the long ``sealant_line`` one, the same way.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from anomaly.data.builtin.sealant.defects import (
    DEFECT_TYPES,
    MASK_LEVEL,
    Defect,
    defect_mask,
    draw_defect,
)
from anomaly.data.builtin.sealant.scene import (
    BeadPath,
    Scene,
    bead_path,
    draw_line_scene,
    draw_scene,
    mounting_holes,
    part_grid,
    wave_sum,
)
from anomaly.errors import DataError

_SWEEP_STEP = 4  # the bead is swept over every 4th path point (2 px segments)


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
    scene: Scene, path: BeadPath, defect: Defect | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points, radii and peak heights of the bead, with a path defect applied."""
    r0 = scene.bead_radius
    s = path.arc
    total = float(s[-1])
    radii = r0 * (1 + wave_sum(s, total, scene.width_waves))
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


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of ``(height, width)`` with correlation ~``sigma`` px."""
    height, width = shape
    if sigma >= 3:
        # Low-frequency noise is drawn coarse and upsampled: much cheaper than a wide blur.
        coarse = (max(4, math.ceil(height / sigma)), max(4, math.ceil(width / sigma)))
        noise = rng.standard_normal(coarse, dtype=np.float32)
        smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        noise = rng.standard_normal(shape, dtype=np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (smooth - smooth.mean()) / (smooth.std() + 1e-6)


def _materials(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Part height map, albedo, specular strength and shininess without the bead."""
    shape, k = (scene.height, scene.width), scene.scale
    rng = np.random.default_rng(scene.texture_seed)
    u, v = part_grid(scene)

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
    hu, hv, hr = mounting_holes(scene)[-1].tolist()
    dh = np.hypot(np.abs(u) - hu, np.abs(v) - hv) - hr
    hole_depth = np.clip(-dh / (1.5 * k), 0, 1)
    hole_depth = hole_depth * hole_depth * (3 - 2 * hole_depth)
    height = 6.0 * k * plate * (1 - hole_depth)

    # Brushed finish: fine noise stretched along the part's u axis, plus cast mottling.
    # Drawn axis-aligned on a padded canvas (box blurs are cheap), then turned with the part.
    # The pad covers what a small turn brings into view (the long part turns at most 1.2 deg).
    pad = min(shape) // 8
    canvas = (scene.height + 2 * pad, scene.width + 2 * pad)
    brushed = rng.standard_normal(canvas, dtype=np.float32)
    streak = max(3, int(30 * k)) | 1
    brushed = cv2.blur(cv2.blur(brushed, (streak, 1)), (streak, 1))
    brushed = cv2.GaussianBlur(brushed, (0, 0), sigmaX=0.1, sigmaY=0.6 * k)
    brushed /= brushed.std() + 1e-6
    middle = (canvas[1] / 2, canvas[0] / 2)
    rot = cv2.getRotationMatrix2D(middle, -math.degrees(scene.angle), 1.0)
    rot[:, 2] -= pad
    brushed = cv2.warpAffine(
        brushed, rot, (scene.width, scene.height), borderMode=cv2.BORDER_REFLECT
    )
    mottling = _texture(rng, shape, 24 * k)
    grain = _texture(rng, shape, 0.7 * k)
    metal = 1 + 0.035 * brushed + 0.05 * mottling + 0.012 * grain
    back = 1 + 0.09 * _texture(rng, shape, 6 * k) + 0.05 * grain

    part_rgb = np.asarray(scene.part_color, np.float32)
    back_rgb = np.asarray(scene.background_color, np.float32)
    on_part = plate[..., None]
    albedo = on_part * part_rgb * metal[..., None] + (1 - on_part) * back_rgb * back[..., None]
    hole = (hole_depth * plate)[..., None]
    albedo = albedo * (1 - 0.8 * hole)
    specular = 0.1 * plate * (1 - hole_depth) + 0.03
    shininess = 6.0 * plate + 3.0
    return height, albedo, specular, shininess


def _light_field(scene: Scene) -> np.ndarray:
    """Illumination over the frame: global gain, a linear gradient and lens vignetting."""
    # Coordinates relative to each side's length: the vignette follows the frame's aspect.
    xn = ((np.arange(scene.width, dtype=np.float32) + 0.5) / scene.width - 0.5)[None, :]
    yn = ((np.arange(scene.height, dtype=np.float32) + 0.5) / scene.height - 0.5)[:, None]
    field = scene.gain * (1 + 2 * scene.gradient[0] * xn + 2 * scene.gradient[1] * yn)
    return (field * (1 - 2 * scene.vignetting * (xn * xn + yn * yn))).astype(np.float32)


def _shade(
    scene: Scene,
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
    scene: Scene,
    path: BeadPath,
    materials: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    defect: Defect | None,
) -> np.ndarray:
    """Noise-free image (float32 RGB, may exceed 0..1 before the sensor clips it)."""
    base_height, albedo, specular, shininess = materials
    k = scene.scale
    bead = np.zeros((scene.height, scene.width), np.float32)
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
        x = np.arange(scene.width, dtype=np.float32)[None, :]
        y = np.arange(scene.height, dtype=np.float32)[:, None]
        dx = (x - defect.centre[0]) / defect.radius
        dy = (y - defect.centre[1]) / defect.radius
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


def _sensor_noise(scene: Scene) -> np.ndarray:
    """Unit sensor noise of the frame: drawn once, the same for a clean and a defect render."""
    rng = np.random.default_rng(scene.noise_seed)
    return rng.standard_normal((scene.height, scene.width, 3), dtype=np.float32)


def _sensor(scene: Scene, image: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Add read and shot noise (``z`` from :func:`_sensor_noise`) and clip."""
    sigma = scene.read_noise + scene.shot_noise * np.sqrt(np.clip(image, 0, None))
    return np.clip(image + sigma * z, 0, 1)


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
    _check_defect(defect, severity)
    return _photograph(
        rng_seed, draw_scene(np.random.default_rng(rng_seed), size), defect, severity
    )


def render_line_part(
    rng_seed: int,
    width: int = 2048,
    height: int = 640,
    defect: str | None = None,
    severity: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one high-resolution photograph of a long sealant part and its defect mask.

    As :func:`render_part`, for the long part of :func:`draw_line_scene` in a ``width`` x
    ``height`` frame (width the long side). Returns an RGB ``uint8`` image ``(height, width,
    3)`` and a ``bool`` mask ``(height, width)``.
    """
    if min(width, height) < 64:
        raise DataError(
            f"sealant_line frame {width}x{height} is too small; use at least 64 pixels a side"
        )
    _check_defect(defect, severity)
    scene = draw_line_scene(np.random.default_rng(rng_seed), width, height)
    return _photograph(rng_seed, scene, defect, severity)


def _check_defect(defect: str | None, severity: float | None) -> None:
    if defect is not None and defect not in DEFECT_TYPES:
        raise DataError(f"unknown sealant defect type {defect!r}; expected one of {DEFECT_TYPES}")
    if severity is not None and not 0.0 <= severity <= 1.0:
        raise DataError(f"sealant severity {severity} is outside [0, 1]")


def _photograph(
    rng_seed: int, scene: Scene, defect: str | None, severity: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The image of ``scene`` (drawn from ``rng_seed``) with ``defect``, and its mask."""
    path = bead_path(scene)
    materials = _materials(scene)
    noise = _sensor_noise(scene)
    clean = _sensor(scene, _render(scene, path, materials, None), noise)
    if defect is None:
        return _to_uint8(clean), np.zeros((scene.height, scene.width), bool)
    # Defect draws come from their own stream so they never shift the part's own draws.
    drng = np.random.default_rng([rng_seed, 1 + DEFECT_TYPES.index(defect)])
    level = float(drng.uniform(0, 1)) if severity is None else float(severity)
    spec = draw_defect(drng, defect, level, scene, path)
    dirty = _sensor(scene, _render(scene, path, materials, spec), noise)
    mask = defect_mask(np.abs(dirty - clean).max(axis=2) > MASK_LEVEL)
    # Changes outside the mask (below MASK_LEVEL) are dropped, so the image differs from the
    # defect-free one only inside the mask.
    image = np.where(mask[..., None], dirty, clean)
    return _to_uint8(image), mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
