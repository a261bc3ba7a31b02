"""Inline SVG figures of the report: the score histogram and the heatmap colour bar.

SVG rather than a matplotlib PNG: it is drawn by the browser without JavaScript, stays sharp
when zoomed or printed, its labels are text (searchable, and checkable by tests), and building
it costs microseconds instead of the second or so that importing matplotlib takes.
Only presentation attributes are used (no ``style=``), so the page's Content-Security-Policy
does not need to allow inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

from anomaly.artifacts.heatmap import CONTOUR_LEVEL, SCALE_MAX, colorbar

# Colour-blind-safe pair (Okabe-Ito blue / orange) for the validation sets; this run is grey so
# it reads as "the thing being judged" against the two reference distributions.
RUN_FILL = "#9aa5b1"
GOOD_STROKE = "#0072b2"
DEFECT_STROKE = "#e69f00"
THRESHOLD_STROKE = "#c0392b"
TEXT = "#222"
GRID = "#e3e6ea"


def _fmt(value: float) -> str:
    """Compact coordinate for SVG paths (two decimals are sub-pixel at any sane zoom)."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def nice_step(span: float, count: int) -> float:
    """A 1/2/5 x 10^k step giving about ``count`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def histogram_range(values: Sequence[float]) -> float:
    """Upper end of the x axis: all typical scores, without one outlier squashing the rest.

    Scores above the end are counted in the last bar (the figure says how many), because a part
    scoring 40x the threshold is as clearly rejected at the edge of the plot as off it.
    """
    if not len(values):
        return 2.0
    array = np.asarray(values, dtype=float)
    # At least twice the threshold, so the region just above it is never squeezed to an edge.
    cap = max(2.0, 1.5 * float(np.quantile(array, 0.99)))
    return max(1.25, min(float(array.max()) * 1.05, cap))


def histogram_svg(
    run: Sequence[float],
    good: Sequence[float],
    defect: Sequence[float],
    *,
    width: int = 760,
    height: int = 300,
) -> str:
    """Histogram of normalised scores: this run as bars, validation good/defect as lines.

    Each set is shown as its share of images per bin, so a run of 10,000 parts and a validation
    set of 50 are on one comparable scale; the legend gives each set's size. The threshold
    (normalised score 1.0) is a bin edge, so no bar straddles the decision line.
    """
    hi = histogram_range([*run, *good, *defect])
    per_unit = max(1, round(40 / hi))  # bins per unit of normalised score
    n_bins = math.ceil(hi * per_unit)
    hi = n_bins / per_unit
    edges = np.linspace(0.0, hi, n_bins + 1)

    def shares(values: Sequence[float]) -> np.ndarray:
        if not len(values):
            return np.zeros(n_bins)
        clipped = np.clip(np.asarray(values, dtype=float), 0.0, hi)
        counts, _ = np.histogram(clipped, bins=edges)
        return counts / len(values)

    run_h, good_h, defect_h = shares(run), shares(good), shares(defect)
    top = max(float(run_h.max()), float(good_h.max()), float(defect_h.max()), 0.01)
    y_step = nice_step(top, 4)
    top = math.ceil(top / y_step) * y_step

    left, right, upper, lower = 56, 16, 40, 44
    plot_w, plot_h = width - left - right, height - upper - lower

    def x(value: float) -> float:
        return left + plot_w * value / hi

    def y(share: float) -> float:
        return upper + plot_h * (1.0 - share / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-labelledby="hist-title">',
        '<title id="hist-title">Histogram of normalised scores of this run with the threshold'
        " at 1.0, over the validation scores of good and defective parts</title>",
        f'<g font-family="sans-serif" font-size="12" fill="{TEXT}">',
    ]
    # Grid and y ticks.
    tick = 0.0
    while tick <= top + 1e-9:
        ty = y(tick)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{_fmt(ty)}" y2="{_fmt(ty)}"'
            f' stroke="{GRID}"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{_fmt(ty + 4)}" text-anchor="end">{tick * 100:.0f}%</text>'
        )
        tick += y_step
    # Run bars.
    for i, share in enumerate(run_h):
        if share <= 0:
            continue
        bx, bw = x(edges[i]), x(edges[i + 1]) - x(edges[i])
        out.append(
            f'<rect x="{_fmt(bx + 0.5)}" y="{_fmt(y(share))}" width="{_fmt(bw - 1)}"'
            f' height="{_fmt(y(0) - y(share))}" fill="{RUN_FILL}"/>'
        )

    # Validation sets as step outlines so the bars stay visible beneath them.
    def step(hist: np.ndarray, colour: str, dash: str) -> None:
        points = [f"M{_fmt(x(0))},{_fmt(y(0))}"]
        for i, share in enumerate(hist):
            points.append(f"L{_fmt(x(edges[i]))},{_fmt(y(share))}")
            points.append(f"L{_fmt(x(edges[i + 1]))},{_fmt(y(share))}")
        points.append(f"L{_fmt(x(hi))},{_fmt(y(0))}")
        out.append(
            f'<path d="{"".join(points)}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )

    if len(good):
        step(good_h, GOOD_STROKE, "")
    if len(defect):
        step(defect_h, DEFECT_STROKE, ' stroke-dasharray="6 3"')

    # X axis and ticks.
    out.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{_fmt(y(0))}" y2="{_fmt(y(0))}"'
        f' stroke="{TEXT}"/>'
    )
    x_step = nice_step(hi, 8)
    tick = 0.0
    while tick <= hi + 1e-9:
        tx = x(tick)
        out.append(
            f'<line x1="{_fmt(tx)}" x2="{_fmt(tx)}" y1="{_fmt(y(0))}"'
            f' y2="{_fmt(y(0) + 5)}" stroke="{TEXT}"/>'
        )
        out.append(
            f'<text x="{_fmt(tx)}" y="{_fmt(y(0) + 18)}" text-anchor="middle">{tick:g}</text>'
        )
        tick += x_step
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        "normalised score (score ÷ threshold)</text>"
    )
    out.append(
        f'<text transform="translate(14 {upper + plot_h / 2:.0f}) rotate(-90)"'
        ' text-anchor="middle">share of images in each set</text>'
    )

    # Threshold line on top of everything.
    tx = x(1.0)
    out.append(
        f'<line x1="{_fmt(tx)}" x2="{_fmt(tx)}" y1="{upper - 8}" y2="{_fmt(y(0))}"'
        f' stroke="{THRESHOLD_STROKE}" stroke-width="2" stroke-dasharray="5 3"/>'
    )
    out.append(
        f'<text x="{_fmt(tx + 5)}" y="{upper - 10}" fill="{THRESHOLD_STROKE}"'
        ' font-weight="bold">threshold 1.0 → NG</text>'
    )

    # Legend (top right).
    entries = [(f"this run (n={len(run)})", "bar", RUN_FILL)]
    if len(good):
        entries.append((f"validation good (n={len(good)})", "line", GOOD_STROKE))
    if len(defect):
        entries.append((f"validation defect (n={len(defect)})", "dash", DEFECT_STROKE))
    lx, ly = left + plot_w - 210, upper + 6
    for k, (label, kind, colour) in enumerate(entries):
        row_y = ly + 18 * k
        if kind == "bar":
            out.append(f'<rect x="{lx}" y="{row_y - 9}" width="22" height="10" fill="{colour}"/>')
        else:
            dash = ' stroke-dasharray="6 3"' if kind == "dash" else ""
            out.append(
                f'<line x1="{lx}" x2="{lx + 22}" y1="{row_y - 4}" y2="{row_y - 4}"'
                f' stroke="{colour}" stroke-width="2"{dash}/>'
            )
        out.append(f'<text x="{lx + 28}" y="{row_y}">{escape(label)}</text>')
    beyond = sum(1 for v in [*run, *good, *defect] if v > hi)
    if beyond:
        out.append(
            f'<text x="{left + plot_w}" y="{_fmt(y(0) - 6)}" text-anchor="end"'
            f' font-size="11">{beyond} score(s) above {hi:g} are in the last bar</text>'
        )
    out.append("</g></svg>")
    return "\n".join(out)


def colorbar_svg(scale_max: float = SCALE_MAX, width: int = 420, height: int = 64) -> str:
    """Horizontal colour bar of the fixed heatmap scale, 0 to ``scale_max``, with ticks.

    The colours are sampled from :func:`anomaly.artifacts.heatmap.colorbar`, so the bar is exactly
    the
    map the overlays use; a gradient of 64 stops is indistinguishable from the colour map.
    """
    samples = colorbar(height=64, width=1, scale_max=scale_max)[::-1, 0, :]  # 0 first
    stops = "".join(
        f'<stop offset="{i / (len(samples) - 1):.4f}" stop-color="#{r:02x}{g:02x}{b:02x}"/>'
        for i, (r, g, b) in enumerate(samples.tolist())
    )
    left, right, bar_h = 12, 60, 20
    bar_w = width - left - right

    def x(level: float) -> float:
        return left + bar_w * level / scale_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="colorbar" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-labelledby="cbar-title">',
        f'<title id="cbar-title">Heatmap colour scale from 0 to {scale_max:g}; {CONTOUR_LEVEL:g}'
        " is the per-pixel threshold</title>",
        f'<defs><linearGradient id="cbar-gradient" x1="0" x2="1" y1="0" y2="0">{stops}'
        "</linearGradient></defs>",
        f'<rect x="{left}" y="4" width="{bar_w}" height="{bar_h}" fill="url(#cbar-gradient)"'
        f' stroke="{TEXT}" stroke-width="0.5"/>',
        f'<g font-family="sans-serif" font-size="12" fill="{TEXT}">',
    ]
    for level, label in (
        (0.0, "0"),
        (CONTOUR_LEVEL, f"{CONTOUR_LEVEL:.1f} = threshold"),
        (scale_max, f"≥ {scale_max:.1f}"),
    ):
        tx = x(level)
        strong = ' font-weight="bold"' if level == CONTOUR_LEVEL else ""
        out.append(
            f'<line x1="{_fmt(tx)}" x2="{_fmt(tx)}" y1="4" y2="{bar_h + 10}"'
            f' stroke="{TEXT}" stroke-width="{2 if level == CONTOUR_LEVEL else 1}"/>'
        )
        out.append(
            f'<text x="{_fmt(tx)}" y="{bar_h + 24}" text-anchor="middle"{strong}>'
            f"{escape(label)}</text>"
        )
    out.append("</g></svg>")
    return "\n".join(out)


def mini_colorbar_svg(scale_max: float = SCALE_MAX, width: int = 150) -> str:
    """Small colour bar for each heatmap's caption, reusing the gradient of :func:`colorbar_svg`.

    With thousands of rejected parts the full colour bar is far up the page; this keeps the
    scale next to every heatmap for a few hundred bytes each. It must appear on a page that
    also holds :func:`colorbar_svg` (whose gradient it references).
    """
    bar_w = width - 14

    def x(level: float) -> float:
        return 7 + bar_w * level / scale_max

    ticks = "".join(
        f'<text x="{_fmt(x(level))}" y="23" text-anchor="middle">{level:.1f}</text>'
        for level in (0.0, CONTOUR_LEVEL, scale_max)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="mini-colorbar" width="{width}"'
        f' height="26" viewBox="0 0 {width} 26" aria-hidden="true">'
        f'<rect x="7" y="1" width="{bar_w}" height="10" fill="url(#cbar-gradient)"/>'
        f'<line x1="{_fmt(x(CONTOUR_LEVEL))}" x2="{_fmt(x(CONTOUR_LEVEL))}" y1="0" y2="13"'
        f' stroke="{TEXT}" stroke-width="1.5"/>'
        f'<g font-family="sans-serif" font-size="10" fill="{TEXT}">{ticks}</g></svg>'
    )
