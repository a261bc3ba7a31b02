"""Built-in ``sealant_line`` category: frame, exact masks, tiny defects, determinism, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomaly.data.builtin import sealant
from anomaly.data.builtin.sealant import (
    DEFECT_TYPES,
    LINE_CATEGORY,
    SEALANT_LINE_VERSION,
    SealantCounts,
    SealantLineSpec,
    cache,
    ensure_sealant_line,
    generate_sealant_line,
    line,
    render_line_part,
)
from anomaly.data.registry import BUILTIN_CATEGORIES, load_category
from anomaly.errors import DataError
from anomaly.io.images import load_image, load_mask

# A quarter of the full frame a side, same aspect: the same parts, ~16 times cheaper to render.
SMALL_FRAME = {"width": 512, "height": 160}
# Half the full frame a side: the bead is ~12 px wide, enough for the subtlest defect to show.
MASK_FRAME = {"width": 1024, "height": 320}
# One defect image per type (test split) and a few good ones: every code path, in seconds.
SMALL = SealantCounts(
    train_good=2, train_defect=0, val_good=1, val_defect=0, test_good=1, test_defect=1
)
TINY = SealantCounts(
    train_good=1, train_defect=0, val_good=0, val_defect=0, test_good=1, test_defect=0
)
SMALL_SPEC = SealantLineSpec(seed=3, counts=SMALL, **SMALL_FRAME)


@pytest.fixture(scope="module")
def small_category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_sealant_line(tmp_path_factory.mktemp("data"), SMALL_SPEC)


def test_full_frame_is_wide_and_its_subtlest_defects_are_tiny() -> None:
    # The point of the category: at 2048 x 640 the subtle end of the spread covers well under
    # 0.1% of the frame (a few hundred pixels), which a squash to 256 x 256 all but erases.
    image, mask = render_line_part(2, defect="bubble", severity=0.0)
    assert image.shape == (640, 2048, 3) and image.dtype == np.uint8
    assert image.shape[1] / image.shape[0] == pytest.approx(3.2)
    assert mask.shape == (640, 2048)
    assert 50 <= mask.sum() < 0.001 * mask.size


def test_render_is_deterministic_per_seed() -> None:
    image, mask = render_line_part(11, **SMALL_FRAME)
    assert image.shape == (160, 512, 3) and mask.shape == (160, 512)
    assert image.tobytes() == render_line_part(11, **SMALL_FRAME)[0].tobytes()
    assert not mask.any()  # a good part has no mask
    assert render_line_part(12, **SMALL_FRAME)[0].tobytes() != image.tobytes()
    defect, defect_mask = render_line_part(11, defect="offset", severity=0.5, **SMALL_FRAME)
    again, mask_again = render_line_part(11, defect="offset", severity=0.5, **SMALL_FRAME)
    assert defect.tobytes() == again.tobytes() and np.array_equal(defect_mask, mask_again)


def test_both_path_variants_are_drawn() -> None:
    rng = np.random.default_rng
    variants = {sealant.scene.draw_line_scene(rng(seed), 512, 160).variant for seed in range(12)}
    assert variants == {"run", "hairpin"}


@pytest.mark.parametrize("defect", DEFECT_TYPES)
@pytest.mark.parametrize("severity", [1.0, 0.0])
def test_mask_is_exactly_the_changed_pixels(defect: str, severity: float) -> None:
    good, _ = render_line_part(5, **MASK_FRAME)
    image, mask = render_line_part(5, defect=defect, severity=severity, **MASK_FRAME)
    changed = np.any(image != good, axis=2)
    # As for sealant: nothing changes outside the mask, and the mask adds to the changed
    # pixels only narrow gaps and enclosed holes.
    assert not (changed & ~mask).any()
    assert not (mask & ~sealant.defect_mask(changed)).any()
    assert mask.sum() <= 1.1 * changed.sum()
    assert mask.sum() >= 20
    assert mask.mean() < 0.02


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_severity_spreads_from_obvious_to_subtle(defect: str) -> None:
    areas = [
        np.mean(
            [render_line_part(s, defect=defect, severity=v, **SMALL_FRAME)[1].sum() for s in (1, 2)]
        )
        for v in (0.0, 1.0)
    ]
    assert areas[1] > 1.5 * areas[0] > 0


def test_render_rejects_bad_frames_and_arguments() -> None:
    with pytest.raises(DataError, match="width must be the long side"):
        render_line_part(0, width=160, height=512)
    with pytest.raises(DataError, match="too small"):
        render_line_part(0, width=512, height=32)
    with pytest.raises(DataError, match="unknown sealant defect"):
        render_line_part(0, defect="crack", **SMALL_FRAME)
    with pytest.raises(DataError, match="severity"):
        render_line_part(0, defect="gap", severity=-0.1, **SMALL_FRAME)


def test_layout_on_disk(small_category: Path) -> None:
    root = small_category
    assert root.name == LINE_CATEGORY
    assert [p.name for p in root.parent.iterdir()] == [LINE_CATEGORY]  # no staging left
    for kind in DEFECT_TYPES:
        (image_path,) = (root / "test" / kind).glob("*.png")
        mask = load_mask(root / "ground_truth" / kind / f"{image_path.stem}_mask.png")
        assert mask.shape == (160, 512) and mask.any()
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
    assert load_image(root / "train" / "good" / "train_good_000.png").shape == (160, 512, 3)
    record = json.loads((root / "VERSION").read_text())
    assert record["version"] == SEALANT_LINE_VERSION and record["generator"].endswith(".line")
    assert (record["seed"], record["width"], record["height"]) == (3, 512, 160)
    assert record["counts"]["test_defect"] == 1


def test_every_file_matches_render_line_part(small_category: Path) -> None:
    for job in cache._jobs(SMALL_SPEC.seed, SMALL_SPEC.counts):
        kind = job.defect or "good"
        image = load_image(small_category / job.folder / kind / f"{job.stem}.png")
        expected, expected_mask = SMALL_SPEC.render(job.seed, job.defect, job.severity)
        assert np.array_equal(image, expected), job.stem
        mask_path = small_category / "ground_truth" / kind / f"{job.stem}_mask.png"
        if job.defect is None:
            assert not mask_path.exists()
        else:
            assert np.array_equal(load_mask(mask_path), expected_mask), job.stem


def test_workers_render_the_same_files(
    tmp_path: Path, small_category: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spec travels to spawned workers; other counts do not move an image.
    monkeypatch.setattr(cache, "_PARALLEL_MIN_JOBS", 1)
    spec = SealantLineSpec(seed=3, counts=TINY, **SMALL_FRAME)
    other = generate_sealant_line(tmp_path, spec, workers=2)
    for name in ("train/good/train_good_000.png", "test/good/test_good_000.png"):
        assert (other / name).read_bytes() == (small_category / name).read_bytes()


def test_ensure_reuses_and_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SealantLineSpec(seed=1, counts=TINY, **SMALL_FRAME)
    first = ensure_sealant_line(tmp_path, spec)
    marker = first / "train" / "good" / "marker.txt"
    marker.write_text("left by the test")
    assert ensure_sealant_line(tmp_path, spec) == first
    assert marker.exists()  # same record: reused as is

    monkeypatch.setattr(line, "SEALANT_LINE_VERSION", "999.0.0")
    ensure_sealant_line(tmp_path, spec)
    assert not marker.exists()  # generator version changed: regenerated
    assert json.loads((first / "VERSION").read_text())["version"] == "999.0.0"

    marker.write_text("again")
    ensure_sealant_line(tmp_path, SealantLineSpec(seed=1, counts=TINY, width=640, height=160))
    assert not marker.exists()  # other frame: regenerated
    assert load_image(first / "test" / "good" / "test_good_000.png").shape == (160, 640, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LINE_CATEGORY]


def test_registered_and_loaded_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = BUILTIN_CATEGORIES[LINE_CATEGORY]
    assert builtin.layout == "mvtec" and "2048x640" in builtin.description
    real_ensure = line.ensure_sealant_line

    def small_ensure(data_dir: Path, *args: object, **kwargs: object) -> Path:
        return real_ensure(data_dir, SMALL_SPEC)

    monkeypatch.setattr(line, "ensure_sealant_line", small_ensure)
    dataset = load_category(LINE_CATEGORY, data_dir=tmp_path, val_fraction=0.3, seed=4)
    assert dataset.name == LINE_CATEGORY and dataset.layout == "mvtec"
    assert (tmp_path / LINE_CATEGORY / "VERSION").is_file()
    assert len(dataset.select("train", label=0)) == 2
    defects = dataset.select("test", label=1)
    assert sorted(s.defect_type for s in defects) == sorted(DEFECT_TYPES)
    for sample in dataset.samples:
        assert (sample.mask_path is None) == (sample.label == 0)
