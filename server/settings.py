"""Settings: the one place configuration is read, from SESSION_MCP_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from session_mcp.models.embedder import DEFAULT_VARIANT
from session_mcp.models.layer import LayerConfig
from session_mcp.models.limits import Limits

EmbeddingVariant = Literal["fp32", "int8-dynamic", "as-shipped"]


def _default_data_dir() -> Path:
    return platformdirs.user_data_path("session-mcp", appauthor=False)


class Settings(BaseSettings):
    """Every setting; each is the environment variable SESSION_MCP_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SESSION_MCP_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="where the SQLite database, model cache and vector indexes live",
    )
    database_url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://user@host:5432/db; default: SQLite in the data dir",
    )
    model_path: Path | None = Field(
        default=None, description="an ONNX MiniLM file to use instead of the bundled one"
    )
    tokenizer_path: Path | None = Field(
        default=None, description="a tokenizer.json to use instead of the bundled one"
    )
    embedding_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads; 0: its default")
    embedding_variant: EmbeddingVariant = Field(
        default=cast(EmbeddingVariant, DEFAULT_VARIANT),
        description="how the bundled model runs (see README, Embeddings)",
    )
    warm_model: bool = Field(default=True, description="load the model in the background after start-up")
    default_ttl_seconds: int | None = Field(
        default=None, ge=0, description="TTL when session_create gives none"
    )
    max_ttl_seconds: int | None = Field(default=None, ge=0, description="largest TTL a session may ask for")
    sweeper_grace_seconds: int = Field(
        default=3600, ge=0, description="keep expired sessions' data this long"
    )
    sweeper_interval_seconds: float = Field(default=300, gt=0, description="how often the sweeper runs")
    max_value_bytes: int = Field(default=65_536, ge=64, description="largest state value, as JSON bytes")
    max_text_chars: int = Field(default=16_384, ge=16, description="longest memory text, query or message")
    max_keys_per_session: int = Field(default=1_000, ge=1, description="most state keys in one session")
    max_metadata_bytes: int = Field(
        default=16_384, ge=64, description="largest metadata object, as JSON bytes"
    )
    context_max_tokens: int = Field(default=4_000, ge=50, description="ceiling on get_context's max_tokens")
    exact_search_below: int = Field(default=20_000, ge=1, description="memories per scope searched exactly")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="SQLite durability: FULL also survives power loss"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="stderr log level"
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'session-mcp.db'}"

    def layer_config(self) -> LayerConfig:
        return LayerConfig(
            database_url=self.resolved_database_url(),
            data_dir=self.data_dir,
            model_path=self.model_path,
            tokenizer_path=self.tokenizer_path,
            embedding_threads=self.embedding_threads,
            embedding_variant=self.embedding_variant,
            exact_search_below=self.exact_search_below,
            sqlite_synchronous=self.sqlite_synchronous,
            limits=Limits(
                default_ttl_seconds=self.default_ttl_seconds,
                max_ttl_seconds=self.max_ttl_seconds,
                sweeper_grace_seconds=self.sweeper_grace_seconds,
                max_value_bytes=self.max_value_bytes,
                max_text_chars=self.max_text_chars,
                max_keys_per_session=self.max_keys_per_session,
                max_metadata_bytes=self.max_metadata_bytes,
                context_max_tokens=self.context_max_tokens,
            ),
        )
