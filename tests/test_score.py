"""``anomaly score``: the run directory it writes, and the ``score --report`` path end to end.

The unit tests drive :func:`anomaly.commands.score.score_paths` with a stand-in model whose
score is an image's brightest pixel, so every verdict is known in advance; the end-to-end test
runs the CLI as ``make demo`` does (fit, then ``score --split test --report``) on a tiny
category and checks what a QA user relies on.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import stat
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from conftest import make_parts_category, save_image
from omegaconf import OmegaConf
from test_files import umask  # noqa: F401  (the fixture: each test runs under two umasks)

from anomaly.artifacts import rundir
from anomaly.commands.cli import main
from anomaly.commands.score import score_paths
from anomaly.data import load_dataset
from anomaly.decision.calibration import Calibration
from anomaly.models.base import Prediction

THRESHOLD = 2.0
PIXEL_THRESHOLD = 1.5
FAST = ["image_size=64", "patchcore.coreset_ratio=0.25", "runtime.progress=false"]


class BrightestPixel:
    """Stand-in for a fitted model: score = brightest sample / 100, map = brightness / 100.

    With ``numpy_calibration`` its calibration holds numpy numbers, as one computed in the same
    process can; otherwise plain ones, as one loaded from a bundle's JSON.
    """

    model_name = "brightest"
    batch_size = 2
    progress = False

    def __init__(self, numpy_calibration: bool = False) -> None:
        number = np.float32 if numpy_calibration else float
        self.calibration_ = Calibration(
            threshold=number(THRESHOLD),
            pixel_threshold=number(PIXEL_THRESHOLD),
            method="miss_rate",
            target_miss_rate=0.05,
            target_supported=True,
            confidence=0.95,
            validation={"n_good": 4, "miss_rate": number(0.0)},
            note="stand-in",
            scores_good=[number(1.0), number(1.1)],
            scores_defect=[number(2.5)],
        )

    def check_is_fitted(self) -> None:
        pass

    def get_params(self) -> dict[str, object]:
        return {}

    defect_types_ = ()  # names no defect types, like every model without a type head

    def score_batch(self, images: list[np.ndarray]) -> Prediction:
        scores, maps = self.score_arrays(images)
        return Prediction(scores=scores, anomaly_maps=maps, threshold=self.calibration_.threshold)

    def score_arrays(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        maps = [image.max(axis=2).astype(np.float32) / 100 for image in images]
        return np.array([m.max() for m in maps]), maps


def _gray(value: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Four parts with known scores (1.0, 1.99, 2.0, 2.5) and an empty file."""
    folder = tmp_path / "in"
    save_image(folder / "a_good.png", _gray(100))
    save_image(folder / "b_just_under.png", _gray(199))
    save_image(folder / "c_at_threshold.png", _gray(200))
    defect = _gray(100)
    defect[4:8, 4:8] = 250
    save_image(folder / "d defect #1.png", defect)
    (folder / "e_empty.png").write_bytes(b"")
    return folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_directory_files_get_the_usual_mode(inputs, tmp_path, umask):  # noqa: F811
    """Issue 11: mkstemp made scores.csv, run.json and heatmaps 0600, unreadable for QA."""
    out = tmp_path / "run"
    score_paths(BrightestPixel(), [inputs], out)
    files = [out / "scores.csv", out / "run.json", *sorted((out / "heatmaps").iterdir())]
    assert len(files) == 4  # two NG parts, two heatmaps
    for path in files:
        assert _mode(path) == 0o666 & ~umask, path
    for folder in (out, out / "heatmaps"):
        assert _mode(folder) == 0o777 & ~umask, folder
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_scores_csv_is_byte_compatible_and_verdicts_follow_the_one_rule(inputs, tmp_path):
    out = tmp_path / "run"
    run = score_paths(BrightestPixel(), [inputs], out)
    # The format as it always was: header, CRLF line ends, %.6g numbers, empty for missing.
    expected = (
        "file,score,normalized_score,verdict,heatmap,error,label,defect_type,mask\r\n"
        f"{inputs / 'a_good.png'},1,0.5,OK,,,,,\r\n"
        f"{inputs / 'b_just_under.png'},1.99,0.995,OK,,,,,\r\n"
        # score == threshold is NG: the rule of anomaly.decision.verdict
        f"{inputs / 'c_at_threshold.png'},2,1,NG,heatmaps/00002_c_at_threshold.png,,,,\r\n"
        f"{inputs / 'd defect #1.png'},2.5,1.25,NG,heatmaps/00003_d_defect_1.png,,,,\r\n"
        f"{inputs / 'e_empty.png'},,,ERROR,,empty file (0 bytes),,,\r\n"
    )
    assert (out / "scores.csv").read_bytes() == expected.encode("utf-8")
    assert run.counts == {"OK": 2, "NG": 2, "ERROR": 1, "UNCALIBRATED": 0}
    # Read back through the one schema, as the report reads it.
    back = rundir.read_scores(out)
    assert [(r.file, r.verdict, r.heatmap, r.error) for r in back] == [
        (r.file, r.verdict, r.heatmap, r.error) for r in run.rows
    ]
    assert [r.score for r in back] == [1.0, 1.99, 2.0, 2.5, None]


