"""Evaluation figures as PNG files: ROC curves, score histograms, confusion matrix.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch), so they work headless, in threads and next to any other matplotlib user. Each function
writes its PNG through :func:`anomaly.io.files.write_bytes_atomic` (temporary file, rename, the
usual file mode) so a report never picks up a half-written image, and returns the path written.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from anomaly.evaluation.metrics import OperatingPoint, missing_class_reason
from anomaly.io.files import write_bytes_atomic

logger = logging.getLogger(__name__)

GOOD_COLOR = "#2b8cbe"
DEFECT_COLOR = "#e34a33"
THRESHOLD_COLOR = "#222222"
DPI = 120


def _new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; creates the parent folder."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    path = write_bytes_atomic(path, buffer.getvalue())
    logger.debug("wrote %s", path)
    return path


def roc_plot(
    curves: Mapping[str, tuple[Any, Any]] | tuple[Any, Any],
    path: str | Path,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    title: str = "ROC",
) -> Path:
    """ROC curves of one or several models on one figure.

    ``curves`` maps a model label to ``(labels (N,), scores (N,))``, or is one such pair.
    ``operating_points`` maps a label to ``(false-alarm rate, detection rate)`` to mark, e.g.
    :meth:`OperatingPoint.roc_point`. A model whose split lacks a class is left out of the plot
    (and logged); if none can be drawn the figure says why.
    """
    if not isinstance(curves, Mapping):
        curves = {"model": curves}
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    colors: dict[str, str] = {}
    skipped: list[str] = []
    for name, (labels, scores) in curves.items():
        labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        reason = missing_class_reason(labels)
        if reason is not None:
            logger.warning("ROC of %s not drawn: %s", name, reason)
            skipped.append(f"{name}: {reason}")
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        (line,) = ax.plot(
            fpr, tpr, linewidth=1.8, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})"
        )
        colors[name] = line.get_color()
    for name, point in (operating_points or {}).items():
        if point is None:
            continue
        fpr_point, tpr_point = point
        ax.plot(
            [fpr_point],
            [tpr_point],
            marker="o",
            markersize=8,
            markeredgecolor="black",
            color=colors.get(name, THRESHOLD_COLOR),
            linestyle="none",
            label=f"{name} operating point",
        )
    if skipped:
        ax.text(
            0.98,
            0.02,
            "not drawn:\n" + "\n".join(skipped),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            wrap=True,
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-alarm rate (good parts rejected)")
    ax.set_ylabel("detection rate (1 − miss rate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if not skipped else "center right", fontsize=8)
    return _save(fig, path)


def score_histogram(
    labels: Any,
    scores: Any,
    threshold: float | None,
    path: str | Path,
    title: str = "Anomaly scores",
    bins: int = 40,
) -> Path:
    """Histograms of good and defect scores ``(N,)`` on shared bins, with the threshold line.

    Counts, not densities: a reviewer should see how many parts sit near the threshold.
    ``threshold`` may be ``None`` (no line).
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig = _new_figure()
    ax = fig.add_subplot()
    values = scores if threshold is None else np.append(scores, threshold)
    if values.size:
        low, high = float(values.min()), float(values.max())
        if low == high:  # one value: give the single bar a visible width
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        for label, name, color in ((0, "good", GOOD_COLOR), (1, "defect", DEFECT_COLOR)):
            part = scores[labels == label]
            if part.size:
                ax.hist(part, bins=edges, alpha=0.6, color=color, label=f"{name} (n={part.size})")
    if threshold is not None:
        ax.axvline(
            threshold, color=THRESHOLD_COLOR, linestyle="--", label=f"threshold {threshold:.4g}"
        )
    if not scores.size:
        ax.text(0.5, 0.5, "no scores", transform=ax.transAxes, ha="center")
    ax.set_xlabel("anomaly score (NG at or above the threshold)")
    ax.set_ylabel("parts")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_plot(
    op: OperatingPoint | Mapping[str, Any], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """2x2 confusion matrix (rows: actual good/defect; columns: verdict OK/NG) as a PNG.

    ``op`` is an :class:`~anomaly.evaluation.metrics.OperatingPoint`, its ``to_dict()``, or any
    mapping
    with ``tp``, ``fn``, ``fp``, ``tn`` (directly or under ``"confusion"``). Each cell shows the
    count and its share of the row (so the off-diagonal cells read as miss and false-alarm rate).
    """
    if isinstance(op, OperatingPoint):
        confusion: Mapping[str, Any] = op.confusion
        threshold: float | None = op.threshold
    else:
        confusion = op.get("confusion", op)
        threshold = op.get("threshold")
    try:
        tn, fp = int(confusion["tn"]), int(confusion["fp"])
        fn, tp = int(confusion["fn"]), int(confusion["tp"])
    except KeyError as exc:
        raise ValueError(
            f"confusion counts need tp, fn, fp and tn; {exc.args[0]!r} is missing"
        ) from None
    cells = np.array([[tn, fp], [fn, tp]])
    row_totals = cells.sum(axis=1, keepdims=True)
    shares = np.divide(cells, row_totals, out=np.zeros(cells.shape), where=row_totals > 0)

    fig = _new_figure(4.6, 4.0)
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [["correct OK", "false alarm"], ["miss", "caught"]]
    for r in range(2):
        for c in range(2):
            share = f"{shares[r, c]:.1%}" if row_totals[r, 0] else "n/a"
            ax.text(
                c,
                r,
                f"{cells[r, c]}\n{share}\n{names[r][c]}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if shares[r, c] > 0.6 else "black",
            )
    ax.set_xticks([0, 1], labels=["OK", "NG"])
    ax.set_yticks([0, 1], labels=[f"good (n={tn + fp})", f"defect (n={fn + tp})"])
    ax.set_xlabel("verdict")
    ax.set_ylabel("actual")
    suffix = "" if threshold is None else f" (threshold {threshold:.4g})"
    ax.set_title(title + suffix)
    return _save(fig, path)


def learning_curve_plot(
    points: list[Mapping[str, Any]], path: str | Path, title: str = "Learning curve"
) -> Path:
    """How test figures move with the number of labelled train defects, one PNG.

    ``points`` are learning-curve records (``model``, ``train_defects``, ``auroc``,
    ``false_alarm_rate``, ``miss_rate``): a model with points at several counts is a line with
    markers, a model with only a point at 0 defects (unsupervised) a dashed horizontal line, so
    the plot answers "how many defects must we label to beat the model that needs none?".
    Points without a figure (a failed fit) are left out.
    """
    panels = (
        ("auroc", "test image AUROC"),
        ("false_alarm_rate", "false alarms at the threshold"),
        ("miss_rate", "misses at the threshold"),
    )
    fig = _new_figure(13.0, 4.2)
    models = list(dict.fromkeys(str(point["model"]) for point in points))
    # One colour per model across the three panels (a dashed line does not advance
    # matplotlib's colour cycle, so colours are assigned here).
    colours = {model: f"C{index % 10}" for index, model in enumerate(models)}
    for index, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for model in models:
            rows = sorted(
                (p for p in points if p["model"] == model and p.get(key) is not None),
                key=lambda p: p["train_defects"],
            )
            if not rows:
                continue
            counts = [int(p["train_defects"]) for p in rows]
            values = [float(p[key]) for p in rows]
            if counts == [0]:
                ax.axhline(
                    values[0],
                    color=colours[model],
                    linestyle="--",
                    linewidth=1.5,
                    label=f"{model} (no labels)",
                )
            else:
                ax.plot(
                    counts, values, color=colours[model], marker="o", linewidth=1.8, label=model
                )
        ax.set_xscale("symlog", linthresh=5)
        counts_shown = sorted({int(p["train_defects"]) for p in points if p["train_defects"]})
        ax.set_xticks(counts_shown, labels=[str(count) for count in counts_shown])
        ax.set_xlabel("labelled train defects")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key != "auroc":
            ax.yaxis.set_major_formatter(lambda value, _: f"{100 * value:.1f}%")
        if index == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
