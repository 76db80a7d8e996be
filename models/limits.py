"""The limits every write is checked against before anything changes (built by `server` from settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    default_ttl_seconds: int | None = None
    max_ttl_seconds: int | None = None
    sweeper_grace_seconds: int = 3600
    max_value_bytes: int = 65_536
    max_text_chars: int = 16_384
    max_keys_per_session: int = 1_000
    max_metadata_bytes: int = 16_384
    context_max_tokens: int = 4_000
    max_history_page: int = 1_000
    agent_timeout_seconds: float = 30.0
