"""The SQL engine wrapper: what its read and write transactions promise, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Integer, bindparam, column, delete, event, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from stored_memories import store

from session_mcp.models.clock import from_db
from session_mcp.models.database import Database, DriverStatement, ListStatement, listed, sqlite_url
from session_mcp.models.errors import EngineError, InvalidArgument, SessionNotFound
from session_mcp.models.hybrid import FullText
from session_mcp.models.layer import SessionLayer
from session_mcp.models.migrations import migrate
from session_mcp.models.tables import MemoryRow, SessionRow

_S = SessionRow.__table__  # type: ignore[attr-defined]
_M = MemoryRow.__table__  # type: ignore[attr-defined]


def test_a_read_transaction_sees_one_snapshot_even_while_others_commit(layer: SessionLayer) -> None:
    layer.sessions.create("first", "u")
    with layer.db.read() as conn:
        before = conn.execute(select(func.count()).select_from(_S)).scalar_one()
        layer.sessions.create("second", "u")  # commits on another connection meanwhile
        during = conn.execute(select(func.count()).select_from(_S)).scalar_one()
    with layer.db.read() as conn:
        after = conn.execute(select(func.count()).select_from(_S)).scalar_one()
    assert (before, during, after) == (1, 1, 2)


def test_a_write_that_cannot_get_the_sqlite_lock_is_an_engine_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    Database(sqlite_url(path)).close()  # creates the file
    db = Database(sqlite_url(path), busy_timeout_s=0.05)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        with pytest.raises(EngineError, match="could not complete the write"), db.write() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with db.read() as conn:  # reads still work beside the writer (WAL)
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
        holder.execute("ROLLBACK")
        with db.write() as conn:  # and the lock, once free, is taken again
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        with db.read() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [2]
    finally:
        holder.close()
        db.close()


def _backend_pid(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(postgres_url: str, pid: int) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_pooled_connection_closed_while_idle_is_replaced_before_use(postgres_url: str) -> None:
    db = Database(postgres_url, ping_after_idle_s=0)  # every checkout counts as idle long enough
    try:
        first = _backend_pid(db)
        _terminate(postgres_url, first)
        assert _backend_pid(db) != first  # the check found it closed; the pool reconnected, no error
    finally:
        db.close()


def test_a_connection_checked_in_moments_ago_is_used_without_asking_the_server(postgres_url: str) -> None:
    """The round trip saved on every call of a burst; the price, when the server drops a connection
    inside the window, is one failed request (the pool then starts afresh), as shown here."""
    db = Database(postgres_url, ping_after_idle_s=3600)
    try:
        first = _backend_pid(db)
        _terminate(postgres_url, first)
        with pytest.raises(EngineError):
            _backend_pid(db)
        assert _backend_pid(db) != first
    finally:
        db.close()


def test_a_value_the_database_refuses_is_invalid_argument_and_changes_nothing(layer: SessionLayer) -> None:
    """PostgreSQL refuses a NUL character in text (the tools refuse it first, for both databases;
    this is the layer's own guard): reported as the caller's bad input, never as a crash."""
    layer.sessions.create("s")
    if layer.db.is_sqlite:
        with pytest.raises(SessionNotFound):
            layer.sessions.get("nul\x00id")
        return
    with pytest.raises(InvalidArgument, match="refused a value"):
        layer.sessions.get("nul\x00id")
    with pytest.raises(InvalidArgument, match="refused a value"):
        layer.history.add("s", "user", "a NUL \x00 in a message")
    assert layer.history.get("s").messages == []
    with pytest.raises(InvalidArgument, match="refused a value"):  # its insert runs on the driver
        layer.memory.add("s", "a NUL \x00 in a memory")
    assert layer.memory.search("s", "memory", limit=10).results == []


def test_postgresql_plans_each_keyword_query_for_its_own_scope(postgres_url: str) -> None:
    """psycopg prepares a statement on the server once it has run 5 times, and PostgreSQL may then
    settle on one generic plan for all parameters: for a small scope beside a big one, the full-text
    index over every scope's rows. Every run is planned for its own parameters instead."""
    db = Database(postgres_url)
    migrate(db)
    rows = [("long:big", f"{'tea' if n % 10 == 0 else 'coffee'} number {n}") for n in range(20000)]
    rows += [("long:small", f"tea {n}") for n in range(3)]
    try:
        with db.write() as conn:
            store(conn, rows)
            conn.exec_driver_sql("ANALYZE memories")
        fulltext = FullText("memories")
        with db.read() as conn:
            for _ in range(12):  # PostgreSQL weighs a generic plan after 5 custom ones
                assert len(fulltext.scores(conn, ["long:big"], ["tea"], 50, 20000)) == 50
            assert len(fulltext.scores(conn, ["long:small"], ["tea"], 50, 3)) == 3
            generic, custom = conn.exec_driver_sql(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE strpos(statement, 'plainto_tsquery') > 0"
            ).one()
        assert (generic, custom) == (0, 13 - 5)  # prepared after its 5th run; each run since planned anew
    finally:
        db.close()


def test_a_statement_run_on_the_driver_stores_what_sqlalchemy_stores_and_fails_as_it_does(
    layer: SessionLayer,
) -> None:
    """DriverStatement (memory_add's insert, the scope counts) bypasses SQLAlchemy's execution:
    the values it stores must read back as those stored by conn.execute, and its errors must be
    SQLAlchemy's, which Database.write maps."""
    layer.sessions.create("s", "u")
    moment = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC)

    def row(n: int) -> dict[str, Any]:
        return {
            "memory_id": f"m{n}",
            "scope": "long:u",
            "session_id": "s",
            "user_id": "u",
            "memory_type": "long",
            "text": f"fact {n} \u00e9\U0001f600",
            "text_hash": f"h{n}",
            "meta": '{"k": [1, "x"]}',
            "created_at": moment,
            "embedding": bytes(range(256)) * 6,
        }

    plain = insert(_M).returning(_M.c.seq)
    on_driver = DriverStatement(plain, column_keys=list(row(0)))
    with layer.db.write() as conn:
        first = conn.execute(plain, row(1)).scalar_one()
        (second,) = on_driver.run(conn, row(2))
        assert on_driver.run(conn, row(3)) == [(second[0] + 1,)]  # the driver's own tuples
    with layer.db.read() as conn:  # as the database holds them, not as SQLAlchemy reads them back
        stored = {
            r[0]: tuple(r[1:])
            for r in conn.exec_driver_sql(
                "SELECT memory_id, scope, session_id, user_id, memory_type, meta, created_at, "
                "embedding FROM memories ORDER BY seq"
            )
        }
    assert stored["m1"] == stored["m2"] == stored["m3"]
    plain_insert = DriverStatement(insert(_M), column_keys=list(row(0)))  # no RETURNING asked for
    with layer.db.write() as conn:
        assert plain_insert.run(conn, row(7)) == []  # PostgreSQL's implicit RETURNING is not rows
    with layer.db.write() as conn:
        conn.execute(delete(_M).where(_M.c.memory_id == "m7"))
    with layer.db.read() as conn:
        created = conn.execute(select(_M.c.created_at).where(_M.c.memory_id == "m2")).scalar_one()
    assert from_db(created) == moment
    assert second[0] == first + 1
    # Returned rows pass through their types' result processors (datetimes are text in SQLite),
    # and values written into the statement itself (the session id here) are sent along.
    touch = update(_S).where(_S.c.session_id == "s").values(updated_at=bindparam("now")).returning(*_S.c)
    with layer.db.write() as conn:
        by_sqlalchemy = dict(conn.execute(touch, {"now": moment}).mappings().one())
        assert DriverStatement(touch).mappings(conn, {"now": moment}) == [by_sqlalchemy]
    assert from_db(by_sqlalchemy["updated_at"]) == moment
    read = select(_S).where(_S.c.session_id == bindparam("sid"))
    with layer.db.read() as conn:
        assert DriverStatement(read).mappings(conn, {"sid": "s"}) == [by_sqlalchemy]
        assert DriverStatement(read).mappings(conn, {"sid": "none such"}) == []
        with pytest.raises(TypeError, match="expanding IN"):  # a list it would send wrongly
            DriverStatement(select(_S).where(_S.c.status.in_(["active", "closed"]))).run(conn, {})
        with pytest.raises(TypeError, match="rows only of a SELECT"):  # two columns, one it can name
            DriverStatement(text("SELECT 1, 2").columns(column("a", Integer))).run(conn, {})
        one = DriverStatement(text("SELECT 1, 2").columns(column("a", Integer), column("b", Integer)))
        assert one.mappings(conn, {}) == [{"a": 1, "b": 2}]
    seen: list[str] = []

    def listener(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(layer.db.engine, "before_cursor_execute", listener)  # tracing still sees it
    try:
        with layer.db.read() as conn:
            DriverStatement(read).mappings(conn, {"sid": "s"})
    finally:
        event.remove(layer.db.engine, "before_cursor_execute", listener)
    assert any(s.startswith("SELECT sessions.session_id") for s in seen)
    with pytest.raises(IntegrityError), layer.db.write() as conn:  # the same primary key again
        on_driver.run(conn, {**row(4), "memory_id": "m2"})
    with pytest.raises(IntegrityError), layer.db.write() as conn:  # and nothing of the transaction stays
        on_driver.run(conn, row(5))
        on_driver.run(conn, {**row(6), "memory_id": "m5"})
    with layer.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(_M)).scalar_one() == 3


