"""Isolation: no search, context, list or clear ever reaches another session's or user's data."""

from __future__ import annotations

import random

from session_mcp.models.layer import SessionLayer

TOPICS = ["coffee", "hiking", "invoices", "python", "garden", "chess", "tax", "piano"]


def test_random_searches_never_return_foreign_items(layer: SessionLayer) -> None:
    rng = random.Random(7)
    owners: dict[str, tuple[str, str]] = {}  # memory text -> (user, session it was added through)
    sessions = {("ann", "ann-1"), ("ann", "ann-2"), ("ben", "ben-1"), ("ben", "ben-2")}
    for user, session_id in sorted(sessions):
        layer.sessions.create(session_id, user)
        for topic in TOPICS:
            for memory_type in ("short", "long"):
                text = f"{memory_type} canary {session_id} likes {topic}"
                layer.memory.add(session_id, text, memory_type)  # type: ignore[arg-type]
                owners[text] = (user, session_id)
    for _ in range(40):
        user, session_id = rng.choice(sorted(sessions))
        query = f"who likes {rng.choice(TOPICS)} canary"
        for hit in layer.memory.search(session_id, query, "all", limit=20).results:
            owner_user, owner_session = owners[hit.text]
            assert owner_user == user
            assert hit.memory_type == "long" or owner_session == session_id
        for item in layer.context.build(session_id, query, max_items=10, max_tokens=2000).items:
            if item.section in ("long_term_memory", "session_memory"):
                owner_user, owner_session = owners[item.text]
                assert owner_user == user
                assert item.section == "long_term_memory" or owner_session == session_id


def test_state_history_and_listing_stay_with_their_owner(layer: SessionLayer) -> None:
    layer.sessions.create("a", "ann")
    layer.sessions.create("b", "ben")
    layer.state.set("a", "secret", "ann's")
    layer.history.add("a", "user", "ann's message")
    assert layer.state.restore("b").state == {}
    assert layer.history.get("b").messages == []
    assert [s.session_id for s in layer.sessions.list("ben").sessions] == ["b"]
    assert [s.session_id for s in layer.sessions.list().sessions] == []  # default_user has none


def test_clearing_one_users_long_term_memory_leaves_everyone_elses(layer: SessionLayer) -> None:
    layer.sessions.create("a", "ann")
    layer.sessions.create("b", "ben")
    layer.memory.add("a", "ann long fact", "long")
    layer.memory.add("b", "ben long fact", "long")
    layer.memory.add("b", "ben short fact", "short")
    assert layer.memory.clear("a", "all").deleted == 1
    assert {h.text for h in layer.memory.search("b", "fact", "all", limit=10).results} == {
        "ben long fact",
        "ben short fact",
    }
