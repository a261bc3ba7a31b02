"""The CLI end to end on a tiny dataset the test writes itself."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_parts_category, save_image, textured_part

from anomaly.artifacts.bundle import load_bundle, read_config
from anomaly.commands.cli import main
from anomaly.data import load_dataset
from anomaly.models import model_names

FAST = ["image_size=64", "patchcore.coreset_ratio=0.25", "runtime.progress=false"]


@pytest.fixture(scope="module")
def fitted_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    make_parts_category(root / "parts")
    out = root.parent / "bundle"
    code = main(
        [
            "fit",
            "--category",
            "parts",
            "--data-root",
            str(root),
            "--out",
            str(out),
            "data.val_fraction=0.5",
            *FAST,
        ]
    )
    assert code == 0
    return root, out


def _score(*args: str) -> int:
    """``anomaly score`` with ``args``, without progress bars; returns the exit code."""
    return main(["score", *args, "runtime.progress=false"])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_fit_writes_a_complete_bundle_with_the_resolved_config(fitted_bundle, capsys):
    _, bundle = fitted_bundle
    assert sorted(p.name for p in bundle.iterdir()) == [
        "config.yaml",
        "memory_bank.faiss",
        "metadata.json",
        "model.safetensors",
    ]
    config = (bundle / "config.yaml").read_text()
    assert "category: parts" in config and "image_size: 64" in config
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["calibration"]["threshold"] > 0
    assert metadata["evaluation"]["test"]["auroc"] > 0.8


def test_score_folder_writes_csv_and_heatmaps_and_records_bad_files(
    fitted_bundle, tmp_path, capsys
):
    root, bundle = fitted_bundle
    folder = tmp_path / "incoming"
    shutil.copytree(root / "parts" / "test", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "run"
    assert _score(str(folder), "--model", str(bundle), "--out", str(out)) == 0
    rows = {Path(r["file"]).name: r for r in _rows(out / "scores.csv")}
    assert len(rows) == 26
    assert rows["broken.png"]["verdict"] == "ERROR" and rows["broken.png"]["error"]
    assert rows["empty.jpg"]["error"].startswith("empty file")
    rejected = [r for r in rows.values() if r["verdict"] == "NG"]
    blobs = [r for name, r in rows.items() if name.startswith("blob_")]
    assert blobs and all(r["verdict"] == "NG" for r in blobs), "the blobs should be rejected"
    for row in rejected:
        assert (out / row["heatmap"]).is_file()
        assert float(row["normalized_score"]) >= 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["ERROR"] == 2
    assert "scored 24 of 26 files" in capsys.readouterr().out


def test_score_own_split_carries_ground_truth(fitted_bundle, tmp_path):
    _, bundle = fitted_bundle
    out = tmp_path / "split"
    assert _score("--split", "test", "--model", str(bundle), "--out", str(out)) == 0
    rows = _rows(out / "scores.csv")
    assert {r["label"] for r in rows} == {"0", "1"}
    assert all(r["mask"] for r in rows if r["label"] == "1")


def test_nothing_scorable_exits_non_zero(fitted_bundle, tmp_path):
    _, bundle = fitted_bundle
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["score", str(bad), "--model", str(bundle), "--out", str(tmp_path / "r")]) == 1
    assert _rows(tmp_path / "r" / "scores.csv")[0]["verdict"] == "ERROR"


def test_fit_help_lists_every_registered_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal
    names = model_names()
    assert {"patchcore", "padim", "baseline"} <= set(names)
    assert f"model (model): {', '.join(names)}" in text


def test_unknown_category_is_a_one_line_error(tmp_path, capsys):
    assert main(["fit", "--category", "nosuch", *FAST]) == 2
    error = capsys.readouterr().err
    assert "unknown category 'nosuch'" in error and "sealant" in error


def test_bad_override_is_a_one_line_error(capsys):
    assert main(["fit", "--category", "sealant", "image_size=big"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_missing_bundle_is_named(tmp_path, capsys):
    assert main(["score", str(tmp_path), "--model", str(tmp_path / "nomodel")]) == 2
    assert "nomodel" in capsys.readouterr().err


def test_categories_lists_builtin_and_found(fitted_bundle, capsys):
    root, _ = fitted_bundle
    assert main(["categories", "--data-root", str(root), "--json"]) == 0
    names = {c["name"] for c in json.loads(capsys.readouterr().out)}
    assert {"elpv", "sealant", "parts"} <= names


def test_add_grows_the_bank_recalibrates_and_keeps_the_previous_bundle(
    fitted_bundle, tmp_path, capsys
):
    _, bundle = fitted_bundle
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    before = load_bundle(work)
    new_good = tmp_path / "new_good"
    new_good.mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        save_image(new_good / f"good_{i}.png", textured_part(rng))
    (new_good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = main(["add", str(new_good), "--model", str(work), "runtime.progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "broken.png" in printed
    after = load_bundle(work)
    assert after.memory_bank_.size > before.memory_bank_.size
    assert after.n_train_images_ == before.n_train_images_ + 3
    # Recalibrated on the model's own validation split, with the grown bank's scores.
    val = load_dataset(read_config(work)).select("val")
    good = [s.path for s in val if s.label == 0]
    assert after.calibration_.validation["n_good"] == len(good)
    assert sorted(after.calibration_.scores_good) == pytest.approx(
        sorted(after.predict(good).scores), rel=1e-5
    )
    added = after.metadata_["data"]["added_images"]
    assert sorted(Path(a["file"]).name for a in added) == [f"good_{i}.png" for i in range(3)]
    # The replaced bundle survives, loadable, next to the new one.
    assert load_bundle(work.with_name("bundle.previous")).memory_bank_.size == (
        before.memory_bank_.size
    )


def test_add_refuses_validation_or_test_images(fitted_bundle, tmp_path, capsys):
    root, bundle = fitted_bundle
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    candidates = [p for p in (root / "parts").rglob("*.png") if "good" in p.parts]
    folder = tmp_path / "sneaky"
    folder.mkdir()
    for i, path in enumerate(candidates):
        shutil.copy(path, folder / f"renamed_{i}.png")
    code = main(["add", str(folder), "--model", str(work), "runtime.progress=false"])
    assert code != 0
    err = capsys.readouterr().err
    assert "validation/test images" in err and "renamed_" in err
    assert not work.with_name("bundle.previous").exists()  # refused before anything was written


def test_add_to_padim_says_it_cannot(tmp_path, capsys):
    root = tmp_path / "data"
    make_parts_category(root / "parts")
    out = tmp_path / "padim"
    fit = ["fit", "--category", "parts", "--data-root", str(root), "--out", str(out)]
    assert main([*fit, "--model", "padim", "data.val_fraction=0.5", *FAST]) == 0
    good = root / "parts" / "train" / "good" / "train_000.png"
    assert main(["add", str(good), "--model", str(out), "runtime.progress=false"]) != 0
    assert "PaDiM cannot add images" in capsys.readouterr().err


def test_compare_help_writes_percent_signs_once(capsys):
    # argparse does not %-format a description, so "%%" there is printed as it stands.
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0/1/5% miss rate" in text and "%%" not in text


def test_malformed_yaml_config_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    config = tmp_path / "line.yaml"
    config.write_text("data:\n  category: [sealant\n")
    assert main(["fit", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {config}: not valid YAML") and "\n" not in error


def test_an_output_folder_that_cannot_be_written_exits_3_with_its_path(
    fitted_bundle, tmp_path, capsys
):
    # A regular file where the run folder should go: the OS refuses (root included).
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    _, bundle = fitted_bundle
    image = save_image(tmp_path / "in" / "a.png", np.full((32, 32, 3), 120, np.uint8))
    out = blocker / "run"
    assert main(["score", str(image), "--model", str(bundle), "--out", str(out)]) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and str(blocker) in error and "\n" not in error


def test_add_on_a_full_disk_exits_3_and_leaves_the_bundle_and_no_half_copy(
    fitted_bundle, tmp_path, capsys, monkeypatch
):
    import errno

    _, bundle = fitted_bundle
    work = tmp_path / "models" / "bundle"
    shutil.copytree(bundle, work)
    files_before = sorted(p.name for p in work.iterdir())
    new_good = tmp_path / "new_good"
    save_image(new_good / "good_0.png", textured_part(np.random.default_rng(3)))
    real_copy = shutil.copyfile
    copied = []

    def copy_until_full(source, destination, **kwargs):
        if copied:  # the disk fills up on the second file of the backup copy
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        copied.append(source)
        return real_copy(source, destination, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_until_full)
    code = main(["add", str(new_good), "--model", str(work), "runtime.progress=false"])
    assert code == 3
    error = capsys.readouterr().err.strip()
    assert "No space left on device" in error and "\n" not in error
    # The bundle is untouched and loads; nothing half-copied is left beside it.
    assert sorted(p.name for p in work.iterdir()) == files_before
    load_bundle(work)
    assert sorted(p.name for p in work.parent.iterdir()) == ["bundle"]
