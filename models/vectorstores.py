"""The two in-memory stores of a scope's vectors; the only module that imports usearch and
numkong (usearch's own SIMD kernels, which it installs).

Owned by models/vectors.py, which decides which store serves a scope and keeps them in step.
ExactStore is brute force over a float16 matrix; HnswStore wraps a USearch HNSW index. Neither is
thread-safe: the caller holds the scope's lock, or owns a store no other thread can see yet.
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

Keys = NDArray[np.int64]
Vecs = NDArray[np.float32]
Halves = NDArray[np.float16]
Bytes = NDArray[np.int8]
T = TypeVar("T", bound=np.generic)


class ExactStore:
    """Brute force: L2-normalised rows in a growable float16 matrix; removal swaps in the last row.

    Half precision halves what a search streams through memory, and in a search that is the cost:
    the model, run just before on the other core, has pushed the matrix out of the cache. Measured
    here at 10k x 384 with the cache flushed first (2 vCPUs, 32 MB L3): numpy float32 matrix-vector
    1.22 ms, numkong float16 0.40 ms (0.32 warm); cosines differ from float32 by under 1e-4.

    Below `coarse_below` rows an int8 copy (one scale per row) is scanned first, and only its best
    `shortlist(k)` rows are scored in float16: half the bytes again (10k x 384 with the cache
    flushed, on an AMD EPYC: int8 0.18 against float16 0.43 ms) for half as much memory more. The
    int8 cosine is off by at most 0.003 (200 queries over 10k stored MiniLM vectors), so a row of
    the true top k misses the shortlist only if 64 other rows score within 0.006 below it; the
    results are the float16 ones, scores included. Past `coarse_below` rows the scope gets an HNSW
    index and the matrix is only its fallback: the copy is dropped for good."""

    def __init__(self, dim: int, capacity: int = 0, coarse_below: int = 0) -> None:
        self.mat: Halves = np.empty((capacity, dim), np.float16)
        self.keys: Keys = np.empty(capacity, np.int64)
        self.pos: dict[int, int] = {}
        self.n = 0
        self.coarse_below = coarse_below
        self.coarse: Bytes | None = None
        self.coarse_scale: Vecs = np.empty(0, np.float32)
        if capacity and coarse_below:  # untouched pages cost nothing if it is dropped
            self.coarse = np.empty((capacity, dim), np.int8)
            self.coarse_scale = np.empty(capacity, np.float32)

    def __len__(self) -> int:
        return self.n

    def contains(self, keys: Keys) -> NDArray[np.bool_]:
        return np.fromiter((int(k) in self.pos for k in keys), bool, len(keys))

    def add(self, keys: Keys, vecs: Vecs) -> Vecs:
        """Add rows (keys not yet present); return them L2-normalised, in float32."""
        start, need = self.n, self.n + len(keys)
        if self.coarse is not None and need >= self.coarse_below:
            self.coarse, self.coarse_scale = None, np.empty(0, np.float32)
        if need > len(self.keys):  # grow geometrically so a stream of single adds stays O(1) each
            cap = max(need, len(self.keys) + len(self.keys) // 2, 64)
            self.mat = _grown(self.mat, start, cap)
            self.keys = _grown(self.keys, start, cap)
            if self.coarse is not None:
                self.coarse = _grown(self.coarse, start, cap)
                self.coarse_scale = _grown(self.coarse_scale, start, cap)
        out = np.array(vecs, np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        self.mat[start:need] = out
        self.keys[start:need] = keys
        if self.coarse is not None:
            _int8_into(self.coarse[start:need], self.coarse_scale[start:need], out)
        for i, k in enumerate(keys.tolist(), start):
            self.pos[k] = i
        self.n = need
        return out

    def remove(self, keys: Keys) -> Keys:
        """Remove the keys present; return those."""
        gone = []
        for k in keys.tolist():
            i = self.pos.pop(k, None)
            if i is None:
                continue
            last = self.n - 1
            if i != last:
                self.mat[i] = self.mat[last]
                self.keys[i] = self.keys[last]
                if self.coarse is not None:
                    self.coarse[i] = self.coarse[last]
                    self.coarse_scale[i] = self.coarse_scale[last]
                self.pos[int(self.keys[i])] = i
            self.n = last
            gone.append(k)
        return np.asarray(gone, np.int64)

    def key_array(self) -> Keys:
        return self.keys[: self.n].copy()

    def rescored(self, q: Vecs, keys: Sequence[int]) -> list[tuple[int, float]]:
        """The present `keys` with their float16 cosine to `q`, best first: an approximate index's
        candidates re-ranked, with the same scores an exact search gives."""
        rows = np.fromiter((i for k in keys if (i := self.pos.get(k)) is not None), np.intp)
        if not len(rows):
            return []
        unit, _ = _unit(q)
        sims = _dots(unit.astype(np.float16)[None, :], self.mat[rows])
        order = np.argsort(-sims, kind="stable")
        return list(zip(self.keys[rows[order]].tolist(), sims[order].tolist(), strict=True))

    def rows(self, keys: Keys) -> Vecs:
        """The rows of present keys, in order, as float32 copies."""
        return self.mat[np.fromiter((self.pos[int(k)] for k in keys), np.intp, len(keys))].astype(np.float32)

    def search(self, q: Vecs, k: int) -> list[tuple[int, float]]:
        if self.n == 0:
            return []
        unit, norm = _unit(q)
        k = min(k, self.n)
        rows: NDArray[np.intp] | None = None
        listed = shortlist(k)
        if self.coarse is not None and norm > 0 and listed < self.n:
            q8 = np.rint(unit * (127.0 / float(np.abs(unit).max()))).astype(np.int8)[None, :]
            approx = _dots(q8, self.coarse[: self.n]) * self.coarse_scale[: self.n]
            rows = np.argpartition(approx, self.n - listed)[self.n - listed :]
        # float64 out: asking numkong for float32 measured four times slower (1.3 vs 0.32 ms).
        half = unit.astype(np.float16)[None, :]
        sims = _dots(half, self.mat[rows] if rows is not None else self.mat[: self.n])
        idx = np.argpartition(sims, len(sims) - k)[len(sims) - k :] if k < len(sims) else np.arange(len(sims))
        idx = idx[np.argsort(-sims[idx], kind="stable")]
        found = rows[idx] if rows is not None else idx
        return list(zip(self.keys[found].tolist(), sims[idx].tolist(), strict=True))


def _unit(q: Vecs) -> tuple[Vecs, float]:
    """`q` scaled to length 1 (as it is if zero), and its length. Scalar work on one 384-d row,
    written for its per-call cost: this runs in every search."""
    norm = math.sqrt(float(np.dot(q, q)))
    return (q / norm if norm > 0 else q), norm


def shortlist(k: int) -> int:
    """How many int8 candidates (of the exact scan or of the HNSW index) a search rescores in
    float16 for the best k."""
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
    """USearch HNSW, cosine metric, over int8 vectors: it finds candidates, and the scope's float16
    matrix (ExactStore.rescored) ranks and scores them.

    Measured here on 90k stored MiniLM vectors of bench sentences, 200 held-out ones as queries,
    against an f32 index with the same settings, both re-ranked: recall@10 0.9935 against 0.993,
    each of 500 stored vectors found itself first (R7), built in 51-58 s against 159 s (one
    thread); the int8 index added 87 MB to the process and searched 50 in 1.4 ms. Over stdio at
    100k memories the server peaked at 401 against 511 MB. With stored vectors plus noise as
    queries, the int8 distances alone put the right ten first only 0.90 of the time, so they are
    never returned as scores."""

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
