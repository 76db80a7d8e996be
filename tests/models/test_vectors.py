"""Per-scope vector caches: catch-up from the database, exact and HNSW search, crash-safe files."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from session_mcp.models.vectors import ScopedVectors

DIM = 384


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


@pytest.fixture(scope="module")
def big() -> tuple[DictSource, list[int], NDArray[np.float32]]:
    """3000 vectors in scope "big": enough for HNSW with exact_below=500, built once per module."""
    src = DictSource()
    vecs = unit(np.random.default_rng(1), 3000)
    return src, fill(src, "big", vecs), vecs


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


def test_large_scope_uses_hnsw_with_recall_at_10_of_at_least_099(
    big: tuple[DictSource, list[int], NDArray[np.float32]], tmp_path: Path
) -> None:
    src, keys, vecs = big
    vs = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=500)
    queries = unit(np.random.default_rng(99), 100)
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    key_arr = np.asarray(keys)
    hits = 0
    for q, t in zip(queries, truth, strict=True):
        hits += len({k for k, _ in vs.search("big", q, 10)} & set(key_arr[t].tolist()))
    assert hits / 1000 >= 0.99
    for i in range(0, 3000, 150):  # f32 storage: a stored vector finds itself
        assert top_key(vs, "big", vecs[i]) == keys[i]
    vs.flush()
    assert len(index_files(tmp_path)) == 1  # only HNSW scopes are persisted


def test_index_file_is_reused_across_instances(
    big: tuple[DictSource, list[int], NDArray[np.float32]], tmp_path: Path
) -> None:
    src, keys, vecs = big
    first = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=500)
    first.search("big", vecs[0], 1)
    first.close()
    before = src.calls.copy()
    second = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=500)
    assert top_key(second, "big", vecs[42]) == keys[42]
    assert (src.calls - before)["rows_after_0"] == 0  # loaded from the file, not rebuilt


def _corrupt_and_reload(
    big: tuple[DictSource, list[int], NDArray[np.float32]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    src, keys, vecs = big
    first = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=500)
    first.search("big", vecs[0], 1)
    first.close()
    (path,) = index_files(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        pos = len(data) // 2  # inside the usearch bytes, far past the small header
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    else:
        path.unlink()
    before = src.calls.copy()
    second = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=500)
    with caplog.at_level(logging.WARNING, logger="session_mcp.vectors"):
        for i in range(0, 3000, 300):
            assert top_key(second, "big", vecs[i]) == keys[i]
    assert (src.calls - before)["rows_after_0"] == 1  # rebuilt from the database
    warned = [r for r in caplog.records if r.name == "session_mcp.vectors" and r.levelno == logging.WARNING]
    assert bool(warned) == (damage != "delete")
    assert len(index_files(tmp_path)) == 1  # the rebuilt index was saved again
    second.close()
    third = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=500)
    before = src.calls.copy()
    assert top_key(third, "big", vecs[7]) == keys[7]
    assert (src.calls - before)["rows_after_0"] == 0


def test_flipped_byte_in_index_file_is_detected_and_rebuilt(
    big: tuple[DictSource, list[int], NDArray[np.float32]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _corrupt_and_reload(big, tmp_path, caplog, "flip")
    assert any("checksum" in r.getMessage() for r in caplog.records)


def test_truncated_index_file_is_rebuilt(
    big: tuple[DictSource, list[int], NDArray[np.float32]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _corrupt_and_reload(big, tmp_path, caplog, "truncate")


def test_deleting_the_index_file_loses_nothing(
    big: tuple[DictSource, list[int], NDArray[np.float32]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _corrupt_and_reload(big, tmp_path, caplog, "delete")


def test_save_is_atomic_no_temp_files_left(
    rng: np.random.Generator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 120))
    vs = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=100, save_every=8)
    for _ in range(5):  # several saves, each replacing the last
        for v in unit(rng, 8):
            vs.note_added("s", src.insert("s", v), v)
        vs.search("s", unit(rng, 1)[0], 1)
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


def test_scopes_never_see_each_others_vectors(rng: np.random.Generator, tmp_path: Path) -> None:
    src = DictSource()
    a = fill(src, "user:a", unit(rng, 50))
    b_vecs = unit(rng, 50)
    b = fill(src, "user:b", b_vecs)
    vs = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=20)
    for v in b_vecs[:5]:
        assert {k for k, _ in vs.search("user:a", v, 100)} <= set(a)
        assert top_key(vs, "user:b", v) in b
    assert vs.search("user:empty", b_vecs[0], 5) == []
    vs.flush()
    assert len(index_files(tmp_path)) == 2
    vs.drop("user:a")  # cleared: memory and file are gone
    assert len(index_files(tmp_path)) == 1
    src.delete("user:a", a)
    assert vs.search("user:a", b_vecs[0], 5) == []


def test_concurrent_searches_and_adds_from_threads_are_safe(rng: np.random.Generator, tmp_path: Path) -> None:
    src = DictSource()
    fill(src, "s", unit(rng, 100))
    vs = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=300, save_every=50)
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

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(write if i % 2 else read, i // 2) for i in range(800)]
        for job in jobs:
            job.result()
    for i, v in enumerate(new):
        assert top_key(vs, "s", v) == seqs[i]
    vs.close()


def test_lru_eviction_keeps_at_most_max_loaded_scopes(rng: np.random.Generator, tmp_path: Path) -> None:
    src = DictSource()
    firsts = {}
    for name in ("a", "b", "c", "d"):
        vecs = unit(rng, 60)
        firsts[name] = (fill(src, name, vecs)[0], vecs[0])
    vs = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=50, max_loaded=2)
    assert top_key(vs, "a", firsts["a"][1]) == firsts["a"][0]
    extra = unit(rng, 1)[0]
    vs.note_added("a", src.insert("a", extra), extra)  # a is dirty: one change, not yet saved
    for name in ("b", "c", "d"):
        assert top_key(vs, name, firsts[name][1]) == firsts[name][0]
        assert len(vs._scopes) <= 2
    assert list(vs._scopes) == ["c", "d"]
    before = src.calls.copy()
    assert len(vs.search("a", extra, 100)) == 61
    assert (src.calls - before)["rows_after_0"] == 0  # reloaded from the file saved on eviction
    assert (src.calls - before)["rows_after"] == 0  # and that file already held the unsaved add
    assert list(vs._scopes) == ["d", "a"]


def test_scope_cleared_through_another_process_is_emptied_and_its_file_removed(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    src = DictSource()
    vecs = unit(rng, 80)
    keys = fill(src, "s", vecs)
    one = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=60)
    two = ScopedVectors(dim=DIM, source=src, directory=tmp_path, exact_below=60)
    assert top_key(one, "s", vecs[3]) == keys[3]
    assert top_key(two, "s", vecs[3]) == keys[3]
    src.delete("s", keys)  # process one clears the scope
    one.drop("s")
    assert two.search("s", vecs[3], 10) == []  # process two was not told
    assert index_files(tmp_path) == []
    v = unit(rng, 1)[0]
    seq = src.insert("s", v)
    assert top_key(two, "s", v) == seq
    assert top_key(one, "s", v) == seq
