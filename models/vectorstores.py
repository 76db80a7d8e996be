"""The two in-memory stores of a scope's vectors; the only module that imports usearch and
numkong (usearch's own SIMD kernels, which it installs).

Owned by models/vectors.py, which decides which store serves a scope and keeps them in step.
ExactStore is brute force over int8 codes (with a float16 copy while small); HnswStore wraps a
USearch HNSW index. Neither is thread-safe: the caller holds the scope's lock, or owns a store no
other thread can see yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar, cast

import numpy as np
from numpy.typing import NDArray

# Must load before usearch: usearch 2.26's extension loaded first makes onnxruntime segfault.
import session_mcp.models.embedder  # noqa: F401

# isort: split
import numkong
from usearch.index import Index

# Tuned on 384-d data (bench/vector_search.py): recall@10 >= 0.99 on embedding-like vectors at
# 100k, and on uniformly random vectors up to a few thousand (random 384-d is the worst case).
_CONNECTIVITY = 32
_EXPANSION_ADD = 128
_EXPANSION_SEARCH = 256

_SWAPS = 64
"""Up to this many keys are removed one by one (the last row moves into each hole); more at once
compact the store instead."""

Keys = NDArray[np.int64]
Vecs = NDArray[np.float32]
Halves = NDArray[np.float16]
Bytes = NDArray[np.int8]
T = TypeVar("T", bound=np.generic)


class ExactStore:
    """Brute force over L2-normalised rows: int8 codes (one scale per row) always, and while the
    store holds fewer than `matrix_below` rows a float16 copy as well. A removal moves the last row
    into the hole; more than `_SWAPS` at once compact the store.

    A search scans the int8 codes for a shortlist of `shortlist(k)` rows. With the float16 copy
    the store scores those itself (`search`); without it the caller scores the `candidates` with
    the float32 vectors stored in the database (ScopedVectors). Either way the scores are real
    cosines, never int8 ones: the int8 cosine is off by at most 0.003 (200 queries over 10k stored
    MiniLM vectors), so a row of the true top k misses the shortlist only if 64 other rows score
    within 0.006 below it.

    Why int8 first: the model, run just before on the other core, has pushed the rows out of the
    cache, so what a scan streams through memory is its cost. Measured at 10k x 384 with the cache
    flushed (2 vCPUs, 32 MB L3): numpy float32 matrix-vector 1.22 ms, numkong float16 0.40 ms
    (0.32 warm); on an AMD EPYC int8 0.18 against float16 0.43 ms. Why the float16 copy only while
    small: at 100k rows it takes 77 MB, twice the codes, where reading the 114 rows a search scores
    from the database took ~0.5 ms. It is dropped for good when the store reaches `matrix_below`
    rows (None: kept at any size; 0: never made)."""

    def __init__(self, dim: int, capacity: int = 0, matrix_below: int | None = None) -> None:
        self.matrix_below = matrix_below
        # Preallocated pages that are never written cost no memory.
        self.mat: Halves | None = None if matrix_below == 0 else np.empty((capacity, dim), np.float16)
        self.codes: Bytes = np.empty((capacity, dim), np.int8)
        self.scales: Vecs = np.empty(capacity, np.float32)
        self.keys: Keys = np.empty(capacity, np.int64)
        # The keys present, ascending, and the row of each: a lookup is a binary search. A dict
        # of key to row took 11 MB at 100k rows (two int objects and an entry per row), this 1.6.
        # Both live in buffers of the store's capacity, `_sorted` and `_row` being their first n:
        # a new row's key is nearly always the highest yet (seqs only grow) and is appended in
        # place, where inserting into exact-size arrays copied both on every add (66 of the 170
        # us a single add took in the store, at 10k rows, in a server's memory_add).
        self._sorted_buf: Keys = np.empty(capacity, np.int64)
        self._row_buf: NDArray[np.intp] = np.empty(capacity, np.intp)
        self.n = 0
        self._sorted, self._row = self._sorted_buf[:0], self._row_buf[:0]

    def __len__(self) -> int:
        return self.n

    @property
    def scores(self) -> bool:
        """Whether `search` and `rescored` work here (the float16 copy is kept)."""
        return self.mat is not None

    def contains(self, keys: Keys) -> NDArray[np.bool_]:
        return self._find(np.asarray(keys, np.int64))[1]

    def _find(self, keys: Keys) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
        """Where each key is, or would go, in the sorted keys; and whether it is there."""
        at = np.searchsorted(self._sorted, keys)
        found = np.zeros(len(keys), bool)
        inside = at < len(self._sorted)
        found[inside] = self._sorted[at[inside]] == keys[inside]
        return at, found

    def _rows_of(self, keys: Sequence[int] | Keys) -> NDArray[np.intp]:
        """The rows of those of `keys` that are present, in the order given."""
        at, found = self._find(np.asarray(keys, np.int64))
        return self._row[at[found]]

    def add(self, keys: Keys, vecs: Vecs) -> Vecs:
        """Add rows (keys not yet present); return them L2-normalised, in float32."""
        start, need = self.n, self.n + len(keys)
        if self.mat is not None and self.matrix_below is not None and need >= self.matrix_below:
            self.mat = None
        if need > len(self.keys):  # grow geometrically so a stream of single adds stays O(1) each
            cap = max(need, len(self.keys) + len(self.keys) // 2, 64)
            if self.mat is not None:
                self.mat = _grown(self.mat, start, cap)
            self.codes = _grown(self.codes, start, cap)
            self.scales = _grown(self.scales, start, cap)
            self.keys = _grown(self.keys, start, cap)
            self._sorted_buf = _grown(self._sorted_buf, start, cap)
            self._row_buf = _grown(self._row_buf, start, cap)
        out = np.array(vecs, np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        if self.mat is not None:
            self.mat[start:need] = out
        self.keys[start:need] = keys
        _int8_into(self.codes[start:need], self.scales[start:need], out)
        order = np.argsort(keys, kind="stable")
        ordered, rows = keys[order], np.arange(start, need, dtype=np.intp)[order]
        if start == 0 or ordered[0] > self._sorted[-1]:  # all after the keys present: append
            self._sorted_buf[start:need] = ordered
            self._row_buf[start:need] = rows
        else:
            at = np.searchsorted(self._sorted, ordered)
            self._sorted_buf[:need] = np.insert(self._sorted, at, ordered)
            self._row_buf[:need] = np.insert(self._row, at, rows)
        self._resize(need)
        return out

    def _resize(self, n: int) -> None:
        """The store now holds its first n rows, and the sorted buffers their first n entries."""
        self.n = n
        self._sorted, self._row = self._sorted_buf[:n], self._row_buf[:n]

    def remove(self, keys: Keys) -> Keys:
        """Remove the keys present; return those."""
        gone = np.unique(np.asarray(keys, np.int64)[self.contains(keys)])
        if len(gone) > _SWAPS:
            self._compact(gone)
            return gone
        for k in gone.tolist():  # the last row moves into the hole
            p = int(np.searchsorted(self._sorted, k))
            i, last = int(self._row[p]), self.n - 1
            if i != last:
                for a in self._arrays():
                    a[i] = a[last]
                self._row[np.searchsorted(self._sorted, self.keys[i])] = i
            self._sorted_buf[p:last] = self._sorted_buf[p + 1 : last + 1]  # numpy copies overlaps safely
            self._row_buf[p:last] = self._row_buf[p + 1 : last + 1]
            self._resize(last)
        return gone

    def _compact(self, gone: Keys) -> None:
        """Remove many rows at once: the rest move up in order, in chunks (no whole copy of the
        codes at once), and the sorted keys are rebuilt."""
        keep = np.ones(self.n, bool)
        keep[self._rows_of(gone)] = False
        kept = np.flatnonzero(keep)
        for a in self._arrays():
            for i in range(0, len(kept), 4096):  # kept[j] >= j: nothing is overwritten unread
                chunk = kept[i : i + 4096]
                a[i : i + len(chunk)] = a[chunk]
        n = len(kept)
        self._row_buf[:n] = np.argsort(self.keys[:n], kind="stable")
        self._sorted_buf[:n] = self.keys[self._row_buf[:n]]
        self._resize(n)

    def _arrays(self) -> list[NDArray[np.generic]]:
        """Every per-row array."""
        arrays: list[NDArray[np.generic]] = [self.codes, self.scales, self.keys]
        return arrays if self.mat is None else [self.mat, *arrays]

    def key_array(self) -> Keys:
        return self.keys[: self.n].copy()

    def rescored(self, q: Vecs, keys: Sequence[int]) -> list[tuple[int, float]]:
        """The present `keys` with their float16 cosine to `q`, best first: an approximate index's
        candidates re-ranked, with the same scores an exact search gives. Needs `scores`."""
        assert self.mat is not None, "no float16 copy: score from the stored vectors (scored())"
        rows = self._rows_of(keys)
        if not len(rows):
            return []
        unit, _ = _unit(q)
        sims = _dots(unit.astype(np.float16)[None, :], self.mat[rows])
        order = np.argsort(-sims, kind="stable")
        return list(zip(self.keys[rows[order]].tolist(), sims[order].tolist(), strict=True))

    def rows(self, keys: Keys) -> Vecs:
        """The rows of present keys, in order, as float32: the float16 copy's, or else the int8
        codes scaled back (for building an int8 index, which quantises them again)."""
        at = self._rows_of(keys)
        if self.mat is not None:
            return self.mat[at].astype(np.float32)
        return self.codes[at].astype(np.float32) * self.scales[at, None]

    def search(self, q: Vecs, k: int) -> list[tuple[int, float]]:
        """The k nearest (key, float16 cosine), best first. Needs `scores`."""
        assert self.mat is not None, "no float16 copy: score candidates() from the stored vectors"
        if self.n == 0:
            return []
        unit, norm = _unit(q)
        k = min(k, self.n)
        rows = self._shortlist(unit, norm, shortlist(k))
        # float64 out: asking numkong for float32 measured four times slower (1.3 vs 0.32 ms).
        half = unit.astype(np.float16)[None, :]
        sims = _dots(half, self.mat[rows] if rows is not None else self.mat[: self.n])
        idx = np.argpartition(sims, len(sims) - k)[len(sims) - k :] if k < len(sims) else np.arange(len(sims))
        idx = idx[np.argsort(-sims[idx], kind="stable")]
        found = rows[idx] if rows is not None else idx
        return list(zip(self.keys[found].tolist(), sims[idx].tolist(), strict=True))

    def candidates(self, q: Vecs, k: int) -> list[int]:
        """The keys of the int8 shortlist for the best k (all keys if there are no more), in no
        particular order: to be scored from the stored vectors (`scored`)."""
        unit, norm = _unit(q)
        rows = self._shortlist(unit, norm, shortlist(min(k, self.n)))
        return cast(list[int], (self.keys[rows] if rows is not None else self.keys[: self.n]).tolist())

    def _shortlist(self, unit: Vecs, norm: float, listed: int) -> NDArray[np.intp] | None:
        """The rows of the best `listed` int8 cosines; None for all rows (no fewer, or a zero query)."""
        if norm == 0 or listed >= self.n:
            return None
        q8 = np.rint(unit * (127.0 / float(np.abs(unit).max()))).astype(np.int8)[None, :]
        approx = _dots(q8, self.codes[: self.n]) * self.scales[: self.n]
        return np.argpartition(approx, self.n - listed)[self.n - listed :]


def scored(q: Vecs, keys: Sequence[int], vecs: Vecs) -> list[tuple[int, float]]:
    """(key, float32 cosine to `q`) for rows read back from the database, best first."""
    if not len(keys):
        return []
    unit, _ = _unit(q)
    norms = np.linalg.norm(vecs, axis=1)
    sims = (vecs @ unit) / np.where(norms > 0, norms, 1.0)
    order = np.argsort(-sims, kind="stable")
    ranked = np.asarray(keys, np.int64)[order]
    return list(zip(ranked.tolist(), sims[order].tolist(), strict=True))


def _unit(q: Vecs) -> tuple[Vecs, float]:
    """`q` scaled to length 1 (as it is if zero), and its length. Scalar work on one 384-d row,
    written for its per-call cost: this runs in every search."""
    norm = math.sqrt(float(np.dot(q, q)))
    return (q / norm if norm > 0 else q), norm


def shortlist(k: int) -> int:
    """How many int8 candidates (of the exact scan or of the HNSW index) a search scores exactly
    for the best k."""
    return max(2 * k, k + 64)


def _dots(q: NDArray[np.generic], mat: NDArray[np.generic]) -> NDArray[np.float64]:
    """The dot of one query row with every row of `mat` (numkong's kernel for their dtype)."""
    dots: NDArray[np.float64] = np.asarray(numkong.cdist(q, mat, metric="dot"), np.float64)[0]
    return dots


def _int8_into(codes: Bytes, scales: Vecs, rows: Vecs) -> None:
    """Symmetric int8 per row, written into place: code * scale ~ value. 256 rows at a time: a
    catch-up adds 4096 rows at once, and whole-batch temporaries raised the server's peak RSS by
    11 MB at 10k rows, against 4 MB for the copy itself."""
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        peak = np.maximum(chunk.max(axis=1), -chunk.min(axis=1))
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes[start : start + 256] = np.rint(chunk / scale[:, None])
        scales[start : start + 256] = scale


def _grown(a: NDArray[T], used: int, capacity: int) -> NDArray[T]:
    out = np.empty((capacity, *a.shape[1:]), a.dtype)
    out[:used] = a[:used]
    return out


class HnswStore:
    """USearch HNSW, cosine metric, over int8 vectors: it finds candidates, which the exact store's
    float16 copy (ExactStore.rescored) or the stored vectors (`scored`) rank and score.

    Measured here on 90k stored MiniLM vectors of bench sentences, 200 held-out ones as queries,
    against an f32 index with the same settings, both re-ranked: recall@10 0.9935 against 0.993,
    each of 500 stored vectors found itself first (R7), built in 51-58 s against 159 s (one
    thread); the int8 index added 87 MB to the process and searched 50 in 1.4 ms. Over stdio at
    100k memories the server peaked at 401 against 511 MB (both with a float16 matrix). With
    stored vectors plus noise as queries, the int8 distances alone put the right ten first only
    0.90 of the time, so they are never returned as scores."""

    def __init__(self, dim: int, buffer: memoryview | None = None) -> None:
        self.index = Index(
            ndim=dim,
            metric="cos",
            dtype="i8",
            connectivity=_CONNECTIVITY,
            expansion_add=_EXPANSION_ADD,
            expansion_search=_EXPANSION_SEARCH,
        )
        if buffer is not None:
            self.index.load(buffer)  # copies; keeps this object's expansion_search

    def __len__(self) -> int:
        return len(self.index)

    def add(self, keys: Keys, vecs: Vecs) -> None:
        if len(keys):
            # Multi-threaded inserts in usearch 2.26 leave ~0.1-0.4% of nodes unreachable, even
            # from their own vector (measured); one thread keeps self-queries exact (R7).
            self.index.add(keys.astype(np.uint64), vecs, threads=1)

    def remove(self, keys: Keys) -> None:
        if len(keys):
            self.index.remove(keys.astype(np.uint64))

    def key_array(self) -> Keys:
        return cast(Keys, np.asarray(self.index.keys[:], dtype=np.int64))

    def candidates(self, q: Vecs, k: int) -> list[int]:
        """The keys of about the `k` nearest, nearest first by int8 distance (to be re-ranked)."""
        if len(self.index) == 0:
            return []
        return cast(list[int], self.index.search(q, k).keys.tolist())
