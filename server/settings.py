"""Settings: the one place configuration is read, from SESSION_MCP_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, cast

import platformdirs
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from session_mcp.models.config import DEFAULT_VARIANT, LayerConfig, default_url_policy
from session_mcp.models.ingestion import KnowledgeConfig
from session_mcp.models.limits import Limits
from session_mcp.models.outbound import (
    DEFAULT_ALLOW,
    URL_DEFAULT_ALLOW,
    OutboundPolicy,
    parse_allow,
    parse_headers,
)

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
    embedding_threads: int = Field(
        default=0,
        ge=0,
        description="threads each model run is split across (a lone text gets them all); 0: the CPUs "
        "available, at most 8; 1 for a shared server kept busy by many clients at once",
    )
    embedding_variant: EmbeddingVariant = Field(
        default=cast(EmbeddingVariant, DEFAULT_VARIANT),
        description="how the model runs: int8-dynamic (the default, about twice as fast), fp32 or "
        "as-shipped; the first two are prepared once into the data dir (README: Settings, Benchmarks)",
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
    exact_search_below: int = Field(default=200_000, ge=1, description="memories per scope searched exactly")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="SQLite durability: FULL also survives power loss"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="stderr log level"
    )

    # HTTP transports and auth
    host: str = Field(default="127.0.0.1", description="address the HTTP transports bind (serve --host)")
    port: int = Field(
        default=8000, ge=0, le=65535, description="port the HTTP transports bind (serve --port)"
    )
    auth_tokens: SecretStr | None = Field(
        default=None, description="HTTP bearer tokens as token=user pairs, comma separated"
    )
    auth_tokens_file: Path | None = Field(
        default=None, description="a file of HTTP bearer tokens, one token=user a line"
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="serve HTTP without tokens on a non-loopback address (anyone who connects may act as any user)",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host headers HTTP clients may send, comma separated; loopback names are always allowed; "
        "default: the bind address",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser Origins allowed, comma separated; default: http(s) on the allowed hosts",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="largest request: an HTTP body (a larger one gets 413) or a stdio message line "
        "(a longer one is skipped and answered with an invalid-request error)",
    )
    shutdown_timeout_seconds: float = Field(
        default=10, gt=0, description="on SIGTERM, how long in-flight HTTP requests get to finish"
    )

    @field_validator(
        "data_dir", "database_url", "model_path", "tokenizer_path", "auth_tokens_file", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """A blank path or database URL means the default: a host's form left blank (the MCP
        registry entry offers SESSION_MCP_DATA_DIR and the Claude Desktop extension a database
        URL) would otherwise make the data dir the path '.', so that the data went wherever the
        host happened to start the server, and a URL of spaces one that cannot be parsed."""
        if isinstance(value, str) and not value.strip():
            return _default_data_dir() if info.field_name == "data_dir" else None
        return value

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    # Knowledge
    knowledge_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders knowledge_add may read, separated by the OS path separator (':'), added to "
        "the client's declared roots; with neither, the working directory",
    )
    url_allow: str = Field(
        default=URL_DEFAULT_ALLOW,
        description="hosts knowledge_add may fetch URLs from, comma separated: public (every global "
        "address), loopback, private, shared (100.64/10), CIDRs, IPs ([v6]), host names or *.example.com, "
        "each with an optional :port; setting it replaces the default, so keep public to reach the "
        "internet too (public,127.0.0.1); link-local and cloud metadata addresses are always refused",
    )
    knowledge_max_file_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest file to ingest"
    )
    knowledge_max_url_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="largest URL body to ingest"
    )
    knowledge_url_timeout_seconds: float = Field(default=30, gt=0, description="total time for one URL fetch")
    knowledge_max_pages: int = Field(
        default=2_000, ge=1, description="most pages (PDF) or slides (PPTX) per document"
    )
    knowledge_max_chunks_per_document: int = Field(
        default=10_000, ge=1, description="most chunks one document may make"
    )
    knowledge_max_chunks_per_call: int = Field(
        default=50_000, ge=1, description="most chunks one knowledge_add may make"
    )
    knowledge_max_files_per_call: int = Field(
        default=2_000, ge=1, description="most files one folder may hold"
    )
    knowledge_parse_timeout_seconds: float = Field(
        default=30, gt=0, description="wall time to parse one document before it is stopped"
    )
    knowledge_parse_memory_mb: int = Field(
        default=1024, ge=128, description="address-space limit of the parser subprocess, in MiB"
    )
    knowledge_chunk_tokens: int = Field(default=200, ge=16, le=254, description="most model tokens per chunk")
    knowledge_chunk_overlap_tokens: int = Field(
        default=32, ge=0, le=128, description="tokens a chunk repeats from the one before"
    )

    @field_validator("knowledge_roots", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(os.pathsep) if item.strip()]
        return value

    @field_validator("url_allow")
    @classmethod
    def _url_allow_list(cls, value: str) -> str:
        parse_allow(value)  # a bad entry stops start-up with the reason, not the first knowledge_add
        return value

    # Remote agents
    agent_allow: str = Field(
        default=DEFAULT_ALLOW,
        description="hosts session_create(agent_url=...) may reach, comma separated: loopback, private, "
        "shared (100.64/10), CIDRs, IPs ([v6]), host names or *.example.com, each with an optional :port; "
        "link-local and cloud metadata addresses are always refused",
    )
    agent_headers: SecretStr = Field(
        default=SecretStr(""),
        description="credentials sent to agents, comma separated host[:port]=Header-Name: value entries "
        "(e.g. agents.example.com=Authorization: Bearer abc); never sent to any other host",
    )
    agent_timeout: float = Field(
        default=30,
        gt=0,
        le=600,
        description="seconds to wait for an agent when session_create gives no timeout",
    )
    agent_max_response_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest agent reply accepted, in bytes after decompression"
    )

    @field_validator("agent_allow")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        parse_allow(value)  # a bad entry stops start-up with the reason, not the first chat
        return value

    @field_validator("agent_headers")
    @classmethod
    def _header_rules(cls, value: SecretStr) -> SecretStr:
        parse_headers(value.get_secret_value())
        return value

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
                agent_timeout_seconds=self.agent_timeout,
            ),
            knowledge=KnowledgeConfig(
                roots=tuple(self.knowledge_roots),
                max_file_bytes=self.knowledge_max_file_bytes,
                max_url_bytes=self.knowledge_max_url_bytes,
                url_timeout_seconds=self.knowledge_url_timeout_seconds,
                max_pages=self.knowledge_max_pages,
                max_chunks_per_document=self.knowledge_max_chunks_per_document,
                max_chunks_per_call=self.knowledge_max_chunks_per_call,
                max_files_per_call=self.knowledge_max_files_per_call,
                parse_timeout_seconds=self.knowledge_parse_timeout_seconds,
                parse_memory_mb=self.knowledge_parse_memory_mb,
                chunk_tokens=self.knowledge_chunk_tokens,
                chunk_overlap_tokens=self.knowledge_chunk_overlap_tokens,
            ),
            outbound=OutboundPolicy(
                self.agent_allow,
                headers=self.agent_headers.get_secret_value(),
                setting="SESSION_MCP_AGENT_ALLOW",
            ),
            agent_max_response_bytes=self.agent_max_response_bytes,
            url_policy=default_url_policy(self.url_allow),
        )
