"""Thread pools scoped to one call.

Left alone, torch's intra-op pool, faiss's OpenMP pool and the BLAS under numpy each take every
core and oversubscribe a small machine. A model sets all three for the duration of ``fit`` or a
scoring call and puts them back afterwards, so importing or using the library never changes
the process-wide settings another part of the program relies on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
from threadpoolctl import threadpool_limits


def resolve_threads(num_threads: int = 0) -> int:
    """The thread count ``num_threads`` stands for: 0 means every core."""
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


@contextmanager
def limited_threads(num_threads: int = 0) -> Iterator[int]:
    """Run the block with torch, faiss and BLAS limited to ``num_threads`` (0 = every core);
    the previous settings are restored on exit. Yields the count used."""
    count = resolve_threads(num_threads)
    # torch only when something imported it: a torch-free scorer (an exported bundle) must not
    # load it just to set a pool nobody uses.
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    faiss_before = faiss.omp_get_max_threads()
    if torch is not None:
        torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    try:
        with threadpool_limits(limits=count, user_api="blas"):
            yield count
    finally:
        if torch is not None:
            torch.set_num_threads(torch_before)
        faiss.omp_set_num_threads(faiss_before)
