"""The in-memory vector stores on their own: the exact store's int8 shortlist against a plain float16 scan."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from session_mcp.models.vectorstores import ExactStore

DIM = 384


def clustered(rng: np.random.Generator, n: int, centres: int = 20) -> NDArray[np.float32]:
    """Unit vectors around a few centres: many near ties, the hard case for a coarse first pass."""
    middle = rng.standard_normal((centres, DIM)).astype(np.float32)
    vecs = middle[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def both(rng: np.random.Generator, n: int, coarse_below: int) -> tuple[ExactStore, ExactStore]:
    """The same rows, with and without the int8 copy, through the same adds and removes."""
    stores = (ExactStore(DIM, 16, coarse_below=coarse_below), ExactStore(DIM, 16))
    keys = np.arange(1, n + 1, dtype=np.int64)
    vecs = clustered(rng, n)
    for start in range(0, n, 97):  # batches, so the matrices grow and copy several times
        for store in stores:
            store.add(keys[start : start + 97], vecs[start : start + 97])
    return stores


def test_the_int8_shortlist_gives_exactly_the_float16_results(rng: np.random.Generator) -> None:
    coarse, plain = both(rng, 3000, coarse_below=100_000)
    gone = rng.choice(np.arange(1, 3001, dtype=np.int64), 400, replace=False)
    for store in (coarse, plain):  # removal swaps the last row in: both copies must follow
        store.remove(gone)
        store.add(np.arange(5001, 5201, dtype=np.int64), clustered(np.random.default_rng(5), 200))
    assert coarse.coarse is not None and plain.coarse is None
    for q in clustered(rng, 60):
        for k in (1, 10, 50, 200):
            assert coarse.search(q, k) == plain.search(q, k)
    assert {key for key, _ in coarse.search(q, 2800)}.isdisjoint(gone.tolist())


def test_the_int8_copy_is_dropped_at_its_limit_and_search_stays_exact(rng: np.random.Generator) -> None:
    coarse, plain = both(rng, 400, coarse_below=500)
    assert coarse.coarse is not None
    queries = clustered(rng, 20)
    assert [coarse.search(q, 10) for q in queries] == [plain.search(q, 10) for q in queries]
    more = np.arange(1001, 1201, dtype=np.int64)
    for store in (coarse, plain):
        store.add(more, clustered(np.random.default_rng(9), 200))
    assert coarse.coarse is None
    assert [coarse.search(q, 10) for q in queries] == [plain.search(q, 10) for q in queries]


def test_a_zero_query_scores_zero_everywhere(rng: np.random.Generator) -> None:
    coarse, _ = both(rng, 300, coarse_below=100_000)
    hits = coarse.search(np.zeros(DIM, np.float32), 5)
    assert len(hits) == 5 and all(score == 0.0 for _, score in hits)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
