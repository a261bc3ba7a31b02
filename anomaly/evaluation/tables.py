"""Plain-text tables of evaluation figures: one table layout and one way to write each number.

``anomaly evaluate`` and ``anomaly compare`` print their figures through :func:`format_table`
and the number formatters here, so a rate or a size reads the same in both. The two commands
keep their own look (``evaluate``: left-aligned under a dashed rule, ``n/a`` for a missing
figure; ``compare``: numbers right-aligned, ``-`` for a missing figure), chosen by arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: What :func:`num` and :func:`pct` write for a figure that was not computed.
MISSING = "n/a"


def num(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; :data:`MISSING` for ``None``."""
    return MISSING if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    """A rate in [0, 1] as a percentage with one decimal; :data:`MISSING` for ``None``."""
    return MISSING if value is None else f"{100 * value:.1f}%"


def mb(size_bytes: int) -> str:
    """Bytes as MiB: one decimal from 10 MiB up, two below (small bundles still differ)."""
    megabytes = size_bytes / 2**20
    return f"{megabytes:.1f}" if megabytes >= 10 else f"{megabytes:.2f}"


def confidence_text(confidence: float) -> str:
    """A confidence level as the percentage people quote: 0.95 -> ``95%``, 0.975 -> ``97.5%``."""
    return f"{100 * confidence:g}%"


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    numbers_right: bool = False,
    rule: bool = True,
) -> list[str]:
    """Fixed-width lines of a table of text cells, two spaces between columns.

    The first column is left-aligned; the others too, or right-aligned with ``numbers_right``
    (so decimals line up). ``rule`` puts a line of dashes under the header.
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def join(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if numbers_right and i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [join(headers)]
    if rule:
        lines.append(join(["-" * w for w in widths]))
    return [*lines, *(join(r) for r in rows)]


# --------------------------------------------------------------------------------------------
# anomaly evaluate: one row per model (the rows of anomaly.commands.evaluate.evaluate_model)
# --------------------------------------------------------------------------------------------


def _rate_ci(op: Mapping[str, Any] | None, key: str) -> str:
    if not op or op.get(key) is None:
        return MISSING
    low, high = op[f"{key}_ci"]
    return f"{pct(op[key])} [{100 * low:.1f}, {100 * high:.1f}]"


def _target(row: Mapping[str, Any], key: str, target: str, field_name: str) -> str:
    found = (row.get(key) or {}).get(target)
    return MISSING if found is None else pct(found[field_name])


def evaluation_tables(rows: Sequence[Mapping[str, Any]], confidence: float) -> list[str]:
    """The tables ``anomaly evaluate`` prints: headline metrics, the calibrated operating
    point with Clopper-Pearson intervals at ``confidence``, trade-offs, per defect type, and
    what was not computed and why."""
    lines = format_table(
        [
            "model",
            "image AUROC",
            "AP",
            "F1-max",
            "pixel AUROC",
            "AUPRO",
            "ms/img",
            "model ms/img",
            "disk MB",
            "memory MB",
        ],
        [
            [
                r["label"],
                num(r["auroc"]),
                num(r["average_precision"]),
                num(r["f1_max"]),
                num(r["pixel_auroc"]),
                num(r["aupro"]),
                num(r["ms_per_image"], 1),
                num(r["model_ms_per_image"], 1),
                mb(r["bundle_bytes"]),
                mb(r["memory_bytes"]),
            ]
            for r in rows
        ],
    )
    lines += [
        "",
        f"At the calibrated threshold ({confidence_text(confidence)} Clopper-Pearson intervals):",
    ]
    table_rows = []
    for r in rows:
        op = r["operating_point"]
        confusion = (op or {}).get("confusion") or {}
        table_rows.append(
            [
                r["label"],
                num(r["threshold"]),
                _rate_ci(op, "miss_rate"),
                _rate_ci(op, "false_alarm_rate"),
                " ".join(f"{k}={confusion[k]}" for k in ("tp", "fn", "fp", "tn"))
                if confusion
                else MISSING,
            ]
        )
    lines += format_table(
        ["model", "threshold", "miss rate", "false-alarm rate", "confusion (defect=positive)"],
        table_rows,
    )
    lines += ["", "Trade-offs (best achievable on this split):"]
    lines += format_table(
        ["model", "miss@FA 1%", "miss@FA 5%", "FA@miss 0%", "FA@miss 1%", "FA@miss 5%"],
        [
            [
                r["label"],
                _target(r, "miss_rate_at_false_alarm_rate", "0.01", "miss_rate"),
                _target(r, "miss_rate_at_false_alarm_rate", "0.05", "miss_rate"),
                _target(r, "false_alarm_rate_at_miss_rate", "0", "false_alarm_rate"),
                _target(r, "false_alarm_rate_at_miss_rate", "0.01", "false_alarm_rate"),
                _target(r, "false_alarm_rate_at_miss_rate", "0.05", "false_alarm_rate"),
            ]
            for r in rows
        ],
    )
    lines += _per_type_table(rows)
    lines += _defect_type_table(rows)
    coarse = [f"{r['label']}: {r['mask_kind']}" for r in rows if r.get("mask_kind")]
    if coarse:
        lines += ["", f"Pixel AUROC and AUPRO computed on coarse masks ({'; '.join(coarse)})."]
    reasons: dict[str, list[str]] = {}
    for r in rows:
        for name, reason in r["not_computed"].items():
            reasons.setdefault(f"{name}: {reason}", []).append(r["label"])
    if reasons:
        lines += ["", "Not computed:"]
        lines += [f"  {text} [{', '.join(labels)}]" for text, labels in reasons.items()]
    return lines


def _defect_type_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """For models that name defect types: precision / recall of each type, and accuracy."""
    named = [r for r in rows if r.get("defect_types") and r["defect_types"]["per_type"]]
    if not named:
        return []
    types = sorted({t for r in named for t in r["defect_types"]["per_type"]})
    table_rows = []
    for r in named:
        per_type = r["defect_types"]["per_type"]
        cells = [r["label"], pct(r["defect_types"]["accuracy"])]
        for t in types:
            entry = per_type.get(t)
            cells.append(
                MISSING if entry is None else f"{pct(entry['precision'])} / {pct(entry['recall'])}"
            )
        table_rows.append(cells)
    return [
        "",
        "Defect type named, over every typed defect: accuracy, and precision / recall per type:",
        *format_table(["model", "accuracy", *types], table_rows),
    ]


def _per_type_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per defect type: AUROC and miss rate of each model, the type's image count in its title."""
    types = sorted({t for r in rows for t in r["per_defect_type"]})
    if not types:
        return []
    table_rows = []
    for r in rows:
        cells = [r["label"]]
        for t in types:
            entry = r["per_defect_type"].get(t)
            cells.append(
                MISSING
                if entry is None
                else f"{num(entry['auroc'], 3)} / {pct(entry.get('miss_rate'))}"
            )
        table_rows.append(cells)
    counts = {
        t: next(r["per_defect_type"][t]["n"] for r in rows if t in r["per_defect_type"])
        for t in types
    }
    return [
        "",
        "Per defect type: AUROC vs all good / miss rate at the threshold (n):",
        *format_table(["model", *(f"{t} ({counts[t]})" for t in types)], table_rows),
    ]
