"""Tests of the HTML QA report (``anomaly.report.write_report``).

A fake score run directory is built in ``tmp_path``: a few images written with cv2, heatmaps made
with :func:`anomaly.artifacts.heatmap.overlay`, a ``scores.csv`` with OK, NG and ERROR rows, and a
``run.json`` with the calibration fields. The page is checked statically with Python's
``html.parser`` and, where ``chromium`` is installed, rendered headless.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from anomaly.artifacts.heatmap import overlay
from anomaly.errors import ConfigError, DataError
from anomaly.report import write_report

THRESHOLD = 2.0
PIXEL_THRESHOLD = 1.5
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}
#: A file name that breaks naive HTML building: the report must escape it everywhere.
NASTY = "part <b>&amp; \"quoted\" 'x'.png"


def _texture(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((size, size, 3), (150, 140, 120), np.uint8)
    noise = rng.normal(0, 12, (size, size, 1)).astype(np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _blob(size: int, centre: tuple[int, int], peak: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    return (0.3 + peak * np.exp(-d2 / (2 * 8.0**2))).astype(np.float32)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_run(root: Path) -> tuple[Path, list[dict[str, str]]]:
    """A run dir under ``root`` (the cwd of the test, as relative CSV paths assume)."""
    images, run_dir = root / "images", root / "run"
    (images).mkdir()
    (run_dir / "heatmaps").mkdir(parents=True)
    (root / "masks").mkdir()
    rows: list[dict[str, str]] = []

    def add(
        name: str,
        score: float | None,
        verdict: str,
        *,
        error: str = "",
        label: str = "",
        defect_type: str = "",
        mask: str = "",
        relative: bool = False,
    ) -> None:
        rows.append(
            {
                "file": f"images/{name}" if relative else str(images / name),
                "score": "" if score is None else f"{score:.6f}",
                "normalized_score": "" if score is None else f"{score / THRESHOLD:.6f}",
                "verdict": verdict,
                "heatmap": "",
                "error": error,
                "label": label,
                "defect_type": defect_type,
                "mask": mask,
            }
        )

    for i in range(4):  # good parts, two with relative paths
        _write_rgb(images / f"ok_{i}.png", _texture(i))
        add(f"ok_{i}.png", 0.8 + 0.2 * i, "OK", relative=i % 2 == 0, label="0" if i == 0 else "")
    ng = [
        ("ng_scratch.jpg", 4.6, "1", "scratch", True),
        ("ng_dent.png", 2.9, "", "", False),
        (NASTY, 2.2, "0", "good", False),
    ]
    for k, (name, score, label, defect, with_mask) in enumerate(ng):
        image = _texture(10 + k)
        centre = (30 + 10 * k, 50)
        cv2.circle(image, centre[::-1], 7, (60, 50, 40), -1)
        _write_rgb(images / name, image)
        heat = overlay(image, _blob(96, centre, peak=score / THRESHOLD * 1.4))
        index = len(rows)
        heat_rel = f"heatmaps/{index}_{Path(name).stem}.png"
        _write_rgb(run_dir / heat_rel, heat)
        mask = ""
        if with_mask:
            m = np.zeros((96, 96), np.uint8)
            cv2.circle(m, centre[::-1], 7, 255, -1)
            cv2.imwrite(str(root / "masks" / f"{Path(name).stem}_mask.png"), m)
            mask = f"masks/{Path(name).stem}_mask.png"
        add(name, score, "NG", label=label, defect_type=defect, mask=mask)
        rows[-1]["heatmap"] = heat_rel
    (images / "corrupt.png").write_bytes(b"this is not a PNG")
    add("corrupt.png", None, "ERROR", error="not a readable image (corrupt PNG data)")
    add("vanished.png", None, "ERROR", error="file not found")

    with (run_dir / "scores.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = {
        "model_dir": str(root / "bundle"),
        "model": "patchcore",
        "category": "sealant",
        "calibration": {
            "threshold": THRESHOLD,
            "pixel_threshold": PIXEL_THRESHOLD,
            "method": "miss_rate",
            "target_miss_rate": 0.05,
            "target_supported": True,
            "confidence": 0.95,
            "validation": {  # keys as anomaly.decision.calibration writes them
                "n_good": 40,
                "n_defect": 30,
                "misses": 1,
                "false_alarms": 2,
                "miss_rate": 1 / 30,
                "miss_rate_upper": 0.1501,
                "false_alarm_rate": 0.05,
                "false_alarm_rate_upper": 0.1496,
            },
            "scores_good": [1.0 + 0.02 * i for i in range(40)],
            "scores_defect": [1.9 + 0.15 * i for i in range(30)],
            "note": "threshold keeps the validation miss rate at or under 5.0%",
        },
        "counts": {"OK": 4, "NG": 3, "ERROR": 2},
        "seconds": 3.21,
    }
    (run_dir / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return run_dir, rows


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict[str, str]]]:
    monkeypatch.chdir(tmp_path)  # relative "file" paths are relative to the cwd
    return make_run(tmp_path)


class _Checker(HTMLParser):
    """Collects tags, attribute values and balance errors of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []
        self.decl = ""

    def handle_decl(self, decl: str) -> None:
        self.decl = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._record(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._record(tag, attrs)  # <rect/> in SVG: complete on its own

    def _record(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        mapping = dict(attrs)
        self.starts.append((tag, mapping))
        if mapping.get("id"):
            self.ids.append(mapping["id"])

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"end tag for void element </{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def _parse(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    return checker


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


def test_report_page_is_complete_and_self_contained(run):
    run_dir, rows = run
    out = write_report(run_dir)
    assert out == (run_dir / "report.html").absolute()
    html = out.read_text(encoding="utf-8")

    page = _parse(html)
    assert page.decl.lower() == "doctype html"
    assert not page.errors, page.errors
    assert not page.stack, f"unclosed elements: {page.stack}"
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"

    # Nothing remote: every src/href is relative (or an in-page anchor), and no url() at all.
    # Each one leads somewhere: an anchor to an element of the page, a path to a file.
    for tag, attrs in page.starts:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is None:
                continue
            assert not re.match(r"(?i)\s*([a-z][a-z0-9+.-]*:|/)", value), (tag, value)
            if value.startswith("#"):
                assert value[1:] in page.ids, (tag, value)
            else:
                assert (run_dir / unquote(value)).is_file(), (tag, value)
    assert "url(http" not in html and "@import" not in html and "<link" not in html
    assert "default-src 'none'" in html  # and the browser is told to refuse anything else

    summary = _section(html, "summary")
    for text in (
        "patchcore",
        "sealant",
        "target miss rate 5.0%; method miss_rate",
        "3.3% (1 of 30 defective parts missed); 95% upper bound 15.0%",
        "5.0% (2 of 40 good parts rejected); 95% upper bound 15.0%",
        "threshold keeps the validation miss rate",
        "3.2 s",
    ):
        assert text in summary, text
    assert re.search(
        r'class="n">4</span>OK.*class="n">3</span>NG.*class="n">2</span>errors', summary, re.S
    )

    histogram = _section(html, "histogram")
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="histogram"' in histogram
    assert "threshold 1.0" in histogram and "validation good (n=40)" in histogram
    assert "validation defect (n=30)" in histogram and "this run (n=7)" in histogram

    table = _section(html, "parts")
    body = table.split("<tbody>", 1)[1]
    assert body.count("<tr ") == len(rows)
    for row in rows:
        assert escape(row["file"], quote=True) in body, row["file"]
    assert NASTY not in html  # only ever escaped

    # Every NG part: a detail section with its heatmap file, linked from its table row.
    rejected = _section(html, "rejected")
    for index, row in enumerate(rows):
        if row["verdict"] != "NG":
            assert f'id="ng-{index}"' not in rejected
            continue
        assert f'<a href="#ng-{index}">' in body
        detail = re.search(
            rf'<article class="detail" id="ng-{index}">(.*?)</article>', rejected, re.S
        )
        assert detail, index
        heat = f"report_files/detail/{index}_heatmap.jpg"
        assert f'src="{heat}"' in detail.group(1)
        assert (run_dir / heat).is_file()
        times = float(row["normalized_score"])
        assert f"{times:.2f}× threshold" in detail.group(1)
    # The colour bar with its ticks and the explanation of scale and contour.
    assert 'class="colorbar"' in rejected
    for text in (">0<", "1.0 = threshold", "≥ 2.0", "white contour", "per-pixel threshold (1.5)"):
        assert text in rejected, text

    errors = _section(html, "errors")
    for row in rows:
        if row["verdict"] == "ERROR":
            assert escape(row["file"]) in errors and escape(row["error"]) in errors


def test_images_are_relative_lazy_files(run):
    run_dir, rows = run
    html = write_report(run_dir, thumbnail_size=40).read_text(encoding="utf-8")
    images = [attrs for tag, attrs in _parse(html).starts if tag == "img"]
    # One thumbnail per readable part, image + heatmap per NG part, a truth image for the mask.
    sources = sorted(attrs["src"] for attrs in images)
    readable = [i for i, r in enumerate(rows) if r["verdict"] != "ERROR"]
    ng = [i for i, r in enumerate(rows) if r["verdict"] == "NG"]
    with_mask = [i for i, r in enumerate(rows) if r["mask"]]
    assert sources == sorted(
        [f"report_files/thumbs/{i}.jpg" for i in readable]
        + [f"report_files/detail/{i}_{kind}.jpg" for i in ng for kind in ("image", "heatmap")]
        + [f"report_files/detail/{i}_truth.jpg" for i in with_mask]
    )
    for attrs in images:
        assert attrs["loading"] == "lazy" and attrs["alt"] is not None
        path = run_dir / unquote(attrs["src"])
        assert path.is_file(), attrs["src"]
        assert attrs["src"].startswith("report_files/")
        picture = cv2.imread(str(path))
        assert (picture.shape[1], picture.shape[0]) == (int(attrs["width"]), int(attrs["height"]))
        if "/thumbs/" in attrs["src"]:
            assert max(picture.shape[:2]) <= 40


def test_ground_truth_shown_beside_heatmap(run):
    run_dir, rows = run
    html = write_report(run_dir).read_text(encoding="utf-8")
    scratch = rows.index(next(r for r in rows if r["file"].endswith("ng_scratch.jpg")))
    detail = re.search(rf'id="ng-{scratch}">(.*?)</article>', html, re.S).group(1)
    assert "Ground truth: defect (scratch)" in detail
    assert f"report_files/detail/{scratch}_truth.jpg" in detail
    # Beside the heatmap means: the truth picture is the part with the mask's disc tinted green
    # (RGB 0,220,0) where make_run drew it, and untinted elsewhere.
    truth = cv2.cvtColor(
        cv2.imread(str(run_dir / f"report_files/detail/{scratch}_truth.jpg")), cv2.COLOR_BGR2RGB
    ).astype(int)
    green = (truth[..., 1] - truth[..., [0, 2]].max(axis=2)) > 40
    mask = cv2.imread(str(Path(rows[scratch]["mask"])), cv2.IMREAD_GRAYSCALE) > 0
    assert green[mask].mean() > 0.9 and green[~mask].mean() < 0.05
    nasty = rows.index(next(r for r in rows if r["file"].endswith(".png") and "<b>" in r["file"]))
    detail = re.search(rf'id="ng-{nasty}">(.*?)</article>', html, re.S).group(1)
    assert "false alarm" in detail


def test_rewrite_custom_out_and_no_leftovers(run, tmp_path):
    run_dir, _ = run
    write_report(run_dir)
    (run_dir / "report_files" / "stale.jpg").write_bytes(b"old")
    write_report(run_dir)  # second write replaces the images folder whole
    assert not (run_dir / "report_files" / "stale.jpg").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "heatmaps",
        "report.html",
        "report_files",
        "run.json",
        "scores.csv",
    ]

    out = write_report(run_dir, tmp_path / "elsewhere" / "line 3.html")
    html = out.read_text(encoding="utf-8")
    assert (tmp_path / "elsewhere" / "line 3_files" / "thumbs").is_dir()
    assert 'src="line%203_files/thumbs/' in html


def test_unreadable_pictures_are_reported_not_fatal(run):
    run_dir, rows = run
    dent = next(i for i, r in enumerate(rows) if r["file"].endswith("ng_dent.png"))
    (run_dir / rows[dent]["heatmap"]).unlink()
    ok = next(i for i, r in enumerate(rows) if r["verdict"] == "OK" and r["file"].startswith("/"))
    Path(rows[ok]["file"]).unlink()
    html = write_report(run_dir).read_text(encoding="utf-8")
    # Reported: an NG part's missing picture in its detail section, any other part's in the
    # list under the errors, each naming the file and the reason.
    detail = re.search(rf'id="ng-{dent}">(.*?)</article>', html, re.S).group(1)
    assert "no heatmap available" in detail
    heatmap = run_dir / rows[dent]["heatmap"]
    assert f'<p class="warning">{escape(f"heatmap {heatmap}: file not found")}</p>' in detail
    missing = _section(html, "errors").split("Pictures missing from this report", 1)[1]
    items = re.findall(r'<li><a href="#part-(\d+)">#\d+</a> (.*?)</li>', missing)
    assert items == [(str(ok), escape(f"image {rows[ok]['file']}: file not found"))]


def _write_run(run_dir: Path, rows: list[dict[str, str]]) -> None:
    """A run directory with ``rows`` (core columns and heatmap) and a calibration."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "scores.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "score", "verdict", "heatmap"])
        writer.writeheader()
        writer.writerows(rows)
    calibration = {"threshold": THRESHOLD, "pixel_threshold": PIXEL_THRESHOLD}
    (run_dir / "run.json").write_text(json.dumps({"calibration": calibration}), "utf-8")


def test_pictures_are_decoded_as_the_model_decoded_them(tmp_path, monkeypatch):
    """Issue 11: the report had its own decoder (cv2's 8-bit conversion), so a 16-bit or float
    image could look different on the QA page from the picture that was scored. Every picture
    must be ``load_image``'s output, shrunk with area averaging."""
    from anomaly.io.images import load_image
    from anomaly.report import images as report_images

    ramp = np.linspace(0.0, 1.0, 48 * 64).reshape(48, 64)
    sources = {
        # A narrow 16-bit range, where cv2's x >> 8 and load_image's x / 257 differ by one.
        "narrow16.png": (1000 + 400 * ramp).astype(np.uint16),
        # Float samples in 0..1, which cv2's 8-bit decode cannot read at all.
        "float01.tif": np.stack([ramp, ramp[::-1], 0.5 + 0 * ramp], axis=2).astype(np.float32),
    }
    rows = []
    for name, array in sources.items():
        bgr = array[:, :, ::-1] if array.ndim == 3 else array
        assert cv2.imwrite(str(tmp_path / name), np.ascontiguousarray(bgr))
        rows.append({"file": str(tmp_path / name), "score": "1", "verdict": "OK", "heatmap": ""})
    rows[0].update(score="3", verdict="NG", heatmap="heatmaps/0.png")  # detail images too
    _write_run(tmp_path / "run", rows)
    (tmp_path / "run" / "heatmaps").mkdir()
    _write_rgb(tmp_path / "run" / "heatmaps" / "0.png", _texture(0, 64)[:48])

    written: dict[str, np.ndarray] = {}
    encode = report_images.write_jpeg

    def capture(image, files_dir, relative):
        written[relative] = image.copy()
        return encode(image, files_dir, relative)

    monkeypatch.setattr(report_images, "write_jpeg", capture)
    html = write_report(tmp_path / "run", thumbnail_size=32).read_text(encoding="utf-8")
    for index, name in enumerate(sources):
        assert f"thumbs/{index}.jpg" in written, f"no thumbnail of {name}"
        scored = load_image(tmp_path / name)
        thumbnail = cv2.resize(scored, (32, 24), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(written[f"thumbs/{index}.jpg"], thumbnail, err_msg=name)
        # The JPEG on disk is that picture too, within JPEG's loss.
        on_disk = cv2.imread(str(tmp_path / "run" / "report_files" / "thumbs" / f"{index}.jpg"))
        difference = np.abs(on_disk[:, :, ::-1].astype(int) - thumbnail.astype(int))
        assert difference.mean() < 3, name
    np.testing.assert_array_equal(
        written["detail/0_image.jpg"], load_image(tmp_path / "narrow16.png")
    )
    assert "Pictures missing" not in html


def test_interrupted_report_leaves_the_previous_one_intact(run, monkeypatch):
    run_dir, _ = run
    out = write_report(run_dir)
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("anomaly.report.writer.build_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(run_dir)
    after = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    assert after == before  # same HTML, same images, no half-built folder left behind
    assert out.is_file() and not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_minimal_run_without_calibration(tmp_path, monkeypatch):
    """An old or hand-made run dir (core columns only, no calibration) still gives a report."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cv2.imwrite(str(tmp_path / "a.png"), _texture(1))
    (run_dir / "scores.csv").write_text(
        "file,score,verdict\na.png,0.5,OK\nb.png,,ERROR\nc.png,nan,BOGUS\na.png,0.7,UNCALIBRATED\n",
        encoding="utf-8",
    )
    (run_dir / "run.json").write_text("{}", encoding="utf-8")
    html = write_report(run_dir).read_text(encoding="utf-8")
    page = _parse(html)
    assert not page.errors and not page.stack
    assert "no calibration threshold" in html and "no OK/NG verdict" in html
    assert '<span class="verdict UNCALIBRATED">' in _section(html, "parts")
    errors = _section(html, "errors")
    assert "no reason recorded" in errors and "unknown verdict" in errors


def test_bad_run_dir_and_options(tmp_path):
    with pytest.raises(DataError, match=r"run\.json"):
        (tmp_path / "empty").mkdir()
        write_report(tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(ConfigError):
        write_report(tmp_path, thumbnail_size=4)


# --------------------------------------------------------------------------- headless browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _page_errors(stderr: str) -> list[str]:
    """Console errors of the page (CSP violations, script exceptions), not browser chatter."""
    return [
        line
        for line in stderr.splitlines()
        if "Uncaught" in line
        or ("CONSOLE" in line and "file://" in line)
        or "Content Security Policy" in line
        or "Refused to" in line
    ]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not on PATH; CI installs it with "
    "`apt-get install -y chromium` (Debian) to run this test",
)
def test_renders_in_headless_chromium(run, tmp_path):
    run_dir, rows = run
    url = write_report(run_dir).as_uri()

    dump = _chromium(["--dump-dom", url], tmp_path / "profile-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert not _page_errors(dump.stderr), _page_errors(dump.stderr)
    dom = dump.stdout
    assert 'id="summary"' in dom and "patchcore" in dom
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="histogram"' in dom
    assert 'id="parts-table"' in dom
    # The script ran: controls shown, count filled in, headers turned into sort buttons.
    assert f"Showing {len(rows)} of {len(rows)} parts" in dom
    assert '<div id="table-controls">' in dom and "<button" in dom
    ng = next(i for i, r in enumerate(rows) if r["verdict"] == "NG")
    detail = re.search(rf'<article class="detail" id="ng-{ng}">(.*?)</article>', dom, re.S)
    assert detail and f'src="report_files/detail/{ng}_heatmap.jpg"' in detail.group(1)

    shot = tmp_path / "report.png"
    result = _chromium(
        [f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "profile-shot"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not _page_errors(result.stderr), _page_errors(result.stderr)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2000, 1280)
    assert float(image.std()) > 20, "screenshot looks blank"
    # The thumbnails were loaded from report_files under the page's CSP: the parts' beige
    # texture (RGB ~150,140,120, absent from the page's own colours) fills many pixels.
    beige = np.all(np.abs(image.astype(int) - (120, 140, 150)) < 30, axis=2)
    assert beige.sum() > 5000, "thumbnails did not load"


HARNESS = """<script>
(function () {
  var table = document.getElementById("parts-table"), out = {};
  function shown() {
    return Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; })
      .map(function (r) { return r.id; });
  }
  function click(column) { table.tHead.rows[0].cells[column].querySelector("button").click(); }
  out.initial = shown();
  click(0); out.indexFirst = shown();
  click(0); out.indexSecond = shown();
  var ok = document.querySelector('input[data-verdict="OK"]');
  ok.checked = false; ok.dispatchEvent(new Event("change"));
  out.withoutOk = shown();
  var box = document.getElementById("file-filter");
  box.value = "NG_"; box.dispatchEvent(new Event("input"));
  out.searched = shown();
  out.count = document.getElementById("shown-count").textContent;
  var pre = document.createElement("pre");
  pre.id = "harness"; pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")
def test_table_sorting_and_filtering_script(run, tmp_path):
    """Drive the page's script in Chromium: sort by a column, filter by verdict and name."""
    run_dir, rows = run
    html = write_report(run_dir).read_text(encoding="utf-8")
    # The test's own script needs the CSP lifted; the page's script is left as shipped.
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    page = run_dir / "harness.html"
    page.write_text(html.replace("</body>", HARNESS), encoding="utf-8")
    result = _chromium(["--dump-dom", page.as_uri()], tmp_path / "profile")
    assert not _page_errors(result.stderr), _page_errors(result.stderr)
    found = re.search(r'<pre id="harness">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    out = json.loads(unescape(found.group(1)))

    def ids(indices):
        return [f"part-{i}" for i in indices]

    scored = [i for i, r in enumerate(rows) if r["score"]]
    by_score = sorted(scored, key=lambda i: -float(rows[i]["normalized_score"]))
    errors = [i for i, r in enumerate(rows) if not r["score"]]
    assert out["initial"] == ids(by_score + errors)  # static order: worst first
    assert out["indexFirst"] == ids(range(len(rows) - 1, -1, -1))
    assert out["indexSecond"] == ids(range(len(rows)))
    assert out["withoutOk"] == ids(i for i in range(len(rows)) if rows[i]["verdict"] != "OK")
    assert out["searched"] == ids(
        i for i, r in enumerate(rows) if r["verdict"] != "OK" and "ng_" in r["file"].lower()
    )
    assert out["count"] == f"Showing {len(out['searched'])} of {len(rows)} parts"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")
def test_console_error_check_is_not_vacuous(tmp_path):
    """The log lines the render test looks for do appear when a page has errors."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"><title>x</title></head>"
        '<body><img src="https://example.invalid/a.png" alt=""><script>nope();</script>'
        "</body></html>",
        encoding="utf-8",
    )
    errors = _page_errors(_chromium(["--dump-dom", page.as_uri()], tmp_path / "p").stderr)
    assert any("Uncaught" in e for e in errors)
    assert any("Content Security Policy" in e for e in errors)