def test_run_json_holds_the_calibration_even_with_numpy_numbers(inputs, tmp_path):
    out = tmp_path / "run"
    score_paths(
        BrightestPixel(numpy_calibration=True), [inputs], out, run_info={"category": "widget"}
    )
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["calibration"]["threshold"] == THRESHOLD
    assert info["calibration"]["pixel_threshold"] == PIXEL_THRESHOLD
    assert info["calibration"]["validation"] == {"n_good": 4, "miss_rate": 0.0}
    assert info["calibration"]["scores_good"] == pytest.approx([1.0, 1.1])
    assert info["calibration"]["scores_defect"] == [2.5]
    assert info["counts"] == {"OK": 2, "NG": 2, "ERROR": 1, "UNCALIBRATED": 0}
    assert info["category"] == "widget" and info["model"] == "brightest"


# ------------------------------------------------------------------ `score --report` end to end


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo") / "data"
    make_parts_category(root / "parts")
    bundle = root.parent / "bundle"
    arguments = ["fit", "--category", "parts", "--data-root", str(root), "--out", str(bundle)]
    assert main([*arguments, "data.val_fraction=0.5", *FAST]) == 0
    return root / "parts", bundle


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        for name in ("src", "href"):
            if values.get(name):
                self.links.append((tag, values[name]))


def test_score_split_with_report_as_make_demo_runs_it(fitted, tmp_path, capsys):
    category, bundle = fitted
    out = tmp_path / "score"
    command = ["score", "--split", "test", "--model", str(bundle), "--out", str(out)]
    code = main([*command, "--report", "runtime.progress=false"])  # as `make demo` runs it
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {(out / 'report.html').absolute()}" in printed

    # scores.csv: one row per test image of the category's test split, each with a verdict.
    with (out / "scores.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    split = {
        str(s.path): s for s in load_dataset(OmegaConf.load(bundle / "config.yaml")).select("test")
    }
    assert sorted(r["file"] for r in rows) == sorted(split)
    assert all(Path(file).is_relative_to(category) for file in split)
    assert {r["verdict"] for r in rows} == {"OK", "NG"}

    # run.json carries the calibration the verdicts were made with.
    calibration = json.loads((out / "run.json").read_text(encoding="utf-8"))["calibration"]
    metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))
    assert calibration["threshold"] == metadata["calibration"]["threshold"] > 0
    assert calibration["pixel_threshold"] == metadata["calibration"]["pixel_threshold"]
    for row in rows:
        # The CSV keeps 6 significant digits, so a score within rounding of the threshold
        # may print equal to it on either side.
        score = float(row["score"])
        if abs(score - calibration["threshold"]) > 1e-5 * calibration["threshold"]:
            assert row["verdict"] == ("NG" if score >= calibration["threshold"] else "OK")
        assert float(row["normalized_score"]) == pytest.approx(
            score / calibration["threshold"], rel=1e-5
        )
        # Ground truth of the split is carried over.
        sample = split[row["file"]]
        assert (row["label"], row["defect_type"]) == (str(sample.label), sample.defect_type)

    # Every NG part has its heatmap on disk; OK parts have none.
    for row in rows:
        if row["verdict"] == "NG":
            assert row["heatmap"] and (out / row["heatmap"]).is_file(), row
        else:
            assert row["heatmap"] == ""
    # The blobs are plain to see: every one of them is rejected.
    assert all(r["verdict"] == "NG" for r in rows if r["label"] == "1")

    # report.html: every picture and link it names exists.
    html = (out / "report.html").read_text(encoding="utf-8")
    page = _Links()
    page.feed(html)
    files = [(tag, link) for tag, link in page.links if not link.startswith("#")]
    assert files, "the report links no files"
    for tag, link in files:
        assert not re.match(r"(?i)[a-z][a-z0-9+.-]*:|/", link), link  # relative, no scheme
        assert (out / unquote(link)).is_file(), (tag, link)
    for _tag, link in page.links:
        if link.startswith("#"):
            assert link[1:] in page.ids, link
    thumbnails = [link for tag, link in files if tag == "img" and "/thumbs/" in link]
    assert len(thumbnails) == len(rows)
    n_ng = sum(r["verdict"] == "NG" for r in rows)
    heatmaps = [link for tag, link in files if tag == "img" and link.endswith("_heatmap.jpg")]
    assert len(heatmaps) == n_ng


