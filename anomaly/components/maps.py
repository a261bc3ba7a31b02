"""Anomaly maps: patch scores brought to the input image's size and smoothed, and the
sequence that keeps a prediction's maps as the patch scores they are drawn from."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import overload

import cv2
import numpy as np

from anomaly.components.tiling import Box


def anomaly_map(
    patch_scores: np.ndarray,
    image_size: int,
    output_shape: tuple[int, int],
    blur_sigma: float = 4.0,
) -> np.ndarray:
    """Turn a grid of patch scores ``(h, w)`` into a pixel map of ``output_shape`` ``(H, W)``.

    The grid is upsampled bilinearly to the model's input resolution (``image_size`` squared),
    blurred there with a Gaussian of ``blur_sigma`` pixels (as in the PatchCore paper, so the
    smoothing means the same at any original resolution), then resized to the original image.
    """
    grid = np.asarray(patch_scores, dtype=np.float32)
    upsampled = _blur(
        cv2.resize(grid, (image_size, image_size), interpolation=cv2.INTER_LINEAR), blur_sigma
    )
    height, width = output_shape
    if (height, width) != (image_size, image_size):
        upsampled = cv2.resize(upsampled, (width, height), interpolation=cv2.INTER_LINEAR)
    return upsampled


def stitched_anomaly_map(
    tile_scores: np.ndarray,
    boxes: Sequence[Box],
    image_size: int,
    output_shape: tuple[int, int],
    blur_sigma: float = 4.0,
) -> np.ndarray:
    """One pixel map of ``output_shape`` from the patch scores ``(T, h, w)`` of an image's
    tiles (:mod:`anomaly.components.tiling`), each in its place ``boxes[t]``.

    The tiles are stitched at the model's resolution (the image scaled so a tile is
    ``image_size`` pixels across), where overlapping tiles are averaged and the map is blurred
    with ``blur_sigma`` as :func:`anomaly_map` blurs a whole image's; then resized to the
    original. One tile covering a square image gives exactly :func:`anomaly_map`'s result.
    """
    scale = image_size / max(max(box.height, box.width) for box in boxes)
    height, width = output_shape
    canvas_shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    total = np.zeros(canvas_shape, dtype=np.float32)
    count = np.zeros(canvas_shape, dtype=np.float32)
    for grid, box in zip(np.asarray(tile_scores, dtype=np.float32), boxes, strict=True):
        top, bottom = round(box.top * scale), round((box.top + box.height) * scale)
        left, right = round(box.left * scale), round((box.left + box.width) * scale)
        bottom, right = (
            min(max(bottom, top + 1), canvas_shape[0]),
            min(max(right, left + 1), canvas_shape[1]),
        )
        tile = cv2.resize(grid, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        total[top:bottom, left:right] += tile
        count[top:bottom, left:right] += 1.0
    stitched = _blur(total / np.maximum(count, 1.0), blur_sigma)
    if canvas_shape != (height, width):
        stitched = cv2.resize(stitched, (width, height), interpolation=cv2.INTER_LINEAR)
    return stitched


def _blur(scores: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Gaussian smoothing of a map at the model's resolution (``blur_sigma`` <= 0: none)."""
    if blur_sigma <= 0:
        return scores
    radius = int(4 * blur_sigma + 0.5)
    return cv2.GaussianBlur(
        scores, (2 * radius + 1, 2 * radius + 1), blur_sigma, borderType=cv2.BORDER_REFLECT
    )


class AnomalyMaps(Sequence[np.ndarray]):
    """One anomaly map per image, kept as the patch scores it is drawn from and drawn at the
    image's size when read.

    A map is a ``(H, W)`` float32 array at its image's own size: 0.36 MB for a 300 x 300 cell,
    48 MB for a 4000 x 3000 image, while its patch scores take a few kB. A prediction over many
    images (``AnomalyModel.predict``) therefore keeps the sources only (``compact``) and draws
    a map again, identically and in about a millisecond for a 300 x 300 cell, each time
    it is read; a batch's prediction keeps the maps drawn while scoring as well, since the
    batch's heatmaps and image scores read them at once.

    ``sources`` are callables of no argument returning a map (``functools.partial`` of
    :func:`anomaly_map` or :func:`stitched_anomaly_map` with a grid, so they pickle).
    """

    def __init__(
        self,
        sources: Sequence[Callable[[], np.ndarray]],
        drawn: Sequence[np.ndarray] | None = None,
    ) -> None:
        if drawn is not None and len(drawn) != len(sources):
            raise ValueError(f"{len(drawn)} drawn maps for {len(sources)} sources")
        self._sources = list(sources)
        self._drawn = None if drawn is None else list(drawn)

    @classmethod
    def draw(cls, sources: Sequence[Callable[[], np.ndarray]]) -> AnomalyMaps:
        """The maps of ``sources``, drawn now and kept until :meth:`compact`."""
        return cls(sources, [source() for source in sources])

    @classmethod
    def concatenate(cls, parts: Iterable[Sequence[np.ndarray]]) -> AnomalyMaps:
        """The maps of ``parts`` in order, compact (a plain list's maps are kept as they are)."""
        sources: list[Callable[[], np.ndarray]] = []
        for part in parts:
            if isinstance(part, AnomalyMaps):
                sources.extend(part._sources)
            else:
                sources.extend(_Drawn(np.asarray(m)) for m in part)
        return cls(sources)

    def compact(self) -> AnomalyMaps:
        """The same maps without the drawn ones: each drawn again when read."""
        return AnomalyMaps(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._drawn is not None:
            return self._drawn[index]
        return self._sources[index]()

    def __repr__(self) -> str:
        kept = "drawn" if self._drawn is not None else "drawn when read"
        return f"AnomalyMaps({len(self)} maps, {kept})"


class _Drawn:
    """A map source that is already a map (one given as an array)."""

    def __init__(self, anomaly_map: np.ndarray) -> None:
        self.anomaly_map = anomaly_map

    def __call__(self) -> np.ndarray:
        return self.anomaly_map
