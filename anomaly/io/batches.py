"""The one batching loop: inputs in fixed-size chunks, counted on a progress bar.

Fitting, scoring a labelled split and scoring a run all go through it, so they batch and
report progress alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")


def batches(
    items: Sequence[Item],
    batch_size: int,
    desc: str,
    progress: bool = True,
    tiles_per_item: int = 1,
) -> Iterator[list[Item]]:
    """``items`` in chunks of ``batch_size``; a progress bar counts them when ``progress`` is
    on and there is more than one chunk (one chunk finishes before a bar would say anything).

    With ``tiles_per_item`` > 1 (images cut into tiles) the bar counts tiles: the work done."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    show = progress and len(items) > batch_size
    unit = "tile" if tiles_per_item > 1 else "img"
    total = len(items) * tiles_per_item
    with tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            chunk = list(items[start : start + batch_size])
            yield chunk
            bar.update(len(chunk) * tiles_per_item)
