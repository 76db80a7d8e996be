"""The SQL engine wrapper: what its read and write transactions promise, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

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
