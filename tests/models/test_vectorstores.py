"""The exact store on its own: its int8 shortlist against scoring every row, with and without its float16 copy."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from session_mcp.models.vectorstores import ExactStore, scored

DIM = 384


def clustered(rng: np.random.Generator, n: int, centres: int = 20) -> NDArray[np.float32]:
    """Unit vectors around a few centres: many near ties, the hard case for a coarse first pass."""
    middle = rng.standard_normal((centres, DIM)).astype(np.float32)
    vecs = middle[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def filled(
    rng: np.random.Generator, n: int, matrix_below: int | None
) -> tuple[ExactStore, dict[int, NDArray[np.float32]]]:
    """A store of n clustered rows, added in batches (so its arrays grow and copy several times),
    some removed (a few one by one, the last row moving into each hole; then the rest at once)
    and 200 more added; and the rows it should hold, by key."""
    store = ExactStore(DIM, 16, matrix_below=matrix_below)
    keys = np.arange(1, n + 1, dtype=np.int64)
    vecs = clustered(rng, n)
    for start in range(0, n, 97):
        store.add(keys[start : start + 97], vecs[start : start + 97])
    held = dict(zip(keys.tolist(), vecs, strict=True))
    gone = rng.choice(keys, min(400, n // 4), replace=False)
    assert store.remove(gone[:40]).tolist() == sorted(gone[:40].tolist())  # one by one
    assert len(store.remove(np.concatenate([gone, gone[:5]]))) == len(gone) - 40  # compacted
    for key in gone.tolist():
        del held[key]
    more = np.arange(n + 1, n + 201, dtype=np.int64)
    extra = clustered(np.random.default_rng(5), 200)
    store.add(more, extra)
    held.update(zip(more.tolist(), extra, strict=True))
    return store, held


def exact_top(held: dict[int, NDArray[np.float32]], q: NDArray[np.float32], k: int) -> list[int]:
    keys = list(held)
    sims = np.stack(list(held.values())) @ (q / np.linalg.norm(q))
    return [keys[i] for i in np.argsort(-sims, kind="stable")[:k]]


def assert_float32_top(
    found: list[tuple[int, float]], held: dict[int, NDArray[np.float32]], q: NDArray[np.float32], k: int
) -> None:
    """`found` holds the float32 top k, best first, each with its float32 cosine; rows that tie to
    within rounding may come in either order."""
    want = exact_top(held, q, k)
    assert {key for key, _ in found} == set(want) and len(found) == k
    scores = [score for _, score in found]
    assert scores == sorted(scores, reverse=True)
    for key, score in found:
        assert abs(score - float(held[key] @ q / np.linalg.norm(q))) < 1e-6


def assert_same_up_to_ties(found: list[tuple[int, float]], ranking: list[tuple[int, float]]) -> None:
    """`found` is `ranking`'s first len(found) entries, but that rows of equal score may come in
    either order, and rows tied at the last score may be any of the rows with that score."""
    top = ranking[: len(found)]
    assert [score for _, score in found] == [score for _, score in top]
    by_score: dict[float, set[int]] = {}
    for key, score in ranking:
        by_score.setdefault(score, set()).add(key)
    last = found[-1][1] if found else None
    for score in {score for _, score in found}:
        mine = {key for key, s in found if s == score}
        if score == last:
            assert mine <= by_score[score]
        else:
            assert mine == {key for key, s in top if s == score}


def test_the_int8_shortlist_gives_exactly_the_float16_results(rng: np.random.Generator) -> None:
    store, held = filled(rng, 3000, matrix_below=None)
    assert store.scores and len(store) == len(held)
    everything = store.key_array().tolist()
    for q in clustered(rng, 60):
        full = store.rescored(q, everything)
        for k in (1, 10, 50, 200):
            # The shortlist's results against scoring every row in float16. Rows whose float16
            # cosines are equal (seen at k = 200 on an AMD EPYC without AVX-512) may come in
            # either order.
            assert_same_up_to_ties(store.search(q, k), full)
    assert {key for key, _ in store.search(q, 2800)} <= set(held)


def test_without_the_float16_copy_the_shortlist_scored_from_the_rows_is_the_float32_top_k(
    rng: np.random.Generator,
) -> None:
    store, held = filled(rng, 3000, matrix_below=0)
    assert not store.scores and store.mat is None and len(store) == len(held)
    for q in clustered(rng, 60):
        for k in (1, 10, 50):
            listed = store.candidates(q, k)
            assert len(listed) == max(2 * k, k + 64) and set(listed) <= set(held)
            found = scored(q, listed, np.stack([held[key] for key in listed]))[:k]
            assert_float32_top(found, held, q, k)


def test_the_float16_copy_is_dropped_at_its_limit_and_candidates_stay_exact(rng: np.random.Generator) -> None:
    store, held = filled(rng, 400, matrix_below=700)
    assert store.scores
    store.add(np.arange(2001, 2201, dtype=np.int64), clustered(np.random.default_rng(9), 200))
    assert len(store) == 700 and not store.scores and store.mat is None
    store.remove(np.arange(2001, 2201, dtype=np.int64))  # small again: the copy stays gone
    assert not store.scores
    for q in clustered(rng, 20):
        listed = store.candidates(q, 10)
        found = scored(q, listed, np.stack([held[key] for key in listed]))[:10]
        assert_float32_top(found, held, q, 10)


def test_rows_for_an_index_come_from_the_int8_codes_without_the_copy(rng: np.random.Generator) -> None:
    store, held = filled(rng, 500, matrix_below=0)
    keys = store.key_array()[:50]
    rows = store.rows(keys)
    want = np.stack([held[key] for key in keys.tolist()])
    assert rows.dtype == np.float32 and np.abs(rows - want).max() < 0.01


def test_a_zero_query_scores_zero_everywhere(rng: np.random.Generator) -> None:
    store, _ = filled(rng, 300, matrix_below=None)
    hits = store.search(np.zeros(DIM, np.float32), 5)
    assert len(hits) == 5 and all(score == 0.0 for _, score in hits)
    bare, _ = filled(rng, 300, matrix_below=0)
    assert len(bare.candidates(np.zeros(DIM, np.float32), 5)) == len(bare)  # no shortlist of nothing


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_keys_added_in_any_order_and_removed_are_found_at_their_own_rows(rng: np.random.Generator) -> None:
    """The sorted-key lookup under every kind of change: keys above all present (appended in
    place), below or between them (inserted), one at a time and in batches, removed a few at a time
    (the last row moving into each hole) and many at once (compacted)."""
    store = ExactStore(DIM, 0, matrix_below=None)
    held: dict[int, NDArray[np.float32]] = {}
    fresh = iter(rng.permutation(np.arange(1, 5000, dtype=np.int64)).tolist())
    top = 5000
    for step in range(120):
        kind = step % 6
        if kind in (0, 1, 2):  # above every key present: single adds and batches
            top += 1 + int(rng.integers(0, 3))
            keys = np.arange(top, top + 1 + (kind == 2) * 20, dtype=np.int64)
            top = int(keys[-1])
        elif kind == 3:  # anywhere below the highest: the insert path
            keys = np.array([next(fresh) for _ in range(int(rng.integers(1, 30)))], np.int64)
        else:  # removals: a few (kind 4), or more than the store swaps one by one (kind 5)
            present = np.array(sorted(held), np.int64)
            count = min(len(present), 3 if kind == 4 else 80)
            gone = rng.choice(present, count, replace=False)
            assert sorted(store.remove(gone).tolist()) == sorted(gone.tolist())
            for key in gone.tolist():
                del held[key]
            keys = np.empty(0, np.int64)
        if len(keys):
            vecs = rng.standard_normal((len(keys), DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            store.add(keys, vecs)
            held.update(zip(keys.tolist(), vecs, strict=True))
        present = np.array(sorted(held), np.int64)
        assert len(store) == len(held) and sorted(store.key_array().tolist()) == present.tolist()
        assert store.contains(present).all()
        absent = np.array([0, top + 1, *[k for k in range(1, 60) if k not in held]], np.int64)
        assert not store.contains(absent).any()
        if len(present):
            want = np.stack([held[k] for k in present.tolist()])
            assert np.abs(store.rows(present) - want).max() < 1e-3  # each key's own row (float16)
