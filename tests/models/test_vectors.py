"""Per-scope vector caches: catch-up from the database, exact and background-built HNSW search, files.

Nothing here sleeps for time: background work is awaited with `wait_idle`, and held at chosen
points with events (`Gate`) to test what happens while it runs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from session_mcp.models import vectorfile
from session_mcp.models.errors import EngineError
from session_mcp.models.vectors import ScopedVectors
from session_mcp.models.vectorstores import HnswStore

DIM = 384
WORKER = "session-mcp-vectors"
WAIT = 60.0  # a bound for wait_idle, never a sleep: the calls return as soon as the work is done


class DictSource:
    """The database as the cache sees it: live rows per scope, seqs from one never-reused counter."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, bytes]] = {}
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.next_seq = 1

    def insert(self, scope: str, vector: NDArray[np.float32], seq: int | None = None) -> int:
        with self.lock:
            if seq is None:
                seq, self.next_seq = self.next_seq, self.next_seq + 1
            self.rows.setdefault(scope, {})[seq] = np.asarray(vector, np.float32).tobytes()
            return seq

    def delete(self, scope: str, seqs: Iterable[int]) -> None:
        with self.lock:
            for seq in seqs:
                self.rows.get(scope, {}).pop(seq, None)

    def stats(self, scope: str) -> tuple[int, int]:
        with self.lock:
            self.calls["stats"] += 1
            rows = self.rows.get(scope, {})
            return max(rows, default=0), len(rows)

    def rows_after(self, scope: str, after_seq: int) -> Iterable[tuple[int, bytes]]:
        with self.lock:
            self.calls["rows_after_0" if after_seq == 0 else "rows_after"] += 1
            return sorted((s, v) for s, v in self.rows.get(scope, {}).items() if s > after_seq)

    def all_keys(self, scope: str) -> Sequence[int]:
        with self.lock:
            self.calls["all_keys"] += 1
            return sorted(self.rows.get(scope, {}))

    def vectors(self, scope: str, seqs: Sequence[int]) -> Iterable[tuple[int, bytes]]:
        with self.lock:
            self.calls["vectors"] += 1
            rows = self.rows.get(scope, {})
            return [(seq, rows[seq]) for seq in seqs if seq in rows]


