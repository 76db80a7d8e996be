"""Semantic memory: short-term per session, long-term per user, with hybrid keyword and vector search."""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import JsonValue
from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from session_mcp.models.clock import Clock, from_db, to_db
from session_mcp.models.database import Database, DriverStatement, ListStatement, listed
from session_mcp.models.embedder import Embedder
from session_mcp.models.errors import InvalidArgument, LimitExceeded, MemoryNotFound
from session_mcp.models.hybrid import Found, FullText, Hybrid, Reading, Scanned
from session_mcp.models.limits import Limits
from session_mcp.models.ranking import DENSE_WEIGHT
from session_mcp.models.rowvectors import RowVectors
from session_mcp.models.schemas import (
    Cleared,
    MemoryAdded,
    MemoryDeleted,
    MemoryHit,
    MemoryResults,
    MemoryType,
)
from session_mcp.models.sessions import SessionRecord, Sessions, encode_json
from session_mcp.models.tables import MemoryRow
from session_mcp.models.vectors import ScopedVectors

_M = MemoryRow.__table__  # type: ignore[attr-defined]
SearchType = Literal["short", "long", "all"]

# Built once (see sessions.py). ON CONFLICT, not a look-up first: two sessions of one user adding
# the same fact at once must both end with the one memory, never with a unique-constraint error.
# On the driver's cursor (DriverStatement): every memory_add runs it.
_ADD = {
    name: DriverStatement(
        insert(_M).on_conflict_do_nothing(index_elements=[_M.c.scope, _M.c.text_hash]).returning(_M.c.seq),
        column_keys=[
            "memory_id",
            "scope",
            "session_id",
            "user_id",
            "memory_type",
            "text",
            "text_hash",
            "meta",
            "created_at",
            "embedding",
        ],
    )
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_SAME_TEXT = select(_M.c.memory_id).where(_M.c.scope == bindparam("s"), _M.c.text_hash == bindparam("h"))
_HIT = (_M.c.seq, _M.c.memory_id, _M.c.text, _M.c.memory_type, _M.c.meta, _M.c.created_at)
_HITS = ListStatement(
    lambda seqs, scopes: select(*_HIT).where(
        _M.c.seq.in_(listed("seqs", seqs)), _M.c.scope.in_(listed("scopes", scopes))
    ),
    "seqs",
    "scopes",
)


def scope_of(memory_type: MemoryType, session: SessionRecord) -> str:
    return f"short:{session.session_id}" if memory_type == "short" else f"long:{session.user_id}"


def scopes_for(memory_type: SearchType, session: SessionRecord) -> list[str]:
    if memory_type == "all":
        return [scope_of("short", session), scope_of("long", session)]
    return [scope_of(memory_type, session)]


def clean_text(raw: str, max_chars: int, what: str = "text") -> str:
    cleaned = unicodedata.normalize("NFC", raw).strip()
    if not cleaned:
        raise InvalidArgument(f"{what} is empty; send the words to store or search for")
    if len(cleaned) > max_chars:
        raise LimitExceeded(f"{what} is {len(cleaned)} characters, over the limit of {max_chars}; shorten it")
    return cleaned


class Memory:
    def __init__(
        self,
        db: Database,
        sessions: Sessions,
        embedder: Embedder,
        vectors: ScopedVectors,
        rows: RowVectors,
        clock: Clock,
        limits: Limits,
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.embedder = embedder
        self.vectors = vectors
        self.clock = clock
        self.limits = limits
        self.dense_weight = DENSE_WEIGHT
        self.rows = rows
        self.hybrid = Hybrid(embedder, vectors, rows, FullText("memories", rank="idf"))

    def add(
        self,
        session_id: str,
        text_: str,
        memory_type: MemoryType = "long",
        metadata: dict[str, JsonValue] | None = None,
        *,
        owner: str | None = None,
    ) -> MemoryAdded:
        cleaned = clean_text(text_, self.limits.max_text_chars)
        meta = encode_json(metadata or {}, "metadata", self.limits.max_metadata_bytes)
        digest = hashlib.sha256(cleaned.encode()).hexdigest()
        # Embed before taking the write lock: the model is the slow part.
        vector = self.embedder.embed_one(cleaned)
        with self.db.write() as conn:
            session = self.sessions.writable(conn, session_id, owner)
            scope = scope_of(memory_type, session)
            memory_id = uuid.uuid4().hex
            row = {
                "memory_id": memory_id,
                "scope": scope,
                "session_id": session.session_id,
                "user_id": session.user_id,
                "memory_type": memory_type,
                "text": cleaned,
                "text_hash": digest,
                "meta": meta,
                "created_at": to_db(self.clock.now()),
                "embedding": vector.astype(np.float32).tobytes(),
            }
            added = _ADD[self.db.dialect].run(conn, row)
            seq = added[0][0] if added else None
            if seq is None:
                existing = conn.execute(_SAME_TEXT, {"s": scope, "h": digest}).scalar_one()
                return MemoryAdded(memory_id=existing, memory_type=memory_type, deduplicated=True)
            self.rows.count(conn, scope, 1, int(seq))
        self.vectors.note_added(scope, int(seq), vector)
        return MemoryAdded(memory_id=memory_id, memory_type=memory_type, deduplicated=False)

    def search(
        self,
        session_id: str,
        query: str,
        memory_type: SearchType = "all",
        limit: int = 5,
        *,
        owner: str | None = None,
    ) -> MemoryResults:
        cleaned = clean_text(query, self.limits.max_text_chars, "query")
        with self.db.read() as conn:

            def scopes() -> list[str]:  # on a side thread, while this one embeds the query
                return scopes_for(memory_type, self.sessions.local(conn, session_id, owner))

            found = self.hybrid.answer(conn, scopes, cleaned, limit, self.dense_weight, self._rows)
        return MemoryResults(results=self._hits(found))

    def read(
        self,
        conn: Connection,
        scopes: list[str],
        query: str,
        limit: int,
        caught_up: Callable[[list[str]], None] | None = None,
    ) -> Reading:
        """A search's SQL that needs no vector, inside the caller's transaction (get_context);
        `caught_up` as for Hybrid.read."""
        return self.hybrid.read(conn, scopes, query, limit, self.dense_weight, caught_up)

    def finish(
        self, conn: Connection, reading: Reading, vector: NDArray[np.float32], scanned: Scanned | None = None
    ) -> list[MemoryHit]:
        """The rest of the search `read` began, with the query's vector (and `Hybrid.scan`'s)."""
        return self._hits(self.hybrid.finish(conn, reading, vector, self._rows, scanned))

    @staticmethod
    def _hits(found: Found) -> list[MemoryHit]:
        return [
            MemoryHit(
                memory_id=row["memory_id"],
                text=row["text"],
                score=round(score, 6),
                memory_type=row["memory_type"],
                metadata=json.loads(row["meta"]),
                created_at=from_db(row["created_at"]),
            )
            for row, score in found
        ]

    @staticmethod
    def _rows(conn: Connection, seqs: list[int], scopes: list[str]) -> dict[int, dict[str, Any]]:
        found = _HITS.mappings(conn, {"seqs": seqs, "scopes": scopes})
        return {int(r["seq"]): r for r in found}

    def delete(self, session_id: str, memory_id: str, *, owner: str | None = None) -> MemoryDeleted:
        with self.db.write() as conn:
            session = self.sessions.writable(conn, session_id, owner)
            scopes = scopes_for("all", session)
            row = conn.execute(
                select(_M.c.seq, _M.c.scope).where(_M.c.memory_id == memory_id, _M.c.scope.in_(scopes))
            ).first()
            if row is None:
                raise MemoryNotFound(
                    f"no memory '{memory_id}' in this session's or its user's memory; "
                    "memory_search returns the ids you can delete"
                )
            conn.execute(delete(_M).where(_M.c.seq == row[0]))
            self.rows.count(conn, row[1], -1)
        self.vectors.note_removed(row[1], [int(row[0])])
        return MemoryDeleted(memory_id=memory_id, deleted=True)

    def clear(
        self, session_id: str, memory_type: SearchType = "short", *, owner: str | None = None
    ) -> Cleared:
        with self.db.write() as conn:
            session = self.sessions.writable(conn, session_id, owner)
            scopes = scopes_for(memory_type, session)
            deleted = conn.execute(delete(_M).where(_M.c.scope.in_(scopes))).rowcount
            self.rows.emptied(conn, scopes)
        for scope in scopes:
            self.vectors.drop(scope)
        return Cleared(deleted=deleted)

    def purge_sessions(self, conn: Connection, session_ids: list[str]) -> list[str]:
        """Delete sessions' short-term memory inside the caller's transaction; returns the scopes."""
        scopes = [f"short:{session_id}" for session_id in session_ids]
        conn.execute(delete(_M).where(_M.c.scope.in_(scopes)))
        self.rows.emptied(conn, scopes)
        return scopes
