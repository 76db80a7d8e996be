"""The two in-memory stores of a scope's vectors; the only module that imports usearch.

Owned by models/vectors.py, which decides which store serves a scope and keeps them in step.
ExactStore is brute force over a float32 matrix; HnswStore wraps a USearch HNSW index. Neither is
thread-safe: the caller holds the scope's lock, or owns a store no other thread can see yet.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from numpy.typing import NDArray

# Must load before usearch: usearch 2.26's extension loaded first makes onnxruntime segfault.
import session_mcp.models.embedder  # noqa: F401

# isort: split
from usearch.index import Index

# Tuned on 384-d data (bench/vector_search.py): recall@10 >= 0.99 on embedding-like vectors at
# 100k, and on uniformly random vectors up to a few thousand (random 384-d is the worst case).
_CONNECTIVITY = 32
_EXPANSION_ADD = 128
_EXPANSION_SEARCH = 256

Keys = NDArray[np.int64]
Vecs = NDArray[np.float32]


class ExactStore:
    """Brute force: L2-normalised rows in a growable matrix; removal swaps in the last row."""

    def __init__(self, dim: int, capacity: int = 0) -> None:
        self.mat: Vecs = np.empty((capacity, dim), np.float32)
        self.keys: Keys = np.empty(capacity, np.int64)
        self.pos: dict[int, int] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def contains(self, keys: Keys) -> NDArray[np.bool_]:
        return np.fromiter((int(k) in self.pos for k in keys), bool, len(keys))

    def add(self, keys: Keys, vecs: Vecs) -> Vecs:
        """Add rows (keys not yet present); return the stored, normalised rows (a view)."""
        start, need = self.n, self.n + len(keys)
        if need > len(self.keys):  # grow geometrically so a stream of single adds stays O(1) each
            cap = max(need, len(self.keys) + len(self.keys) // 2, 64)
            mat = np.empty((cap, self.mat.shape[1]), np.float32)
            mat[:start] = self.mat[:start]
            ks = np.empty(cap, np.int64)
            ks[:start] = self.keys[:start]
            self.mat, self.keys = mat, ks
        out = self.mat[start:need]
        out[:] = vecs
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
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
        """Copies of the rows of present keys, in order."""
        return self.mat[np.fromiter((self.pos[int(k)] for k in keys), np.intp, len(keys))]

    def search(self, q: Vecs, k: int) -> list[tuple[int, float]]:
        if self.n == 0:
            return []
        norm = float(np.linalg.norm(q))
        # einsum's single-threaded loop, not `@`: OpenBLAS's threaded gemv measured 5-20x slower
        # at p50 on a busy 2-vCPU box, and search already runs on many worker threads.
        sims = np.einsum("ij,j->i", self.mat[: self.n], q / norm if norm > 0 else q)
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
