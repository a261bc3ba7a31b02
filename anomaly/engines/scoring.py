"""The one scoring step of a batch of files, and the local engine that runs it in this process.

:func:`score_images` decodes the files with the one image decoder, scores them with the model
(one image at a time when the batch fails, so one odd image cannot cost the others), builds
each :class:`~anomaly.artifacts.rundir.ScoreRow` and renders the heatmap overlay of every
rejected part as PNG bytes. It writes nothing: whoever drives the run records its results, so
a batch scored on a Ray actor and one scored here reach the run directory the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anomaly.artifacts.heatmap import overlay
from anomaly.artifacts.rundir import ScoreRow
from anomaly.decision.verdict import ERROR, NG, NOT_FINITE, verdict
from anomaly.errors import ImageReadError
from anomaly.io.batches import batches
from anomaly.io.files import encode_png
from anomaly.io.images import load_image
from anomaly.models.base import AnomalyModel, Prediction

logger = logging.getLogger(__name__)

#: ``(input index, file)``: an input file and its place in the run's input order.
Work = tuple[int, Path]


@dataclass
class ScoredImage:
    """One input file's result: its row and, for a rejected part when heatmaps are written,
    the overlay picture encoded as PNG (the row's ``heatmap`` is set when it is recorded)."""

    index: int
    row: ScoreRow
    heatmap_png: bytes | None = None


class ScoringEngine(Protocol):
    """Scores a run's to-do list batch by batch, yielding each batch's results as it is done
    (in any order: the run puts its rows back in input order)."""

    def describe(self) -> dict[str, Any]:
        """What run.json records as the run's ``engine``."""
        ...

    def run(self, todo: Sequence[Work], heatmaps: bool) -> Iterator[list[ScoredImage]]: ...


def score_images(model: AnomalyModel, batch: Sequence[Work], heatmaps: bool) -> list[ScoredImage]:
    """Score one batch of ``(input index, file)`` pairs with ``model``, in the batch's order.

    A file that cannot be read gets an ERROR row with the decoder's reason; the others are
    scored together, and one by one if that fails. ``heatmaps`` renders the overlay of every
    rejected part on the calibrated pixel scale.
    """
    results = [ScoredImage(index, ScoreRow(file=str(file))) for index, file in batch]
    loaded: list[tuple[ScoredImage, np.ndarray]] = []
    for result, (_, file) in zip(results, batch, strict=True):
        try:
            loaded.append((result, load_image(file)))
        except ImageReadError as error:
            result.row.error = error.reason
    if not loaded:
        return results
    try:
        prediction = model.score_batch([image for _, image in loaded])
    except Exception as error:  # one odd image must not cost the batch: retry one by one
        logger.warning("batch failed (%s); scoring its images one by one", error)
        for result, image in loaded:
            try:
                single = model.score_batch([image])
            except Exception as single_error:
                result.row.error = f"could not be scored: {single_error}"
                continue
            _fill(model, result, image, single, 0, heatmaps)
        return results
    for position, (result, image) in enumerate(loaded):
        _fill(model, result, image, prediction, position, heatmaps)
    return results


def _fill(
    model: AnomalyModel,
    result: ScoredImage,
    image: np.ndarray,
    prediction: Prediction,
    position: int,
    heatmaps: bool,
) -> None:
    """Fill ``result`` from image ``position`` of a batch's ``prediction``."""
    row, calibration = result.row, model.calibration_
    score = float(prediction.scores[position])
    if not math.isfinite(score):  # fails closed, calibrated or not: never a silent pass
        row.verdict, row.error = ERROR, f"{NOT_FINITE} ({score})"
        return
    row.score = score
    if calibration is None:
        row.verdict = "UNCALIBRATED"
        return
    row.normalized_score = score / calibration.threshold
    row.verdict = verdict(score, calibration.threshold)
    if row.verdict != NG:
        return
    types = prediction.predicted_types
    if types is not None:  # the type of a rejected part is what a QA team triages by
        row.predicted_type = types[position]
        row.predicted_type_probability = float(prediction.predicted_type_probabilities[position])
    if heatmaps:
        normalized = prediction.anomaly_maps[position] / calibration.pixel_threshold
        result.heatmap_png = encode_png(overlay(image, normalized))


class LocalEngine:
    """Batches scored one after the other in this process (``engine.name=local``)."""

    def __init__(self, model: AnomalyModel) -> None:
        self.model = model

    def describe(self) -> dict[str, Any]:
        return {"name": "local"}

    def run(self, todo: Sequence[Work], heatmaps: bool) -> Iterator[list[ScoredImage]]:
        for batch in batches(todo, self.model.batch_size, "scoring", self.model.progress):
            yield score_images(self.model, batch, heatmaps)
