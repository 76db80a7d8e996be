"""Memory tools: add, search, delete and clear semantic memory."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from pydantic import Field, JsonValue

from session_mcp.models.schemas import Cleared, MemoryAdded, MemoryDeleted, MemoryResults
from session_mcp.tools.arguments import SessionId
from session_mcp.tools.caller import layer, owner
from session_mcp.tools.catalog import DESTRUCTIVE, READ, WRITE_IDEMPOTENT, ToolSpec

Text = Annotated[str, Field(strict=True, min_length=1, description="the fact, in a full sentence")]


def memory_add(
    ctx: Context,
    session_id: SessionId,
    text: Text,
    memory_type: Annotated[
        Literal["short", "long"],
        Field(
            description="long: a durable fact about the user, seen from all their sessions; short: this session only"
        ),
    ] = "long",
    metadata: Annotated[
        dict[str, JsonValue] | None, Field(description="any JSON object kept with it")
    ] = None,
) -> MemoryAdded:
    """Remember a fact. Keep durable user facts (preferences, names, decisions) as `long` and
    scratch notes for the current task as `short`. Storing the same text again returns the existing
    memory with `deduplicated: true`."""
    return layer(ctx).memory.add(session_id, text, memory_type, metadata, owner=owner(ctx))


def memory_search(
    ctx: Context,
    session_id: SessionId,
    query: Annotated[str, Field(strict=True, min_length=1, description="what you want to recall")],
    memory_type: Annotated[
        Literal["short", "long", "all"],
        Field(description="all: this session's short-term plus this user's long-term memory"),
    ] = "all",
    limit: Annotated[int, Field(strict=True, ge=1, le=100)] = 5,
) -> MemoryResults:
    """Find memories relevant to `query`, best first, by meaning and by keywords together.
    Only this session's and this user's memories are ever searched."""
    return layer(ctx).memory.search(session_id, query, memory_type, limit, owner=owner(ctx))


def memory_delete(
    ctx: Context,
    session_id: SessionId,
    memory_id: Annotated[str, Field(strict=True, min_length=1, max_length=64)],
) -> MemoryDeleted:
    """Delete one memory by the `memory_id` that memory_add or memory_search returned."""
    return layer(ctx).memory.delete(session_id, memory_id, owner=owner(ctx))


def memory_clear(
    ctx: Context,
    session_id: SessionId,
    memory_type: Annotated[
        Literal["short", "long", "all"],
        Field(description="short: this session's notes; long: ALL of this user's long-term memory"),
    ] = "short",
) -> Cleared:
    """Delete memories in bulk and say how many went. `short` clears this session only; `long`
    clears this user's long-term memory (every session of theirs loses it), never anyone else's."""
    return layer(ctx).memory.clear(session_id, memory_type, owner=owner(ctx))


TOOLS = [
    ToolSpec(memory_add, WRITE_IDEMPOTENT, "Remember a fact"),
    ToolSpec(memory_search, READ, "Search memory"),
    ToolSpec(memory_delete, DESTRUCTIVE, "Delete a memory"),
    ToolSpec(memory_clear, DESTRUCTIVE, "Clear memory"),
]
