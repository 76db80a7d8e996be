"""The SQL engine wrapper: what its read and write transactions promise, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select

from session_mcp.models.database import Database, sqlite_url
from session_mcp.models.errors import EngineError
from session_mcp.models.layer import SessionLayer
from session_mcp.models.tables import SessionRow

_S = SessionRow.__table__  # type: ignore[attr-defined]


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
