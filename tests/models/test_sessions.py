"""Sessions: ids, users, TTL on an injected clock, closing, listing."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta

import pytest

from session_mcp.models.clock import ManualClock
from session_mcp.models.errors import (
    Conflict,
    InvalidArgument,
    LimitExceeded,
    SessionClosed,
    SessionExpired,
    SessionNotFound,
)
from session_mcp.models.layer import SessionLayer
from session_mcp.models.limits import Limits
from session_mcp.models.sessions import TTL_CEILING_S, SessionRecord
from session_mcp.models.tables import SessionRow


def test_missing_id_becomes_eight_hex_characters_and_user_is_default(layer: SessionLayer) -> None:
    info = layer.sessions.create()
    assert re.fullmatch(r"[0-9a-f]{8}", info.session_id)
    assert info.user_id == "default_user"
    assert info.status == "active" and info.expires_at is None and info.time_to_expiry is None


def test_creating_an_existing_id_for_the_same_user_resumes_it(layer: SessionLayer) -> None:
    first = layer.sessions.create("chat_1", "alice", metadata={"topic": "x"})
    again = layer.sessions.create("chat_1", "alice")
    assert not first.resumed and again.resumed
    assert again.created_at == first.created_at and again.metadata == {"topic": "x"}


def test_creating_another_users_id_fails_without_naming_the_owner(layer: SessionLayer) -> None:
    layer.sessions.create("chat_1", "alice")
    with pytest.raises(Conflict) as caught:
        layer.sessions.create("chat_1", "mallory")
    assert "alice" not in str(caught.value)
    assert str(caught.value).startswith("conflict: ")


def test_negative_ttl_is_invalid_and_creates_nothing(layer: SessionLayer) -> None:
    with pytest.raises(InvalidArgument):
        layer.sessions.create("neg", ttl_seconds=-1)
    with pytest.raises(SessionNotFound):
        layer.sessions.get("neg")


def test_a_ttl_past_any_calendar_is_invalid_and_creates_nothing(layer: SessionLayer) -> None:
    """Found by the fuzzer: 8000 years overflowed the expiry date into an internal error."""
    for ttl in (251_635_075_200.0, 1e308, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument, match="more than 100 years"):
            layer.sessions.create("far", ttl_seconds=ttl)
    with pytest.raises(SessionNotFound):
        layer.sessions.get("far")
    assert layer.sessions.create("century", ttl_seconds=TTL_CEILING_S).expires_at is not None


def test_ttl_over_the_maximum_is_refused(layer: SessionLayer) -> None:
    layer.sessions.limits = Limits(max_ttl_seconds=60)
    with pytest.raises(LimitExceeded):
        layer.sessions.create("long", ttl_seconds=61)


def test_zero_ttl_is_expired_at_once(layer: SessionLayer) -> None:
    info = layer.sessions.create("zero", ttl_seconds=0)
    assert info.is_expired and info.status == "expired" and info.time_to_expiry == 0
    with pytest.raises(SessionExpired):
        layer.state.set("zero", "k", 1)


def test_ttl_counts_from_creation_on_the_clock(layer: SessionLayer, clock: ManualClock) -> None:
    layer.sessions.create("ttl", ttl_seconds=60)
    clock.advance(59)
    assert layer.sessions.get("ttl").time_to_expiry == pytest.approx(1)
    layer.state.set("ttl", "k", 1)
    clock.advance(1)
    info = layer.sessions.get("ttl")
    assert info.is_expired and info.status == "expired"
    with pytest.raises(SessionExpired) as caught:
        layer.state.set("ttl", "k", 2)
    assert "create a new session" in str(caught.value)
    assert layer.state.get("ttl", "k").value == 1  # still readable, unchanged


def test_closed_session_refuses_every_write_and_stays_readable(layer: SessionLayer) -> None:
    layer.sessions.create("s")
    layer.state.set("s", "k", "v")
    layer.history.add("s", "user", "hello")
    closed = layer.sessions.close("s")
    assert closed.status == "closed"
    writes = [
        lambda: layer.state.set("s", "k", "w"),
        lambda: layer.state.increment("s", "n"),
        lambda: layer.state.delete("s", "k"),
        lambda: layer.state.save("s", {}),
        lambda: layer.history.add("s", "user", "again"),
        lambda: layer.memory.add("s", "a fact"),
        lambda: layer.memory.clear("s", "all"),
    ]
    for write in writes:
        with pytest.raises(SessionClosed):
            write()
    assert layer.state.get("s", "k").value == "v"
    assert [m.content for m in layer.history.get("s").messages] == ["hello"]
    assert layer.sessions.close("s").status == "closed"  # closing twice is harmless


def test_unknown_session_is_not_found_everywhere(layer: SessionLayer) -> None:
    for call in (
        lambda: layer.sessions.get("nope"),
        lambda: layer.sessions.close("nope"),
        lambda: layer.state.get("nope", "k"),
        lambda: layer.state.set("nope", "k", 1),
        lambda: layer.memory.search("nope", "q"),
        lambda: layer.history.get("nope"),
        lambda: layer.context.build("nope", "q"),
    ):
        with pytest.raises(SessionNotFound):
            call()


def test_owner_cannot_reach_another_users_session(layer: SessionLayer) -> None:
    layer.sessions.create("a1", "alice")
    with pytest.raises(SessionNotFound):
        layer.sessions.get("a1", owner="bob")
    with pytest.raises(SessionNotFound):
        layer.state.set("a1", "k", 1, owner="bob")


def test_invalid_ids_are_refused(layer: SessionLayer) -> None:
    for bad in ("../x", "", "a b", "x" * 129):
        with pytest.raises(InvalidArgument):
            layer.sessions.create(bad)


def test_list_pages_newest_first_and_filters_by_status(layer: SessionLayer, clock: ManualClock) -> None:
    for n in range(5):
        layer.sessions.create(f"s{n}", "alice", ttl_seconds=100 if n == 4 else None)
        clock.advance(1)
    layer.sessions.create("other", "bob")
    layer.sessions.close("s1")
    clock.advance(200)
    page = layer.sessions.list("alice", limit=2)
    assert [s.session_id for s in page.sessions] == ["s4", "s3"]
    assert page.next_cursor is not None
    rest = layer.sessions.list("alice", limit=10, cursor=page.next_cursor)
    assert [s.session_id for s in rest.sessions] == ["s2", "s1", "s0"] and rest.next_cursor is None
    assert [s.session_id for s in layer.sessions.list("alice", status="closed").sessions] == ["s1"]
    assert [s.session_id for s in layer.sessions.list("alice", status="expired").sessions] == ["s4"]
    assert {s.session_id for s in layer.sessions.list("alice", status="active").sessions} == {
        "s0",
        "s2",
        "s3",
    }
    assert [s.session_id for s in layer.sessions.list("bob").sessions] == ["other"]


def test_bad_cursor_is_invalid_argument(layer: SessionLayer) -> None:
    with pytest.raises(InvalidArgument):
        layer.sessions.list(cursor="not-a-cursor")


def test_metadata_with_nan_is_refused(layer: SessionLayer) -> None:
    with pytest.raises(InvalidArgument):
        layer.sessions.create("m", metadata={"x": float("nan")})


def test_the_guards_read_every_column_of_the_sessions_table_with_its_type(layer: SessionLayer) -> None:
    columns = SessionRow.__table__.columns  # type: ignore[attr-defined]
    assert [f.name for f in dataclasses.fields(SessionRecord)] == [c.name for c in columns]
    layer.sessions.create("cols", "alice", ttl_seconds=60, metadata={"k": 1})
    with layer.db.read() as conn:
        record = layer.sessions.readable(conn, "cols", "alice")
    assert isinstance(record.created_at, datetime) and isinstance(record.expires_at, datetime)
    assert (record.session_id, record.user_id, record.status, record.meta) == (
        "cols",
        "alice",
        "active",
        '{"k":1}',
    )
    assert record.expires_at - record.created_at == timedelta(seconds=60)
