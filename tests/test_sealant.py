"""Built-in ``sealant`` category: determinism, exact masks, splits, on-disk layout, caching."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly.data.builtin import sealant
from anomaly.data.builtin.sealant import (
    DEFECT_TYPES,
    SEALANT_VERSION,
    SealantCounts,
    SealantSpec,
    cache,
    ensure_sealant,
    generate_sealant,
    image_seed,
    load_sealant,
    render_part,
)
from anomaly.data.layouts import load_mvtec
from anomaly.errors import DataError
from anomaly.io.files import directory_mode, file_mode
from anomaly.io.images import load_image, load_mask

# One defect image per type and split, a few good ones: every code path, in about a second.
SMALL = SealantCounts(
    train_good=3, train_defect=1, val_good=2, val_defect=1, test_good=2, test_defect=1
)
# Two good images: enough to check caching and wiring.
TINY = SealantCounts(
    train_good=1, train_defect=0, val_good=0, val_defect=0, test_good=1, test_defect=0
)
SMALL_SPEC = SealantSpec(seed=3, counts=SMALL)


@pytest.fixture(scope="module")
def small_category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_sealant(tmp_path_factory.mktemp("data"), SMALL_SPEC, workers=1)


def test_render_is_deterministic_per_seed() -> None:
    image, mask = render_part(11)
    again, mask_again = render_part(11)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and mask.dtype == bool
    assert image.tobytes() == again.tobytes()
    assert not mask.any() and not mask_again.any()
    assert render_part(12)[0].tobytes() != image.tobytes()

    defect, defect_mask = render_part(11, defect="gap", severity=0.5)
    defect_again, defect_mask_again = render_part(11, defect="gap", severity=0.5)
    assert defect.tobytes() == defect_again.tobytes()
    assert np.array_equal(defect_mask, defect_mask_again)


@pytest.mark.parametrize("defect", DEFECT_TYPES)
@pytest.mark.parametrize("severity", [1.0, 0.0])
def test_mask_is_exactly_the_changed_pixels(defect: str, severity: float) -> None:
    good, _ = render_part(5, defect=None)
    image, mask = render_part(5, defect=defect, severity=severity)
    changed = np.any(image != good, axis=2)
    # The image differs from the defect-free render of the same seed nowhere outside the mask,
    # and the mask adds to those changed pixels only narrow gaps and enclosed holes.
    assert not (changed & ~mask).any()
    assert not (mask & ~sealant.defect_mask(changed)).any()
    assert mask.sum() <= 1.1 * changed.sum()
    # Even the subtlest defect is a visible patch, not a few stray pixels.
    assert mask.sum() >= 20
    assert mask.mean() < 0.1


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_severity_scales_the_defect(defect: str) -> None:
    areas = [
        np.mean([render_part(seed, defect=defect, severity=level)[1].sum() for seed in (1, 2)])
        for level in (0.0, 1.0)
    ]
    assert areas[1] > 1.5 * areas[0]


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown sealant defect"):
        render_part(0, defect="crack")
    with pytest.raises(DataError, match="severity"):
        render_part(0, defect="gap", severity=1.5)
    with pytest.raises(DataError, match="too small"):
        render_part(0, size=32)


def test_other_sizes_render() -> None:
    image, mask = render_part(4, size=160, defect="smear", severity=0.5)
    assert image.shape == (160, 160, 3) and mask.shape == (160, 160) and mask.any()


def test_image_seed_depends_on_split_type_and_index_only() -> None:
    seeds = {
        image_seed(0, split, kind, i)
        for split in ("train", "validation", "test")
        for kind in ("good", *DEFECT_TYPES)
        for i in range(3)
    }
    assert len(seeds) == 3 * 7 * 3
    assert image_seed(0, "test", "good", 1) == image_seed(0, "test", "good", 1)
    assert image_seed(0, "test", "good", 1) != image_seed(1, "test", "good", 1)


def test_layout_on_disk(small_category: Path) -> None:
    root = small_category
    assert root.name == "sealant"
    assert [p.name for p in root.parent.iterdir()] == ["sealant"]  # no temp folders left
    stems = [p.stem for p in root.glob("*/*/*.png") if p.parent.parent.name != "ground_truth"]
    assert len(stems) == len(set(stems)) == 3 + 2 + 2 + 3 * len(DEFECT_TYPES)
    for split in ("train", "validation", "test"):
        for kind in DEFECT_TYPES:
            images = sorted((root / split / kind).glob("*.png"))
            assert len(images) == 1, (split, kind)
            mask_path = root / "ground_truth" / kind / f"{images[0].stem}_mask.png"
            assert mask_path.is_file()
    record = json.loads((root / "VERSION").read_text())
    assert record["version"] == SEALANT_VERSION
    assert record["seed"] == 3 and record["size"] == 256
    assert record["counts"]["test_defect"] == 1


def test_every_file_matches_render_part(small_category: Path) -> None:
    # The cache's path (jobs, seeds, severities, PNG writer) against a direct render, pixel for
    # pixel, for every image and mask it wrote.
    for job in cache._jobs(SMALL_SPEC.seed, SMALL_SPEC.counts):
        kind = job.defect or "good"
        image = load_image(small_category / job.folder / kind / f"{job.stem}.png")
        expected, expected_mask = render_part(job.seed, SMALL_SPEC.size, job.defect, job.severity)
        assert np.array_equal(image, expected), job.stem
        if job.defect is not None:
            mask = load_mask(small_category / "ground_truth" / kind / f"{job.stem}_mask.png")
            assert np.array_equal(mask, expected_mask), job.stem
    # Seeds and severities come from (seed, split, type, index) as documented.
    bubble = next(j for j in cache._jobs(3, SMALL) if j.stem == "val_bubble_000")
    assert bubble.seed == image_seed(3, "validation", "bubble", 0) and bubble.severity == 0.5


# Mean RGB of the image, mask area, and mean value inside the mask, of ``render_part(7, defect,
# severity=0.5)``. Not SHA-256s of the pixels: OpenCV picks its code paths by CPU (AVX2/FMA or
# not), which moves a few pixels by one level (measured: ``cv2.setUseOptimized(False)`` changes
# the bytes of every image here, the means by ~2e-5). These numbers stay the same under that
# and change with any change to the draws, the geometry or the shading, so a refactor that
# alters the README's images fails here.
FINGERPRINTS = [
    (None, (92.520, 93.904, 93.370), 0, 0.0),
    ("gap", (92.898, 94.287, 93.750), 497, 103.69),
    ("thinning", (92.725, 94.111, 93.575), 512, 87.88),
    ("excess", (92.258, 93.639, 93.107), 504, 49.89),
    ("bubble", (92.517, 93.901, 93.367), 93, 61.59),
    ("smear", (92.351, 93.733, 93.200), 209, 93.34),
    ("offset", (92.430, 93.813, 93.279), 1128, 89.64),
]


@pytest.mark.parametrize(("defect", "means", "area", "inside"), FINGERPRINTS)
def test_renders_keep_their_fingerprint(
    defect: str | None, means: tuple[float, float, float], area: int, inside: float
) -> None:
    image, mask = render_part(7, defect=defect, severity=None if defect is None else 0.5)
    assert np.allclose(image.reshape(-1, 3).mean(axis=0), means, atol=0.01)
    assert abs(int(mask.sum()) - area) <= max(2, area // 100)
    if defect is not None:
        assert image[mask].mean() == pytest.approx(inside, abs=0.1)


def test_category_gets_the_usual_modes(small_category: Path) -> None:
    # Built in a staging folder: it must not keep mkdtemp's 0700 once in place.
    assert small_category.stat().st_mode & 0o777 == directory_mode()
    for path in small_category.rglob("*"):
        expected = directory_mode() if path.is_dir() else file_mode()
        assert path.stat().st_mode & 0o777 == expected, path


def test_loads_through_mvtec_loader(small_category: Path) -> None:
    dataset = load_mvtec(small_category, name="sealant")
    assert dataset.layout == "mvtec" and dataset.name == "sealant"
    assert len(dataset.select("train", label=0)) == 3
    assert len(dataset.select("val", label=0)) == 2
    assert len(dataset.select("test", label=0)) == 2
    for split in ("train", "val", "test"):
        defects = dataset.select(split, label=1)
        assert sorted(s.defect_type for s in defects) == sorted(DEFECT_TYPES)
        assert all(s.mask_path is not None and s.mask_path.is_file() for s in defects)
    for sample in dataset.samples:
        if sample.label == 0:
            assert sample.mask_path is None
        else:
            assert load_mask(sample.mask_path).any()


def test_good_images_do_not_depend_on_counts_or_workers(
    tmp_path: Path, small_category: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other counts, and rendered by two worker processes: the same files, byte for byte.
    monkeypatch.setattr(cache, "_PARALLEL_MIN_JOBS", 1)
    other = generate_sealant(tmp_path, SealantSpec(seed=3, counts=TINY), workers=2)
    for name in ("train/good/train_good_000.png", "test/good/test_good_000.png"):
        assert (other / name).read_bytes() == (small_category / name).read_bytes()


def test_ensure_reuses_and_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_sealant(tmp_path, SealantSpec(seed=1, counts=TINY))
    marker = first / "train" / "good" / "marker.txt"
    marker.write_text("left by the test")

    assert ensure_sealant(tmp_path, SealantSpec(seed=1, counts=TINY)) == first
    assert marker.exists()  # reused as is

    monkeypatch.setattr(cache, "SEALANT_VERSION", "999.0.0")
    assert ensure_sealant(tmp_path, SealantSpec(seed=1, counts=TINY)) == first
    assert not marker.exists()  # generator version changed: regenerated
    assert json.loads((first / "VERSION").read_text())["version"] == "999.0.0"

    marker.write_text("again")
    ensure_sealant(tmp_path, SealantSpec(seed=2, counts=TINY))
    assert not marker.exists()  # other seed: regenerated

    (first / "VERSION").write_text("garbage")
    ensure_sealant(tmp_path, SealantSpec(seed=2, counts=TINY))
    assert json.loads((first / "VERSION").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sealant"]


def test_load_sealant_generates_then_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_ensure = cache.ensure_sealant

    def small_ensure(data_dir: Path, *args: object, **kwargs: object) -> Path:
        return real_ensure(data_dir, SealantSpec(counts=TINY))

    monkeypatch.setattr(cache, "ensure_sealant", small_ensure)
    dataset = load_sealant(tmp_path, val_fraction=0.3, test_fraction=0.2, seed=4, unused=True)
    assert dataset.name == "sealant"
    assert (tmp_path / "sealant" / "VERSION").is_file()
    assert len(dataset.select("train", label=0)) == 1
    assert len(dataset.samples) == 2


@pytest.mark.parametrize("same", [True, False])
def test_install_race_keeps_only_the_same_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same: bool
) -> None:
    # Another process's rename lands between our check and our rename, so ours fails: theirs
    # is kept when it is the same category, and the failure is raised when it is not.
    spec = SealantSpec(seed=1, counts=TINY)
    theirs = generate_sealant(
        tmp_path / "other", spec if same else SealantSpec(seed=2, counts=TINY)
    )
    (theirs / "theirs.txt").write_text("installed first")

    def lose_the_race(staging: Path, target: Path) -> None:
        shutil.copytree(theirs, target)
        raise OSError(39, os.strerror(39), str(target))

    monkeypatch.setattr(cache, "replace_directory", lose_the_race)
    data = tmp_path / "data"
    if same:
        assert generate_sealant(data, spec) == data / "sealant"
        assert (data / "sealant" / "theirs.txt").is_file()
    else:
        with pytest.raises(OSError):
            generate_sealant(data, spec)
    assert sorted(p.name for p in data.iterdir()) == ["sealant"]  # our staging folder is gone