def unit(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(src: DictSource, scope: str, vecs: NDArray[np.float32]) -> list[int]:
    return [src.insert(scope, v) for v in vecs]


def top_key(vs: ScopedVectors, scope: str, q: NDArray[np.float32]) -> int | None:
    hits = vs.search(scope, q, 1)
    return hits[0][0] if hits else None


def index_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.usearch"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def brute_force(vecs: NDArray[np.float32], keys: Sequence[int], q: NDArray[np.float32], k: int) -> list[int]:
    sims = vecs @ (q / np.linalg.norm(q))
    return [keys[i] for i in np.argsort(-sims, kind="stable")[:k]]


HALF_PRECISION = 1e-3
"""The exact store keeps float16 rows: its cosines differ from float32 by well under this, so
it may order two candidates closer than this either way, and nothing else."""


def assert_exact_top(
    found: list[tuple[int, float]],
    vecs: NDArray[np.float32],
    keys: Sequence[int],
    q: NDArray[np.float32],
    k: int,
) -> None:
    """`found` is the float32 top k up to HALF_PRECISION: its i-th hit scores (in float32) within
    that of the i-th best, each reported score is within it of the float32 cosine, no key twice."""
    sims = dict(zip(keys, (vecs @ (q / np.linalg.norm(q))).tolist(), strict=True))
    best = sorted(sims.values(), reverse=True)[:k]
    assert len({key for key, _ in found}) == len(found) == len(best)
    for (key, score), nth_best in zip(found, best, strict=True):
        assert sims[key] >= nth_best - HALF_PRECISION
        assert abs(score - sims[key]) < HALF_PRECISION


class Gate:
    """Holds the worker thread at a patched method until opened; the request threads pass freely."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def wrap(self, fn: Callable[..., object]) -> Callable[..., object]:
        def held(*args: object, **kwargs: object) -> object:
            if threading.current_thread().name == WORKER:
                self.reached.set()
                assert self.opened.wait(WAIT)
            return fn(*args, **kwargs)

        return held

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT)


@pytest.fixture
def make() -> Iterator[Callable[..., ScopedVectors]]:
    """ScopedVectors instances, all closed at teardown so no worker outlives its test."""
    made: list[ScopedVectors] = []

    def factory(src: DictSource, directory: Path | None, **kw: Any) -> ScopedVectors:
        vs = ScopedVectors(dim=DIM, source=src, directory=directory, **kw)
        made.append(vs)
        return vs

    yield factory
    for vs in made:
        vs.close()


@pytest.fixture
def hnsw_rows(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Rows added to HNSW indexes, by thread name: a build adds them all, a loaded file none."""
    rows: Counter[str] = Counter()
    add = HnswStore.add

    def counting(self: HnswStore, keys: NDArray[np.int64], vecs: NDArray[np.float32]) -> None:
        rows[threading.current_thread().name] += len(keys)
        add(self, keys, vecs)

    monkeypatch.setattr(HnswStore, "add", counting)
    return rows


Big = tuple[DictSource, list[int], NDArray[np.float32], bytes]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Big:
    """1500 vectors in scope "big" (HNSW with exact_below=500) and its index file, built once."""
    src = DictSource()
    vecs = unit(np.random.default_rng(1), 1500)
    keys = fill(src, "big", vecs)
    d = tmp_path_factory.mktemp("big")
    vs = ScopedVectors(dim=DIM, source=src, directory=d, exact_below=500)
    vs.search("big", vecs[0], 1)
    assert vs.wait_idle(WAIT) and vs.mode("big") == "hnsw"
    vs.close()
    (path,) = index_files(d)
    return src, keys, vecs, path.read_bytes()


def with_big_file(big: Big, d: Path) -> Path:
    path = vectorfile.path_for(d, "big")
    path.write_bytes(big[3])
    return path


def test_search_returns_nearest_keys_best_first(rng: np.random.Generator) -> None:
    src = DictSource()
    vecs = unit(rng, 200)
    keys = fill(src, "s", vecs)
    vs = ScopedVectors(dim=DIM, source=src, directory=None)
    q = vecs[17] + 0.1 * unit(rng, 1)[0]
    hits = vs.search("s", q, 5)
    sims = vecs @ (q / np.linalg.norm(q))
    expected = [keys[i] for i in np.argsort(-sims)[:5]]
    assert [k for k, _ in hits] == expected
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert hits[0][1] == pytest.approx(float(sims.max()), abs=1e-5)
    assert vs.search("s", q, 0) == []
    assert len(vs.search("s", q, 1000)) == 200


def test_nothing_changed_costs_one_stats_call(rng: np.random.Generator) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 50))
    vs = ScopedVectors(dim=DIM, source=src, directory=None)
    vs.search("s", unit(rng, 1)[0], 3)
    before = src.calls.copy()
    vs.search("s", unit(rng, 1)[0], 3)
    assert src.calls - before == Counter({"stats": 1})


def test_catch_up_sees_rows_added_by_another_writer(rng: np.random.Generator, tmp_path: Path) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 30))
    one = ScopedVectors(dim=DIM, source=src, directory=tmp_path)
    two = ScopedVectors(dim=DIM, source=src, directory=tmp_path)
    q = unit(rng, 1)[0]
    one.search("s", q, 3)
    two.search("s", q, 3)
    v = unit(rng, 1)[0]
    seq = src.insert("s", v)
    one.note_added("s", seq, v)  # the writer's process learns directly, the other from the database
    assert top_key(one, "s", v) == seq
    assert top_key(two, "s", v) == seq


def test_deleted_rows_leave_the_cache_on_next_search(rng: np.random.Generator) -> None:
    src = DictSource()
    vecs = unit(rng, 40)
    keys = fill(src, "s", vecs)
    vs = ScopedVectors(dim=DIM, source=src, directory=None)
    assert top_key(vs, "s", vecs[5]) == keys[5]
    src.delete("s", [keys[5], keys[-1]])  # another process deletes, this one is not told
    found = {k for k, _ in vs.search("s", vecs[5], 100)}
    assert keys[5] not in found and keys[-1] not in found
    assert len(found) == 38
    src.delete("s", [keys[6]])
    vs.note_removed("s", [keys[6]])  # the writer's own delete leaves at once, no reconcile needed
    before = src.calls.copy()
    assert keys[6] not in {k for k, _ in vs.search("s", vecs[6], 100)}
    assert (src.calls - before)["all_keys"] == 0


