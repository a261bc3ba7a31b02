"""A YOLO / Ultralytics tree as a category: images without objects are good, objects are
defects of their class, boxes become masks that the pixel metrics call box masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_image, textured_part

from anomaly.commands.cli import main
from anomaly.data import load_category
from anomaly.errors import DataError
from anomaly.io.images import load_mask

SIZE = 64


def make_yolo(root: Path, with_test: bool = True) -> Path:
    """``root/data.yaml``; per split good parts (no label file, or an empty one) and parts with
    a dark box labelled ``scratch`` (class 0) or ``dent`` (class 1)."""
    rng = np.random.default_rng(0)
    splits = (
        {"train": (16, 4), "val": (6, 6), "test": (6, 6)}
        if with_test
        else {
            "train": (16, 4),
            "val": (8, 8),
        }
    )
    for split, (n_good, n_defect) in splits.items():
        for i in range(n_good):
            save_image(root / "images" / split / f"g{i:03d}.png", textured_part(rng, SIZE))
            if i % 2:  # an empty label file is a good part too
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"g{i:03d}.txt").write_text("")
        for i in range(n_defect):
            image = textured_part(rng, SIZE)
            y, x = rng.integers(8, SIZE - 24, 2)
            image[y : y + 12, x : x + 12] = 20
            save_image(root / "images" / split / f"d{i:03d}.png", image)
            cx, cy, side = (x + 6) / SIZE, (y + 6) / SIZE, 12 / SIZE
            label = root / "labels" / split / f"d{i:03d}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{i % 2} {cx:.6f} {cy:.6f} {side:.6f} {side:.6f}\n")
    lines = ["path: .", "train: images/train", "val: images/val"]
    lines += ["test: images/test"] if with_test else []
    lines += ["names:", "  0: scratch", "  1: dent"]
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return root


def test_a_yolo_tree_loads_as_good_parts_and_typed_defects_with_box_masks(tmp_path):
    make_yolo(tmp_path / "data" / "beads")
    dataset = load_category("beads", tmp_path / "data", data_dir=tmp_path / "cache")
    assert dataset.layout == "yolo"
    summary = dataset.summary()
    assert summary["train"]["good"] == 16 and summary["train"]["defect"] == 4
    assert summary["test"]["defect_types"] == {"scratch": 3, "dent": 3}
    defect = next(s for s in dataset.samples if s.label == 1)
    assert defect.mask_kind == "box masks"
    assert tmp_path / "cache" in defect.mask_path.parents  # never in the team's folders
    mask = load_mask(defect.mask_path)
    assert mask.shape == (SIZE, SIZE) and 100 <= mask.sum() <= 196  # the 12 x 12 box
    assert all(s.mask_path is None for s in dataset.samples if s.label == 0)


def test_without_a_test_entry_part_of_val_becomes_test(tmp_path):
    make_yolo(tmp_path / "beads", with_test=False)
    dataset = load_category("beads", tmp_path, data_dir=tmp_path / "cache")
    assert dataset.summary()["val"]["good"] + dataset.summary()["test"]["good"] == 8
    assert dataset.select("test")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.95 0.5 0.2 0.2", "reaches outside the image"),
        ("0 0.5 0.5 0.2", "expected 'class cx cy w h'"),
        ("7 0.5 0.5 0.2 0.2", "class id 7 is not in data.yaml's names"),
        ("0 0.5 half 0.2 0.2", "not numbers"),
    ],
)
def test_a_bad_label_file_is_named_with_its_line(tmp_path, line, message):
    root = make_yolo(tmp_path / "beads")
    label = root / "labels" / "train" / "d001.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(DataError, match=message) as error:
        load_category("beads", tmp_path, data_dir=tmp_path / "cache")
    assert f"{label}, line 2" in str(error.value)


def test_fit_on_a_yolo_tree_states_box_masks(tmp_path, capsys):
    make_yolo(tmp_path / "data" / "beads")
    command = ["fit", "--category", "beads", "--data-root", str(tmp_path / "data")]
    keys = [f"data.cache_dir={tmp_path / 'cache'}", "image_size=64", "runtime.progress=false"]
    assert main([*command, "--out", str(tmp_path / "bundle"), *keys]) == 0
    assert "(on box masks)" in capsys.readouterr().out
