"""Per-scope vector caches derived from the SQL database; the only module that imports usearch.

The database is the source of truth (DESIGN invariant 1); everything here is a cache that may be
deleted at any time. Each scope (a user's long-term memory, a session's short-term memory, a
knowledge owner) has its own store, because usearch's search takes no filter: small scopes are
an exact float32 matrix, scopes of `exact_below` vectors or more are a USearch HNSW index.

Catch-up, per search: one `stats` call. New rows past the watermark are fetched; if the key
count still disagrees with the row count (deletes, or PostgreSQL commits that landed out of seq
order), the key sets are reconciled with `all_keys`. Equal counts can hide a missed row plus a
foreign delete, so a full reconcile also runs every `verify_every` seconds per scope. Seqs must
never be reused (SQLite AUTOINCREMENT, a PostgreSQL sequence): a key names one vector forever.

Persistence (HNSW scopes only; exact ones rebuild from SQL in milliseconds) is one file per
scope, `<sha256(scope)[:32]>.usearch`, laid out as

    b"SMCPVEC1" | u32 big-endian header length | sha256(header) | header JSON | usearch bytes

with header {format, scope, watermark, count, dim, sha256 of the usearch bytes}. One file means
one atomic `os.replace` (temp file in the same directory, fsync, replace, fsync directory), so
index and metadata can never disagree. usearch loads a file with a flipped byte silently, so both
checksums are verified on load; any bad file is logged and rebuilt, never raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, cast

import numpy as np
from numpy.typing import NDArray
from usearch.index import Index

from session_mcp.models.errors import EngineError

log = logging.getLogger("session_mcp.vectors")

_MAGIC = b"SMCPVEC1"
_FORMAT = 1
# Tuned on 384-d data (bench/vector_search.py): recall@10 >= 0.99 on embedding-like vectors at
# 100k, and on uniformly random vectors up to a few thousand (random 384-d is the worst case).
_CONNECTIVITY = 32
_EXPANSION_ADD = 128
_EXPANSION_SEARCH = 256
_BATCH = 4096
_STALE_TEMP_S = 3600.0

Keys = NDArray[np.int64]
Vecs = NDArray[np.float32]


class VectorSource(Protocol):
    """What the database offers the cache for one scope (implemented by the memory/knowledge services)."""

    def stats(self, scope: str) -> tuple[int, int]: ...

    def rows_after(self, scope: str, after_seq: int) -> Iterable[tuple[int, bytes]]: ...

    def all_keys(self, scope: str) -> Sequence[int]: ...


class _Exact:
    """Brute force: L2-normalised rows in a growable matrix; removal swaps in the last row."""

    def __init__(self, dim: int) -> None:
        self.mat: Vecs = np.empty((0, dim), np.float32)
        self.keys: Keys = np.empty(0, np.int64)
        self.pos: dict[int, int] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def contains(self, keys: Keys) -> NDArray[np.bool_]:
        return np.fromiter((int(k) in self.pos for k in keys), bool, len(keys))

    def add(self, keys: Keys, vecs: Vecs) -> None:
        need = self.n + len(keys)
        if need > len(self.keys):  # grow geometrically so a stream of single adds stays O(1) each
            cap = max(need, 2 * len(self.keys), 64)
            mat = np.empty((cap, self.mat.shape[1]), np.float32)
            mat[: self.n] = self.mat[: self.n]
            ks = np.empty(cap, np.int64)
            ks[: self.n] = self.keys[: self.n]
            self.mat, self.keys = mat, ks
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        self.mat[self.n : need] = vecs / np.where(norms > 0, norms, 1)
        self.keys[self.n : need] = keys
        for i, k in enumerate(keys.tolist(), self.n):
            self.pos[k] = i
        self.n = need

    def remove(self, keys: Keys) -> int:
        removed = 0
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
            removed += 1
        return removed

    def key_array(self) -> Keys:
        return self.keys[: self.n].copy()

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


class _Hnsw:
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
            self.index.load(buffer)  # keeps this object's expansion_search

    def __len__(self) -> int:
        return len(self.index)

    def contains(self, keys: Keys) -> NDArray[np.bool_]:
        return np.asarray(self.index.contains(keys.astype(np.uint64)), dtype=bool).reshape(-1)

    def add(self, keys: Keys, vecs: Vecs) -> None:
        if len(keys):
            # Multi-threaded inserts in usearch 2.26 leave ~0.1-0.4% of nodes unreachable, even
            # from their own vector (measured); one thread keeps self-queries exact (R7).
            self.index.add(keys.astype(np.uint64), vecs, threads=1)

    def remove(self, keys: Keys) -> int:
        keys = keys[self.contains(keys)]
        if len(keys):
            self.index.remove(keys.astype(np.uint64))
        return len(keys)

    def key_array(self) -> Keys:
        return cast(Keys, np.asarray(self.index.keys[:], dtype=np.int64))

    def search(self, q: Vecs, k: int) -> list[tuple[int, float]]:
        if len(self.index) == 0:
            return []
        m = self.index.search(q, k)
        return [(int(key), 1.0 - float(d)) for key, d in zip(m.keys, m.distances, strict=True)]


class _Scope:
    """One scope's cache; `lock` guards every field."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.store: _Exact | _Hnsw | None = None
        self.watermark = 0
        self.unsaved = 0  # changes since the file was last written
        self.checked_at = -math.inf  # monotonic time of the last full reconcile
        self.dropped = False


