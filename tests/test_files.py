"""anomaly.io.files: one atomic writer and one file-mode policy for everything written.

Issue 11: files made through ``mkstemp`` were left 0600 (and folders through ``mkdtemp`` 0700),
so on a shared line PC the QA team could not open what the scorer wrote. Every test here runs
under two umasks, the common 022 and the group-sharing 002, because a mode hard-coded to 0644
is right under the first one only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from test_report import make_run

from anomaly.artifacts import rundir
from anomaly.evaluation import plots
from anomaly.io import files, jsonio
from anomaly.report import write_report


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest):
    """Run the test under ``request.param`` as the process umask; yields it, restores the old."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _hidden(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


def test_current_umask_is_read_without_changing_it(umask):
    assert files.current_umask() == umask
    assert files.file_mode() == 0o666 & ~umask
    assert files.directory_mode() == 0o777 & ~umask
    assert os.umask(umask) == umask  # still what the fixture set


def test_every_writer_gives_the_usual_mode(tmp_path, umask):
    written = [
        files.write_bytes_atomic(tmp_path / "new" / "a.bin", b"\x00\x01"),
        files.write_text_atomic(tmp_path / "b.txt", "text\n"),
        files.write_png_atomic(tmp_path / "c.png", np.zeros((4, 5, 3), np.uint8)),
        files.write_csv_atomic(tmp_path / "d.csv", ["x"], [{"x": 1}]),
    ]
    staging = files.make_staging_dir(tmp_path / "folder")
    written.append(files.write_bytes(staging / "e.jpg", b"jpeg"))
    for path in written:
        assert _mode(path) == 0o666 & ~umask, path
    assert _mode(staging) == 0o777 & ~umask  # mkdtemp alone would give 0700
    assert _mode(tmp_path / "new") == 0o777 & ~umask
    files.replace_directory(staging, tmp_path / "folder")
    assert _mode(tmp_path / "folder") == 0o777 & ~umask
    assert not _hidden(tmp_path)


def test_an_existing_file_is_replaced_with_the_usual_mode(tmp_path, umask):
    target = tmp_path / "scores.csv"
    target.write_text("old")
    target.chmod(0o600)
    files.write_text_atomic(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o666 & ~umask


def test_evaluation_plots_get_the_usual_mode(tmp_path, umask):
    """plots._save chmod-ed to a fixed 0644: wrong wherever the umask is not 022."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    written = [
        plots.roc_plot((labels, scores), tmp_path / "roc.png"),
        plots.score_histogram(labels, scores, 0.5, tmp_path / "hist.png"),
    ]
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert _mode(path) == 0o666 & ~umask, path
    assert not _hidden(tmp_path)


def test_report_and_its_images_get_the_usual_mode(tmp_path, monkeypatch, umask):
    monkeypatch.chdir(tmp_path)
    run_dir, _ = make_run(tmp_path)
    out = write_report(run_dir)
    images = run_dir / "report_files"
    pictures = sorted(images.rglob("*.jpg"))
    assert pictures
    for path in [out, *pictures]:
        assert _mode(path) == 0o666 & ~umask, path
    for folder in [images, *[p for p in images.rglob("*") if p.is_dir()]]:
        assert _mode(folder) == 0o777 & ~umask, folder
    assert not _hidden(run_dir)


def test_replace_directory_puts_the_previous_one_back_when_the_move_fails(tmp_path, monkeypatch):
    target = tmp_path / "report_files"
    target.mkdir()
    (target / "old.jpg").write_bytes(b"old")
    staging = files.make_staging_dir(target)
    (staging / "new.jpg").write_bytes(b"new")
    real_replace = os.replace

    def failing(source, destination):
        if Path(source) == staging:
            raise OSError("disk gone")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing)
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)  # the portable path
    with pytest.raises(OSError, match="disk gone"):
        files.replace_directory(staging, target)
    assert [p.name for p in target.iterdir()] == ["old.jpg"]


def _can_exchange(folder: Path) -> bool:
    first, second = folder / "probe_a", folder / "probe_b"
    first.mkdir()
    second.mkdir()
    swapped = files._exchange(first, second)
    for path in (first, second):
        path.rmdir()
    return swapped


def test_replace_directory_swaps_in_one_step_with_no_instant_without_the_target(
    tmp_path, monkeypatch
):
    if not _can_exchange(tmp_path):
        pytest.skip("this system cannot swap two directories in one step")
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = files.make_staging_dir(target)
    (staging / "new.txt").write_text("new")
    real_replace = os.replace

    def never_move_the_target_away(source, destination):
        assert Path(source) != target, "the target was renamed away: a window without it"
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", never_move_the_target_away)
    files.replace_directory(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no leftovers


def test_a_missing_bundle_names_the_previous_version_an_interrupted_save_left(tmp_path):
    from anomaly.artifacts.bundle import load_bundle
    from anomaly.errors import BundleError

    left = tmp_path / ".patchcore.old-4242"
    left.mkdir()
    with pytest.raises(BundleError, match=r"previous one at .*\.patchcore\.old-4242"):
        load_bundle(tmp_path / "patchcore")


def test_a_failing_row_leaves_the_previous_csv_and_no_temporary_file(tmp_path):
    target = files.write_csv_atomic(tmp_path / "scores.csv", ["x"], [{"x": 1}])

    def rows():
        yield {"x": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        files.write_csv_atomic(target, ["x"], rows())
    assert target.read_bytes() == b"x\r\n1\r\n"
    assert not _hidden(tmp_path)


def test_scores_csv_keeps_its_format(tmp_path):
    """Columns, order, CRLF and %.6g numbers are what readers of older runs expect."""
    rows = [
        rundir.ScoreRow("a.png", 1 / 3, 1 / 6, "OK", label=0, defect_type="good"),
        rundir.ScoreRow("b c.png", 123456789.0, 1e-7, "NG", "heatmaps/00001_b_c.png", label=1),
        rundir.ScoreRow('d,"e".png', error="empty file (0 bytes)"),
    ]
    rundir.write_scores(tmp_path, rows)
    assert (tmp_path / rundir.SCORES_CSV).read_bytes() == (
        b"file,score,normalized_score,verdict,heatmap,error,label,defect_type,mask\r\n"
        b"a.png,0.333333,0.166667,OK,,,0,good,\r\n"
        b"b c.png,1.23457e+08,1e-07,NG,heatmaps/00001_b_c.png,,1,,\r\n"
        b'"d,""e"".png",,,ERROR,,empty file (0 bytes),,,\r\n'
    )
    back = rundir.read_scores(tmp_path)
    assert [(r.file, r.verdict, r.label) for r in back] == [
        ("a.png", "OK", 0),
        ("b c.png", "NG", 1),
        ('d,"e".png', "ERROR", None),
    ]
    assert back[0].score == pytest.approx(1 / 3, rel=1e-6) and back[2].score is None


def test_heatmap_names_are_indexed_and_safe():
    assert rundir.heatmap_name(3, "/x/d defect #1.png") == "heatmaps/00003_d_defect_1.png"
    assert rundir.heatmap_name(12, "/x/###.png") == "heatmaps/00012__.png"


def test_json_understands_numpy_paths_and_tuples():
    value = {"a": np.float32(0.5), "b": np.arange(3), "c": (1, 2), "d": Path("x/y"), "e": True}
    assert jsonio.dumps(value, indent=None) == (
        '{"a": 0.5, "b": [0, 1, 2], "c": [1, 2], "d": "x/y", "e": true}'
    )
    with pytest.raises(TypeError, match="set"):
        jsonio.dumps({1, 2})