class DiesOnSecondBatch(BrightestPixel):
    """A run killed midway: the second batch never comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def score_batch(self, images: list[np.ndarray]) -> Prediction:
        self.batches += 1
        if self.batches == 2:
            raise KeyboardInterrupt
        return super().score_batch(images)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class Counting(BrightestPixel):
    """Counts the images it is asked to score."""

    def __init__(self, threshold: float = THRESHOLD) -> None:
        super().__init__()
        self.calibration_.threshold = threshold
        self.images = 0

    def score_batch(self, images: list[np.ndarray]) -> Prediction:
        self.images += len(images)
        return super().score_batch(images)


def test_a_killed_run_keeps_the_previous_run_whole_and_resumes_without_rescoring(inputs, tmp_path):
    out = tmp_path / "run"
    score_paths(BrightestPixel(), [inputs], out)
    before = _snapshot(out)
    assert any(name.startswith("heatmaps/") for name in before)
    with pytest.raises(KeyboardInterrupt):  # batches of 2: killed in the second
        score_paths(DiesOnSecondBatch(), [inputs], out)
    # The previous run is whole (the same CSV and the heatmaps it points at), no lock left.
    now = _snapshot(out)
    assert {k: v for k, v in now.items() if not k.startswith(".partial/")} == before
    partial = out / ".partial" / "rows.csv"
    assert sorted(rundir._read_partial_rows(partial)) == [0, 1]
    with partial.open("a", newline="") as stream:  # a row the kill cut short: scored again
        stream.write(f"2,{inputs / 'c_at_threshold.png'},2,1,N")
    counting = Counting()
    one_by_one = DiesOnSecondBatch()
    one_by_one.batch_size = 1  # scores c, dies on d
    with pytest.raises(KeyboardInterrupt):  # killed again, after the cut line: still readable
        score_paths(one_by_one, [inputs], out, resume=True)
    assert sorted(rundir._read_partial_rows(partial)) == [0, 1, 2]
    run = score_paths(counting, [inputs], out, resume=True)
    assert counting.images == 1  # d; a-c were kept, e is unreadable
    assert run.resumed == 3 and run.counts == {"OK": 2, "NG": 2, "ERROR": 1, "UNCALIBRATED": 0}
    # Exactly what an uninterrupted run wrote, in input order, and nothing left over.
    assert _snapshot(out)["scores.csv"] == before["scores.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["heatmaps", "run.json", "scores.csv"]


def test_resume_refuses_another_model_and_a_plain_run_discards_the_rest(inputs, tmp_path, caplog):
    from anomaly.errors import DataError

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        score_paths(DiesOnSecondBatch(), [inputs], out)
    with pytest.raises(DataError, match="cannot resume"):
        score_paths(Counting(threshold=3.0), [inputs], out, resume=True)
    counting = Counting()
    with caplog.at_level("WARNING"):
        score_paths(counting, [inputs], out)
    assert "discarding the 2 rows of an interrupted run" in caplog.text
    assert counting.images == 4


def test_a_second_run_into_a_busy_folder_is_refused(inputs, tmp_path, capsys):
    from anomaly.errors import RunDirBusyError

    out = tmp_path / "run"
    out.mkdir()
    # A live owner: this very process.
    (out / rundir.LOCK_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    )
    with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}"):
        score_paths(BrightestPixel(), [inputs], out)
    assert not (out / "scores.csv").exists() and (out / rundir.LOCK_FILE).exists()


def test_the_lock_of_a_run_that_died_is_taken_over(inputs, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / rundir.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level("WARNING"):
        run = score_paths(BrightestPixel(), [inputs], out)
    assert "no longer running" in caplog.text
    assert run.counts["NG"] == 2 and not (out / rundir.LOCK_FILE).exists()
