"""The memory bank: nominal patch features in a faiss index, searched for nearest neighbours."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw")


class MemoryBank:
    """Nearest-neighbour search over the memory bank ``(M, D)`` of nominal patch features.

    ``index_type`` is ``"flat"`` (exact L2, the default) or ``"hnsw"`` (approximate graph search
    for banks too large to search exactly in time).
    """

    def __init__(
        self, index_type: str = "flat", hnsw_neighbors: int = 32, ef_search: int = 64
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index={index_type!r}: choose one of {', '.join(INDEX_TYPES)}")
        self.index_type = index_type
        self.hnsw_neighbors = hnsw_neighbors
        # HNSW's candidate list per query: smaller is faster and further from exact (ELPV's
        # 9,277-vector bank, benchmarks/search.py: 16 -> 8 ms/image, test AUROC -0.0024; 24 ->
        # 10 ms, as exact to 4 digits; 64 -> 20 ms). How small is safe depends on the bank.
        self.ef_search = ef_search
        self.index_: faiss.Index | None = None

    def nbytes(self) -> int:
        """Size of the index in memory (its serialised size); 0 before ``fit``."""
        return 0 if self.index_ is None else int(faiss.serialize_index(self.index_).nbytes)

    def fit(self, vectors: np.ndarray) -> MemoryBank:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        if self.index_type == "flat":
            index = faiss.IndexFlatL2(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_neighbors)
            index.hnsw.efSearch = self.ef_search
        index.add(vectors)
        self.index_ = index
        return self

    def add(self, vectors: np.ndarray) -> MemoryBank:
        """Append vectors ``(n, D)`` to a built bank (flat and HNSW indexes both grow in place)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(
                f"cannot add vectors of shape {vectors.shape} to a {self.dim}-dim bank"
            )
        self.index_.add(vectors)
        return self

    def exact(self) -> MemoryBank:
        """This bank searched exactly: itself when flat, else a flat index of the same vectors."""
        if self.index_type == "flat":
            return self
        return MemoryBank("flat").fit(self.all_vectors())

    def all_vectors(self) -> np.ndarray:
        """Every bank vector, ``(M, D)``."""
        return self.index_.reconstruct_n(0, self.size)

    @property
    def size(self) -> int:
        return 0 if self.index_ is None else int(self.index_.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index_.d)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances ``(n, k)`` and bank indices ``(n, k)`` of the ``k`` nearest."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        squared, indices = self.index_.search(queries, k)
        return np.sqrt(np.maximum(squared, 0.0)), indices

    def vectors(self, indices: np.ndarray) -> np.ndarray:
        """Bank vectors at ``indices`` (any shape): array of shape ``indices.shape + (D,)``."""
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.vstack([self.index_.reconstruct(int(i)) for i in flat]) if flat.size else None
        if out is None:
            return np.empty((*np.shape(indices), self.dim), dtype=np.float32)
        return out.reshape(*np.shape(indices), self.dim)

    def save(self, path: Path) -> None:
        faiss.write_index(self.index_, str(path))

    @classmethod
    def load(cls, path: Path, ef_search: int = 64) -> MemoryBank:
        index = faiss.read_index(str(path))
        if isinstance(index, faiss.IndexHNSWFlat):
            index_type = "hnsw"
        elif type(index) is faiss.IndexFlatL2:
            index_type = "flat"
        else:  # another metric or a compressed index would score on another scale
            raise ValueError(
                f"a faiss {type(index).__name__}, not one of the bank's index types "
                "(IndexFlatL2, IndexHNSWFlat)"
            )
        bank = cls(index_type, ef_search=ef_search)
        if index_type == "hnsw":
            index.hnsw.efSearch = ef_search
        bank.index_ = index
        return bank
