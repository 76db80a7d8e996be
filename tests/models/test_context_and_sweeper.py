"""get_context packing and the sweeper's purge of expired sessions."""

from __future__ import annotations

from session_mcp.models.clock import ManualClock
from session_mcp.models.layer import SessionLayer
from session_mcp.models.limits import Limits


def test_context_has_headed_sections_with_sources(layer: SessionLayer) -> None:
    sid = layer.sessions.create("c", "carol").session_id
    layer.memory.add(sid, "Carol prefers answers in bullet points", "long")
    layer.memory.add(sid, "We are debugging the login page today", "short")
    layer.state.set(sid, "ticket", "LOGIN-12")
    layer.history.add(sid, "user", "the login button does nothing")
    built = layer.context.build(sid, "How should I format the answer about the login bug?")
    assert "## What I know about the user (long-term memory)" in built.context
    assert "## Notes from this session (short-term memory)" in built.context
    assert "## Session state" in built.context and 'ticket: "LOGIN-12"' in built.context
    assert (
        "## Recent conversation" in built.context and "user: the login button does nothing" in built.context
    )
    sections = {i.section for i in built.items}
    assert sections == {"long_term_memory", "session_memory", "session_state", "recent_conversation"}
    assert built.tokens == layer.embedder.count_tokens(built.context)


def test_context_stays_within_the_token_budget(layer: SessionLayer) -> None:
    sid = layer.sessions.create("c").session_id
    for n in range(30):
        layer.memory.add(sid, f"Fact {n}: the project uses component {n} for billing and invoices")
        layer.history.add(sid, "user", f"message {n} about billing invoices and component {n}")
    for budget in (60, 120, 400):
        built = layer.context.build(sid, "billing", max_items=20, max_tokens=budget)
        assert built.tokens <= budget
        assert built.items
    small = layer.context.build(sid, "billing", max_items=20, max_tokens=120)
    assert {i.section for i in small.items} >= {"long_term_memory", "recent_conversation"}


def test_context_drops_duplicate_lines(layer: SessionLayer) -> None:
    sid = layer.sessions.create("c").session_id
    layer.memory.add(sid, "The deadline is Friday", "long")
    layer.memory.add(sid, "The deadline is Friday", "short")
    built = layer.context.build(sid, "deadline")
    assert [i.text for i in built.items].count("The deadline is Friday") == 1


def test_context_of_empty_session_is_empty(layer: SessionLayer) -> None:
    sid = layer.sessions.create("c").session_id
    built = layer.context.build(sid, "anything")
    assert built.context == "" and built.items == []


def test_sweeper_purges_session_data_after_grace_but_keeps_long_term(
    layer: SessionLayer, clock: ManualClock
) -> None:
    layer.sweeper.limits = Limits(sweeper_grace_seconds=100)
    sid = layer.sessions.create("t", "tina", ttl_seconds=10).session_id
    keep = layer.sessions.create("keep", "tina").session_id
    layer.state.set(sid, "k", 1)
    layer.history.add(sid, "user", "hi")
    layer.memory.add(sid, "short note about cats", "short")
    layer.memory.add(sid, "Tina likes cats", "long")
    layer.state.set(keep, "k", 2)
    clock.advance(50)
    assert layer.sweeper.sweep() == 0  # expired, but inside the grace period
    assert layer.state.get(sid, "k").found
    clock.advance(100)
    assert layer.sweeper.sweep() == 1
    assert layer.sweeper.sweep() == 0
    assert layer.state.restore(sid).state == {}
    assert layer.history.get(sid).messages == []
    assert layer.sessions.get(sid).status == "expired"
    assert [h.text for h in layer.memory.search(keep, "cats", "all", limit=10).results] == ["Tina likes cats"]
    assert layer.state.get(keep, "k").value == 2


def test_sweeping_merges_the_keyword_index_and_searches_find_the_same(layer: SessionLayer) -> None:
    """One memory_add at a time leaves SQLite's FTS5 index in several segments; a sweep folds them
    into one (after it, a merge step finds nothing to do) and no search answer changes."""
    sid = layer.sessions.create("m", "mia").session_id
    for i in range(40):
        layer.memory.add(sid, f"Note {i}: the {['red', 'blue', 'green'][i % 3]} kite flew on day {i}", "long")
    fulltext = layer.memory.hybrid.fulltext

    def work_left() -> bool:
        with layer.db.engine.connect() as conn:
            step = conn.begin()
            try:
                return fulltext.merge_step(conn, 256)
            finally:
                step.rollback()  # only asked: the index stays as it was

    before = [h.memory_id for h in layer.memory.search(sid, "blue kite day", "all", limit=10).results]
    on_sqlite = layer.db.is_sqlite
    assert work_left() is on_sqlite  # PostgreSQL's index has nothing to fold
    layer.sweeper.sweep()
    assert work_left() is False
    assert [h.memory_id for h in layer.memory.search(sid, "blue kite day", "all", limit=10).results] == before
    if on_sqlite:
        with layer.db.write() as conn:
            conn.exec_driver_sql("INSERT INTO memories_fts(memories_fts) VALUES('integrity-check')")
