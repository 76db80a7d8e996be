"""State tools: a session's versioned key/value store with compare-and-set and atomic increments."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field, JsonValue

from session_mcp.models.schemas import StateDeleted, StateSnapshot, StateValue, StateWritten
from session_mcp.tools.arguments import Number, SessionId, Version
from session_mcp.tools.caller import layer, owner
from session_mcp.tools.catalog import DESTRUCTIVE, READ, WRITE, WRITE_IDEMPOTENT, ToolSpec
from session_mcp.tools.notices import STATE, announces

Key = Annotated[str, Field(strict=True, min_length=1, max_length=256, description="state key")]


def state_get(
    ctx: Context,
    session_id: SessionId,
    key: Key,
    default: Annotated[JsonValue, Field(description="returned as value when the key is missing")] = None,
) -> StateValue:
    """Read one state key. `found` says whether it exists; `version` is what state_set's
    `expected_version` compares against."""
    return layer(ctx).state.get(session_id, key, default, owner=owner(ctx))


@announces(STATE)
def state_set(
    ctx: Context,
    session_id: SessionId,
    key: Key,
    value: Annotated[JsonValue, Field(description="any JSON value")],
    expected_version: Annotated[
        Version | None,
        Field(description="write only if the key is at this version (0: only if it does not exist yet)"),
    ] = None,
) -> StateWritten:
    """Set one state key. Pass `expected_version` (from state_get) to update safely when others
    may write too: a stale version fails with `conflict` and changes nothing."""
    return layer(ctx).state.set(session_id, key, value, expected_version, owner=owner(ctx))


@announces(STATE)
def state_increment(
    ctx: Context,
    session_id: SessionId,
    key: Key,
    increment: Number = 1,
    default: Annotated[Number, Field(description="starting value when the key is missing")] = 0,
) -> StateWritten:
    """Add `increment` to a numeric key atomically and return the new value (counters, scores,
    quotas). Concurrent increments never lose updates. Integers stay integers."""
    return layer(ctx).state.increment(session_id, key, increment, default, owner=owner(ctx))


@announces(STATE)
def state_delete(ctx: Context, session_id: SessionId, key: Key) -> StateDeleted:
    """Delete one state key; `deleted` is false when it did not exist."""
    return layer(ctx).state.delete(session_id, key, owner=owner(ctx))


@announces(STATE)
def state_save(
    ctx: Context,
    session_id: SessionId,
    state: Annotated[dict[str, JsonValue], Field(description="the complete new state")],
) -> StateSnapshot:
    """Replace the session's whole state with `state` in one step (keys not given are removed)."""
    return layer(ctx).state.save(session_id, state, owner=owner(ctx))


def state_restore(ctx: Context, session_id: SessionId) -> StateSnapshot:
    """Read the session's whole state as one object."""
    return layer(ctx).state.restore(session_id, owner=owner(ctx))


TOOLS = [
    ToolSpec(state_get, READ, "Get a state key"),
    ToolSpec(state_set, WRITE_IDEMPOTENT, "Set a state key"),
    ToolSpec(state_increment, WRITE, "Increment a numeric state key"),
    ToolSpec(state_delete, DESTRUCTIVE, "Delete a state key"),
    ToolSpec(state_save, WRITE_IDEMPOTENT, "Replace the whole state"),
    ToolSpec(state_restore, READ, "Read the whole state"),
]
