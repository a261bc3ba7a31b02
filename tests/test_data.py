"""anomaly.data: samples, stratified splits, MVTec / folder layouts, elpv, the registry."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_mvtec, make_parts_category, save_image

from anomaly.data import (
    Dataset,
    Sample,
    default_data_dir,
    list_categories,
    load_category,
    load_directory,
    registry,
)
from anomaly.data.builtin import elpv as elpv_module
from anomaly.data.builtin.elpv import elpv_data_dir, load_elpv
from anomaly.data.layouts import detect_layout, load_folder, load_mvtec
from anomaly.data.splits import split_counts, stratified_split
from anomaly.errors import ConfigError, DataError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
PIXELS = np.full((8, 8, 3), 100, np.uint8)


# --- Sample / Dataset ---------------------------------------------------------------------------


def test_sample_validates_and_normalises() -> None:
    sample = Sample(path="a.png", label=np.int64(1), defect_type="crack", split="test")  # type: ignore[arg-type]
    assert sample.path == Path("a.png") and type(sample.label) is int
    with pytest.raises(DataError, match="split 'training'"):
        Sample(Path("a.png"), 0, "good", "training")
    with pytest.raises(DataError, match="label 2"):
        Sample(Path("a.png"), 2, "crack", "test")
    with pytest.raises(DataError, match="does not match defect type 'good'"):
        Sample(Path("a.png"), 1, "good", "test")


def test_dataset_select_summary_masks() -> None:
    samples = (
        Sample(Path("g0.png"), 0, "good", "train"),
        Sample(Path("g1.png"), 0, "good", "test"),
        Sample(Path("c0.png"), 1, "crack", "test", mask_path=Path("c0_mask.png")),
        Sample(Path("d0.png"), 1, "dent", "test"),
        Sample(Path("d1.png"), 1, "dent", "val"),
    )
    dataset = Dataset("widget", samples, "folder")
    assert [s.path.name for s in dataset.select("test", label=1)] == ["c0.png", "d0.png"]
    assert len(dataset.select("train")) == 1 and len(dataset) == 5
    assert dataset.has_masks
    assert not Dataset("x", samples[:2], "folder").has_masks
    assert dataset.summary() == {
        "train": {"good": 1, "defect": 0, "defect_types": {}},
        "val": {"good": 0, "defect": 1, "defect_types": {"dent": 1}},
        "test": {"good": 1, "defect": 2, "defect_types": {"crack": 1, "dent": 1}},
    }
    with pytest.raises(DataError, match="'eval'"):
        dataset.select("eval")
    with pytest.raises(DataError, match=r"g0\.png is listed more than once"):
        Dataset("x", (*samples, Sample(Path("g0.png"), 0, "good", "val")), "folder")


# --- splits -------------------------------------------------------------------------------------


def test_split_counts_largest_remainder_and_minimum_one() -> None:
    assert split_counts(10, FRACTIONS) == {"train": 6, "val": 2, "test": 2}
    assert split_counts(3, {"train": 0.8, "val": 0.1, "test": 0.1}) == {
        "train": 1,
        "val": 1,
        "test": 1,
    }
    assert split_counts(7, {"train": 0.5, "val": 0.5, "test": 0.0})["test"] == 0
    for n in range(40):
        counts = split_counts(n, {"a": 0.7, "b": 0.15, "c": 0.15})
        assert sum(counts.values()) == n
        if n >= 3:
            assert min(counts.values()) >= 1


def test_stratified_split_deterministic_and_stratified() -> None:
    strata = ["good"] * 50 + ["crack"] * 7 + ["dent"] * 3 + ["rare"] * 2
    first = stratified_split(strata, FRACTIONS, seed=1)
    assert first == stratified_split(strata, FRACTIONS, seed=1)
    assert first != stratified_split(strata, FRACTIONS, seed=2)
    per = Counter(zip(strata, first, strict=True))
    assert (per["good", "train"], per["good", "val"], per["good", "test"]) == (30, 10, 10)
    for stratum in ("crack", "dent"):  # enough items: present in every split
        assert all(per[stratum, split] >= 1 for split in FRACTIONS)
    assert per["rare", "train"] + per["rare", "val"] + per["rare", "test"] == 2


def test_stratified_split_strata_are_independent() -> None:
    # Adding items of one stratum must not reshuffle another.
    base = stratified_split(["a"] * 20 + ["b"] * 10, FRACTIONS, seed=0)
    more = stratified_split(["a"] * 20 + ["b"] * 15, FRACTIONS, seed=0)
    assert base[:20] == more[:20]


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.6, "val": 0.6}, "sum to 1"),
        ({"train": 1.2, "val": -0.2}, "val=-0.2"),
        ({}, "empty"),
    ],
)
def test_stratified_split_rejects_bad_fractions(fractions: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stratified_split(["a", "b"], fractions, seed=0)


# --- MVTec AD layout ----------------------------------------------------------------------------


def test_mvtec_layout(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "bottle", defects={"crack": 4, "scratch": 2})
    # <stem>.png masks are accepted; a defect without a mask keeps mask_path None.
    gt = root / "ground_truth" / "scratch"
    (gt / "000_mask.png").rename(gt / "000.png")
    (gt / "001_mask.png").unlink()
    save_image(root / "train" / "crack" / "100.png", PIXELS)  # supervised-only train defect

    assert detect_layout(root) == "mvtec"
    dataset = load_mvtec(root, val_fraction=0.5, seed=3)
    assert dataset.name == "bottle" and dataset.layout == "mvtec"
    train = dataset.select("train")
    assert len(dataset.select("train", label=0)) == 4
    assert [(s.defect_type, s.label) for s in train if s.label] == [("crack", 1)]
    held_out = dataset.select("val") + dataset.select("test")
    assert len(held_out) == 4 + 4 + 2
    for split in ("val", "test"):  # stratified: every class in both
        assert {s.defect_type for s in dataset.select(split)} == {"good", "crack", "scratch"}
    masks = {s.path.relative_to(root).as_posix(): s.mask_path for s in held_out}
    assert masks["test/crack/002.png"] == root / "ground_truth/crack/002_mask.png"
    assert masks["test/scratch/000.png"] == gt / "000.png"
    assert masks["test/scratch/001.png"] is None
    assert all(masks[f"test/good/{i:03d}.png"] is None for i in range(4))
    assert load_mvtec(root, val_fraction=0.5, seed=3) == dataset


def test_mvtec_validation_folder_is_the_val_split(mvtec_category: Path) -> None:
    save_image(mvtec_category / "validation" / "good" / "900.png", PIXELS)
    save_image(mvtec_category / "validation" / "crack" / "901.png", PIXELS)
    dataset = load_mvtec(mvtec_category)
    assert sorted(s.path.name for s in dataset.select("val")) == ["900.png", "901.png"]
    assert len(dataset.select("test")) == 4 + 3


def test_mvtec_without_good_training_images(tmp_path: Path) -> None:
    save_image(tmp_path / "cat" / "test" / "good" / "a.png", PIXELS)
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/good: no good training images"):
        load_mvtec(tmp_path / "cat")


# --- folder layout ------------------------------------------------------------------------------


def _folder_category(root: Path) -> Path:
    for i in range(10):
        save_image(root / "good" / f"g{i}.png", PIXELS)
    for i in range(5):
        save_image(root / "crack" / f"c{i}.png", PIXELS)
        save_image(root / "ground_truth" / "crack" / f"c{i}_mask.png", PIXELS[..., 0])
    for i in range(3):
        save_image(root / "dent" / "line2" / f"d{i}.jpg", PIXELS)
    return root


def test_folder_layout(tmp_path: Path) -> None:
    root = _folder_category(tmp_path / "parts")
    assert detect_layout(root) == "folder"
    dataset = load_folder(root, seed=0)
    assert dataset.layout == "folder" and len(dataset) == 18
    assert dataset.summary()["train"]["good"] == 6
    for split in ("train", "val", "test"):
        assert {s.defect_type for s in dataset.select(split)} == {"good", "crack", "dent"}
    by_name = {s.path.name: s for s in dataset.samples}
    assert by_name["c3.png"].mask_path == root / "ground_truth" / "crack" / "c3_mask.png"
    assert by_name["d0.jpg"].label == 1 and by_name["d0.jpg"].mask_path is None
    assert by_name["g0.png"].label == 0 and by_name["g0.png"].mask_path is None
    assert load_folder(root, seed=0) == dataset
    assert load_folder(root, seed=1) != dataset


def test_folder_layout_errors(tmp_path: Path) -> None:
    save_image(tmp_path / "cat" / "crack" / "a.png", PIXELS)
    (tmp_path / "cat" / "good").mkdir()
    with pytest.raises(DataError, match=r"good: no good images"):
        load_folder(tmp_path / "cat")
    with pytest.raises(ConfigError, match="leaves no images to train on"):
        load_folder(_folder_category(tmp_path / "ok"), val_fraction=0.5, test_fraction=0.5)


def test_detect_layout_and_load_directory(tmp_path: Path, mvtec_category: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: not a dataset folder: expected the MVTec"):
        detect_layout(tmp_path / "nothing")
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    # test_fraction means nothing to MVTec AD (its test split is on disk) and is dropped.
    dataset = load_directory(mvtec_category, val_fraction=0.5, test_fraction=0.3, seed=0)
    assert dataset.layout == "mvtec"
    assert load_directory(_folder_category(tmp_path / "f")).layout == "folder"


# --- elpv ---------------------------------------------------------------------------------------


def _csv_counts() -> Counter:
    rows = (elpv_data_dir() / "labels.csv").read_text().split("\n")
    return Counter((float(r.split()[1]), r.split()[2]) for r in rows if r.strip())


def test_elpv_counts_and_groups() -> None:
    csv = _csv_counts()
    dataset = load_elpv(Path("unused"))
    labels = Counter(s.label for s in dataset.samples)
    assert labels[0] == 1508 == sum(n for (p, _), n in csv.items() if p == 0)
    assert labels[1] == 715 == sum(n for (p, _), n in csv.items() if p == 1)
    assert dataset.name == "elpv" and dataset.layout == "elpv" and not dataset.has_masks
    assert {s.group for s in dataset.samples} == {"mono", "poly"}
    assert all(s.path.is_file() for s in dataset.samples[:5])


def test_elpv_split_stratified_by_label_and_cell_type() -> None:
    dataset = load_elpv(Path("unused"), seed=0)
    assert len({s.path for s in dataset.samples}) == len(dataset)  # no sample in two splits
    strata = Counter((s.label, s.group) for s in dataset.samples)
    per_split = Counter((s.label, s.group, s.split) for s in dataset.samples)
    for (label, group), n in strata.items():
        for split, fraction in FRACTIONS.items():
            assert abs(per_split[label, group, split] - fraction * n) <= 1
    assert load_elpv(Path("unused"), seed=0) == dataset
    assert load_elpv(Path("unused"), seed=1) != dataset


def test_elpv_options() -> None:
    uncertain = load_elpv(Path("unused"), include_uncertain=True)
    assert len(uncertain) == sum(_csv_counts().values()) == 2624
    assert Counter(s.defect_type for s in uncertain.samples)["uncertain"] == 401
    assert len(load_elpv(Path("unused"), include_uncertain="defect")) == 2624
    with pytest.raises(ConfigError, match="include_uncertain='maybe'"):
        load_elpv(Path("unused"), include_uncertain="maybe")


def test_elpv_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elpv_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install elpv-dataset"):
        load_elpv(Path("unused"))


# --- registry -----------------------------------------------------------------------------------


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANOMALY_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("ANOMALY_DATA_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "anomaly"


def test_load_category_from_root_and_builtin(mvtec_category: Path) -> None:
    root = mvtec_category.parent
    dataset = load_category("widget", root, val_fraction=0.5)
    assert dataset.name == "widget" and dataset.layout == "mvtec"
    assert load_category("elpv", root).layout == "elpv"


def test_root_category_shadows_builtin(tmp_path: Path) -> None:
    make_mvtec(tmp_path / "elpv")
    assert load_category("elpv", tmp_path).layout == "mvtec"
    listed = {(c["name"], c["source"]): c for c in list_categories(tmp_path)}
    assert "shadowed" in listed["elpv", "built-in"]["description"]


def test_unknown_category_lists_what_exists(tmp_path: Path, mvtec_category: Path) -> None:
    root = mvtec_category.parent
    (root / "notes").mkdir()
    with pytest.raises(
        DataError,
        match=rf"unknown category 'nope': built-in categories are elpv, sealant, sealant_line; "
        rf"found in {re.escape(str(root))}: notes, widget$",
    ):
        load_category("nope", root)
    with pytest.raises(DataError, match="no --data-root given"):
        load_category("nope")
    with pytest.raises(DataError, match="data root does not exist"):
        load_category("nope", tmp_path / "missing")


def test_builtin_with_broken_module(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = registry.BuiltinCategory("ghost", "d", "anomaly.data.no_such_module:load", "mvtec")
    monkeypatch.setitem(registry.BUILTIN_CATEGORIES, "ghost", broken)
    with pytest.raises(DataError, match="'ghost' is unavailable: cannot import"):
        load_category("ghost")


def test_list_categories(mvtec_category: Path) -> None:
    root = mvtec_category.parent
    (root / "junk").mkdir()
    categories = list_categories(root)
    assert [(c["name"], c["source"], c["layout"]) for c in categories] == [
        ("elpv", "built-in", "elpv"),
        ("sealant", "built-in", "mvtec"),
        ("sealant_line", "built-in", "mvtec"),
        ("widget", str(root), "mvtec"),
    ]
    assert all(set(c) == {"name", "source", "layout", "description"} for c in categories)
    assert [c["name"] for c in list_categories()] == ["elpv", "sealant", "sealant_line"]


def test_a_folder_fit_does_not_warn_about_options_nobody_set(tmp_path, caplog):
    from omegaconf import OmegaConf

    from anomaly.config import FitConfig
    from anomaly.data import load_dataset

    root = make_parts_category(tmp_path / "parts")
    config = OmegaConf.structured(FitConfig)
    config.data.root, config.data.category = str(root.parent), "parts"
    with caplog.at_level("WARNING"):
        load_dataset(config)
    assert "include_uncertain" not in caplog.text
    config.data.include_uncertain = True  # asked for, and meaningless here: say so
    with caplog.at_level("WARNING"):
        load_dataset(config)
    assert "['include_uncertain'] ignored" in caplog.text