def test_a_list_statement_answers_as_an_expanding_list_for_every_length(layer: SessionLayer) -> None:
    """ListStatement builds one driver statement per list length; each answers as SQLAlchemy's
    expanding IN list does, lists of different lengths side by side, and only the most recently
    used lengths stay built."""
    for n in range(5):
        layer.sessions.create(f"s{n}", f"u{n % 2}")
    expanding = select(_S.c.session_id, _S.c.created_at).where(
        _S.c.session_id.in_(bindparam("ids", expanding=True)), _S.c.user_id == bindparam("user")
    )
    listing = ListStatement(
        lambda ids: select(_S.c.session_id, _S.c.created_at).where(
            _S.c.session_id.in_(listed("ids", ids)), _S.c.user_id == bindparam("user")
        ),
        "ids",
        kept=2,  # lengths past the two most recent are built again when they come back
    )
    with layer.db.read() as conn:
        for ids in (["s0"], ["s1", "s2", "nope"], ["s0", "s1", "s2", "s3", "s4"], ["s4", "s3"], ["s0"]):
            for user in ("u0", "u1"):
                want = sorted(tuple(r) for r in conn.execute(expanding, {"ids": ids, "user": user}))
                assert sorted(listing.run(conn, {"ids": ids, "user": user})) == want
            assert len(listing._made) <= 2
