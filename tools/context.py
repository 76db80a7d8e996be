"""The context tool and prompt: one prompt block of what is relevant to the user's message."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field

from session_mcp.models.schemas import ContextResult
from session_mcp.tools.arguments import SessionId
from session_mcp.tools.caller import layer, owner
from session_mcp.tools.catalog import READ, ToolSpec


def get_context(
    ctx: Context,
    session_id: SessionId,
    query: Annotated[
        str, Field(strict=True, min_length=1, description="the user's message or your question")
    ],
    max_items: Annotated[int, Field(strict=True, ge=1, le=50, description="most lines per section")] = 5,
    max_tokens: Annotated[int, Field(strict=True, ge=50, le=32_000, description="token budget")] = 1000,
) -> ContextResult:
    """Build prompt context for answering `query`: relevant long-term and session memory, session
    state and the recent conversation, under headings, within `max_tokens`. Call it before
    answering; `items` says where each line came from."""
    return layer(ctx).context.build(session_id, query, max_items, max_tokens, owner=owner(ctx))


TOOLS = [ToolSpec(get_context, READ, "Build prompt context")]
