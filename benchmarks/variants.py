"""Fit one model under several settings on one category and compare them on validation.

Each variant is a quoted list of ``key=value`` overrides (``""`` for the defaults). Every
variant is fitted on the same train split and calibrated on the same validation split as
``anomaly fit`` would; the table shows the validation figures a choice may be made on
(AUROC, and the false alarms at the threshold calibrated there) and, beside them, the test
figures for information only. The variant with the best validation AUROC is marked: nothing
is chosen on test.

    python benchmarks/variants.py --category sealant "" "backbone.layers=[1,2,3]" image_size=320
    python benchmarks/variants.py --category elpv --model padim "" padim.n_features=200
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys

import numpy as np
from _common import fit_variant, num, pct  # benchmarks/_common.py: scripts run from this folder

from anomaly.evaluation import metrics
from anomaly.io.files import write_text_atomic
from anomaly.io.jsonio import dumps


def _slug(overrides: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "+".join(overrides)) or "defaults"


def measure(category: str, model: str, overrides: list[str], out: str) -> dict:
    """Fit one variant; its validation and test figures."""
    result, wall = fit_variant(category, out, overrides, model)
    calibration = result.model.calibration_
    good, defect = np.asarray(calibration.scores_good), np.asarray(calibration.scores_defect)
    labels = np.r_[np.zeros(len(good)), np.ones(len(defect))]
    test = result.summary["test"]
    op = test.get("operating_point") or {}
    return {
        "overrides": overrides,
        "val_auroc": metrics.image_auroc(labels, np.r_[good, defect]),
        "val_false_alarm_rate": calibration.validation["false_alarm_rate"],
        "val_miss_rate": calibration.validation["miss_rate"],
        "test_auroc": test.get("auroc"),
        "test_miss_rate": op.get("miss_rate"),
        "test_false_alarm_rate": op.get("false_alarm_rate"),
        "pixel_auroc": test.get("pixel_auroc"),
        "aupro": test.get("aupro"),
        "fit_seconds": result.summary["fit_seconds"],
        "wall_seconds": wall,
        "ms_per_image": test.get("ms_per_image"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="sealant")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--out", default="runs/variants", help="bundles go under this folder")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("variants", nargs="+", help='quoted overrides per variant ("" = defaults)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    for text in args.variants:
        overrides = shlex.split(text)
        out = f"{args.out}/{args.category}/{args.model}/{_slug(overrides)}"
        try:
            row = measure(args.category, args.model, overrides, out)
        except Exception as error:  # one bad setting must not lose the others' figures
            print(f"{text}: failed: {error}", flush=True)
            rows.append({"overrides": overrides, "error": str(error)})
            continue
        rows.append(row)
        print(
            f"{text or '(defaults)'}: val AUROC {num(row['val_auroc'])}, "
            f"test {num(row['test_auroc'])}, fit {row['fit_seconds']:.0f} s",
            flush=True,
        )
    fitted = [i for i, row in enumerate(rows) if "error" not in row]
    best = max(fitted, key=lambda i: rows[i]["val_auroc"]) if fitted else None
    print(
        f"\n{args.category}, {args.model} (test columns for information; * = best validation "
        "AUROC)\n"
    )
    print(
        "| variant | val AUROC | val FA at calibration | test AUROC | test miss / FA at that "
        "threshold | pixel AUROC / AUPRO | fit s | ms/image |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (text, row) in enumerate(zip(args.variants, rows, strict=True)):
        mark = " *" if i == best else ""
        if "error" in row:
            print(f"| {text} | failed: {row['error']} |")
            continue
        print(
            f"| {text or '(defaults)'}{mark} | {num(row['val_auroc'])} | "
            f"{pct(row['val_false_alarm_rate'])} | {num(row['test_auroc'])} | "
            f"{pct(row['test_miss_rate'])} / {pct(row['test_false_alarm_rate'])} | "
            f"{num(row['pixel_auroc'])} / {num(row['aupro'])} | {row['fit_seconds']:.0f} | "
            f"{row['ms_per_image'] or 0:.1f} |"
        )
    if args.json:
        write_text_atomic(args.json, dumps({"category": args.category, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
