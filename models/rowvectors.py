"""The SQL side of the vector caches: a table's (scope, seq, embedding) rows as a VectorSource."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Table, func, select

from session_mcp.models.database import Database


class RowVectors:
    """Memories and knowledge chunks both keep `scope`, `seq` and `embedding` columns; this serves
    either to models/vectors.py. `counts` is a table of (scope, row_count, max_seq) kept in each
    write's transaction: with it, the per-search freshness check is one primary-key read."""

    def __init__(self, db: Database, table: Table, counts: Table | None = None) -> None:
        self.db = db
        self.table = table
        self.counts = counts

    def stats(self, scope: str) -> tuple[int, int]:
        with self.db.read() as conn:
            if self.counts is not None:
                counted = self.counts.c
                row = conn.execute(
                    select(counted.max_seq, counted.row_count).where(counted.scope == scope)
                ).first()
                return (0, 0) if row is None else (int(row[0]), int(row[1]))
            rows = self.table.c
            found = conn.execute(select(func.max(rows.seq), func.count()).where(rows.scope == scope)).one()
            return int(found[0] or 0), int(found[1])

    def rows_after(self, scope: str, after_seq: int) -> Iterator[tuple[int, bytes]]:
        # Streamed in pages: rebuilding a 100k-row scope never holds every vector twice.
        rows = self.table.c
        with self.db.read() as conn:
            result = conn.execution_options(yield_per=1024).execute(
                select(rows.seq, rows.embedding)
                .where(rows.scope == scope, rows.seq > after_seq)
                .order_by(rows.seq)
            )
            for seq, vector in result:
                yield int(seq), bytes(vector)

    def all_keys(self, scope: str) -> Sequence[int]:
        rows = self.table.c
        with self.db.read() as conn:
            return [int(s) for (s,) in conn.execute(select(rows.seq).where(rows.scope == scope))]
