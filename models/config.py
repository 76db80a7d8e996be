"""What a session layer is built from: plain settings, importable without the engines.

The server reads its settings and lists its tools before anything heavy (SQLAlchemy, numpy,
onnxruntime, usearch) is imported; that happens when the layer itself is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from session_mcp.models.ingestion import KnowledgeConfig
from session_mcp.models.limits import Limits
from session_mcp.models.outbound import URL_DEFAULT_ALLOW, OutboundPolicy, Resolver, system_resolver

Variant = Literal["fp32", "int8-dynamic", "as-shipped"]
VARIANTS: Final[tuple[str, ...]] = get_args(Variant)
DEFAULT_VARIANT: Final[str] = "int8-dynamic"
"""fp32 reproduces the shipped model (cosine 0.9999999); int8-dynamic is 2.0-2.25x as fast in
batches at a mean cosine of ~0.993 to it (bench/embed_speed.py), with the same LoCoMo recall.
Chosen finally by the retrieval benchmark."""


def default_url_policy(
    allow: str = URL_DEFAULT_ALLOW, resolver: Resolver = system_resolver
) -> OutboundPolicy:
    """URL ingestion's policy: `public` (every global address) unless the allow list says otherwise."""
    return OutboundPolicy(
        allow, resolver=resolver, setting="SESSION_MCP_URL_ALLOW", user_agent="session-mcp (knowledge_add)"
    )


@dataclass(frozen=True)
class LayerConfig:
    database_url: str
    data_dir: Path
    model_path: Path | None = None
    tokenizer_path: Path | None = None
    embedding_threads: int = 0
    embedding_variant: str = DEFAULT_VARIANT
    exact_search_below: int = 200_000
    # Scopes smaller than this keep a float16 copy of their vectors to score a search's shortlist
    # with; larger ones score it from the vectors stored in the database (models/vectors.py).
    vector_matrix_below: int = 20_000
    sqlite_synchronous: str = "FULL"
    limits: Limits = field(default_factory=Limits)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    # Remote agents: which hosts session_create(agent_url=...) may reach, and with what credentials.
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    agent_max_response_bytes: int = 1_048_576
    # URL ingestion: which hosts knowledge_add may fetch; public addresses only unless listed.
    url_policy: OutboundPolicy = field(default_factory=default_url_policy)
