"""Anomaly maps have the input's size and keep the hot spot where it was; a prediction keeps
its maps as patch scores and draws the same maps when they are read."""

from __future__ import annotations

import gc
import pickle
import weakref
from functools import partial

import numpy as np
import pytest
from conftest import textured_part, with_defect

from anomaly.components.maps import AnomalyMaps, anomaly_map
from anomaly.models.padim import PaDiM
from anomaly.models.patchcore import PatchCore


@pytest.mark.parametrize("shape", [(37, 91), (256, 256), (600, 400)])
def test_map_has_the_input_size(shape):
    grid = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    assert anomaly_map(grid, 64, shape).shape == shape


def test_hot_patch_stays_in_place_and_is_smoothed():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0
    result = anomaly_map(grid, 64, (128, 128), blur_sigma=4.0)
    y, x = np.unravel_index(result.argmax(), result.shape)
    assert abs(y - 2.5 * 16) <= 10 and abs(x - 5.5 * 16) <= 10
    assert result.max() < 1.0  # the blur spreads the peak


def test_anomaly_maps_draw_read_slice_and_concatenate():
    rng = np.random.default_rng(1)
    grids = [rng.random((8, 8)).astype(np.float32) for _ in range(3)]
    sources = [partial(anomaly_map, grid, 64, (50, 70)) for grid in grids]
    drawn = AnomalyMaps.draw(sources)
    expected = [anomaly_map(grid, 64, (50, 70)) for grid in grids]
    for got in (drawn, drawn.compact()):
        assert len(got) == 3
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(got[-1], expected[-1])
        assert [m.shape for m in got[1:]] == [(50, 70)] * 2
    plain = [np.ones((4, 4), np.float32)]  # a model's own list of maps joins as it is
    joined = AnomalyMaps.concatenate([drawn, plain, drawn.compact()])
    assert len(joined) == 7
    np.testing.assert_array_equal(joined[3], plain[0])
    np.testing.assert_array_equal(joined[6], expected[2])
    with pytest.raises(ValueError, match="2 drawn maps for 3 sources"):
        AnomalyMaps(sources, expected[:2])


@pytest.mark.parametrize("model_class", [PatchCore, PaDiM])
def test_a_large_prediction_keeps_patch_scores_not_full_size_maps(model_class):
    rng = np.random.default_rng(2)
    train = [textured_part(rng) for _ in range(6)]
    model = model_class(image_size=64, progress=False, batch_size=4).fit(train)
    # Large images: each full-size map is 1 MB of float32, its patch scores 256 B (PatchCore's
    # stride-8 grid at 64 px, 8x8) or 1 kB (PaDiM's stride-4 grid, 16x16).
    large = [np.kron(with_defect(textured_part(rng), rng)[0], np.ones((8, 8, 1), np.uint8))]
    images = large + [np.kron(textured_part(rng), np.ones((8, 8, 1), np.uint8)) for _ in range(7)]
    prediction = model.predict(images)
    maps_bytes = sum(m.nbytes for m in prediction.anomaly_maps)
    assert maps_bytes == 8 * 512 * 512 * 4
    kept = len(pickle.dumps(prediction.anomaly_maps))  # what the prediction holds
    assert kept < maps_bytes / 50
    # The maps read afterwards are the ones drawn while scoring the same batches, to the bit.
    for start in (0, 4):
        batch = model.score_batch(images[start : start + 4])
        np.testing.assert_array_equal(prediction.scores[start : start + 4], batch.scores)
        for position, drawn in enumerate(batch.anomaly_maps, start):
            np.testing.assert_array_equal(prediction.anomaly_maps[position], drawn)
    np.testing.assert_allclose(
        prediction.map_maxima, [m.max() for m in prediction.anomaly_maps], rtol=0
    )


def test_predict_frees_each_batchs_drawn_maps_before_scoring_the_next(monkeypatch):
    rng = np.random.default_rng(3)
    model = PatchCore(image_size=64, progress=False, batch_size=2).fit(
        [textured_part(rng) for _ in range(4)]
    )
    images = [textured_part(rng) for _ in range(6)]
    drawn: list[weakref.ref] = []
    alive: list[int] = []
    score_batch = model.score_batch

    def spy(batch):
        gc.collect()
        alive.append(sum(ref() is not None for ref in drawn))
        part = score_batch(batch)
        drawn.extend(weakref.ref(anomaly_map) for anomaly_map in part.anomaly_maps)
        return part

    monkeypatch.setattr(model, "score_batch", spy)
    prediction = model.predict(images)
    assert alive == [0, 0, 0]  # no earlier batch's full-size maps while a batch is scored
    assert len(prediction.anomaly_maps) == 6
