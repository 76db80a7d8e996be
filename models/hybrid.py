"""Hybrid candidate ranking shared by memory and knowledge: per-scope vector caches plus full text, fused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import bindparam, text

from session_mcp.models.database import Database
from session_mcp.models.embedder import Embedder
from session_mcp.models.ranking import fts5_query, fuse, keywords
from session_mcp.models.vectors import ScopedVectors


@dataclass(frozen=True)
class FullText:
    """A table with `seq`, `scope` and `text` columns, its FTS5 mirror on SQLite (`<table>_fts`)
    and its generated `tsv` column on PostgreSQL. Names are fixed literals, never user input."""

    table: str

    def scores(self, db: Database, scopes: list[str], words: list[str], k: int) -> dict[int, float]:
        # One query for all scopes: the match is global and filtered by scope afterwards, so a
        # query per scope would score every matching row once per scope.
        fts = f"{self.table}_fts"
        if db.is_sqlite:
            sql = text(
                f"SELECT r.seq, -bm25({fts}) FROM {fts} JOIN {self.table} r ON r.seq = {fts}.rowid "
                f"WHERE {fts} MATCH :q AND r.scope IN :scopes ORDER BY bm25({fts}) LIMIT :k"
            )
            query = fts5_query(words)
        else:
            sql = text(
                f"SELECT seq, ts_rank(tsv, q, 1) FROM {self.table}, websearch_to_tsquery('english', :q) q "
                "WHERE scope IN :scopes AND tsv @@ q ORDER BY 2 DESC LIMIT :k"
            )
            query = " or ".join(words)
        params: dict[str, Any] = {"q": query, "scopes": scopes, "k": k * len(scopes)}
        with db.read() as conn:
            rows = conn.execute(sql.bindparams(bindparam("scopes", expanding=True)), params)
            return {int(seq): float(score) for seq, score in rows}


class Hybrid:
    def __init__(self, db: Database, embedder: Embedder, vectors: ScopedVectors, fulltext: FullText) -> None:
        self.db = db
        self.embedder = embedder
        self.vectors = vectors
        self.fulltext = fulltext

    def rank(
        self,
        scopes: list[str],
        query: str,
        limit: int,
        dense_weight: float,
        vector: NDArray[np.float32] | None = None,
    ) -> list[tuple[int, float]]:
        """The best `2 * limit` (seq, score) candidates, best first; the caller joins them to rows,
        which drops any the caches still hold after a delete. Pass `vector` when the query is
        already embedded (get_context searches several stores with one query)."""
        candidates = max(limit * 5, 50)
        dense: dict[int, float] = {}
        if dense_weight > 0:
            vector = self.embedder.embed_one(query) if vector is None else vector
            for scope in scopes:
                dense.update(self.vectors.search(scope, vector, candidates))
        words = keywords(query) if dense_weight < 1 else []
        keyword = self.fulltext.scores(self.db, scopes, words, candidates) if words else {}
        return fuse(dense, keyword, dense_weight)[: limit * 2]
