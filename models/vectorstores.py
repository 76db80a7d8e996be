"""The two in-memory stores of a scope's vectors; the only module that imports usearch and
numkong (usearch's own SIMD kernels, which it installs).

Owned by models/vectors.py, which decides which store serves a scope and keeps them in step.
ExactStore is brute force over a float16 matrix; HnswStore wraps a USearch HNSW index. Neither is
thread-safe: the caller holds the scope's lock, or owns a store no other thread can see yet.
"""

from __future__ import annotations

from typing import cast

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


class ExactStore:
    """Brute force: L2-normalised rows in a growable float16 matrix; removal swaps in the last row.

    Half precision halves what a search streams through memory, and in a search that is the cost:
    the model, run just before on the other core, has pushed the matrix out of the cache. Measured
    here at 10k x 384 with the cache flushed first (2 vCPUs, 32 MB L3): numpy float32 matrix-vector
    1.22 ms, numkong float16 0.40 ms (0.32 warm); cosines differ from float32 by under 1e-4."""

    def __init__(self, dim: int, capacity: int = 0) -> None:
        self.mat: Halves = np.empty((capacity, dim), np.float16)
        self.keys: Keys = np.empty(capacity, np.int64)
        self.pos: dict[int, int] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def contains(self, keys: Keys) -> NDArray[np.bool_]:
        return np.fromiter((int(k) in self.pos for k in keys), bool, len(keys))

    def add(self, keys: Keys, vecs: Vecs) -> Vecs:
        """Add rows (keys not yet present); return them L2-normalised, in float32."""
        start, need = self.n, self.n + len(keys)
        if need > len(self.keys):  # grow geometrically so a stream of single adds stays O(1) each
            cap = max(need, len(self.keys) + len(self.keys) // 2, 64)
            mat = np.empty((cap, self.mat.shape[1]), np.float16)
            mat[:start] = self.mat[:start]
            ks = np.empty(cap, np.int64)
            ks[:start] = self.keys[:start]
            self.mat, self.keys = mat, ks
        out = np.array(vecs, np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        self.mat[start:need] = out
        self.keys[start:need] = keys
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
                self.pos[int(self.keys[i])] = i
            self.n = last
            gone.append(k)
        return np.asarray(gone, np.int64)

    def key_array(self) -> Keys:
        return self.keys[: self.n].copy()

    def rows(self, keys: Keys) -> Vecs:
        """The rows of present keys, in order, as float32 copies."""
        return self.mat[np.fromiter((self.pos[int(k)] for k in keys), np.intp, len(keys))].astype(np.float32)

    def search(self, q: Vecs, k: int) -> list[tuple[int, float]]:
        if self.n == 0:
            return []
        norm = float(np.linalg.norm(q))
        unit = (q / norm if norm > 0 else q).astype(np.float16)
        # float64 out: asking numkong for float32 measured four times slower (1.3 vs 0.32 ms).
        sims = np.asarray(numkong.cdist(unit[None, :], self.mat[: self.n], metric="dot"))[0]
        k = min(k, self.n)
        idx = np.argpartition(sims, self.n - k)[self.n - k :] if k < self.n else np.arange(self.n)
        idx = idx[np.argsort(-sims[idx], kind="stable")]
        return [(int(self.keys[i]), float(sims[i])) for i in idx]


class HnswStore:
    """USearch HNSW, cosine metric, f32 storage so a stored vector's nearest neighbour is itself."""

    def __init__(self, dim: int, buffer: memoryview | None = None) -> None:
        self.index = Index(
            ndim=dim,
            metric="cos",
            dtype="f32",
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

    def search(self, q: Vecs, k: int) -> list[tuple[int, float]]:
        if len(self.index) == 0:
            return []
        m = self.index.search(q, k)
        return [(int(key), 1.0 - float(d)) for key, d in zip(m.keys, m.distances, strict=True)]
