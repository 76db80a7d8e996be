"""Hybrid candidate ranking shared by memory and knowledge: per-scope vector caches plus full text, fused."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, RowMapping, TextClause, bindparam, text

from session_mcp.models.embedder import Embedder
from session_mcp.models.ranking import fts5_query, fuse, keywords
from session_mcp.models.rowvectors import RowReader, RowVectors
from session_mcp.models.vectors import ScopedVectors


@dataclass(frozen=True)
class FullText:
    """A table with `seq`, `scope` and `text` columns, its FTS5 mirror on SQLite (`<table>_fts`)
    and its generated `tsv` column on PostgreSQL. Names are fixed literals, never user input."""

    table: str

    @functools.cached_property
    def _queries(self) -> dict[str, TextClause]:
        """The keyword query per dialect, built once (see sessions.py). One query for all scopes:
        the match is global and filtered by scope afterwards, so a query per scope would score
        every matching row once per scope."""
        fts = f"{self.table}_fts"
        queries = {
            # INDEXED BY: the planner would look each match up in the wide table (migration 8).
            # `rank` is bm25() (FTS5's default) with the same results, and measured 0.90 against
            # 1.07 ms per query at 10k memories: FTS5 orders by its own rank column faster.
            "sqlite": text(
                f"SELECT r.seq, -{fts}.rank FROM {fts} "
                f"JOIN {self.table} r INDEXED BY ix_{self.table}_seq_scope ON r.seq = {fts}.rowid "
                f"WHERE {fts} MATCH :q AND r.scope IN :scopes ORDER BY {fts}.rank LIMIT :k"
            ),
            "postgresql": text(
                f"SELECT seq, ts_rank(tsv, q, 1) FROM {self.table}, websearch_to_tsquery('english', :q) q "
                "WHERE scope IN :scopes AND tsv @@ q ORDER BY 2 DESC LIMIT :k"
            ),
        }
        return {name: q.bindparams(bindparam("scopes", expanding=True)) for name, q in queries.items()}

    def scores(self, conn: Connection, scopes: list[str], words: list[str], k: int) -> dict[int, float]:
        dialect = conn.dialect.name
        query = fts5_query(words) if dialect == "sqlite" else " or ".join(words)
        params: dict[str, Any] = {"q": query, "scopes": scopes, "k": k * len(scopes)}
        return {int(seq): float(score) for seq, score in conn.execute(self._queries[dialect], params)}


Fetch = Callable[[Connection, list[int], list[str]], Mapping[int, RowMapping]]
"""A store's row fetch: the rows of these seqs that lie within these scopes, by seq."""
Found = list[tuple[RowMapping, float]]


def candidates(limit: int) -> int:
    """How many candidates each of keyword and vector search brings to the fusion."""
    return max(limit * 5, 50)


@dataclass(frozen=True)
class Reading:
    """What a search read before it needed the query's vector."""

    scopes: list[str]
    limit: int
    dense_weight: float
    keyword: dict[int, float]
    source: RowReader | None


class Hybrid:
    """Searches inside the caller's read transaction: the full-text query, the cache catch-up and
    the row fetch all see one snapshot, on one pooled connection (handed between threads by
    `Embedder.embed_beside`, never used by two at once)."""

    def __init__(
        self, embedder: Embedder, vectors: ScopedVectors, rows: RowVectors, fulltext: FullText
    ) -> None:
        self.embedder = embedder
        self.vectors = vectors
        self.rows = rows
        self.fulltext = fulltext

    def read(
        self, conn: Connection, scopes: list[str], query: str, limit: int, dense_weight: float
    ) -> Reading:
        """The part of a search that needs no query vector, inside the caller's transaction: the
        full-text scores and every scope's freshness (one query for all of them)."""
        source = self.rows.reader(conn, scopes)  # every scope's row count, in one query
        # An empty scope is left out: the full-text match is global and filtered by scope after,
        # so even a query for an empty scope scores every matching row of everyone's (1 ms at 10k).
        scopes = [scope for scope in scopes if source.stats(scope)[1] > 0]
        words = keywords(query) if dense_weight < 1 and scopes else []
        keyword = self.fulltext.scores(conn, scopes, words, candidates(limit)) if words else {}
        return Reading(scopes, limit, dense_weight, keyword, source if dense_weight > 0 else None)

    def finish(
        self, conn: Connection, reading: Reading, vector: NDArray[np.float32] | None, fetch: Fetch
    ) -> Found:
        """The best `limit` (row, score) pairs, best first: the vector caches (caught up to the
        reading's snapshot) searched with the query's vector, fused with the full-text scores, and
        the rows `fetch` finds for the best seqs within the scopes. A candidate whose row is gone
        (deleted since the cache saw it) is skipped: the database wins."""
        dense: dict[int, float] = {}
        if reading.source is not None:
            assert vector is not None
            for scope in reading.scopes:
                dense.update(self.vectors.search(scope, vector, candidates(reading.limit), reading.source))
        ranked = fuse(dense, reading.keyword, reading.dense_weight)[: reading.limit * 2]
        rows = fetch(conn, [seq for seq, _ in ranked], reading.scopes) if ranked else {}
        return [(rows[seq], score) for seq, score in ranked if seq in rows][: reading.limit]

    def answer(
        self,
        conn: Connection,
        scopes: Callable[[], list[str]],
        query: str,
        limit: int,
        dense_weight: float,
        fetch: Fetch,
    ) -> Found:
        """One search request: `scopes()` (the caller's session check, which names the scopes) and
        `read` run on a batch thread while this thread embeds the query (`Embedder.embed_beside`),
        then `finish`. A keyword-only search embeds nothing."""

        def read() -> Reading:
            return self.read(conn, scopes(), query, limit, dense_weight)

        if dense_weight <= 0:
            return self.finish(conn, read(), None, fetch)
        vector, reading = self.embedder.embed_beside(query, read)
        return self.finish(conn, reading, vector, fetch)