def test_out_of_order_commit_is_found_by_reconcile(rng: np.random.Generator) -> None:
    src = DictSource()
    v9, v10 = unit(rng, 2)
    vs = ScopedVectors(dim=DIM, source=src, directory=None)
    src.insert("s", v10, seq=10)
    assert top_key(vs, "s", v10) == 10
    src.insert("s", v9, seq=9)  # a transaction that took seq 9 commits after seq 10 was seen
    assert top_key(vs, "s", v9) == 9
    assert top_key(vs, "s", v10) == 10


def test_missed_row_hidden_by_an_equal_count_is_found_by_the_periodic_check(
    rng: np.random.Generator,
) -> None:
    src = DictSource()
    a, b, late = unit(rng, 3)
    vs = ScopedVectors(dim=DIM, source=src, directory=None, verify_every=0.0)
    src.insert("s", a, seq=5)
    src.insert("s", b, seq=10)
    vs.search("s", a, 1)
    src.insert("s", late, seq=9)  # out-of-order commit...
    src.delete("s", [5])  # ...and a foreign delete: the row count is unchanged
    assert top_key(vs, "s", late) == 9


class DriftedSource(DictSource):
    """A counts table that has drifted: it reports two rows fewer and a stale highest seq."""

    def stats(self, scope: str) -> tuple[int, int]:
        max_seq, count = super().stats(scope)
        return max(0, max_seq - 100), max(0, count - 2)


def test_drifted_counts_cost_one_reconcile_per_change_not_one_per_search(rng: np.random.Generator) -> None:
    src = DriftedSource()
    vecs = unit(rng, 30)
    keys = fill(src, "s", vecs)
    vs = ScopedVectors(dim=DIM, source=src, directory=None)
    assert top_key(vs, "s", vecs[3]) == keys[3]
    assert src.calls["all_keys"] == 1  # the first search finds the counts off and reconciles
    for i in range(5):
        assert top_key(vs, "s", vecs[i]) == keys[i]
    assert src.calls["all_keys"] == 1  # nothing changed since: the drift is known, not re-checked
    late = unit(rng, 1)[0]
    seq = src.insert("s", late)  # another process writes: the stats move, so the cache looks again
    assert top_key(vs, "s", late) == seq
    src.delete("s", [keys[0]])
    assert keys[0] not in {k for k, _ in vs.search("s", vecs[0], 100)}
    assert len(vs.search("s", vecs[0], 100)) == 30
    calls = src.calls["all_keys"]
    vs.search("s", vecs[1], 3)
    assert src.calls["all_keys"] == calls


@pytest.mark.parametrize("matrix_below", [20_000, 300], ids=["float16 copy", "scored from the rows"])
def test_large_scope_switches_to_hnsw_with_recall_at_10_of_at_least_099(
    big: Big, tmp_path: Path, make: Callable[..., ScopedVectors], matrix_below: int
) -> None:
    src, keys, vecs, _ = big
    vs = make(src, tmp_path, exact_below=500, matrix_below=matrix_below)
    queries = unit(np.random.default_rng(99), 100)
    assert_exact_top(vs.search("big", queries[0], 10), vecs, keys, queries[0], 10)
    assert vs.wait_idle(WAIT)
    assert vs.mode("big") == "hnsw"
    hits = sum(
        len({k for k, _ in vs.search("big", q, 10)} & set(brute_force(vecs, keys, q, 10))) for q in queries
    )
    assert hits / 1000 >= 0.99
    exact = vs._scopes["big"].exact
    assert exact is not None and exact.scores == (matrix_below > 1500)
    precision = HALF_PRECISION if exact.scores else 1e-6
    for q in queries[:20]:  # float16 or stored float32 cosines, not the index's int8 distances
        for key, score in vs.search("big", q, 10):
            assert abs(score - float(vecs[keys.index(key)] @ q)) < precision
    # Re-ranked exactly, built by single-threaded adds: a stored vector finds itself.
    for i in range(0, 1500, 75):
        assert top_key(vs, "big", vecs[i]) == keys[i]
    vs.flush()
    assert len(index_files(tmp_path)) == 1  # only HNSW scopes are persisted


