"""Every table of session-mcp, in one module so one metadata sees them all."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Float, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class SessionRow(SQLModel, table=True):
    __tablename__ = "sessions"

    session_id: str = Field(primary_key=True, max_length=128)
    user_id: str = Field(index=True, max_length=128)
    parent_id: str | None = Field(default=None, max_length=128)
    agent_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    timeout_seconds: float | None = Field(default=None)  # remote sessions: how long session_chat waits
    status: str = Field(default="active", max_length=16)
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = Field(default=None, index=True)
    purged_at: datetime | None = Field(default=None)
    meta: str = Field(default="{}", sa_column=Column("meta", Text, nullable=False))
    message_count: int = Field(default=0)


class StateRow(SQLModel, table=True):
    """One key of a session's state. Numbers live in typed columns so increments are one SQL statement."""

    __tablename__ = "state"

    session_id: str = Field(primary_key=True, max_length=128)
    key: str = Field(primary_key=True, max_length=256)
    kind: str = Field(max_length=8)  # "int" | "real" | "json"
    num_int: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    num_real: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    value_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    version: int = Field(default=1)
    updated_at: datetime


class MemoryRow(SQLModel, table=True):
    """A memory. `scope` is `long:<user_id>` or `short:<session_id>`; `seq` keys the vector caches."""

    __tablename__ = "memories"
    __table_args__ = (
        UniqueConstraint("scope", "text_hash", name="uq_memories_scope_text"),
        Index("ix_memories_scope_seq", "scope", "seq"),
        # A seq names one vector forever in the caches: SQLite must never reuse a deleted rowid.
        {"sqlite_autoincrement": True},
    )

    seq: int | None = Field(default=None, primary_key=True)
    memory_id: str = Field(unique=True, max_length=32)
    scope: str = Field(max_length=200)
    session_id: str = Field(index=True, max_length=128)
    user_id: str = Field(max_length=128)
    memory_type: str = Field(max_length=8)
    text: str = Field(sa_column=Column(Text, nullable=False))
    text_hash: str = Field(max_length=64)
    meta: str = Field(default="{}", sa_column=Column("meta", Text, nullable=False))
    created_at: datetime
    embedding: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MemoryScopeRow(SQLModel, table=True):
    """Per-scope row count and highest seq, kept in each write's transaction, so the vector caches
    learn whether anything changed from one primary-key read instead of a COUNT over the scope."""

    __tablename__ = "memory_scopes"

    scope: str = Field(primary_key=True, max_length=200)
    row_count: int = Field(default=0)
    max_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class DocumentRow(SQLModel, table=True):
    """A knowledge document. `scope` is `session:<session_id>` or `user:<user_id>` (its `owner`);
    one row per (scope, source), so re-adding a source replaces it."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("scope", "source", name="uq_documents_scope_source"),)

    document_id: str = Field(primary_key=True, max_length=32)
    scope: str = Field(max_length=200, index=True)
    owner: str = Field(max_length=128)
    session_id: str = Field(max_length=128, index=True)  # the session that added it
    source: str = Field(sa_column=Column(Text, nullable=False))
    title: str = Field(sa_column=Column(Text, nullable=False))
    mime: str = Field(max_length=128)
    sha256: str = Field(max_length=64)
    pages: int | None = Field(default=None)
    chunk_count: int = Field(default=0)
    meta: str = Field(default="{}", sa_column=Column("meta", Text, nullable=False))
    created_at: datetime
    updated_at: datetime


class ChunkScopeRow(SQLModel, table=True):
    """MemoryScopeRow for knowledge chunks: without it, every knowledge search counted its scopes'
    chunks (a scan of the scope's index, ~9 ms at 100k chunks)."""

    __tablename__ = "chunk_scopes"

    scope: str = Field(primary_key=True, max_length=200)
    row_count: int = Field(default=0)
    max_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class ChunkRow(SQLModel, table=True):
    """A chunk of a document; `scope` repeats the document's so the vector caches can read by it,
    and `seq` keys them (never reused, as for memories)."""

    __tablename__ = "chunks"
    __table_args__ = (
        Index("ix_chunks_scope_seq", "scope", "seq"),
        Index("ix_chunks_document", "document_id", "ordinal"),
        {"sqlite_autoincrement": True},
    )

    seq: int | None = Field(default=None, primary_key=True)
    chunk_id: str = Field(unique=True, max_length=32)
    document_id: str = Field(max_length=32)
    scope: str = Field(max_length=200)
    ordinal: int
    text: str = Field(sa_column=Column(Text, nullable=False))
    page: int | None = Field(default=None)
    start: int
    end: int
    embedding: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MessageRow(SQLModel, table=True):
    """One conversation message; `position` orders a session's history."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("session_id", "position", name="uq_messages_session_position"),)

    seq: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=32)
    session_id: str = Field(max_length=128)
    position: int
    agent: str | None = Field(default=None, max_length=128)
    role: str = Field(max_length=16)
    content: str = Field(sa_column=Column(Text, nullable=False))
    tool_calls: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    tool_call_id: str | None = Field(default=None, max_length=256)
    created_at: datetime


class MigrationRow(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    version: int = Field(primary_key=True)
    name: str = Field(max_length=200)
    applied_at: datetime
