"""faiss memory bank: exact search equals brute force; save/load keeps answers."""

from __future__ import annotations

import numpy as np

from anomaly.components.memory_bank import MemoryBank


def test_flat_search_equals_brute_force():
    rng = np.random.default_rng(0)
    bank_vectors = rng.standard_normal((300, 24)).astype(np.float32)
    queries = rng.standard_normal((64, 24)).astype(np.float32)
    distances, indices = MemoryBank("flat").fit(bank_vectors).search(queries, k=3)
    brute = np.linalg.norm(queries[:, None, :] - bank_vectors[None, :, :], axis=2)
    order = np.argsort(brute, axis=1)[:, :3]
    assert np.array_equal(indices, order)
    np.testing.assert_allclose(distances, np.take_along_axis(brute, order, axis=1), rtol=1e-4)


def test_hnsw_finds_nearly_all_true_neighbours():
    rng = np.random.default_rng(1)
    bank_vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    _, exact = MemoryBank("flat").fit(bank_vectors).search(queries)
    _, approx = MemoryBank("hnsw").fit(bank_vectors).search(queries)
    assert (exact[:, 0] == approx[:, 0]).mean() > 0.95


def test_saved_bank_gives_the_same_answers(tmp_path):
    rng = np.random.default_rng(2)
    bank = MemoryBank("flat").fit(rng.standard_normal((100, 8)).astype(np.float32))
    queries = rng.standard_normal((30, 8)).astype(np.float32)
    bank.save(tmp_path / "bank.faiss")
    loaded = MemoryBank.load(tmp_path / "bank.faiss")
    assert np.array_equal(bank.search(queries)[1], loaded.search(queries)[1])
    np.testing.assert_array_equal(
        bank.vectors(np.array([[1, 2]])), loaded.vectors(np.array([[1, 2]]))
    )


def test_exact_twin_of_an_hnsw_bank_searches_the_same_vectors_exactly():
    rng = np.random.default_rng(3)
    bank_vectors = rng.standard_normal((500, 12)).astype(np.float32)
    queries = rng.standard_normal((40, 12)).astype(np.float32)
    flat = MemoryBank("flat").fit(bank_vectors)
    assert flat.exact() is flat
    twin = MemoryBank("hnsw", ef_search=1).fit(bank_vectors).exact()
    assert twin.index_type == "flat" and twin.size == 500
    for got, expected in zip(twin.search(queries, k=2), flat.search(queries, k=2), strict=True):
        np.testing.assert_array_equal(got, expected)
