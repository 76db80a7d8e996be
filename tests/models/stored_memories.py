"""Memory rows written straight into the table (no model run), for tests of the SQL around them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection

from session_mcp.models.tables import MemoryRow

MEMORIES = MemoryRow.__table__  # type: ignore[attr-defined]


def store(conn: Connection, rows: list[tuple[str, str]], *, first: int = 0) -> None:
    """Insert one long-term memory per (scope, text), ids numbered from `first`, zero vectors."""
    now = datetime.now(UTC)
    conn.execute(
        MEMORIES.insert(),
        [
            dict(memory_id=f"m{n}", scope=scope, session_id="s", user_id=scope, memory_type="long",
                 text=text, text_hash=f"h{n}", meta="{}", created_at=now, embedding=b"\0" * 1536)
            for n, (scope, text) in enumerate(rows, start=first)
        ],
    )  # fmt: skip
