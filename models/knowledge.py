"""The knowledge base: documents per session or per user, chunked, embedded and searched hybrid.

Scopes: `session:<session_id>` belongs to one session, `user:<user_id>` to a user and is seen from
all their sessions; a search reads exactly the caller's two scopes. Each document is written in
one transaction (its row and all its chunks), after the slow work (reading, parsing in a
subprocess, embedding) is done outside any transaction, as memory does. Re-adding a source with
the same bytes is a no-op; with new bytes its chunks are replaced under the same document_id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import JsonValue
from sqlalchemy import Connection, Row, delete, select, update

from session_mcp.models.chunking import Chunker
from session_mcp.models.clock import Clock, from_db, to_db
from session_mcp.models.database import Database, ListStatement, listed
from session_mcp.models.embedder import Embedder
from session_mcp.models.errors import (
    DocumentNotFound,
    InvalidArgument,
    LimitExceeded,
    LocalOnly,
    SessionError,
    SessionExpired,
)
from session_mcp.models.hybrid import Found, FullText, Hybrid, Reading, Scanned
from session_mcp.models.ingestion import (
    Fetch,
    Kind,
    KnowledgeConfig,
    Loaded,
    Plan,
    Prepared,
    classify,
    client_roots,
    plan_path,
    plan_text,
    plan_url,
    prepare,
)
from session_mcp.models.limits import Limits
from session_mcp.models.memory import clean_text
from session_mcp.models.ranking import DENSE_WEIGHT
from session_mcp.models.rowvectors import RowVectors
from session_mcp.models.schemas import (
    KnowledgeAdded,
    KnowledgeDeleted,
    KnowledgeDocument,
    KnowledgeHit,
    KnowledgeInfo,
    KnowledgeList,
    KnowledgeResults,
    KnowledgeScope,
    KnowledgeSkipped,
)
from session_mcp.models.sessions import SessionRecord, Sessions, encode_json
from session_mcp.models.tables import ChunkRow, DocumentRow
from session_mcp.models.vectors import ScopedVectors

_D = DocumentRow.__table__  # type: ignore[attr-defined]
_C = ChunkRow.__table__  # type: ignore[attr-defined]
_WEIGHTS: dict[str, float] = {"hybrid": DENSE_WEIGHT, "vector": 1.0, "keyword": 0.0}
"""The vector side's share of each search mode's fused score."""
# A hit's columns, without the embedding; built once (see sessions.py).
_HITS = ListStatement(
    lambda seqs, scopes: (
        select(*(c for c in _C.c if c.name != "embedding"), _D.c.source, _D.c.title)
        .join(_D, _D.c.document_id == _C.c.document_id)
        .where(_C.c.seq.in_(listed("seqs", seqs)), _C.c.scope.in_(listed("scopes", scopes)))
    ),
    "seqs",
    "scopes",
)
SearchMode = Literal["hybrid", "vector", "keyword"]
Progress = Callable[[float, float | None, str], None]
_EMBED_BATCH = 64


def scope_of(scope: KnowledgeScope, session: SessionRecord) -> str:
    return f"session:{session.session_id}" if scope == "session" else f"user:{session.user_id}"


def scopes_of(session: SessionRecord) -> list[str]:
    return [scope_of("session", session), scope_of("user", session)]


class Knowledge:
    def __init__(
        self,
        db: Database,
        sessions: Sessions,
        embedder: Embedder,
        vectors: ScopedVectors,
        rows: RowVectors,
        clock: Clock,
        limits: Limits,
        config: KnowledgeConfig,
        fetch: Fetch | None = None,
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.embedder = embedder
        self.vectors = vectors
        self.rows = rows
        self.hybrid = Hybrid(embedder, vectors, rows, FullText("chunks"))
        self.clock = clock
        self.limits = limits
        self.config = config
        self.fetch = fetch
        self.chunker = Chunker(embedder.count_tokens_batch, config.chunk_tokens, config.chunk_overlap_tokens)

    # -- guards -----------------------------------------------------------------------------------

    def _readable(self, conn: Connection, session_id: str, owner: str | None) -> SessionRecord:
        """The session, readable by `owner` and local (knowledge of a remote one is the agent's)."""
        session = self.sessions.readable(conn, session_id, owner)
        if session.agent_url:
            raise LocalOnly(
                f"session '{session_id}' talks to a remote agent at {session.agent_url}; its knowledge "
                "lives on the agent's side, so use a local session for knowledge_* tools"
            )
        return session

    def _session(self, session_id: str, owner: str | None, *, write: bool) -> SessionRecord:
        """The session, checked the way `writable` will check it at commit, without writing yet."""
        with self.db.read() as conn:
            session = self._readable(conn, session_id, owner)
        if write:
            now = self.clock.now()
            expires = from_db(session.expires_at) if session.expires_at is not None else None
            if session.status == "active" and (expires is None or expires > now):
                return session
            with self.db.write() as conn:  # raises the precise closed/expired error
                self.sessions.writable(conn, session_id, owner)
            raise SessionExpired(session_id, str(expires))  # pragma: no cover - writable raised
        return session

    # -- add --------------------------------------------------------------------------------------

    def add(
        self,
        session_id: str,
        source: str,
        kind: Kind = "auto",
        scope: KnowledgeScope = "session",
        metadata: dict[str, JsonValue] | None = None,
        *,
        owner: str | None = None,
        declared_roots: Sequence[Path] | None = None,
        progress: Progress | None = None,
    ) -> KnowledgeAdded:
        check_source(source)
        meta = encode_json(metadata or {}, "metadata", self.limits.max_metadata_bytes)
        session = self._session(session_id, owner, write=True)
        roots = client_roots(self.config.roots, declared_roots)
        resolved_kind = classify(source, kind, roots)
        plan: Plan
        if resolved_kind == "text":
            plan = plan_text(source)
        elif resolved_kind == "path":
            plan = plan_path(source, roots, self.config)
        else:
            plan = plan_url(source, self.fetch, self.config)
        target = scope_of(scope, session)
        documents: list[KnowledgeDocument] = []
        skipped = [KnowledgeSkipped(source=s, reason=r) for s, r in plan.skipped]
        total = len(plan.items)
        budget = self.config.max_chunks_per_call
        for done, (shown, load) in enumerate(plan.items):
            try:
                loaded = load()
                stored = self._unchanged(target, loaded)
                if stored is None:
                    prepared = prepare(loaded, self.chunker, self.config)
                    if len(prepared.chunks) > budget:
                        raise LimitExceeded(
                            f"'{shown}' makes {len(prepared.chunks)} chunks, more than the "
                            f"{budget} left of this call's limit of {self.config.max_chunks_per_call}; "
                            "add it in another call"
                        )
                    budget -= len(prepared.chunks)
                    vectors = self._embed(prepared, shown, done, total, progress)
                    stored = self._store(session_id, owner, target, session, loaded, prepared, vectors, meta)
                documents.append(stored)
            except SessionError as exc:
                if plan.single or exc.code in ("session_closed", "session_expired", "session_not_found"):
                    raise
                skipped.append(KnowledgeSkipped(source=shown, reason=str(exc)))
            if progress is not None:
                progress(done + 1, total, f"{done + 1}/{total} documents done")
        return KnowledgeAdded(documents=documents, skipped=skipped)

    def _unchanged(self, scope: str, loaded: Loaded) -> KnowledgeDocument | None:
        with self.db.read() as conn:
            return self._same_document(self._stored(conn, scope, loaded), loaded)

    @staticmethod
    def _stored(conn: Connection, scope: str, loaded: Loaded) -> Row[Any] | None:
        """The scope's document of the same source, if any."""
        return conn.execute(
            select(_D.c.document_id, _D.c.title, _D.c.chunk_count, _D.c.sha256).where(
                _D.c.scope == scope, _D.c.source == loaded.source
            )
        ).first()

    @staticmethod
    def _same_document(row: Row[Any] | None, loaded: Loaded) -> KnowledgeDocument | None:
        """`row` as an unchanged document when it holds the same bytes as `loaded`."""
        if row is None or row.sha256 != loaded.sha256:
            return None
        return KnowledgeDocument(
            document_id=row.document_id,
            source=loaded.source,
            title=row.title,
            chunks=row.chunk_count,
            status="unchanged",
        )

    def _embed(
        self, prepared: Prepared, shown: str, done: int, total: int, progress: Progress | None
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        texts = [c.text for c in prepared.chunks]
        out = np.empty((len(texts), self.embedder.dim), np.float32)
        for start in range(0, len(texts), _EMBED_BATCH):
            out[start : start + _EMBED_BATCH] = self.embedder.embed(texts[start : start + _EMBED_BATCH])
            if progress is not None:
                embedded = min(start + _EMBED_BATCH, len(texts))
                progress(
                    done + embedded / (len(texts) + 1),
                    total,
                    f"{shown}: {embedded}/{len(texts)} chunks embedded",
                )
        return out

    def _store(
        self,
        session_id: str,
        owner: str | None,
        scope: str,
        session: SessionRecord,
        loaded: Loaded,
        prepared: Prepared,
        vectors: np.ndarray[Any, np.dtype[np.float32]],
        meta: str,
    ) -> KnowledgeDocument:
        now = to_db(self.clock.now())
        digest = loaded.sha256
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner)
            row = self._stored(conn, scope, loaded)
            unchanged = self._same_document(row, loaded)  # someone stored the same bytes meanwhile
            if unchanged is not None:
                return unchanged
            fields = dict(
                title=prepared.title,
                mime=prepared.mime,
                sha256=digest,
                pages=prepared.pages,
                chunk_count=len(prepared.chunks),
                meta=meta,
                updated_at=now,
                session_id=session.session_id,
            )
            old: list[int] = []
            if row is None:
                document_id = uuid.uuid4().hex
                owner_id = session.session_id if scope.startswith("session:") else session.user_id
                conn.execute(
                    _D.insert().values(
                        document_id=document_id,
                        scope=scope,
                        owner=owner_id,
                        source=loaded.source,
                        created_at=now,
                        **fields,
                    )
                )
            else:
                document_id = row.document_id
                old = [
                    int(s) for (s,) in conn.execute(select(_C.c.seq).where(_C.c.document_id == document_id))
                ]
                conn.execute(delete(_C).where(_C.c.document_id == document_id))
                conn.execute(update(_D).where(_D.c.document_id == document_id).values(**fields))
            values = [
                dict(
                    chunk_id=uuid.uuid4().hex,
                    document_id=document_id,
                    scope=scope,
                    ordinal=n,
                    text=c.text,
                    page=c.page,
                    start=c.start,
                    end=c.end,
                    embedding=vectors[n].tobytes(),
                )
                for n, c in enumerate(prepared.chunks)
            ]
            seqs = [
                int(s)
                for s in conn.execute(
                    _C.insert().returning(_C.c.seq, sort_by_parameter_order=True), values
                ).scalars()
            ]
            self.rows.count(conn, scope, len(seqs) - len(old), max(seqs, default=0))
        self.vectors.note_removed(scope, old)
        for seq, vector in zip(seqs, vectors, strict=True):
            self.vectors.note_added(scope, seq, vector)
        return KnowledgeDocument(
            document_id=document_id,
            source=loaded.source,
            title=prepared.title,
            chunks=len(prepared.chunks),
            status="added" if row is None else "updated",
        )

    # -- search -----------------------------------------------------------------------------------

    def search(
        self,
        session_id: str,
        query: str,
        limit: int = 5,
        mode: SearchMode = "hybrid",
        *,
        owner: str | None = None,
    ) -> KnowledgeResults:
        cleaned = clean_text(query, self.limits.max_text_chars, "query")
        with self.db.read() as conn:

            def scopes() -> list[str]:  # on a side thread, while this one embeds the query
                return scopes_of(self._readable(conn, session_id, owner))

            found = self.hybrid.answer(conn, scopes, cleaned, limit, _WEIGHTS[mode], self._rows)
        return KnowledgeResults(results=self._hits(found))

    def read(
        self,
        conn: Connection,
        scopes: list[str],
        query: str,
        limit: int,
        caught_up: Callable[[list[str]], None] | None = None,
    ) -> Reading:
        """A hybrid search's SQL that needs no vector, inside the caller's transaction
        (get_context); `caught_up` as for Hybrid.read."""
        return self.hybrid.read(conn, scopes, query, limit, _WEIGHTS["hybrid"], caught_up)

    def finish(
        self, conn: Connection, reading: Reading, vector: NDArray[np.float32], scanned: Scanned | None = None
    ) -> list[KnowledgeHit]:
        """The rest of the search `read` began, with the query's vector (and `Hybrid.scan`'s)."""
        return self._hits(self.hybrid.finish(conn, reading, vector, self._rows, scanned))

    @staticmethod
    def _hits(found: Found) -> list[KnowledgeHit]:
        return [
            KnowledgeHit(
                chunk_id=row["chunk_id"],
                document_id=row["document_id"],
                source=row["source"],
                title=row["title"],
                text=row["text"],
                score=round(score, 6),
                page=row["page"],
                start=row["start"],
                end=row["end"],
            )
            for row, score in found
        ]

    @staticmethod
    def _rows(conn: Connection, seqs: list[int], scopes: list[str]) -> dict[int, dict[str, Any]]:
        found = _HITS.mappings(conn, {"seqs": seqs, "scopes": scopes})
        return {int(r["seq"]): r for r in found}

    # -- list and delete --------------------------------------------------------------------------

    def list(self, session_id: str, *, owner: str | None = None) -> KnowledgeList:
        session = self._session(session_id, owner, write=False)
        with self.db.read() as conn:
            rows = conn.execute(
                select(_D)
                .where(_D.c.scope.in_(scopes_of(session)))
                .order_by(_D.c.created_at.desc(), _D.c.document_id)
            ).mappings()
            documents = [
                KnowledgeInfo(
                    document_id=r["document_id"],
                    scope="session" if r["scope"].startswith("session:") else "user",
                    source=r["source"],
                    title=r["title"],
                    mime=r["mime"],
                    chunks=r["chunk_count"],
                    pages=r["pages"],
                    metadata=json.loads(r["meta"]),
                    created_at=from_db(r["created_at"]),
                    updated_at=from_db(r["updated_at"]),
                )
                for r in rows
            ]
        return KnowledgeList(documents=documents)

    def delete(self, session_id: str, document_id: str, *, owner: str | None = None) -> KnowledgeDeleted:
        self._session(session_id, owner, write=True)
        with self.db.write() as conn:
            session = self.sessions.writable(conn, session_id, owner)
            row = conn.execute(
                select(_D.c.scope).where(_D.c.document_id == document_id, _D.c.scope.in_(scopes_of(session)))
            ).first()
            if row is None:
                raise DocumentNotFound(
                    f"no document '{document_id}' in this session's or its user's knowledge; "
                    "knowledge_list shows the ids you can delete"
                )
            seqs = [int(s) for (s,) in conn.execute(select(_C.c.seq).where(_C.c.document_id == document_id))]
            conn.execute(delete(_C).where(_C.c.document_id == document_id))
            conn.execute(delete(_D).where(_D.c.document_id == document_id))
            self.rows.count(conn, row.scope, -len(seqs))
        self.vectors.note_removed(row.scope, seqs)
        return KnowledgeDeleted(document_id=document_id, deleted=True, chunks=len(seqs))

    def purge_sessions(self, conn: Connection, session_ids: Sequence[str]) -> Sequence[str]:
        """Delete sessions' own knowledge inside the caller's transaction; returns the scopes."""
        scopes = [f"session:{session_id}" for session_id in session_ids]
        conn.execute(delete(_C).where(_C.c.scope.in_(scopes)))
        conn.execute(delete(_D).where(_D.c.scope.in_(scopes)))
        self.rows.emptied(conn, scopes)
        return scopes


def check_source(source: str) -> str:
    if not source.strip():
        raise InvalidArgument(
            "source is empty; send a file path, a folder, an http(s) URL or the text itself"
        )
    return source
