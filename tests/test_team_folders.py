"""A folder layout with the team's own names: ``data.good_dirs`` and ``data.defect_dirs``."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image, textured_part, with_defect

from anomaly.commands.cli import main
from anomaly.data import load_category
from anomaly.errors import DataError


def make_team_tree(root: Path, n_good: int = 20, n_defect: int = 10) -> Path:
    """``ok_front/`` good parts, ``def_front/`` and ``def_back/`` defects, ``notes/`` other."""
    rng = np.random.default_rng(0)
    for i in range(n_good):
        save_image(root / "ok_front" / f"p{i:03d}.png", textured_part(rng, 64))
    for folder in ("def_front", "def_back"):
        for i in range(n_defect):
            save_image(root / folder / f"p{i:03d}.png", with_defect(textured_part(rng, 64), rng)[0])
    save_image(root / "notes" / "sketch.png", textured_part(rng, 64))
    return root


def test_team_folder_names_are_read_as_the_team_means_them(tmp_path, caplog):
    make_team_tree(tmp_path / "castings")
    with caplog.at_level(logging.WARNING):
        dataset = load_category("castings", tmp_path, good_dirs=["ok_front"], defect_dirs=["def_*"])
    assert dataset.layout == "folder"
    good = [s for s in dataset.samples if s.label == 0]
    defects = [s for s in dataset.samples if s.label == 1]
    assert len(good) == 20 and all(s.path.parent.name == "ok_front" for s in good)
    assert {s.defect_type for s in defects} == {"def_front", "def_back"}
    assert len(defects) == 20
    assert not any("notes" in str(s.path) for s in dataset.samples)
    assert "notes" in caplog.text and "left out" in caplog.text


def test_without_the_names_the_error_says_which_key_to_set(tmp_path):
    make_team_tree(tmp_path / "castings")
    with pytest.raises(DataError, match=r"data\.good_dirs"):
        load_category("castings", tmp_path)


@pytest.mark.parametrize(
    ("good_dirs", "defect_dirs", "message"),
    [
        (["ok_front"], ["*_front"], "matches both"),
        (["ok_back"], None, r"no folder matches data\.good_dirs=\['ok_back'\]"),
        ([], None, "name at least one folder"),
    ],
)
def test_bad_folder_names_are_refused_naming_the_value(tmp_path, good_dirs, defect_dirs, message):
    make_team_tree(tmp_path / "castings")
    with pytest.raises(DataError, match=message):
        load_category("castings", tmp_path, good_dirs=good_dirs, defect_dirs=defect_dirs)


def test_fit_and_score_on_a_team_tree_from_the_cli(tmp_path):
    make_team_tree(tmp_path / "data" / "castings")
    out = tmp_path / "bundle"
    fit = ["fit", "--category", "castings", "--data-root", str(tmp_path / "data")]
    keys = ["data.good_dirs=[ok_front]", "data.defect_dirs=[def_front,def_back]"]
    fast = ["image_size=64", "patchcore.coreset_ratio=0.25", "runtime.progress=false"]
    assert main([*fit, "--out", str(out), *keys, *fast]) == 0
    run = tmp_path / "run"
    assert (
        main(["score", "--split", "test", "--model", str(out), "--out", str(run), *fast[2:]]) == 0
    )
    with (run / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["defect_type"] for row in rows} == {"good", "def_front", "def_back"}
    assert all("ok_front" in row["file"] for row in rows if row["defect_type"] == "good")
