"""Per-scope vector caches derived from the SQL database: what is searched how, kept up to date.

The database is the source of truth (DESIGN invariant 1); everything here is a cache that may be
deleted at any time. Each scope (a user's long-term memory, a session's short-term memory, a
knowledge owner) has its own cache, because usearch's search takes no filter.

Every loaded scope is an exact store (models/vectorstores.py): int8 codes of its L2-normalised
rows, scanned for a shortlist that is then scored exactly, by a float16 copy while the scope has
fewer than `matrix_below` rows, past that by the float32 vectors the database stores (read in the
search's own transaction, ~0.5 ms for the 114 rows of a 50-candidate search). So a scope is always
searchable exactly, from its first search on, and its memory is about a quarter of its float32
vectors once large (at 100k memories 38 MB of codes, against 77 MB for a float16 matrix).

A scope of `exact_below` vectors or more also gets a USearch HNSW index as an accelerator (its
candidates are scored like the shortlist's), never inside a request: one daemon worker thread per
instance (one per process in the server; started when work is queued, gone when idle, stopped by
`close()`, awaited by `wait_idle()`) loads it from its file or builds it (single-threaded adds:
multi-threaded ones leave unreachable nodes), scopes queued one after another, while searches
keep using the exact store. The worker fills its private index in chunks, copying rows out of the
store under the scope lock (the float16 copy's, or the int8 codes scaled back: the index is int8
anyway) and adding them outside it; once the key sets differ by at most `_SMALL`, it applies the
rest and switches the scope to HNSW atomically under the lock. Adds and removes made during the
build are replayed by that key-set diff, which needs no journal because a seq names one vector
forever. Once live, the index gets every change the store gets; a catch-up of more than `_SMALL`
rows parks it and lets the worker bring it up to date instead. A scope shrinking below half the
threshold drops its index (no flapping). The index took 87 MB at 90k vectors on top of the rows,
and 64-95 s to build at 100k on one thread, which is why `exact_below` defaults to 200k: at 100k
a whole search took as long without it (13.55 against 13.58 ms, the vector part 3.60 against
3.19 ms; README) and needs no memory beyond the codes. Nothing holds a full float32 copy: rows
are read in batches of `_BATCH` into a preallocated store, files are streamed.

Catch-up, per search: one `stats` call. New rows past the watermark are fetched; if the key
count still disagrees with the row count (deletes, or PostgreSQL commits that landed out of seq
order), the key sets are reconciled with `all_keys`. Equal counts can hide a missed row plus a
foreign delete, so a full reconcile also runs every `verify_every` seconds per scope. Seqs must
never be reused (SQLite AUTOINCREMENT, a PostgreSQL sequence).

Persistence (HNSW only; the exact store is re-read from SQL): models/vectorfile.py's checksummed
file per scope. The worker writes it after a build and after every `save_every` changes, taking
the index offline meanwhile (searches use the exact store, changes are replayed by the diff);
`flush()`, eviction and `close()` write dirty live indexes. A bad file is logged and rebuilt,
never raised.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from session_mcp.models import vectorfile
from session_mcp.models.errors import EngineError
from session_mcp.models.vectorstores import ExactStore, HnswStore, Keys, Vecs, scored, shortlist

log = logging.getLogger("session_mcp.vectors")
_instances: weakref.WeakSet[ScopedVectors] = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    """A worker still inside usearch when the interpreter finalises aborts the process."""
    for vs in list(_instances):
        vs._stop()


_BATCH = 512  # rows read from the source per step (4096 left a 100k load 27 MB larger: 97 against 70 MB)
_CHUNK = 256  # rows the worker adds per step: ~0.5 s at 100k, so close() waits at most that
_SMALL = 64  # a key-set difference applied under the scope lock; larger ones go to the worker
_MAX_ROUNDS = 8  # then the remaining difference is applied under the lock, whatever its size
_JOIN_S = 30.0


class VectorSource(Protocol):
    """What the database offers the cache for one scope (implemented by the memory/knowledge services)."""

    def stats(self, scope: str) -> tuple[int, int]: ...

    def rows_after(self, scope: str, after_seq: int) -> Iterable[tuple[int, bytes]]: ...

    def all_keys(self, scope: str) -> Sequence[int]: ...

    def vectors(self, scope: str, seqs: Sequence[int]) -> Iterable[tuple[int, bytes]]:
        """The stored vectors of those of `seqs` that the scope holds, in any order."""
        ...


class _Scope:
    """One scope's cache; `lock` guards every field."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.exact: ExactStore | None = None  # None until the first catch-up
        self.hnsw: HnswStore | None = None  # live accelerator, in step with `exact`
        self.parked: HnswStore | None = None  # offline index the worker is to bring up to date
        self.watermark = 0
        self.max_seq = 0  # from the last `stats` call
        self.changes = 0  # changes to `exact` so far
        self.saved: int | None = None  # the `changes` value the scope's file reflects
        self.checked_at = -math.inf  # monotonic time of the last full reconcile
        # (max_seq, count, cached keys) when a reconcile found the source's stats disagreeing with
        # its rows (a drifted counts table): the same triple again means nothing changed since.
        self.drift: tuple[int, int, int] | None = None
        self.queued = False
        self.gone = False  # evicted or dropped: a new _Scope serves the name
        self.dropped = False