def test_search_during_a_background_build_is_exact_and_changes_made_meanwhile_are_kept(
    rng: np.random.Generator,
    tmp_path: Path,
    make: Callable[..., ScopedVectors],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = DictSource()
    vecs = unit(rng, 700)
    keys = fill(src, "s", vecs)
    gate = Gate()
    monkeypatch.setattr(HnswStore, "add", gate.wrap(HnswStore.add))
    vs = make(src, tmp_path, exact_below=500)
    queries = unit(rng, 20)
    for q in queries:  # the first search does not wait for the index: it answers exactly
        assert_exact_top(vs.search("s", q, 10), vecs, keys, q, 10)
    gate.wait_reached()  # the worker is inside its first chunk of adds
    assert vs.mode("s") == "exact"
    mine, theirs = unit(rng, 5), unit(rng, 3)
    added = []
    for v in mine:  # this process's adds and removes, told directly
        seq = src.insert("s", v)
        vs.note_added("s", seq, v)
        added.append(seq)
    src.delete("s", keys[:4])
    vs.note_removed("s", keys[:4])
    foreign = [src.insert("s", v) for v in theirs]  # another process's, seen by catch-up
    src.delete("s", keys[4:6])
    for seq, v in zip(added + foreign, [*mine, *theirs], strict=True):
        assert top_key(vs, "s", v) == seq
    assert not {k for k, _ in vs.search("s", vecs[2], 10)} & set(keys[:6])
    assert vs.mode("s") == "exact"
    gate.opened.set()
    assert vs.wait_idle(WAIT)
    assert vs.mode("s") == "hnsw"
    hnsw = vs._scopes["s"].hnsw
    assert hnsw is not None and set(hnsw.key_array().tolist()) == set(src.rows["s"])
    for seq, v in zip(added + foreign, [*mine, *theirs], strict=True):
        assert top_key(vs, "s", v) == seq
    live_keys, live_vecs = (
        list(src.rows["s"]),
        np.stack([np.frombuffer(b, np.float32) for b in src.rows["s"].values()]),
    )
    for q in queries:
        assert_exact_top(vs.search("s", q, 5), live_vecs, live_keys, q, 5)


def test_growing_past_the_threshold_in_an_add_does_not_build_in_the_request(
    rng: np.random.Generator, make: Callable[..., ScopedVectors], hnsw_rows: Counter[str]
) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 490))
    vs = make(src, None, exact_below=500)
    vs.search("s", unit(rng, 1)[0], 1)
    for v in unit(rng, 20):
        vs.note_added("s", src.insert("s", v), v)
    assert vs.wait_idle(WAIT)
    assert vs.mode("s") == "hnsw"
    assert set(hnsw_rows) == {WORKER}  # every HNSW insert so far ran in the worker thread
    v = unit(rng, 1)[0]
    seq = src.insert("s", v)
    vs.note_added("s", seq, v)  # a live index takes single adds in the request: ~ms
    assert top_key(vs, "s", v) == seq


