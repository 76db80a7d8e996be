"""The session layer: every service wired to one database, one embedder and one set of vector caches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from session_mcp.models.clock import Clock, SystemClock
from session_mcp.models.context import Contexts
from session_mcp.models.database import Database
from session_mcp.models.embedder import DEFAULT_VARIANT, Embedder
from session_mcp.models.history import Histories
from session_mcp.models.limits import Limits
from session_mcp.models.memory import Memory, MemorySource
from session_mcp.models.migrations import migrate
from session_mcp.models.sessions import Sessions
from session_mcp.models.state import State
from session_mcp.models.sweeper import Sweeper
from session_mcp.models.vectors import ScopedVectors


@dataclass(frozen=True)
class LayerConfig:
    database_url: str
    data_dir: Path
    model_path: Path | None = None
    tokenizer_path: Path | None = None
    embedding_threads: int = 0
    embedding_variant: str = DEFAULT_VARIANT
    exact_search_below: int = 20_000
    sqlite_synchronous: str = "FULL"
    limits: Limits = field(default_factory=Limits)


class SessionLayer:
    """Built once per process (the server's lifespan, or a test fixture) and closed in reverse order."""

    def __init__(
        self, config: LayerConfig, *, clock: Clock | None = None, embedder: Embedder | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        limits = config.limits
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.database_url, sqlite_synchronous=config.sqlite_synchronous)
        migrate(self.db)
        self.embedder = embedder or Embedder(
            model_path=config.model_path,
            tokenizer_path=config.tokenizer_path,
            cache_dir=config.data_dir / "models",
            threads=config.embedding_threads,
            variant=config.embedding_variant,
        )
        self.vectors = ScopedVectors(
            dim=self.embedder.dim,
            source=MemorySource(self.db),
            directory=config.data_dir / "indexes" / _database_key(self.db.url),
            exact_below=config.exact_search_below,
        )
        self.sessions = Sessions(self.db, self.clock, limits)
        self.state = State(self.db, self.sessions, self.clock, limits)
        self.memory = Memory(self.db, self.sessions, self.embedder, self.vectors, self.clock, limits)
        self.history = Histories(self.db, self.sessions, self.clock, limits)
        self.context = Contexts(self.db, self.sessions, self.memory, self.history, self.embedder, limits)
        self.sweeper = Sweeper(self.db, self.memory, self.clock, limits)

    def close(self) -> None:
        self.vectors.close()
        self.db.close()


def _database_key(url: str) -> str:
    """Index files belong to one database: two databases in one data dir must not share caches."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]
