"""Memory: scopes, dedup, hybrid search, delete and clear, and that nothing crosses a user or session."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import event, func, select
from stored_memories import store

from session_mcp.models.clock import ManualClock
from session_mcp.models.config import LayerConfig
from session_mcp.models.database import Database
from session_mcp.models.embedder import Embedder
from session_mcp.models.errors import InvalidArgument, LimitExceeded, MemoryNotFound
from session_mcp.models.hybrid import FullText
from session_mcp.models.layer import MEMORIES, SessionLayer
from session_mcp.models.migrations import migrate
from session_mcp.models.ranking import bm25_idf


@pytest.fixture
def alice(layer: SessionLayer) -> str:
    return layer.sessions.create("alice-1", "alice").session_id


def test_same_text_in_same_scope_returns_the_existing_memory(layer: SessionLayer, alice: str) -> None:
    first = layer.memory.add(alice, "User prefers Python")
    again = layer.memory.add(alice, "  User prefers Python ")
    assert again.deduplicated and again.memory_id == first.memory_id and not first.deduplicated
    short = layer.memory.add(alice, "User prefers Python", "short")
    assert not short.deduplicated and short.memory_id != first.memory_id


def test_adding_a_fact_again_does_not_run_the_model_again(layer: SessionLayer, alice: str) -> None:
    first = layer.memory.add(alice, "The user's sister lives in Porto and visits each June")
    runs = layer.memory.embedder.model_runs
    again = layer.memory.add(alice, "The user's sister lives in Porto and visits each June")
    assert again.deduplicated and again.memory_id == first.memory_id
    assert layer.memory.embedder.model_runs == runs
    found = layer.memory.search(alice, "The user's sister lives in Porto and visits each June", limit=1)
    assert found.results[0].memory_id == first.memory_id and layer.memory.embedder.model_runs == runs


def test_keyword_search_weighs_a_rare_word_above_one_most_memories_share(
    layer: SessionLayer, alice: str
) -> None:
    fillers = ["went hiking", "read a novel", "baked bread", "painted a fence", "fixed a bike", "ran a race"]
    for i in range(24):  # every turn starts with the speaker's name, as a transcript stored turn by turn does
        layer.memory.add(alice, f"Caroline: I {fillers[i % 6]} {i}")
    pottery = (
        "Melanie: I took up pottery last spring, after a long winter of evening classes at the old art school"
    )
    layer.memory.add(alice, pottery)
    layer.memory.dense_weight = 0.0  # the keyword side alone (BM25 on SQLite, weighted ts_rank on PostgreSQL)
    results = layer.memory.search(alice, "When did Caroline start pottery?", limit=3).results
    assert results[0].text == pottery, [r.text for r in results]
    assert results[0].score > results[1].score


def test_search_finds_by_meaning_best_first(layer: SessionLayer, alice: str) -> None:
    layer.memory.add(alice, "The user prefers concise answers without fluff")
    layer.memory.add(alice, "The user's dog is called Biscuit")
    layer.memory.add(alice, "Deploys happen on Tuesdays")
    results = layer.memory.search(alice, "What does the user prefer?").results
    assert results[0].text == "The user prefers concise answers without fluff"
    assert results[0].score >= results[-1].score
    pet = layer.memory.search(alice, "what is the name of their pet", limit=1).results
    assert pet[0].text == "The user's dog is called Biscuit"


def test_long_term_memory_is_shared_by_the_users_sessions_only(layer: SessionLayer, alice: str) -> None:
    layer.memory.add(alice, "Alice is allergic to peanuts", "long")
    layer.memory.add(alice, "Alice is drafting the Q3 report right now", "short")
    layer.sessions.create("alice-2", "alice")
    layer.sessions.create("bob-1", "bob")
    layer.memory.add("bob-1", "Bob is allergic to shellfish", "long")
    from_second = [h.text for h in layer.memory.search("alice-2", "allergies and report", limit=10).results]
    assert from_second == ["Alice is allergic to peanuts"]
    from_bob = [h.text for h in layer.memory.search("bob-1", "allergic peanuts report", limit=10).results]
    assert from_bob == ["Bob is allergic to shellfish"]


def test_memory_type_filters_search(layer: SessionLayer, alice: str) -> None:
    layer.memory.add(alice, "long fact about tea", "long")
    layer.memory.add(alice, "short note about tea", "short")
    assert [h.memory_type for h in layer.memory.search(alice, "tea", "short").results] == ["short"]
    assert [h.memory_type for h in layer.memory.search(alice, "tea", "long").results] == ["long"]
    assert len(layer.memory.search(alice, "tea", "all").results) == 2


def test_metadata_and_created_at_come_back(layer: SessionLayer, alice: str) -> None:
    layer.memory.add(alice, "Meeting moved to Friday", metadata={"source": "email", "n": 2})
    hit = layer.memory.search(alice, "meeting").results[0]
    assert hit.metadata == {"source": "email", "n": 2}
    assert hit.created_at.tzinfo is not None


def test_delete_removes_from_search_and_only_within_scope(layer: SessionLayer, alice: str) -> None:
    added = layer.memory.add(alice, "The office wifi password is on the fridge")
    layer.sessions.create("bob-1", "bob")
    with pytest.raises(MemoryNotFound):
        layer.memory.delete("bob-1", added.memory_id)
    assert layer.memory.delete(alice, added.memory_id).deleted
    assert layer.memory.search(alice, "wifi password").results == []
    with pytest.raises(MemoryNotFound):
        layer.memory.delete(alice, added.memory_id)


def test_clear_short_leaves_long_and_other_sessions(layer: SessionLayer, alice: str) -> None:
    layer.sessions.create("alice-2", "alice")
    layer.memory.add(alice, "scratch one", "short")
    layer.memory.add(alice, "scratch two", "short")
    layer.memory.add("alice-2", "scratch in other session", "short")
    layer.memory.add(alice, "durable fact", "long")
    assert layer.memory.clear(alice, "short").deleted == 2
    assert [h.text for h in layer.memory.search(alice, "scratch durable fact", limit=10).results] == [
        "durable fact"
    ]
    assert [h.text for h in layer.memory.search("alice-2", "scratch", "short").results] == [
        "scratch in other session"
    ]


def test_clear_long_clears_only_this_users_long_term_memory(layer: SessionLayer, alice: str) -> None:
    layer.sessions.create("bob-1", "bob")
    layer.memory.add(alice, "alice fact", "long")
    layer.memory.add("bob-1", "bob fact", "long")
    assert layer.memory.clear(alice, "long").deleted == 1
    assert [h.text for h in layer.memory.search("bob-1", "fact").results] == ["bob fact"]


def test_empty_and_oversized_text_is_refused(layer: SessionLayer, alice: str) -> None:
    with pytest.raises(InvalidArgument):
        layer.memory.add(alice, "   ")
    with pytest.raises(LimitExceeded):
        layer.memory.add(alice, "x" * 20_000)
    with pytest.raises(InvalidArgument):
        layer.memory.search(alice, "")
    assert layer.memory.search(alice, "x").results == []


def test_keyword_only_matches_are_found(layer: SessionLayer, alice: str) -> None:
    layer.memory.add(alice, "Ticket ZX-4411 is blocked on legal review")
    layer.memory.add(alice, "Lunch was pasta")
    assert layer.memory.search(alice, "ZX-4411", limit=1).results[0].text.startswith("Ticket ZX-4411")


def test_search_after_many_adds_still_agrees_with_rows(layer: SessionLayer, alice: str) -> None:
    ids = [layer.memory.add(alice, f"note number {n} about topic {n % 7}").memory_id for n in range(40)]
    for memory_id in ids[::2]:
        layer.memory.delete(alice, memory_id)
    found = {h.memory_id for h in layer.memory.search(alice, "note about topic", limit=100).results}
    assert found <= set(ids[1::2]) and len(found) == 20


def test_replacing_the_newest_memory_never_serves_the_old_vector(layer: SessionLayer, alice: str) -> None:
    layer.memory.add(alice, "The cat sleeps on the sofa")
    newest = layer.memory.add(alice, "Quarterly revenue grew by twelve percent")
    assert layer.memory.search(alice, "revenue growth", limit=1).results[0].memory_id == newest.memory_id
    layer.memory.delete(alice, newest.memory_id)
    replacement = layer.memory.add(alice, "The dentist appointment is on Monday")
    hits = layer.memory.search(alice, "when is the dentist appointment", limit=1).results
    assert hits[0].memory_id == replacement.memory_id
    assert all(
        h.text != "Quarterly revenue grew by twelve percent"
        for h in layer.memory.search(alice, "revenue").results
    )


def test_same_fact_added_at_once_from_two_sessions_is_stored_once(layer: SessionLayer, alice: str) -> None:
    import threading

    layer.sessions.create("alice-2", "alice")
    results = []
    barrier = threading.Barrier(8)

    def add(session_id: str) -> None:
        barrier.wait()
        results.append(layer.memory.add(session_id, "Alice's birthday is on 3 March"))

    threads = [threading.Thread(target=add, args=(sid,)) for sid in [alice, "alice-2"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.memory_id for r in results}) == 1
    assert sum(not r.deduplicated for r in results) == 1


def test_searches_in_flight_each_answer_as_they_would_alone(layer: SessionLayer, alice: str) -> None:
    """Each search hands its transaction's connection to a side thread and back (Embedder.beside):
    many at once must neither mix their snapshots nor their results."""
    for i in range(40):
        layer.memory.add(
            alice, f"Fact {i}: the {['red', 'blue', 'green', 'amber'][i % 4]} box holds item {i}"
        )
    queries = [f"which box holds item {i}" for i in range(0, 40, 2)] + [
        "amber",
        "green box",
        "nothing at all",
    ]
    alone = [layer.memory.search(alice, q, limit=3).results for q in queries]
    context_alone = [layer.context.build(alice, q).context for q in queries[:6]]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda q: layer.memory.search(alice, q, limit=3).results, queries * 3))
        context_together = list(pool.map(lambda q: layer.context.build(alice, q).context, queries[:6] * 3))
    assert together == alone * 3
    assert context_together == context_alone * 3
    assert all(hits for hits in alone[:-1])


@pytest.mark.parametrize("rank", ["bm25", "idf"])
def test_a_keyword_search_ranks_only_the_rows_of_its_own_scopes(
    tmp_path: Path, rank: Literal["bm25", "idf"]
) -> None:
    """Another user's matching rows cost a search nothing: SQLite's full-text query names the
    scopes (before, it ranked every match in the table and dropped other scopes' rows after).
    Counted in SQLite VM steps, which do not depend on the machine's speed."""
    db = Database(f"sqlite:///{tmp_path / 'steps.db'}")
    migrate(db)
    rows = [("long:big", f"tea number {n}") for n in range(2000)] + [
        ("long:small", f"tea {n}") for n in range(5)
    ]
    with db.write() as conn:
        store(conn, rows)
    fulltext = FullText("memories", rank=rank)

    def steps(scope: str, rows: int | None) -> tuple[dict[int, float], int]:
        counted = [0]

        def tick() -> int:
            counted[0] += 1
            return 0

        with db.read() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.set_progress_handler(tick, 10)
            try:
                found = fulltext.scores(conn, [scope], ["tea"], 50, rows)
            finally:
                raw.set_progress_handler(None, 10)
        return found, counted[0]

    try:
        small, small_steps = steps("long:small", 5)  # 5 of 2005 rows: the MATCH names the scope
        big, big_steps = steps("long:big", 2000)  # most of the table: the words alone, then the join
        assert len(small) == 5 and len(big) == 50
        assert small_steps * 5 < big_steps  # 93 against 4472 steps here; 1456 with the words alone
        named, _ = steps("long:big", None)  # the same scores whichever form the query takes
        if rank == "bm25":  # under "idf" every row holding the one word ties, so any 50 may come
            assert named.keys() == big.keys()
            assert all(abs(named[seq] - score) < 1e-9 for seq, score in big.items())
        assert sorted(named.values()) == pytest.approx(sorted(big.values()))
    finally:
        db.close()


def test_sqlites_idf_ranking_sums_the_idf_in_the_searched_scopes_of_the_words_a_memory_holds(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'idf.db'}")
    migrate(db)
    rows = [("long:a", f"tea time {n}") for n in range(8)] + [
        ("long:a", f"rare pottery and tea {n}") for n in range(2)
    ]
    rows += [("long:b", f"pottery pottery {n}") for n in range(100)]  # another scope's rows count for nothing
    with db.write() as conn:
        store(conn, rows)
    try:
        with db.read() as conn:
            scores = FullText("memories", rank="idf").scores(
                conn, ["long:a"], ["tea", "pottery", "absent"], 50, 10
            )
        tea, pottery = bm25_idf(10, 10), bm25_idf(10, 2)
        assert sorted(scores.values(), reverse=True) == pytest.approx([tea + pottery] * 2 + [tea] * 8)
        assert pottery > tea > 0
    finally:
        db.close()


def test_a_scope_past_the_float16_limit_scores_from_the_vectors_in_the_database(
    database_url: str, tmp_path: Path, clock: ManualClock, embedder: Embedder
) -> None:
    config = LayerConfig(database_url=database_url, data_dir=tmp_path / "data", vector_matrix_below=3)
    with closing(SessionLayer(config, clock=clock, embedder=embedder)) as layer:
        session = layer.sessions.create("alice-1", "alice").session_id
        texts = [
            f"note {n}: {topic}" for n, topic in enumerate(["tea", "trains", "taxes", "tennis", "tulips"])
        ]
        ids = [layer.memory.add(session, text).memory_id for text in texts]
        assert (
            layer.memory.search(session, "a sport played with a racket", limit=1).results[0].text == texts[3]
        )
        exact = layer.vectors._scopes["long:alice"].exact
        assert exact is not None and len(exact) == 5 and not exact.scores  # past 3 rows: no copy
        query = embedder.embed(["flowers in the garden"])[0]
        with layer.db.read() as conn:
            found = layer.vectors.search(
                "long:alice", query, 5, layer.memory.rows.reader(conn, ["long:alice"])
            )
        cosines = [float(embedder.embed_one(text) @ query) for text in texts]  # one at a time, as added
        assert len(found) == 5 and found[0][1] == max(score for _, score in found)
        by_seq = dict(found)
        with layer.db.read() as conn:
            seqs = dict(conn.execute(select(MEMORIES.c.memory_id, MEMORIES.c.seq)).all())
        for memory_id, cosine in zip(ids, cosines, strict=True):
            assert abs(by_seq[seqs[memory_id]] - cosine) < 1e-5  # float32, as stored
        layer.memory.delete(session, ids[4])
        assert ids[4] not in {
            h.memory_id for h in layer.memory.search(session, "flowers in the garden").results
        }


def test_a_search_reads_the_tables_highest_seq_with_the_scope_counts(layer: SessionLayer, alice: str) -> None:
    bob = layer.sessions.create("bob-1", "bob").session_id
    layer.memory.add(alice, "Alice drinks green tea")
    layer.memory.add(bob, "Bob drinks black tea")  # the newest row is another user's
    with layer.db.read() as conn:
        highest = conn.execute(select(func.max(MEMORIES.c.seq))).scalar_one()
        reader = layer.memory.rows.reader(conn, ["long:alice"])
        assert reader.highest == highest and reader.stats("long:alice")[1] == 1
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(layer.db.engine, "before_cursor_execute", seen)
    try:
        assert layer.memory.search(alice, "tea").results[0].text == "Alice drinks green tea"
    finally:
        event.remove(layer.db.engine, "before_cursor_execute", seen)
    assert any("memories_fts" in s or "tsv" in s for s in statements)  # the keyword query ran
    assert not any(s.startswith("SELECT max(seq) FROM") for s in statements)
