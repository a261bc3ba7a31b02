"""Thread pools scoped to one call.

Left alone, torch's intra-op pool, faiss's OpenMP pool and the BLAS under numpy each take every
core and oversubscribe a small machine. A model sets all three for the duration of ``fit`` or a
scoring call and puts them back afterwards, so importing or using the library never changes
the process-wide settings another part of the program relies on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import torch
from threadpoolctl import threadpool_limits


def resolve_threads(num_threads: int = 0) -> int:
    """The thread count ``num_threads`` stands for: 0 means every core."""
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


@contextmanager
def limited_threads(num_threads: int = 0) -> Iterator[int]:
    """Run the block with torch, faiss and BLAS limited to ``num_threads`` (0 = every core);
    the previous settings are restored on exit. Yields the count used."""
    count = resolve_threads(num_threads)
    torch_before = torch.get_num_threads()
    faiss_before = faiss.omp_get_max_threads()
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    try:
        with threadpool_limits(limits=count, user_api="blas"):
            yield count
    finally:
        torch.set_num_threads(torch_before)
        faiss.omp_set_num_threads(faiss_before)