class ScopedVectors:
    """Vector search per scope, caught up from a `VectorSource` on every search; thread-safe."""

    def __init__(
        self,
        *,
        dim: int,
        source: VectorSource,
        directory: Path | None,
        exact_below: int = 20_000,
        max_loaded: int = 64,
        save_every: int = 256,
        verify_every: float = 60.0,
    ) -> None:
        self._dim = dim
        self._source = source
        self._dir = directory
        self._exact_below = exact_below
        self._max_loaded = max(1, max_loaded)
        self._save_every = max(1, save_every)
        self._verify_every = verify_every
        self._lock = threading.Lock()  # guards _scopes only; never held while talking to the source
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._sweep_temp_files(directory)

    def search(self, scope: str, query: NDArray[np.float32], k: int) -> list[tuple[int, float]]:
        q = self._vector(query)
        s = self._get(scope)
        with s.lock:
            self._catch_up(s)
            assert s.store is not None
            return s.store.search(q, k) if k > 0 else []

    def note_added(self, scope: str, seq: int, vector: NDArray[np.float32]) -> None:
        v = self._vector(vector)
        s = self._loaded(scope)
        if s is None:
            return
        with s.lock:
            if s.store is None or s.dropped:
                return
            keys = np.array([seq], np.int64)
            if not s.store.contains(keys)[0]:
                s.store.add(keys, v[None, :])
                s.unsaved += 1
            # Rows committed by others below `seq` and not yet seen make the counts disagree,
            # so the next search reconciles them.
            s.watermark = max(s.watermark, seq)
            self._maybe_save(s)

    def note_removed(self, scope: str, seqs: Sequence[int]) -> None:
        s = self._loaded(scope)
        if s is None or not seqs:
            return
        with s.lock:
            if s.store is None or s.dropped:
                return
            s.unsaved += s.store.remove(np.asarray(seqs, np.int64))
            self._maybe_save(s)

    def drop(self, scope: str) -> None:
        with self._lock:
            s = self._scopes.pop(scope, None)
        if s is not None:
            with s.lock:
                s.dropped, s.store = True, None
        if self._dir is not None:
            try:
                self._path(scope).unlink(missing_ok=True)
            except OSError as e:
                log.warning("could not delete the vector index file of a dropped scope: %s", e)

    def flush(self) -> None:
        with self._lock:
            scopes = list(self._scopes.values())
        for s in scopes:
            with s.lock:
                self._save(s)

    def close(self) -> None:
        self.flush()
        with self._lock:
            scopes = list(self._scopes.values())
            self._scopes.clear()
        for s in scopes:
            with s.lock:
                s.store = None

    def _get(self, name: str) -> _Scope:
        with self._lock:
            s = self._scopes.get(name)
            if s is None:
                s = self._scopes[name] = _Scope(name)
            self._scopes.move_to_end(name)
            evicted = []
            while len(self._scopes) > self._max_loaded:
                evicted.append(self._scopes.popitem(last=False)[1])
        for old in evicted:  # saved outside the registry lock: a save can take a while
            with old.lock:
                self._save(old)
                old.store = None
        return s

    def _loaded(self, name: str) -> _Scope | None:
        with self._lock:
            return self._scopes.get(name)

    def _catch_up(self, s: _Scope) -> None:
        max_seq, count = self._source.stats(s.name)
        if s.store is None and not self._load(s, max_seq):
            self._rebuild(s, count)
        if max_seq > s.watermark:
            self._apply(s, self._source.rows_after(s.name, s.watermark))
        assert s.store is not None
        stale = time.monotonic() - s.checked_at >= self._verify_every
        if len(s.store) != count or max_seq < s.watermark or stale:
            self._reconcile(s)
        self._fit_mode(s)
        self._maybe_save(s)

    def _rebuild(self, s: _Scope, count: int) -> None:
        s.store = _Hnsw(self._dim) if count >= self._exact_below else _Exact(self._dim)
        s.watermark = 0
        self._apply(s, self._source.rows_after(s.name, 0))
        s.checked_at = time.monotonic()
        if isinstance(s.store, _Hnsw):
            s.unsaved = max(s.unsaved, self._save_every)  # a rebuilt HNSW is worth saving now

    def _apply(self, s: _Scope, rows: Iterable[tuple[int, bytes]]) -> None:
        """Add rows not yet cached, in batches; advance the watermark past every row seen."""
        assert s.store is not None
        width = self._dim * 4
        it = iter(rows)
        while batch := list(itertools.islice(it, _BATCH)):
            keys = np.fromiter((seq for seq, _ in batch), np.int64, len(batch))
            if any(len(blob) != width for _, blob in batch):
                raise EngineError(
                    f"a stored vector in scope '{s.name}' does not have {self._dim} float32 values; "
                    "the stored embeddings are damaged, re-add the affected items"
                )
            vecs = np.frombuffer(b"".join(blob for _, blob in batch), np.float32).reshape(-1, self._dim)
            new = ~s.store.contains(keys)
            if new.any():
                s.store.add(keys[new], vecs[new])
                s.unsaved += int(new.sum())
            s.watermark = max(s.watermark, int(keys.max()))

    def _reconcile(self, s: _Scope) -> None:
        assert s.store is not None
        live = np.asarray(self._source.all_keys(s.name), np.int64)
        have = s.store.key_array()
        extra = np.setdiff1d(have, live)
        if len(extra):
            s.unsaved += s.store.remove(extra)
        missing = np.setdiff1d(live, have)
        if len(missing):
            wanted = set(missing.tolist())
            rows = self._source.rows_after(s.name, int(missing[0]) - 1)
            self._apply(s, ((seq, blob) for seq, blob in rows if seq in wanted))
        # Seqs are never reused, so the newest live key is a safe watermark (the newest rows may
        # have been deleted); lowering it keeps the next catch-up at one stats call.
        s.watermark = int(live.max()) if len(live) else 0
        s.checked_at = time.monotonic()
        log.debug("reconciled scope: %d stale keys removed, %d missed rows added", len(extra), len(missing))

    def _fit_mode(self, s: _Scope) -> None:
        """Switch exact <-> HNSW; going down only at half the threshold so a scope cannot flap."""
        store = s.store
        if isinstance(store, _Exact) and len(store) >= self._exact_below:
            hnsw = _Hnsw(self._dim)
            hnsw.add(store.key_array(), store.mat[: store.n])
            s.store, s.unsaved = hnsw, max(len(store), self._save_every)  # saved right away
        elif isinstance(store, _Hnsw) and len(store) < self._exact_below // 2:
            self._rebuild(s, 0)  # small by now: re-reading SQL beats reading vectors out of usearch
            if self._dir is not None:
                with contextlib.suppress(OSError):
                    self._path(s.name).unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        assert self._dir is not None
        return self._dir / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.usearch"

    def _maybe_save(self, s: _Scope) -> None:
        if s.unsaved >= self._save_every:
            self._save(s)

    def _save(self, s: _Scope) -> None:
        if self._dir is None or s.dropped or not isinstance(s.store, _Hnsw) or s.unsaved == 0:
            return
        path = self._path(s.name)
        try:
            body = cast(bytearray, s.store.index.save())
            meta = {
                "format": _FORMAT,
                "scope": s.name,
                "watermark": s.watermark,
                "count": len(s.store),
                "dim": self._dim,
                "sha256": hashlib.sha256(body).hexdigest(),
            }
            header = json.dumps(meta, separators=(",", ":")).encode()
            prefix = _MAGIC + struct.pack(">I", len(header)) + hashlib.sha256(header).digest()
            _atomic_write(path, (prefix, header, body))
            s.unsaved = 0
        except (OSError, RuntimeError) as e:  # a cache that cannot be saved is rebuilt later
            log.warning("could not save the vector index of a scope to %s: %s", path, e)

    def _load(self, s: _Scope, max_seq: int) -> bool:
        """Load the scope's HNSW file if it is intact and not ahead of the database."""
        if self._dir is None:
            return False
        path = self._path(s.name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warning("could not read vector index file %s (%s); rebuilding from the database", path, e)
            return False
        try:
            store, watermark = self._parse(s.name, memoryview(data))
        except Exception as e:  # any damage means "rebuild"; a bad cache file never reaches the caller
            log.warning("vector index file %s is unusable (%s); rebuilding from the database", path, e)
            return False
        if watermark > max_seq:  # maybe a file that outlived its database: its keys may be reused
            log.info("vector index file %s is ahead of the database; rebuilding", path)
            return False
        s.store, s.watermark, s.unsaved, s.checked_at = store, watermark, 0, -math.inf
        return True

    def _parse(self, name: str, data: memoryview) -> tuple[_Hnsw, int]:
        fixed = len(_MAGIC) + 4 + 32
        if len(data) < fixed or bytes(data[: len(_MAGIC)]) != _MAGIC:
            raise ValueError("not a session-mcp vector index file")
        (hlen,) = struct.unpack(">I", data[len(_MAGIC) : len(_MAGIC) + 4])
        header = bytes(data[fixed : fixed + hlen])
        if len(header) != hlen or hashlib.sha256(header).digest() != bytes(data[fixed - 32 : fixed]):
            raise ValueError("header checksum mismatch")
        meta = json.loads(header)
        body = data[fixed + hlen :]
        if meta["format"] != _FORMAT or meta["scope"] != name or meta["dim"] != self._dim:
            raise ValueError("file belongs to another scope, dimension or format")
        if hashlib.sha256(body).hexdigest() != meta["sha256"]:
            raise ValueError("index checksum mismatch")
        store = _Hnsw(self._dim, body)
        if len(store) != meta["count"]:
            raise ValueError("vector count differs from the header")
        return store, int(meta["watermark"])

    @staticmethod
    def _sweep_temp_files(directory: Path) -> None:
        """Remove temp files of saves that died mid-write; young ones may be another process's."""
        cutoff = time.time() - _STALE_TEMP_S
        for p in directory.glob("*.usearch.*.tmp"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()

    def _vector(self, v: NDArray[np.float32]) -> Vecs:
        a = np.asarray(v, np.float32)
        if a.shape != (self._dim,):
            raise ValueError(f"expected a vector of shape ({self._dim},), got {a.shape}")
        return a


def _atomic_write(path: Path, parts: Iterable[bytes | bytearray]) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory (crash-safe)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name != "nt":  # directories cannot be opened for fsync on Windows
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
