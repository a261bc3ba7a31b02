"""Assemble the report's HTML5 page from a read run and its rendered images.

Plain string building with :func:`html.escape` on every value that comes from a file: no
template engine dependency, and one place (``_e``) through which all untrusted text passes.
File names in a run directory come from the shop floor and may contain anything.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from datetime import datetime
from html import escape
from pathlib import PurePath
from urllib.parse import quote

from anomaly import __version__
from anomaly.artifacts.heatmap import CONTOUR_LEVEL, SCALE_MAX
from anomaly.report.assets import CSS, SCRIPT
from anomaly.report.images import PartImages, Picture
from anomaly.report.rundata import Part, RunData, as_float
from anomaly.report.svg import colorbar_svg, histogram_svg, mini_colorbar_svg

DASH = "—"

METHODS = {
    "miss_rate": "threshold set so that the share of defective validation parts scored below it "
    "(missed) is at most the target miss rate",
    "few_defects": "too few defective validation parts to measure the target miss rate; the "
    "threshold catches every one of them",
    "false_alarm_fallback": "no defective validation parts; the threshold was set from the good "
    "parts' scores (false-alarm rate) instead, so the miss rate is unknown",
}
SHOWN_VERDICTS = ("NG", "OK", "ERROR", "UNCALIBRATED")


def _e(value: object) -> str:
    """Escape text for HTML content and double-quoted attributes."""
    return escape(str(value), quote=True)


def _pct(rate: object) -> str:
    number = as_float(rate)
    return DASH if number is None else f"{100 * number:.1f}%"


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def _data(value: float | None) -> str:
    """Full-precision number for the sort script; empty when unknown (sorted last)."""
    return "" if value is None else repr(value)


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy() -> str:
    """Policy forbidding every request but the report's own relative image files.

    ``img-src 'self'`` admits the files next to the HTML (including over file://) but no
    remote host, and only this exact inline style and script may run, so even a hostile file
    name that slipped through escaping could neither load nor execute anything.
    """
    return (
        "default-src 'none'; img-src 'self'; "
        f"style-src {_csp_hash(CSS)}; script-src {_csp_hash(SCRIPT)}; "
        "base-uri 'none'; form-action 'none'"
    )


def _img(picture: Picture | None, files_href: str, alt: str) -> str:
    """Lazy image with its pixel size, so the page lays out before any image has loaded."""
    if picture is None:
        return ""
    src = quote(f"{files_href}/{picture.src}")
    return (
        f'<img src="{_e(src)}" width="{picture.width}" height="{picture.height}"'
        f' alt="{_e(alt)}" loading="lazy" decoding="async">'
    )


def common_dir(files: Iterable[str]) -> str:
    """Folder shared by every file path as written in the CSV, or "" when there is none.

    A line camera writes every image under one long folder; printing it in each of 10,000 rows
    hides the part of the name that differs. The table shows paths below this folder (the
    full path stays in a tooltip) and says the folder once above it.
    """
    parents = [str(PurePath(f).parent) for f in files if f]
    if not parents:
        return ""
    try:
        common = os.path.commonpath(parents)
    except ValueError:  # absolute and relative paths mixed: nothing in common to strip
        return ""
    return "" if common in ("", ".", os.sep) else common


def _short(file: str, prefix: str) -> str:
    if prefix and file.startswith(prefix):
        return file[len(prefix) :].lstrip("/\\") or file
    return file


def _truth_text(part: Part) -> str:
    """Ground truth in words, naming the model's mistake when it made one."""
    if part.label is None:
        return "defect (mask given)" if part.mask is not None else DASH
    if part.label == 0:
        return "good — false alarm" if part.verdict == "NG" else "good"
    text = f"defect ({part.defect_type})" if part.defect_type else "defect"
    return f"{text} — missed" if part.verdict == "OK" else text


def _type_text(part: Part) -> str:
    """The model's most likely defect type of a rejected part, with its probability."""
    if not part.predicted_type:
        return ""
    probability = part.predicted_type_probability
    return part.predicted_type + ("" if probability is None else f" ({probability:.0%})")


def _summary(run: RunData) -> str:
    cal, meta = run.calibration, run.meta
    validation = cal.get("validation") if isinstance(cal.get("validation"), dict) else {}
    threshold = run.threshold
    counts = {v: run.count(v) for v in SHOWN_VERDICTS}
    total = len(run.parts)

    card_list = [
        ("ok", counts["OK"], "OK (accepted)"),
        ("ng", counts["NG"], "NG (rejected)"),
        ("error", counts["ERROR"], "errors (not scored)"),
    ]
    if counts["UNCALIBRATED"]:
        card_list.append(("uncalibrated", counts["UNCALIBRATED"], "scored, no verdict"))
    card_list.append(("total", total, "parts in total"))
    cards = "".join(
        f'<div class="card {cls}"><span class="n">{n}</span>{label}</div>'
        for cls, n, label in card_list
    )
    confidence = as_float(cal.get("confidence")) or 0.95

    method = str(cal.get("method") or "")
    method_text = (
        f"{_e(method)} — {_e(METHODS[method])}" if method in METHODS else _e(method or DASH)
    )

    def rate_line(rate: str, events: str, trials: str, noun: str, kind: str) -> str:
        n_events, n_trials = validation.get(events), validation.get(trials)
        if n_trials == 0:
            return f"unknown: no {kind} parts in the validation set"
        counted = (
            f" ({_e(n_events)} of {_e(n_trials)} {noun})"
            if n_events is not None and n_trials is not None
            else ""
        )
        # "<rate>_upper" is what anomaly.decision.calibration writes; "<rate>_upper_95" the older
        # spelling in docs/architecture.md. Either is read.
        upper = validation.get(f"{rate}_upper", validation.get(f"{rate}_upper_95"))
        return f"{_pct(validation.get(rate))}{counted}; {confidence:.0%} upper bound {_pct(upper)}"

    seconds = as_float(meta.get("seconds"))
    scored = sum(p.score is not None for p in run.parts)
    timing = DASH
    if seconds is not None:
        timing = f"{seconds:.1f} s"
        if scored:
            timing += f" ({1000 * seconds / scored:.0f} ms per scored part)"
    pixel_threshold = as_float(cal.get("pixel_threshold"))
    facts = [
        ("Model", _e(meta.get("model") or DASH)),
        ("Category", _e(meta.get("category") or DASH)),
        ("Model bundle", f'<span class="path">{_e(meta.get("model_dir") or DASH)}</span>'),
        ("Threshold", f"{_num(threshold, '.6g')} (raw score; normalised score 1.0)"),
        (
            "Calibrated to",
            f"target miss rate {_pct(cal.get('target_miss_rate'))}; method {method_text}",
        ),
        (
            "Validation miss rate",
            rate_line("miss_rate", "misses", "n_defect", "defective parts missed", "defective"),
        ),
        (
            "Validation false-alarm rate",
            rate_line("false_alarm_rate", "false_alarms", "n_good", "good parts rejected", "good"),
        ),
        ("Pixel threshold", f"{_num(pixel_threshold, '.6g')} (heatmap level 1.0)"),
        ("Scoring time", timing),
    ]
    if cal.get("note"):
        facts.append(("Calibration note", _e(cal["note"])))
    if meta.get("created"):
        facts.append(("Scored at", _e(meta["created"])))
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    notes = []
    if cal.get("target_supported") is False:
        notes.append(
            "The validation set was too small to support the target miss rate: the "
            "miss rate may be higher than the target. Treat verdicts with care."
        )
    if counts["UNCALIBRATED"]:
        notes.append(
            f"{counts['UNCALIBRATED']} part(s) were scored by a model without a calibrated "
            "threshold: they have a score but no OK/NG verdict. Calibrate the model "
            "(`anomaly fit`) and score again."
        )
    if threshold is None:
        notes.append(
            "run.json has no calibration threshold: normalised scores and the "
            "histogram's calibration curves cannot be shown."
        )
    warnings = "".join(f'<p class="warning">{_e(note)}</p>' for note in notes)
    return (
        f'<section id="summary"><h2>Summary</h2><div class="cards">{cards}</div>'
        f'<dl class="facts">{rows}</dl>{warnings}</section>'
    )


def _histogram(run: RunData) -> str:
    threshold = run.threshold
    scores = [p.normalized for p in run.parts if p.normalized is not None]

    def normalised(key: str) -> list[float]:
        values = run.calibration.get(key)
        if not threshold or not isinstance(values, list):
            return []
        numbers = [as_float(v) for v in values]
        return [v / threshold for v in numbers if v is not None]

    good, defect = normalised("scores_good"), normalised("scores_defect")
    svg = histogram_svg(scores, good, defect)
    above = sum(1 for s in scores if s >= 1.0)
    caption = (
        f"Scores of this run ({len(scores)} scored parts, {above} at or above the "
        "threshold) against the validation scores used for calibration. Parts right of "
        "the red line are rejected. A run whose bars sit far from the blue validation "
        "curve may come from a changed process, camera or lighting."
    )
    if not good and not defect:
        caption += " (No calibration scores in run.json.)"
    return (
        f'<section id="histogram"><h2>Score histogram</h2><figure>{svg}'
        f"<figcaption>{_e(caption)}</figcaption></figure></section>"
    )


def scale_max(run: RunData) -> float:
    """Top of the colour scale the run's heatmaps were drawn with.

    ``anomaly score`` records it in run.json; the report must show the bar those overlays were
    coloured with, even if this version's default differs.
    """
    recorded = as_float(run.meta.get("heatmap_scale_max"))
    return recorded if recorded is not None and recorded > CONTOUR_LEVEL else SCALE_MAX


def _scale(run: RunData) -> str:
    top = scale_max(run)
    pixel = as_float(run.calibration.get("pixel_threshold"))
    pixel_text = f" ({pixel:.6g})" if pixel is not None else ""
    sentence = (
        "Every heatmap uses this one fixed scale: the anomaly map is divided by the calibrated "
        f"per-pixel threshold{pixel_text}, so the same colour means the same anomaly level in "
        f"every image, good parts stay blue instead of being stretched to red, levels of "
        f"{top:.1f} and above are dark red, and the white contour encloses the pixels at "
        f"or above {CONTOUR_LEVEL:.1f} (the threshold), where the model sees a defect."
    )
    return (
        f'<div class="scale" id="scale"><figure>{colorbar_svg(top)}</figure>'
        f"<p>{_e(sentence)}</p></div>"
    )


def _ordered(parts: Iterable[Part]) -> list[Part]:
    """Highest normalised score first, unreadable files last, ties in CSV order.

    The order a QA team works in: the surest rejections first. The # column keeps CSV order.
    """
    return sorted(parts, key=lambda p: (p.normalized is None, -(p.normalized or 0.0), p.index))


def _table(run: RunData, images: dict[int, PartImages], files_href: str, prefix: str) -> str:
    truth = run.has_ground_truth
    counts = {v: run.count(v) for v in SHOWN_VERDICTS}
    boxes = "".join(
        f'<label><input type="checkbox" data-verdict="{v}" checked> {v} ({counts[v]})</label>'
        for v in SHOWN_VERDICTS
        if counts[v] or v != "UNCALIBRATED"
    )
    controls = (
        '<div id="table-controls" hidden><span>Show:</span>'
        + boxes
        + '<label>File contains <input type="search" id="file-filter"'
        ' placeholder="part of a file name"></label>'
        '<span id="shown-count" class="muted" aria-live="polite"></span>'
        '<span class="muted">Click a column title to sort.</span></div>'
    )
    head = [
        '<th data-sort="number">#</th>',
        "<th>Image</th>",
        '<th data-sort="text">File</th>',
        '<th data-sort="number">Score</th>',
        # aria-sort: the rows arrive in this order, so the first click on it reverses them.
        '<th data-sort="number" aria-sort="descending"'
        ' title="score ÷ threshold; 1.0 is the threshold">Normalised</th>',
        '<th data-sort="text">Verdict</th>',
    ]
    types = run.has_predicted_types
    if types:
        head.append(
            '<th data-sort="text" title="the model\'s most likely defect type of a rejected'
            ' part, and its probability">Likely type</th>'
        )
    if truth:
        head.append('<th data-sort="text">Ground truth</th>')
    head.append('<th data-sort="text">Error</th>')

    body = []
    for part in _ordered(run.parts):
        rendered = images.get(part.index)
        thumb = _img(rendered.thumbnail if rendered else None, files_href, "")
        name = _e(_short(part.file, prefix))
        if part.verdict == "NG":
            name = f'<a href="#ng-{part.index}">{name}</a>'
        cells = [
            f'<td class="num" data-value="{part.index}">{part.index}</td>',
            f'<td class="thumb">{thumb}</td>',
            f'<td class="path" title="{_e(part.file)}">{name}</td>',
            f'<td class="num" data-value="{_data(part.score)}">{_num(part.score, ".4g")}</td>',
            f'<td class="num" data-value="{_data(part.normalized)}">'
            f"{_num(part.normalized, '.3f')}</td>",
            f'<td><span class="verdict {part.verdict}">{part.verdict}</span></td>',
        ]
        if types:
            cells.append(f"<td>{_e(_type_text(part))}</td>")
        if truth:
            cells.append(f"<td>{_e(_truth_text(part))}</td>")
        cells.append(f"<td>{_e(part.error)}</td>")
        body.append(
            f'<tr id="part-{part.index}" class="{part.verdict}"'
            f' data-verdict="{part.verdict}" data-file="{_e(part.file.lower())}">'
            + "".join(cells)
            + "</tr>"
        )
    return (
        '<section id="parts"><h2>All parts</h2>'
        f'<p class="muted">{len(run.parts)} parts, highest score first (# is the row in '
        "scores.csv). Rejected parts link to their details."
        + (f' Files are under <span class="path">{_e(prefix)}</span>.' if prefix else "")
        + "</p>"
        + controls
        + '<table id="parts-table"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "\n".join(body)
        + "</tbody></table></section>"
    )


def _figure(
    picture: Picture | None, files_href: str, alt: str, caption: str, missing: str, extra: str = ""
) -> str:
    if picture is None:
        inner = f'<div class="missing">{_e(missing)}</div>'
    else:
        inner = _img(picture, files_href, alt)
    return f"<figure>{inner}<figcaption>{_e(caption)}{extra}</figcaption></figure>"


def _detail(
    part: Part, rendered: PartImages | None, run: RunData, files_href: str, prefix: str
) -> str:
    rendered = rendered or PartImages(part.index)
    times = f"{part.normalized:.2f}× threshold" if part.normalized is not None else "score unknown"
    raw = (
        f"score {part.score:.4g} against threshold {run.threshold:.4g}"
        if part.score is not None and run.threshold is not None
        else ""
    )
    figures = [
        _figure(
            rendered.image, files_href, f"image of {part.file}", "Image", "image not available"
        ),
        _figure(
            rendered.heatmap,
            files_href,
            f"heatmap of {part.file}",
            "Heatmap on the fixed scale; white contour: at or above the pixel threshold",
            "no heatmap available",
            mini_colorbar_svg(scale_max(run)),
        ),
    ]
    truth_line = ""
    if part.predicted_type:
        truth_line = f'<p class="predicted-type">Likely defect type: {_e(_type_text(part))}</p>'
    if part.label is not None or part.mask is not None:
        if part.label == 0:
            truth_line += (
                '<p class="truth-label false-alarm">Ground truth: good — this '
                "rejection is a false alarm.</p>"
            )
        else:
            truth_line += f'<p class="truth-label">Ground truth: {_e(_truth_text(part))}</p>'
        if part.mask is not None:
            area = (
                f"; {100 * rendered.truth_area:.2f}% of the image"
                if rendered.truth_area is not None
                else ""
            )
            figures.append(
                _figure(
                    rendered.truth,
                    files_href,
                    f"ground truth of {part.file}",
                    f"Ground truth mask (green){area}",
                    "mask not available",
                )
            )
    problems = "".join(f'<p class="warning">{_e(p)}</p>' for p in rendered.problems)
    return (
        f'<article class="detail" id="ng-{part.index}">'
        f'<h3><a href="#part-{part.index}">#{part.index}</a> '
        f'<span title="{_e(part.file)}">{_e(_short(part.file, prefix))}</span></h3>'
        f'<p class="score"><span class="times">{_e(times)}</span> '
        f'<span class="muted">{_e(raw)}</span></p>{truth_line}'
        f'<div class="figures">{"".join(figures)}</div>{problems}</article>'
    )


def _rejected(run: RunData, images: dict[int, PartImages], files_href: str, prefix: str) -> str:
    ng = [p for p in _ordered(run.parts) if p.verdict == "NG"]
    if not ng:
        details = "<p>No part was rejected.</p>"
    else:
        details = "\n".join(_detail(p, images.get(p.index), run, files_href, prefix) for p in ng)
    return (
        f'<section id="rejected"><h2>Rejected parts ({len(ng)})</h2>'
        f"{_scale(run)}{details}</section>"
    )


def _errors(run: RunData, images: dict[int, PartImages]) -> str:
    errors = [p for p in run.parts if p.verdict == "ERROR"]
    rows = "".join(
        f'<tr><td class="num"><a href="#part-{p.index}">{p.index}</a></td>'
        f'<td class="path">{_e(p.file)}</td><td>{_e(p.error)}</td></tr>'
        for p in errors
    )
    body = (
        f"<table><thead><tr><th>#</th><th>File</th><th>Reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if errors
        else "<p>Every file could be read and scored.</p>"
    )
    # Problems met while building the report (a file moved since scoring, a heatmap missing)
    # are listed too: the QA team should know which pictures they are not seeing, and why.
    problems = [
        (p, msg)
        for p in run.parts
        if p.verdict != "NG"
        for msg in (images[p.index].problems if p.index in images else [])
    ]
    extra = ""
    if problems:
        items = "".join(
            f'<li><a href="#part-{p.index}">#{p.index}</a> {_e(msg)}</li>' for p, msg in problems
        )
        extra = f"<h3>Pictures missing from this report</h3><ul>{items}</ul>"
    return (
        f'<section id="errors"><h2>Files that could not be read ({len(errors)})</h2>'
        f"{body}{extra}</section>"
    )


def build_html(
    run: RunData, images: dict[int, PartImages], files_href: str, generated: datetime
) -> str:
    """The complete page; ``files_href`` is the images folder relative to the HTML file."""
    meta = run.meta
    title = f"Inspection report — {meta.get('category') or run.run_dir.name}"
    if meta.get("model"):
        title += f" ({meta['model']})"
    n_ng, n_err = run.count("NG"), run.count("ERROR")
    prefix = common_dir(p.file for p in run.parts)
    nav = "".join(
        f'<li><a href="#{anchor}">{_e(text)}</a></li>'
        for anchor, text in (
            ("summary", "Summary"),
            ("histogram", "Score histogram"),
            ("parts", "All parts"),
            ("rejected", f"Rejected parts ({n_ng})"),
            ("errors", f"Unreadable files ({n_err})"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{content_security_policy()}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f'<meta name="generator" content="anomaly {_e(__version__)}">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1>"
        f'<p class="muted">Run <span class="path">{_e(run.run_dir)}</span> · report generated '
        f"{_e(generated.strftime('%Y-%m-%d %H:%M'))}</p>"
        f'<nav aria-label="Sections"><ul>{nav}</ul></nav></header>\n<main>\n'
        + _summary(run)
        + "\n"
        + _histogram(run)
        + "\n"
        + _table(run, images, files_href, prefix)
        + "\n"
        + _rejected(run, images, files_href, prefix)
        + "\n"
        + _errors(run, images)
        + "\n</main>\n"
        f"<footer>Generated by anomaly {_e(__version__)}. This page and the folder "
        f'<span class="path">{_e(files_href)}/</span> next to it are the whole report; it '
        "makes no network requests.</footer>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
