"""The session layer: every service wired to one database, one embedder and one set of vector caches."""

from __future__ import annotations

import hashlib

from session_mcp.models.clock import Clock, SystemClock
from session_mcp.models.config import LayerConfig
from session_mcp.models.context import Contexts
from session_mcp.models.database import Database
from session_mcp.models.embedder import Embedder
from session_mcp.models.history import Histories
from session_mcp.models.ingestion import Fetch, url_fetcher
from session_mcp.models.knowledge import Knowledge
from session_mcp.models.memory import Memory
from session_mcp.models.migrations import migrate
from session_mcp.models.remote import AgentClient, RemoteChats
from session_mcp.models.rowvectors import RowVectors
from session_mcp.models.sessions import Sessions
from session_mcp.models.state import State
from session_mcp.models.sweeper import Sweeper
from session_mcp.models.tables import ChunkRow, ChunkScopeRow, MemoryRow, MemoryScopeRow
from session_mcp.models.vectors import ScopedVectors

MEMORIES = MemoryRow.__table__  # type: ignore[attr-defined]
MEMORY_COUNTS = MemoryScopeRow.__table__  # type: ignore[attr-defined]
CHUNKS = ChunkRow.__table__  # type: ignore[attr-defined]
CHUNK_COUNTS = ChunkScopeRow.__table__  # type: ignore[attr-defined]


class SessionLayer:
    """Built once per process (the server's lifespan, or a test fixture) and closed in reverse order."""

    def __init__(
        self,
        config: LayerConfig,
        *,
        clock: Clock | None = None,
        embedder: Embedder | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        limits = config.limits
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.database_url, sqlite_synchronous=config.sqlite_synchronous)
        migrate(self.db)
        self._owns_embedder = embedder is None
        self.embedder = embedder or Embedder(
            model_path=config.model_path,
            tokenizer_path=config.tokenizer_path,
            cache_dir=config.data_dir / "models",
            threads=config.embedding_threads,
            variant=config.embedding_variant,
        )
        memory_rows = RowVectors(self.db, MEMORIES, MEMORY_COUNTS)
        chunk_rows = RowVectors(self.db, CHUNKS, CHUNK_COUNTS)
        self.vectors = ScopedVectors(
            dim=self.embedder.dim,
            source=memory_rows,
            directory=config.data_dir / "indexes" / _database_key(self.db.url),
            exact_below=config.exact_search_below,
            matrix_below=config.vector_matrix_below,
        )
        # Chunks get caches of their own: a knowledge scope and a memory scope never share an index.
        self.knowledge_vectors = ScopedVectors(
            dim=self.embedder.dim,
            source=chunk_rows,
            directory=config.data_dir / "indexes" / _database_key(self.db.url) / "knowledge",
            exact_below=config.exact_search_below,
            matrix_below=config.vector_matrix_below,
        )
        self.agents = AgentClient(config.outbound, config.agent_max_response_bytes)
        self.sessions = Sessions(self.db, self.clock, limits, self.agents)
        self.state = State(self.db, self.sessions, self.clock, limits)
        self.memory = Memory(
            self.db, self.sessions, self.embedder, self.vectors, memory_rows, self.clock, limits
        )
        self.history = Histories(self.db, self.sessions, self.clock, limits)
        self.remote = RemoteChats(self.db, self.sessions, self.history, self.agents, limits)
        self.knowledge = Knowledge(
            self.db,
            self.sessions,
            self.embedder,
            self.knowledge_vectors,
            chunk_rows,
            self.clock,
            limits,
            config.knowledge,
            fetch or url_fetcher(config.url_policy, config.knowledge.url_timeout_seconds),
        )
        self.context = Contexts(
            self.db, self.sessions, self.memory, self.history, self.embedder, limits, self.knowledge
        )
        self.sweeper = Sweeper(self.db, self.memory, self.clock, limits, knowledge=self.knowledge)

    def close(self) -> None:
        self.vectors.close()
        self.knowledge_vectors.close()
        if self._owns_embedder:
            self.embedder.close()
        self.db.close()


def _database_key(url: str) -> str:
    """Index files belong to one database: two databases in one data dir must not share caches."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]
