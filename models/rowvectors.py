"""The SQL side of the vector caches: a table's (scope, seq, embedding) rows as a VectorSource."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, case, func, select
from sqlalchemy.dialects import postgresql, sqlite

from session_mcp.models.database import Database, DriverStatement, ListStatement, listed


class RowVectors:
    """Memories and knowledge chunks both keep `scope`, `seq` and `embedding` columns; this serves
    either to models/vectors.py. `counts` is a table of (scope, row_count, max_seq) kept in each
    write's transaction: with it, the per-search freshness check is one primary-key read.

    Its own methods each read in a transaction of their own (the index worker uses them);
    `reader(conn)` is the same source inside a caller's transaction, which is how a search reads
    its session, full text, cache catch-up and rows from one snapshot on one connection."""

    def __init__(self, db: Database, table: Table, counts: Table | None = None) -> None:
        self.db = db
        self.table = table
        self.counts = counts
        # Every search and write runs these, so they are built once (see sessions.py).
        r = table.c
        self._stats = ListStatement(
            lambda scopes: (
                select(r.scope, func.max(r.seq), func.count())
                .where(r.scope.in_(listed("scopes", scopes)))
                .group_by(r.scope)
            ),
            "scopes",
        )
        self._vectors = ListStatement(
            lambda seqs: select(r.seq, r.embedding).where(
                r.scope == bindparam("scope"), r.seq.in_(listed("seqs", seqs))
            ),
            "seqs",
        )
        self._count: Any = None
        if counts is not None:
            c = counts.c
            # With the table's highest seq: the keyword query's form depends on it (hybrid.py), and
            # here it costs no statement of its own.
            highest = select(func.max(r.seq)).scalar_subquery()
            self._stats = ListStatement(
                lambda scopes: select(c.scope, c.max_seq, c.row_count, highest).where(
                    c.scope.in_(listed("scopes", scopes))
                ),
                "scopes",
            )
            insert = sqlite.insert(counts) if db.is_sqlite else postgresql.insert(counts)
            delta: Any = bindparam("delta")
            seq: Any = bindparam("seq")
            self._count = DriverStatement(  # every add and delete runs it
                insert.on_conflict_do_update(
                    index_elements=[c.scope],
                    set_={
                        "row_count": c.row_count + delta,
                        "max_seq": case((c.max_seq < seq, seq), else_=c.max_seq),
                    },
                ),
                column_keys=["scope", "row_count", "max_seq"],
            )

    def count(self, conn: Connection, scope: str, delta: int, seq: int = 0) -> None:
        """Move the scope's counts row by `delta` rows and up to `seq`, in the caller's write
        transaction (every insert and delete of the table's rows goes through here)."""
        if self._count is not None:
            row = {"scope": scope, "row_count": max(delta, 0), "max_seq": seq}
            self._count.run(conn, {**row, "delta": delta, "seq": seq})

    def emptied(self, conn: Connection, scopes: Sequence[str]) -> None:
        """The scopes' rows were all deleted in the caller's transaction."""
        if self.counts is not None and scopes:
            conn.execute(self.counts.update().where(self.counts.c.scope.in_(scopes)).values(row_count=0))

    def reader(self, conn: Connection, scopes: Iterable[str] = ()) -> RowReader:
        """A VectorSource on `conn`, with the stats of `scopes` read up front in one query."""
        return RowReader(self, conn, list(scopes))

    def stats(self, scope: str) -> tuple[int, int]:
        with self.db.read() as conn:
            return self.reader(conn).stats(scope)

    def rows_after(self, scope: str, after_seq: int) -> Iterator[tuple[int, bytes]]:
        with self.db.read() as conn:
            yield from self.reader(conn).rows_after(scope, after_seq)

    def all_keys(self, scope: str) -> Sequence[int]:
        with self.db.read() as conn:
            return self.reader(conn).all_keys(scope)

    def vectors(self, scope: str, seqs: Sequence[int]) -> list[tuple[int, bytes]]:
        with self.db.read() as conn:
            return self.reader(conn).vectors(scope, seqs)


class RowReader:
    """RowVectors inside one open transaction."""

    def __init__(self, rows: RowVectors, conn: Connection, scopes: list[str]) -> None:
        self._rows = rows
        self._conn = conn
        self.highest: int | None = None
        """The table's highest seq, read with the stats when any scope has a counts row."""
        self._stats = self._read_stats(scopes) if scopes else {}

    def _read_stats(self, scopes: list[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = dict.fromkeys(scopes, (0, 0))
        for scope, max_seq, count, *highest in self._rows._stats.run(self._conn, {"scopes": scopes}):
            found[scope] = (int(max_seq or 0), int(count))
            if highest:
                self.highest = int(highest[0] or 0)
        return found

    def stats(self, scope: str) -> tuple[int, int]:
        known = self._stats.get(scope)
        return known if known is not None else self._read_stats([scope])[scope]

    def rows_after(self, scope: str, after_seq: int) -> Iterator[tuple[int, bytes]]:
        # Streamed in pages: rebuilding a 100k-row scope never holds every vector twice.
        rows = self._rows.table.c
        result = self._conn.execute(
            select(rows.seq, rows.embedding)
            .where(rows.scope == scope, rows.seq > after_seq)
            .order_by(rows.seq)
            .execution_options(yield_per=1024)
        )
        for seq, vector in result:
            yield int(seq), bytes(vector)

    def all_keys(self, scope: str) -> Sequence[int]:
        rows = self._rows.table.c
        return [int(s) for (s,) in self._conn.execute(select(rows.seq).where(rows.scope == scope))]

    def vectors(self, scope: str, seqs: Sequence[int]) -> list[tuple[int, bytes]]:
        if not seqs:
            return []
        found = self._rows._vectors.run(self._conn, {"scope": scope, "seqs": list(seqs)})
        return [(int(seq), bytes(vector)) for seq, vector in found]