def test_saves_run_in_the_worker_not_in_note_added(
    rng: np.random.Generator,
    tmp_path: Path,
    make: Callable[..., ScopedVectors],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writers: list[str] = []
    write = vectorfile.write

    def recording(path: Path, save_body: Callable[[str], object], meta: dict[str, Any]) -> None:
        writers.append(threading.current_thread().name)
        write(path, save_body, meta)

    gate = Gate()
    monkeypatch.setattr(vectorfile, "write", gate.wrap(recording))
    src = DictSource()
    fill(src, "s", unit(rng, 600))
    vs = make(src, tmp_path, exact_below=500, save_every=16)
    vs.search("s", unit(rng, 1)[0], 1)
    gate.wait_reached()  # the freshly built index is being written; the scope is still exact
    gate.opened.set()
    assert vs.wait_idle(WAIT) and vs.mode("s") == "hnsw"
    gate.reached.clear()
    gate.opened.clear()
    new = unit(rng, 40)
    seqs = []
    for v in new[:20]:  # crosses save_every: the save is queued, not done here
        seqs.append(src.insert("s", v))
        vs.note_added("s", seqs[-1], v)
    gate.wait_reached()  # the worker holds the index offline while it writes it...
    assert vs.mode("s") == "exact"
    for v in new[20:]:  # ...and adds and searches go on meanwhile, on the matrix
        seqs.append(src.insert("s", v))
        vs.note_added("s", seqs[-1], v)
        assert top_key(vs, "s", v) == seqs[-1]
    gate.opened.set()
    assert vs.wait_idle(WAIT)
    assert vs.mode("s") == "hnsw"
    assert writers and set(writers) == {WORKER}
    for seq, v in zip(seqs, new, strict=True):  # the adds made during the save were replayed
        assert top_key(vs, "s", v) == seq
    assert os.listdir(tmp_path) == [index_files(tmp_path)[0].name]


def test_close_stops_a_build_and_flushes_live_indexes(
    rng: np.random.Generator,
    tmp_path: Path,
    make: Callable[..., ScopedVectors],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = DictSource()
    fill(src, "built", unit(rng, 600))
    fill(src, "slow", unit(rng, 600))
    vs = make(src, tmp_path, exact_below=500, save_every=1000)
    vs.search("built", unit(rng, 1)[0], 1)
    assert vs.wait_idle(WAIT) and vs.mode("built") == "hnsw"
    extra = unit(rng, 3)
    extra_seqs = [src.insert("built", v) for v in extra]
    for seq, v in zip(extra_seqs, extra, strict=True):
        vs.note_added("built", seq, v)  # fewer than save_every: nothing written yet
    gate = Gate()
    monkeypatch.setattr(HnswStore, "add", gate.wrap(HnswStore.add))
    vs.search("slow", unit(rng, 1)[0], 1)
    gate.wait_reached()
    worker = vs._thread
    assert worker is not None and worker.is_alive()
    closing = threading.Thread(target=vs.close)
    closing.start()
    gate.opened.set()  # let the current chunk finish; the build must then give up
    closing.join(WAIT)
    assert not closing.is_alive() and not worker.is_alive()
    assert vs.wait_idle(0) and vs.mode("slow") == "unloaded"
    assert len(index_files(tmp_path)) == 1  # "built" only: the abandoned build wrote nothing
    monkeypatch.undo()
    rows: Counter[str] = Counter()
    add = HnswStore.add
    monkeypatch.setattr(HnswStore, "add", lambda self, k, v: (rows.update({"n": len(k)}), add(self, k, v)))
    again = make(src, tmp_path, exact_below=500)
    again.search("built", extra[0], 1)
    assert again.wait_idle(WAIT) and again.mode("built") == "hnsw"
    assert rows["n"] == 0  # close() wrote the 3 adds into the file: nothing to replay
    for seq, v in zip(extra_seqs, extra, strict=True):
        assert top_key(again, "built", v) == seq


def test_index_file_is_loaded_not_rebuilt(
    big: Big, tmp_path: Path, make: Callable[..., ScopedVectors], hnsw_rows: Counter[str]
) -> None:
    src, keys, vecs, _ = big
    with_big_file(big, tmp_path)
    vs = make(src, tmp_path, exact_below=500)
    assert top_key(vs, "big", vecs[42]) == keys[42]
    assert vs.wait_idle(WAIT) and vs.mode("big") == "hnsw"
    assert sum(hnsw_rows.values()) == 0
    assert top_key(vs, "big", vecs[43]) == keys[43]


def _corrupt_and_reload(
    big: Big,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make: Callable[..., ScopedVectors],
    hnsw_rows: Counter[str],
    damage: str,
) -> None:
    src, keys, vecs, _ = big
    path = with_big_file(big, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # inside the usearch bytes, far from the small trailer
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    else:
        path.unlink()
    vs = make(src, tmp_path, exact_below=500)
    with caplog.at_level(logging.WARNING, logger="session_mcp.vectors"):
        for i in range(0, 1500, 300):
            assert top_key(vs, "big", vecs[i]) == keys[i]
        assert vs.wait_idle(WAIT) and vs.mode("big") == "hnsw"
    assert sum(hnsw_rows.values()) == 1500  # rebuilt from the matrix
    warned = [r for r in caplog.records if r.name == "session_mcp.vectors" and r.levelno == logging.WARNING]
    assert bool(warned) == (damage != "delete")
    assert len(index_files(tmp_path)) == 1  # the rebuilt index was saved again
    for i in range(0, 1500, 300):
        assert top_key(vs, "big", vecs[i]) == keys[i]
    vs.close()
    hnsw_rows.clear()
    third = make(src, tmp_path, exact_below=500)
    assert top_key(third, "big", vecs[7]) == keys[7]
    assert third.wait_idle(WAIT) and third.mode("big") == "hnsw"
    assert sum(hnsw_rows.values()) == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_or_missing_index_file_is_rebuilt_in_the_background(
    big: Big,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make: Callable[..., ScopedVectors],
    hnsw_rows: Counter[str],
    damage: str,
) -> None:
    _corrupt_and_reload(big, tmp_path, caplog, make, hnsw_rows, damage)
    if damage == "flip":
        assert any("checksum" in r.getMessage() for r in caplog.records)


def test_an_index_file_of_an_older_format_is_rebuilt(
    big: Big,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make: Callable[..., ScopedVectors],
    hnsw_rows: Counter[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to format 2 an index held float32 vectors: such a file is rebuilt, never read as int8."""
    src, keys, vecs, _ = big
    path = with_big_file(big, tmp_path)
    with vectorfile.read(path) as (meta, body):
        usearch_bytes = bytes(body)
    kept = {k: meta[k] for k in ("scope", "watermark", "count", "dim")}
    with monkeypatch.context() as m:
        m.setattr(vectorfile, "FORMAT", 2)
        vectorfile.write(path, lambda tmp: Path(tmp).write_bytes(usearch_bytes), kept)
    vs = make(src, tmp_path, exact_below=500)
    with caplog.at_level(logging.WARNING, logger="session_mcp.vectors"):
        assert top_key(vs, "big", vecs[3]) == keys[3]
        assert vs.wait_idle(WAIT) and vs.mode("big") == "hnsw"
    assert sum(hnsw_rows.values()) == 1500  # rebuilt from the matrix
    assert any("written in format 2" in r.getMessage() for r in caplog.records)
    assert top_key(vs, "big", vecs[4]) == keys[4]


def test_save_is_atomic_no_temp_files_left(
    rng: np.random.Generator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make: Callable[..., ScopedVectors],
) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 120))
    vs = make(src, tmp_path, exact_below=100, save_every=8)
    vs.search("s", unit(rng, 1)[0], 1)
    for _ in range(5):  # several saves, each replacing the last
        assert vs.wait_idle(WAIT)
        for v in unit(rng, 8):
            vs.note_added("s", src.insert("s", v), v)
        vs.search("s", unit(rng, 1)[0], 1)
    assert vs.wait_idle(WAIT)
    assert os.listdir(tmp_path) == [index_files(tmp_path)[0].name]
    saved = index_files(tmp_path)[0].read_bytes()

    def fail(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", fail)  # the next save dies before its rename
    v = unit(rng, 1)[0]
    vs.note_added("s", src.insert("s", v), v)
    with caplog.at_level(logging.WARNING, logger="session_mcp.vectors"):
        vs.flush()
    assert any("could not save" in r.getMessage() for r in caplog.records)
    assert os.listdir(tmp_path) == [index_files(tmp_path)[0].name]
    assert index_files(tmp_path)[0].read_bytes() == saved  # the old file is intact


def test_scopes_never_see_each_others_vectors(
    rng: np.random.Generator, tmp_path: Path, make: Callable[..., ScopedVectors]
) -> None:
    src = DictSource()
    a = fill(src, "user:a", unit(rng, 50))
    b_vecs = unit(rng, 50)
    b = fill(src, "user:b", b_vecs)
    vs = make(src, tmp_path, exact_below=20)
    for _ in range(2):  # exact first, then each from its own index
        for v in b_vecs[:5]:
            assert {k for k, _ in vs.search("user:a", v, 100)} <= set(a)
            assert top_key(vs, "user:b", v) in b
        assert vs.wait_idle(WAIT)
    assert vs.mode("user:a") == vs.mode("user:b") == "hnsw"
    assert vs.search("user:empty", b_vecs[0], 5) == []
    vs.flush()
    assert len(index_files(tmp_path)) == 2
    vs.drop("user:a")  # cleared: memory and file are gone
    assert len(index_files(tmp_path)) == 1
    src.delete("user:a", a)
    assert vs.search("user:a", b_vecs[0], 5) == []


def test_concurrent_searches_and_adds_from_threads_are_safe(
    rng: np.random.Generator, tmp_path: Path, make: Callable[..., ScopedVectors]
) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 100))
    vs = make(src, tmp_path, exact_below=300, save_every=50)
    new = unit(rng, 400)
    seqs: dict[int, int] = {}

    def write(i: int) -> None:
        seq = src.insert("s", new[i])
        if i % 2:  # half the writers tell the cache, half leave it to catch-up
            vs.note_added("s", seq, new[i])
        seqs[i] = seq

    def read(i: int) -> None:
        hits = vs.search("s", new[i % 50], 5)
        assert len(hits) == 5

    with ThreadPoolExecutor(8) as pool:  # the scope crosses exact_below while this runs
        jobs = [pool.submit(write if i % 2 else read, i // 2) for i in range(800)]
        for job in jobs:
            job.result()
    for i, v in enumerate(new):
        assert top_key(vs, "s", v) == seqs[i]
    assert vs.wait_idle(WAIT) and vs.mode("s") == "hnsw"
    for i, v in enumerate(new):
        assert top_key(vs, "s", v) == seqs[i]


def test_lru_eviction_keeps_at_most_max_loaded_scopes(
    rng: np.random.Generator, tmp_path: Path, make: Callable[..., ScopedVectors], hnsw_rows: Counter[str]
) -> None:
    src = DictSource()
    firsts = {}
    for name in ("a", "b", "c", "d"):
        vecs = unit(rng, 60)
        firsts[name] = (fill(src, name, vecs)[0], vecs[0])
    vs = make(src, tmp_path, exact_below=50, max_loaded=2)
    assert top_key(vs, "a", firsts["a"][1]) == firsts["a"][0]
    assert vs.wait_idle(WAIT) and vs.mode("a") == "hnsw"
    extra = unit(rng, 1)[0]
    vs.note_added("a", src.insert("a", extra), extra)  # a is dirty: one change, not yet saved
    for name in ("b", "c", "d"):
        assert top_key(vs, name, firsts[name][1]) == firsts[name][0]
        assert len(vs._scopes) <= 2
    assert list(vs._scopes) == ["c", "d"]
    assert vs.wait_idle(WAIT)  # the evicted index was saved by the worker
    hnsw_rows.clear()
    assert len(vs.search("a", extra, 100)) == 61
    assert vs.wait_idle(WAIT) and vs.mode("a") == "hnsw"
    assert sum(hnsw_rows.values()) == 0  # loaded from the file saved on eviction, unsaved add included
    assert list(vs._scopes) == ["d", "a"]


def test_scope_cleared_through_another_process_is_emptied_and_its_file_removed(
    rng: np.random.Generator, tmp_path: Path, make: Callable[..., ScopedVectors]
) -> None:
    src = DictSource()
    vecs = unit(rng, 80)
    keys = fill(src, "s", vecs)
    one = make(src, tmp_path, exact_below=60)
    two = make(src, tmp_path, exact_below=60)
    assert top_key(one, "s", vecs[3]) == keys[3]
    assert top_key(two, "s", vecs[3]) == keys[3]
    assert one.wait_idle(WAIT) and two.wait_idle(WAIT)
    assert top_key(two, "s", vecs[3]) == keys[3]
    src.delete("s", keys)  # process one clears the scope
    one.drop("s")
    assert two.search("s", vecs[3], 10) == []  # process two was not told
    assert two.wait_idle(WAIT)
    assert index_files(tmp_path) == []
    v = unit(rng, 1)[0]
    seq = src.insert("s", v)
    assert top_key(two, "s", v) == seq
    assert top_key(one, "s", v) == seq


def test_a_scope_past_matrix_below_keeps_no_float16_copy_and_scores_from_the_stored_vectors(
    rng: np.random.Generator, make: Callable[..., ScopedVectors]
) -> None:
    src = DictSource()
    small_vecs, large_vecs = unit(rng, 200), unit(rng, 600)
    small_keys, large_keys = fill(src, "small", small_vecs), fill(src, "large", large_vecs)
    vs = make(src, None, exact_below=10**6, matrix_below=500)
    queries = unit(rng, 20)
    for q in queries:
        assert_exact_top(vs.search("small", q, 5), small_vecs, small_keys, q, 5)
    assert src.calls["vectors"] == 0  # scored by the float16 copy
    for q in queries:
        found = vs.search("large", q, 10)
        assert [key for key, _ in found] == brute_force(large_vecs, large_keys, q, 10)
        for key, score in found:  # the stored float32 vector's cosine
            assert abs(score - float(large_vecs[large_keys.index(key)] @ q)) < 1e-6
    assert src.calls["vectors"] == 20
    small, large = vs._scopes["small"].exact, vs._scopes["large"].exact
    assert small is not None and small.scores
    assert large is not None and not large.scores and large.mat is None
    src.delete("large", large_keys[:300])  # deleted rows leave the results
    found = vs.search("large", large_vecs[0], 10)
    assert large_keys[0] not in {key for key, _ in found}
    fill(src, "small", unit(rng, 400))  # grows past matrix_below: the copy goes
    vs.search("small", queries[0], 5)
    assert not small.scores and len(small) == 600


def test_held_answers_as_search_does_from_a_caught_up_cache_without_reading_the_source(
    rng: np.random.Generator, make: Callable[..., ScopedVectors], big: Big, tmp_path: Path
) -> None:
    """What a search scans while its full-text query has the connection: a cache that `catch_up`
    brought up to date, searched without one call to the source, or None where the source is needed."""
    src = DictSource()
    small_vecs = unit(rng, 200)
    small_keys = fill(src, "small", small_vecs)
    fill(src, "large", unit(rng, 600))
    vs = make(src, None, exact_below=10**6, matrix_below=500)
    queries = unit(rng, 10)
    assert vs.held("small", queries[0], 5) is None  # not loaded yet
    vs.catch_up("small")
    vs.catch_up("large")
    for q in queries:
        before = src.calls.copy()
        found = vs.held("small", q, 5)
        assert src.calls == before
        assert found is not None
        assert_exact_top(found, small_vecs, small_keys, q, 5)
        assert found == vs.search("small", q, 5)
    assert vs.held("small", queries[0], 0) == []
    before = src.calls.copy()
    assert vs.held("large", queries[0], 5) is None  # no float16 copy: scored from the source
    assert src.calls == before
    v = unit(rng, 1)[0]
    seq = src.insert("small", v)  # committed by another writer: seen at the next catch-up only
    assert (vs.held("small", v, 1) or [(None, 0.0)])[0][0] != seq
    vs.catch_up("small")
    assert (vs.held("small", v, 1) or [(None, 0.0)])[0][0] == seq
    vs.drop("small")
    assert vs.held("small", v, 1) is None
    # A live HNSW index with the float16 copy: its candidates, rescored, as search gives them.
    big_src = big[0]
    with_big_file(big, tmp_path)
    hnsw = make(big_src, tmp_path, exact_below=500, matrix_below=10**6)
    hnsw.catch_up("big")
    assert hnsw.wait_idle(WAIT) and hnsw.mode("big") == "hnsw"
    for q in queries:
        before = big_src.calls.copy()
        found = hnsw.held("big", q, 10)
        assert big_src.calls == before
        assert found is not None and found == hnsw.search("big", q, 10)


def test_a_stored_vector_of_the_wrong_size_is_an_engine_error_naming_its_scope(
    rng: np.random.Generator, make: Callable[..., ScopedVectors]
) -> None:
    src = DictSource()
    vecs = unit(rng, 40)
    keys = fill(src, "s", vecs)
    good = src.rows["s"][keys[0]]
    src.rows["s"][keys[0]] = good[:-4]  # one float short
    vs = make(src, None, matrix_below=10)
    with pytest.raises(EngineError, match="scope 's' does not have 384 float32 values"):
        vs.search("s", vecs[1], 5)  # loading the scope
    src.rows["s"][keys[0]] = good
    assert top_key(vs, "s", vecs[0]) == keys[0]  # loads once repaired
    src.rows["s"][keys[0]] = good[:-4]  # damaged after loading: scoring from the rows sees it
    with pytest.raises(EngineError, match="scope 's' does not have 384 float32 values"):
        vs.search("s", vecs[0], 5)
    src.rows["s"][keys[0]] = good
    assert top_key(vs, "s", vecs[0]) == keys[0]