class ScopedVectors:
    """Vector search per scope, caught up from a `VectorSource` on every search; thread-safe."""

    def __init__(
        self,
        *,
        dim: int,
        source: VectorSource,
        directory: Path | None,
        exact_below: int = 200_000,
        matrix_below: int = 20_000,
        max_loaded: int = 64,
        save_every: int = 256,
        verify_every: float = 60.0,
    ) -> None:
        self._dim = dim
        self._source = source
        self._dir = directory
        self._exact_below = exact_below
        self._matrix_below = matrix_below
        self._max_loaded = max(1, max_loaded)
        self._save_every = max(1, save_every)
        self._verify_every = verify_every
        self._lock = threading.Lock()  # guards _scopes only; never held while talking to the source
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._cv = threading.Condition()  # guards the worker fields below; taken after a scope lock
        self._jobs: collections.deque[_Scope] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            vectorfile.sweep_temp_files(directory)
        _instances.add(self)

    # --- the interface -------------------------------------------------------------------------

    def search(
        self, scope: str, query: NDArray[np.float32], k: int, source: VectorSource | None = None
    ) -> list[tuple[int, float]]:
        """The k nearest (key, cosine), best first, after catching the scope up. `source` is the
        database as the caller's open transaction sees it (so one search reads one snapshot on
        one connection); without it the cache reads through its own source."""
        q = self._vector(query)
        source = source or self._source
        with self._caught_up(scope, source) as s:
            found = self._nearest(s, q, k, source)
            assert found is not None
            return found

    def catch_up(self, scope: str, source: VectorSource | None = None) -> None:
        """Bring the scope's cache up to the database as `source` sees it (as `search` does first),
        loading it if need be: for a search that reads in one thread and scans in another."""
        with self._caught_up(scope, source or self._source):
            pass

    def held(self, scope: str, query: NDArray[np.float32], k: int) -> list[tuple[int, float]] | None:
        """`search`'s answer from the cache as it stands, without the database: no catch-up (call
        `catch_up` first, in the search's transaction) and no stored vectors read. None when the
        scope cannot answer so (not loaded, evicted, or scored from the stored vectors because it
        has no float16 copy): then `search`, on the transaction's connection. So a search can scan
        the vectors while its full-text query runs on that connection in another thread. A row
        added since the catch-up may be among the keys; the search's row fetch, in its snapshot,
        leaves it out."""
        q = self._vector(query)
        s = self._loaded(scope)
        if s is None:
            return None
        with s.lock:
            return None if s.gone or s.exact is None else self._nearest(s, q, k, None)

    def note_added(self, scope: str, seq: int, vector: NDArray[np.float32]) -> None:
        v = self._vector(vector)
        s = self._loaded(scope)
        if s is None:
            return
        with s.lock:
            if s.exact is None or s.gone:
                return
            keys = np.array([seq], np.int64)
            if not s.exact.contains(keys)[0]:
                self._add(s, keys, v[None, :])
            # Rows committed by others below `seq` and not yet seen make the counts disagree,
            # so the next search reconciles them.
            s.watermark = max(s.watermark, seq)
            self._fit(s)

    def note_removed(self, scope: str, seqs: Sequence[int]) -> None:
        s = self._loaded(scope)
        if s is None or not seqs:
            return
        with s.lock:
            if s.exact is None or s.gone:
                return
            self._remove(s, np.asarray(seqs, np.int64))
            self._fit(s)

    def drop(self, scope: str) -> None:
        with self._lock:
            s = self._scopes.pop(scope, None)
        if s is not None:
            with s.lock:
                self._release(s, dropped=True)
        self._unlink(scope)

    def flush(self) -> None:
        """Write every dirty live index now, in this thread; evicted ones waiting for the worker too."""
        with self._cv:
            evicted = [s for s in self._jobs if s.gone]
        with self._lock:
            scopes = evicted + list(self._scopes.values())
        for s in scopes:
            with s.lock:
                self._save(s)

    def close(self) -> None:
        """Stop the worker (an unfinished build is abandoned), then flush and unload everything."""
        self._stop()
        self.flush()
        with self._cv:
            self._jobs.clear()
        with self._lock:
            scopes = list(self._scopes.values())
            self._scopes.clear()
        for s in scopes:
            with s.lock:
                self._release(s, dropped=False)

    def _stop(self) -> None:
        with self._cv:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            thread.join(_JOIN_S)
            if thread.is_alive():
                log.warning("the vector index worker did not stop within %.0f s", _JOIN_S)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the worker has nothing queued or running; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._thread is None, timeout)

    def mode(self, scope: str) -> str:
        """ "hnsw" if the scope is served by its index now, "exact" if by its exact store, else "unloaded"."""
        s = self._loaded(scope)
        if s is None:
            return "unloaded"
        with s.lock:
            return "hnsw" if s.hnsw is not None else "exact" if s.exact is not None else "unloaded"

    # --- the request path (scope lock held) ----------------------------------------------------

    def _get(self, name: str) -> _Scope:
        with self._lock:
            s = self._scopes.get(name)
            if s is None:
                s = self._scopes[name] = _Scope(name)
            self._scopes.move_to_end(name)
            evicted = []
            while len(self._scopes) > self._max_loaded:
                evicted.append(self._scopes.popitem(last=False)[1])
        for old in evicted:
            with old.lock:
                old.exact, old.parked, old.gone = None, None, True
                if old.hnsw is not None and old.saved != old.changes:
                    self._enqueue(old)  # the worker saves it, then lets it go
                else:
                    old.hnsw = None
        return s

    def _loaded(self, name: str) -> _Scope | None:
        with self._lock:
            return self._scopes.get(name)

    def _nearest(
        self, s: _Scope, q: Vecs, k: int, source: VectorSource | None
    ) -> list[tuple[int, float]] | None:
        """The k nearest in the scope's cache (its lock held): the float16 copy scores the exact
        store's shortlist or the HNSW index's candidates, or else the stored vectors from `source`
        do; None if that is needed and `source` is None."""
        exact = s.exact
        assert exact is not None
        if k <= 0:
            return []
        if s.hnsw is None and exact.scores:
            return exact.search(q, k)
        if not exact.scores and source is None:
            return None
        # The index is in step with the store, which has the same keys.
        keys = s.hnsw.candidates(q, shortlist(k)) if s.hnsw is not None else exact.candidates(q, k)
        if exact.scores:
            return exact.rescored(q, keys)[:k]
        assert source is not None  # checked above
        return self._scored(s, q, keys, source)[:k]

    @contextmanager
    def _caught_up(self, scope: str, source: VectorSource) -> Iterator[_Scope]:
        """The scope's cache, caught up from `source`, with its lock held."""
        while True:
            s = self._get(scope)
            with s.lock:
                if s.gone:  # evicted between lookup and lock: serve from its successor
                    continue
                self._catch_up(s, source)
                yield s
                return

    def _catch_up(self, s: _Scope, source: VectorSource) -> None:
        max_seq, count = source.stats(s.name)
        s.max_seq = max_seq
        if s.exact is None:
            # Preallocated, so no copies while it fills, with a quarter more room for the adds
            # that follow: untouched pages cost no memory, and without it the first add after a
            # load copied the whole store (0.43 s at 100k rows here, the p99 outlier of memory_add).
            matrix = self._matrix_below if count < self._matrix_below else 0  # else never made
            s.exact = ExactStore(self._dim, count + count // 4 + 64, matrix_below=matrix)
            s.watermark, s.checked_at = 0, time.monotonic()
            self._apply(s, source.rows_after(s.name, 0))
        elif max_seq > s.watermark:
            self._apply(s, source.rows_after(s.name, s.watermark))
        stale = time.monotonic() - s.checked_at >= self._verify_every
        disagree = len(s.exact) != count or max_seq < s.watermark
        if disagree and s.drift == (max_seq, count, len(s.exact)):
            disagree = False  # the drift the last reconcile saw, and nothing has changed since
        if disagree or stale:
            self._reconcile(s, source, max_seq, count)
        self._fit(s)

    def _scored(
        self, s: _Scope, q: Vecs, keys: Sequence[int], source: VectorSource
    ) -> list[tuple[int, float]]:
        """`keys` scored with their vectors as the database stores them, best first; a key whose
        row the source no longer has is left out (the database wins)."""
        found, vecs = self._unpacked(s.name, list(source.vectors(s.name, keys)))
        return scored(q, found.tolist(), vecs)

    def _unpacked(self, scope: str, rows: list[tuple[int, bytes]]) -> tuple[Keys, Vecs]:
        """Stored (seq, float32 bytes) rows as keys and a matrix; a row of the wrong size is damage."""
        if any(len(blob) != self._dim * 4 for _, blob in rows):
            raise EngineError(
                f"a stored vector in scope '{scope}' does not have {self._dim} float32 values; "
                "the stored embeddings are damaged, re-add the affected items"
            )
        keys = np.fromiter((seq for seq, _ in rows), np.int64, len(rows))
        vecs = np.frombuffer(b"".join(blob for _, blob in rows), np.float32).reshape(-1, self._dim)
        return keys, vecs

    def _apply(self, s: _Scope, rows: Iterable[tuple[int, bytes]]) -> None:
        """Add rows not yet cached, in batches; advance the watermark past every row seen."""
        assert s.exact is not None
        it = iter(rows)
        while batch := list(itertools.islice(it, _BATCH)):
            keys, vecs = self._unpacked(s.name, batch)
            del batch
            new = ~s.exact.contains(keys)
            if new.any():
                self._add(s, keys[new], vecs[new])
            s.watermark = max(s.watermark, int(keys.max()))

    def _add(self, s: _Scope, keys: Keys, vecs: Vecs) -> None:
        assert s.exact is not None
        rows = s.exact.add(keys, vecs)
        s.changes += len(keys)
        if s.hnsw is not None:
            if len(keys) <= _SMALL:
                s.hnsw.add(keys, rows)
            else:  # too slow for a request: the worker catches the index up by the key diff
                s.parked, s.hnsw = s.hnsw, None

    def _remove(self, s: _Scope, keys: Keys) -> None:
        assert s.exact is not None
        gone = s.exact.remove(keys)
        s.changes += len(gone)
        if s.hnsw is not None:
            s.hnsw.remove(gone)

    def _reconcile(self, s: _Scope, source: VectorSource, max_seq: int, count: int) -> None:
        assert s.exact is not None
        live = np.asarray(source.all_keys(s.name), np.int64)
        have = s.exact.key_array()
        extra = np.setdiff1d(have, live)
        if len(extra):
            self._remove(s, extra)
        missing = np.setdiff1d(live, have)
        if len(missing):
            wanted = set(missing.tolist())
            rows = source.rows_after(s.name, int(missing[0]) - 1)
            self._apply(s, ((seq, blob) for seq, blob in rows if seq in wanted))
        # Seqs are never reused, so the newest live key is a safe watermark (the newest rows may
        # have been deleted); lowering it keeps the next catch-up at one stats call.
        s.watermark = int(live.max()) if len(live) else 0
        s.checked_at = time.monotonic()
        # Stats that still disagree with the rows just read are remembered, so that a drifted
        # counts table costs one reconcile per change instead of one per search. Two commits
        # landing between the stats and the key read look the same; the next search's stats then
        # differ again and reconcile once more.
        drifted = count != len(live) or max_seq < s.watermark
        s.drift = (max_seq, count, len(s.exact)) if drifted else None
        log.debug(
            "reconciled scope %s: %d stale keys removed, %d missed rows added; stats (%d, %d) for %d rows",
            s.name,
            len(extra),
            len(missing),
            max_seq,
            count,
            len(live),
        )

    def _fit(self, s: _Scope) -> None:
        """Queue the worker if the scope needs an index, an index catch-up or a save; shrink."""
        assert s.exact is not None
        n = len(s.exact)
        if n >= self._exact_below:
            dirty = s.saved is None or s.changes - s.saved >= self._save_every
            if s.hnsw is None or (dirty and self._dir is not None):
                self._enqueue(s)
        elif n < self._exact_below // 2 and (s.hnsw is not None or s.parked is not None):
            s.hnsw = s.parked = None  # small again: the exact store alone serves it
            s.saved = None
            self._unlink(s.name)

    def _release(self, s: _Scope, *, dropped: bool) -> None:
        s.exact = s.hnsw = s.parked = None
        s.gone, s.dropped = True, dropped

    # --- the worker thread ---------------------------------------------------------------------

    def _enqueue(self, s: _Scope) -> None:
        """Queue the scope for the worker (scope lock held), starting the worker if need be."""
        if s.queued:
            return
        with self._cv:
            if self._stopping:
                return
            s.queued = True
            self._jobs.append(s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="session-mcp-vectors", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        """Work through the queue, then end: an idle instance holds no thread (and can be freed)."""
        while True:
            with self._cv:
                if not self._jobs or self._stopping:
                    self._thread = None
                    self._cv.notify_all()
                    return
                s = self._jobs.popleft()
            try:
                self._tend(s)
            except Exception:  # a cache that cannot be built is searched exactly; never fatal
                log.exception("vector index work on a scope failed; it stays on exact search")

    def _tend(self, s: _Scope) -> None:
        with s.lock:
            s.queued = False
            if s.gone:  # evicted with unsaved changes: write them, then let go
                self._save(s)
                s.hnsw = None
                return
            if s.exact is None or len(s.exact) < self._exact_below // 2:
                return
            hnsw = s.hnsw or s.parked
            if hnsw is None and len(s.exact) < self._exact_below:
                return
            dirty = s.saved is None or s.changes - s.saved >= self._save_every
            if s.hnsw is not None and not (dirty and self._dir is not None):
                return
            # Offline: searches use the exact store until it is switched back. Only a live index taken
            # out for a save is finished when closing; builds and parked catch-ups are abandoned.
            abandon = s.hnsw is None
            s.hnsw = s.parked = None
            max_seq = s.max_seq
        fresh, loaded = hnsw is None, False
        if hnsw is None:
            hnsw = self._read(s, max_seq)
            loaded = hnsw is not None
        if hnsw is None:
            hnsw = HnswStore(self._dim)
            log.info("building the vector index of a scope in the background")
        done = self._sync(s, hnsw, switch=False, abandon=abandon)
        if done is None:
            return
        at, applied = done
        with s.lock:
            if fresh:  # a loaded file is `applied` changes behind the index
                s.saved = at - applied if loaded else None
            write = self._dir is not None and (s.saved is None or at - s.saved >= self._save_every)
            watermark = s.watermark
        if write and not (abandon and self._stopping):
            if self._write(s.name, hnsw, watermark):
                with s.lock:
                    s.saved = at
            if s.dropped:
                self._unlink(s.name)
        self._sync(s, hnsw, switch=True, abandon=abandon)

    def _sync(self, s: _Scope, hnsw: HnswStore, *, switch: bool, abandon: bool) -> tuple[int, int] | None:
        """Bring a private index to the exact store's key set; return (changes it reflects, rows applied).

        Differences over `_SMALL` are applied outside the scope lock, chunk by chunk; with `switch`
        the scope serves from the index once the rest is applied under the lock. None if the
        scope went away or, with `abandon`, the instance is closing.
        """
        applied = 0
        for rounds in itertools.count(1):
            with s.lock:
                if s.gone or s.exact is None or (abandon and self._stopping):
                    return None
                exact = s.exact
                live, have = exact.key_array(), hnsw.key_array()
                extra = np.setdiff1d(have, live, assume_unique=True)
                missing = np.setdiff1d(live, have, assume_unique=True)
                if len(extra) + len(missing) <= _SMALL or rounds >= _MAX_ROUNDS:
                    hnsw.remove(extra)
                    hnsw.add(missing, exact.rows(missing))
                    if switch:
                        s.hnsw = hnsw
                    return s.changes, applied + len(extra) + len(missing)
            hnsw.remove(extra)  # private: nobody else touches it until it is switched in
            applied += len(extra)
            for i in range(0, len(missing), _CHUNK):
                with s.lock:
                    if s.gone or s.exact is not exact or (abandon and self._stopping):
                        return None
                    keys = missing[i : i + _CHUNK]
                    keys = keys[exact.contains(keys)]
                    vecs = exact.rows(keys)
                hnsw.add(keys, vecs)
                applied += len(keys)
        raise AssertionError("unreachable")

    # --- files ---------------------------------------------------------------------------------

    def _save(self, s: _Scope) -> None:
        """Write the scope's live index if it changed since its file was written (scope lock held)."""
        if (
            s.hnsw is not None
            and s.saved != s.changes
            and not s.dropped
            and self._write(s.name, s.hnsw, s.watermark)
        ):
            s.saved = s.changes

    def _write(self, name: str, hnsw: HnswStore, watermark: int) -> bool:
        return self._dir is not None and vectorfile.save_index(self._dir, name, hnsw, watermark, self._dim)

    def _read(self, s: _Scope, max_seq: int) -> HnswStore | None:
        return None if self._dir is None else vectorfile.load_index(self._dir, s.name, self._dim, max_seq)

    def _unlink(self, name: str) -> None:
        if self._dir is not None:
            vectorfile.unlink(self._dir, name)

    def _vector(self, v: NDArray[np.float32]) -> Vecs:
        a = np.asarray(v, np.float32)
        if a.shape != (self._dim,):
            raise ValueError(f"expected a vector of shape ({self._dim},), got {a.shape}")
        return a
