"""Hybrid candidate ranking shared by memory and knowledge: per-scope vector caches plus full text, fused."""

from __future__ import annotations

import functools
import json
import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Float, Integer, TextClause, TextualSelect, column, text

from session_mcp.models.database import DriverStatement, ListStatement
from session_mcp.models.embedder import Embedder
from session_mcp.models.ranking import fts5_query, fuse, keywords
from session_mcp.models.rowvectors import RowReader, RowVectors
from session_mcp.models.vectors import ScopedVectors

T = TypeVar("T")
_CUSTOM_PLAN = DriverStatement(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _listing_scopes(sql: str) -> ListStatement:
    """A keyword query whose `IN :scopes` lists each scope as a parameter of its own."""

    def build(scopes: int) -> TextualSelect:
        listed = ", ".join(f":scopes_{i}" for i in range(scopes))
        return text(sql.replace("IN :scopes", f"IN ({listed})")).columns(
            column("seq", Integer), column("score", Float)
        )

    return ListStatement(build, "scopes")


@dataclass(frozen=True)
class FullText:
    """A table with `seq`, `scope` and `text` columns, its FTS5 mirror on SQLite (`<table>_fts`)
    and its generated `tsv` column on PostgreSQL. Names are fixed literals, never user input.

    `rank` says how SQLite scores a row: "bm25", FTS5's, or "idf", the sum of the BM25 idf (in
    the searched scopes) of the query words the row contains, with no weight for repeats and no
    length normalisation. "idf" is for memories, short texts in which a word rarely repeats and
    where BM25's length normalisation held back the longer turn that answered: LoCoMo
    (bench/locomo.py, dense weight 0.7) R@5 0.576 -> 0.614 (keyword alone 0.550 -> 0.572); the
    keyword query 0.488 -> 0.365 ms p50 at 10k memories and 4.22 -> 3.81 ms at 100k. Documents'
    chunks keep bm25: the same scoring of them gave keyword-only MRR 0.924 against 0.948 on the
    sparse questions of bench/knowledge_quality.py, where a word's repeats are the signal.
    PostgreSQL scores both as idf-weighted ts_rank (see `_queries`)."""

    table: str
    rank: Literal["bm25", "idf"] = "bm25"

    @functools.cached_property
    def _queries(self) -> dict[str, ListStatement]:
        """The keyword query per dialect, built once per number of scopes (see sessions.py), on the
        driver's cursor (ListStatement)."""
        fts = f"{self.table}_fts"
        queries = {
            # Ordered by bm25() of the text column (the scope tag's weighs 0), not by FTS5's `rank`:
            # ordering by `rank` makes FTS5 score every match before the join drops other scopes'
            # rows, whereas bm25() is computed only for the rows the join keeps (a user with 100
            # memories beside another's 100k: 2.4 against 10.1 ms per query here; 0.82 against
            # 0.81 ms for one user's 10k). INDEXED BY: the planner would look each match up in
            # the wide table (migration 8).
            "sqlite": (
                f"SELECT r.seq, -bm25({fts}, 1.0, 0.0) AS score FROM {fts} "
                f"JOIN {self.table} r INDEXED BY ix_{self.table}_seq_scope ON r.seq = {fts}.rowid "
                f"WHERE {fts} MATCH :q AND r.scope IN :scopes ORDER BY score DESC LIMIT :k"
            ),
            # One MATCH per word (:words, a JSON list of MATCH expressions), its rows in the
            # scopes counted for its df; a row's score is the sum of its words' idf.
            "sqlite-idf": (
                "WITH t AS (SELECT key AS word, value AS q FROM json_each(:words)), "
                f"h AS (SELECT t.word, r.seq FROM t JOIN {fts} f ON f.{fts} MATCH t.q "
                f"JOIN {self.table} r INDEXED BY ix_{self.table}_seq_scope ON r.seq = f.rowid "
                "WHERE r.scope IN :scopes), "
                "d AS (SELECT word, bm25_idf(:n, count(*)) AS idf FROM h GROUP BY word) "
                "SELECT seq, sum(idf) AS score FROM h JOIN d USING (word) GROUP BY seq "
                "ORDER BY score DESC LIMIT :k"
            ),
            # PostgreSQL has no BM25: ts_rank weighs every word alike, so a word in half the
            # scope's rows (a speaker's name that starts each turn) counted as much as a rare
            # one. Here each query word's ts_rank is weighted by BM25's idf, ln(1 + (N - df +
            # 0.5) / (df + 0.5)), with df the rows of the scopes that match the word (each word's
            # own index scan) and N the scopes' rows (:n), and summed. LoCoMo (bench/locomo.py,
            # dense weight 0.7) R@5 0.490 -> 0.608, keyword alone 0.441 -> 0.568; ts_rank's length
            # normalisation 1 (its log) gave 0.592, 2 and 8 (length, unique words) 0.484 and 0.494.
            "postgresql": (
                "WITH t AS (SELECT w.word, tq FROM unnest(CAST(:terms AS text[])) AS w(word), "
                "LATERAL plainto_tsquery('english', w.word) AS tq WHERE numnode(tq) > 0), "
                "h AS (SELECT seq, ts_rank(tsv, t.tq, 0) AS r, count(*) OVER (PARTITION BY t.word) AS df "
                f"FROM t, {self.table} WHERE scope IN :scopes AND tsv @@ t.tq) "
                "SELECT seq, sum(r * ln(1 + (greatest(CAST(:n AS float8), df) - df + 0.5) / (df + 0.5))) "
                "FROM h GROUP BY seq ORDER BY 2 DESC LIMIT :k"
            ),
        }
        return {name: _listing_scopes(sql) for name, sql in queries.items()}

    def merge_step(self, conn: Connection, pages: int) -> bool:
        """One bounded step of folding the keyword index into a single segment, inside the caller's
        write transaction; whether there was anything to fold. SQLite only (PostgreSQL's index
        needs no such care): FTS5 writes a segment per transaction, one memory_add at a time, and
        merges only as they pile up, so a query reads every term from several segments. Measured
        on 10k memories added one at a time: a keyword query took 0.93 ms p50, 0.77 ms once merged
        (one 12 ms step); 30k: 2.46-2.58 against 2.15-2.18 ms. A step writes about `pages`
        pages (FTS5's 'merge' command with a negative budget, which merges whatever segments there
        are); a step that changed fewer than two rows found nothing to do (FTS5's documentation)."""
        if conn.dialect.name != "sqlite":
            return False
        driver = conn.connection.driver_connection
        assert driver is not None
        before = driver.total_changes
        fts = f"{self.table}_fts"
        conn.exec_driver_sql(f"INSERT INTO {fts}({fts}, rank) VALUES('merge', ?)", (-pages,))
        return bool(driver.total_changes - before >= 2)

    @functools.cached_property
    def _highest_seq(self) -> TextClause:
        return text(f"SELECT max(seq) FROM {self.table}")

    def scores(
        self,
        conn: Connection,
        scopes: list[str],
        words: list[str],
        k: int,
        rows: int | None = None,
        highest: int | None = None,
    ) -> dict[int, float]:
        """Keyword scores (higher is better) of the best `k` per scope among these scopes' rows.
        `rows`, the number of rows these scopes hold, if known, picks SQLite's query form, with
        `highest`, the table's highest seq (read here if not given), and is PostgreSQL's N."""
        dialect = conn.dialect.name
        params: dict[str, Any] = {"scopes": scopes, "k": k * len(scopes)}
        if dialect == "sqlite":
            named = scopes if self._names_scopes(conn, rows, highest) else None
            if self.rank == "idf":
                dialect = "sqlite-idf"
                params.update(words=json.dumps([fts5_query([w], named) for w in words]), n=rows or 0)
            else:
                params["q"] = fts5_query(words, named)
        else:
            params.update(terms=words, n=rows or 0)  # an N below a word's df counts as that df (idf > 0)
            # psycopg prepares a statement on the server once it has run 5 times, and PostgreSQL
            # may then settle on one generic plan for every scope: the full-text index over all
            # scopes' rows, so a user with 100 memories beside another's 100k paid 16.0 ms a query,
            # against 0.36 ms planned for their own scope. For this transaction only, at the cost
            # of a round trip: a search over stdio took 1.025x and 1.055x as long (single user,
            # bench/stdio_ab.py both ways round); set for every statement of the connection, it
            # cost every call 3-7%.
            _CUSTOM_PLAN.run(conn, {})
        return {int(seq): float(score) for seq, score in self._queries[dialect].run(conn, params)}

    def _names_scopes(self, conn: Connection, rows: int | None, highest: int | None) -> bool:
        """Whether the MATCH should name the scopes: when they hold under half of the table's rows
        (seqs are never reused, so the highest one bounds the count from above). Naming them makes
        FTS5 walk their tag's rows beside the words' (a user with 100 memories beside another's
        100k: 0.35 against 2.4 ms per query), which costs more than it saves when they hold most
        of the table (one user's 10k: 1.18 against 0.82 ms; 100k: 11.0 against 6.6 ms)."""
        if rows is None:
            return True
        if highest is None:
            highest = conn.execute(self._highest_seq).scalar_one_or_none()
        return rows * 2 < int(highest or 0)


Fetch = Callable[[Connection, list[int], list[str]], Mapping[int, Mapping[str, Any]]]
"""A store's row fetch: the rows of these seqs that lie within these scopes, by seq."""
Found = list[tuple[Mapping[str, Any], float]]
Scanned = dict[str, list[tuple[int, float]]]
"""A search's vector results found early, by scope (`Hybrid.scan`)."""


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
    `Embedder.beside`, never used by two at once)."""

    def __init__(
        self, embedder: Embedder, vectors: ScopedVectors, rows: RowVectors, fulltext: FullText
    ) -> None:
        self.embedder = embedder
        self.vectors = vectors
        self.rows = rows
        self.fulltext = fulltext

    def read(
        self,
        conn: Connection,
        scopes: list[str],
        query: str,
        limit: int,
        dense_weight: float,
        caught_up: Callable[[list[str]], None] | None = None,
    ) -> Reading:
        """The part of a search that needs no query vector, inside the caller's transaction: every
        scope's freshness (one query for all of them), the vector caches caught up to it, then the
        full-text scores. `caught_up(scopes)`, if given, is told the scopes to search once their
        caches are in step, before the full text runs (see `answer`)."""
        source = self.rows.reader(conn, scopes)  # every scope's row count, in one query
        # An empty scope is left out (a search of empty scopes only runs no full-text query).
        scopes = [scope for scope in scopes if source.stats(scope)[1] > 0]
        if dense_weight > 0:
            for scope in scopes:
                self.vectors.catch_up(scope, source)
        if caught_up is not None:
            caught_up(scopes)
        words = keywords(query) if dense_weight < 1 and scopes else []
        held = sum(source.stats(scope)[1] for scope in scopes)
        keyword = (
            self.fulltext.scores(conn, scopes, words, candidates(limit), held, source.highest)
            if words
            else {}
        )
        return Reading(scopes, limit, dense_weight, keyword, source if dense_weight > 0 else None)

    def finish(
        self,
        conn: Connection,
        reading: Reading,
        vector: NDArray[np.float32] | None,
        fetch: Fetch,
        scanned: Scanned | None = None,
    ) -> Found:
        """The best `limit` (row, score) pairs, best first: the vector caches (caught up to the
        reading's snapshot) searched with the query's vector, fused with the full-text scores, and
        the rows `fetch` finds for the best seqs within the scopes. `scanned` holds the scopes
        already searched (`ScopedVectors.held`). A candidate whose row is gone (deleted since the
        cache saw it) is skipped: the database wins."""
        dense: dict[int, float] = {}
        if reading.source is not None:
            assert vector is not None
            k = candidates(reading.limit)
            for scope in reading.scopes:
                found = (scanned or {}).get(scope)
                dense.update(
                    found if found is not None else self.vectors.search(scope, vector, k, reading.source)
                )
        ranked = fuse(dense, reading.keyword, reading.dense_weight)[: reading.limit * 2]
        rows = fetch(conn, [seq for seq, _ in ranked], reading.scopes) if ranked else {}
        return [(rows[seq], score) for seq, score in ranked if seq in rows][: reading.limit]

    def scan(self, scopes: list[str], vector: NDArray[np.float32], limit: int) -> Scanned:
        """The vector side of a search of these scopes, as far as their caches can give it without
        the database (`ScopedVectors.held`): for `finish`, after `read` has caught them up."""
        k = candidates(limit)
        found = {scope: self.vectors.held(scope, vector, k) for scope in scopes}
        return {scope: hits for scope, hits in found.items() if hits is not None}

    def answer(
        self,
        conn: Connection,
        scopes: Callable[[], list[str]],
        query: str,
        limit: int,
        dense_weight: float,
        fetch: Fetch,
    ) -> Found:
        """One search request. A side thread runs `scopes()` (the caller's session check, which
        names the scopes) and `read`, while this thread embeds the query (`scanning_beside`) and
        then, as soon as `read` has caught the vector caches up,
        searches them (`ScopedVectors.held`) while the full-text query may still be running on
        the connection; then `finish`. A keyword-only search embeds nothing.

        Measured in-process at 10k memories (an AMD Zen 4, 2 vCPUs): the full text ended 1.6 ms
        p50 after the embedding, in 94% of searches, and the vector search that then waited for
        it took 0.9 ms."""

        if dense_weight <= 0:
            return self.finish(conn, self.read(conn, scopes(), query, limit, dense_weight), None, fetch)

        def read(announce: Announce) -> Reading:
            return self.read(conn, scopes(), query, limit, dense_weight, announce("", self))

        vector, scanned, reading = scanning_beside(self.embedder, query, limit, read)
        return self.finish(conn, reading, vector, fetch, scanned.get(""))


Announce = Callable[[str, Hybrid], Callable[[list[str]], None]]
"""`announce(name, hybrid)`: the `caught_up` callback of the search called `name` (see
`scanning_beside`)."""


def scanning_beside(
    embedder: Embedder, query: str, limit: int, read: Callable[[Announce], T]
) -> tuple[NDArray[np.float32], dict[str, Scanned], T]:
    """`read(announce)` on a side thread while this thread embeds `query`, and then scans each
    search's vector caches (`Hybrid.scan`) as soon as `read` has caught them up, while `read` goes
    on to its full text (and to its next search). The query's vector, the early results by
    search name, and what `read` returned. For memory_search (one search) and get_context (one
    per section)."""
    handoff: queue.SimpleQueue[tuple[str, Hybrid, list[str]] | None] = queue.SimpleQueue()

    def announce(name: str, hybrid: Hybrid) -> Callable[[list[str]], None]:
        return lambda scopes: handoff.put((name, hybrid, scopes))

    def work() -> T:
        try:
            return read(announce)
        finally:
            handoff.put(None)  # the end, also of a read that failed

    def here() -> tuple[NDArray[np.float32], dict[str, Scanned]]:
        vector = embedder.embed_one(query)
        scanned: dict[str, Scanned] = {}
        while (ready := handoff.get()) is not None:
            name, hybrid, scopes = ready
            scanned[name] = hybrid.scan(scopes, vector, limit)
        return vector, scanned

    (vector, scanned), got = embedder.beside(work, here)
    return vector, scanned, got
