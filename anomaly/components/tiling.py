"""How an image becomes the model's square inputs: squashed whole, or cut into square tiles.

By default the whole image is resized to ``image_size`` squared, whatever its shape: a 3:1 bead
is squashed, and a 2,048-pixel image is shrunk eight times, so a defect a few pixels wide
vanishes. Two options keep what the camera saw:

* ``keep_aspect``: the image is covered by squares as tall as its short side (a 3:1 image by
  three, overlapping where the long side is not a multiple of the short one). Each square is
  resized to ``image_size``, so the part keeps its proportions.
* ``tile_size`` (``stride``): squares of ``tile_size`` pixels of the original image, ``stride``
  pixels apart (overlap when ``stride < tile_size``); the last row and column of tiles end at
  the image's edge. Each tile is resized to ``image_size``: a tile of 320 pixels looks at the
  image at 0.8 of its resolution, whatever the image's size. The aspect is kept as well.

Every tile goes through the same feature graph as a whole image would (the exported graph too:
tiles are just more images in its batch); the model stacks an image's tiles so that its
scores cover all of them (:mod:`anomaly.models.base`), and :func:`anomaly.components.maps.
stitched_anomaly_map` puts their patch scores back in place. Time and memory grow linearly
with the number of tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from anomaly.errors import ConfigError

#: Smallest tile: below it a backbone's deepest stage would have no spatial extent to speak of.
MIN_TILE_SIZE = 32


class Box(NamedTuple):
    """A tile's place in the original image, in pixels."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Tiling:
    """The tiling a model applies: ``tile_size`` and ``stride`` in pixels of the original
    image (``None`` = no tiling); ``keep_aspect`` without ``tile_size``: squares of the short
    side. Neither: the whole image, squashed to a square (the default)."""

    tile_size: int | None = None
    stride: int | None = None
    keep_aspect: bool = False

    @property
    def active(self) -> bool:
        """True when images are cut into tiles (any option set), False when squashed whole."""
        return self.tile_size is not None or self.keep_aspect

    def check(self) -> Tiling:
        """Raise :class:`ConfigError` for a tiling no image could use; returns ``self``."""
        if self.tile_size is None:
            if self.stride is not None:
                raise ConfigError(
                    f"tiling.stride={self.stride} needs tiling.tile_size (the tiles' size)"
                )
            return self
        if self.tile_size < MIN_TILE_SIZE:
            raise ConfigError(
                f"tiling.tile_size={self.tile_size}: must be at least {MIN_TILE_SIZE} pixels"
            )
        if self.stride is not None and not 1 <= self.stride <= self.tile_size:
            raise ConfigError(
                f"tiling.stride={self.stride}: must be between 1 and tiling.tile_size="
                f"{self.tile_size} (a larger stride leaves pixels no tile looks at)"
            )
        return self

    def boxes(self, height: int, width: int) -> list[Box]:
        """The tiles of an image of ``height`` x ``width`` pixels, row by row.

        Inactive tiling gives one box, the whole image. An image smaller than ``tile_size``
        along a side gets one tile of the image's own length there (resized to the square
        input, so slightly stretched)."""
        if not self.active:
            return [Box(0, 0, height, width)]
        if self.tile_size is None:  # keep_aspect: squares of the short side, evenly spread
            side = min(height, width)
            rows = _spread(height, side)
            cols = _spread(width, side)
            return [Box(top, left, side, side) for top in rows for left in cols]
        stride = self.stride or self.tile_size
        rows = _starts(height, self.tile_size, stride)
        cols = _starts(width, self.tile_size, stride)
        tile_height, tile_width = min(height, self.tile_size), min(width, self.tile_size)
        return [Box(top, left, tile_height, tile_width) for top in rows for left in cols]

    def describe(self, height: int, width: int) -> dict[str, int | bool | None]:
        """What a bundle records: the options and the tiles of a ``height`` x ``width`` image
        (the first training image's size)."""
        boxes = self.boxes(height, width)
        return {
            "tile_size": self.tile_size,
            "stride": self.stride or self.tile_size,
            "keep_aspect": self.keep_aspect,
            "image_shape": [height, width],
            "tiles_per_image": len(boxes),
            "tile_pixels": max(boxes[0].height, boxes[0].width),
        }


def untiled_model_error(model: str) -> ConfigError:
    """The error for tiling options given to a model that squashes whole images."""
    return ConfigError(
        f"model={model!r} does not tile images: tiling.tile_size and keep_aspect work with "
        "patchcore and padim"
    )


def cut_tiles(image: np.ndarray, boxes: list[Box]) -> list[np.ndarray]:
    """The tiles of ``image`` ``(H, W, 3)`` (views, not copies)."""
    return [image[b.top : b.top + b.height, b.left : b.left + b.width] for b in boxes]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one side: every ``stride`` pixels, the last tile ending at the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _spread(length: int, side: int) -> list[int]:
    """Starts of the fewest ``side``-long tiles that cover ``length``, evenly spread."""
    count = math.ceil(length / side)
    if count <= 1:
        return [0]
    return [int(v) for v in np.round(np.linspace(0, length - side, count))]
