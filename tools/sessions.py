"""Session tools: create or resume, get, list and close sessions."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from pydantic import Field, JsonValue, StrictStr

from session_mcp.models.schemas import SessionInfo, SessionPage
from session_mcp.tools.arguments import Cursor, FiniteFloat, Name, SessionId
from session_mcp.tools.caller import layer, owner
from session_mcp.tools.catalog import DESTRUCTIVE, READ, WRITE_IDEMPOTENT, ToolSpec
from session_mcp.tools.notices import SESSION, announces


@announces(SESSION)
def session_create(
    ctx: Context,
    session_id: Annotated[
        Name | None,
        Field(description="your own id; omitted: an 8-character id is made"),
    ] = None,
    user_id: Annotated[
        Name | None,
        Field(description="whose session; omitted: default_user"),
    ] = None,
    ttl_seconds: Annotated[
        FiniteFloat | None, Field(description="seconds from creation until it expires; null: never")
    ] = None,
    metadata: Annotated[
        dict[str, JsonValue] | None, Field(description="any JSON object kept with it")
    ] = None,
    agent_url: Annotated[
        Annotated[StrictStr, Field(min_length=1, max_length=2048)] | None,
        Field(
            description="a remote agent to talk to with session_chat (PraisonAI Agent.launch URL, e.g. "
            "192.168.1.10:8000/agent; http:// is added when missing); null: a local session"
        ),
    ] = None,
    timeout: Annotated[
        Annotated[FiniteFloat, Field(gt=0, le=600)] | None,
        Field(description="remote sessions: seconds to wait for the agent; null: the server's default"),
    ] = None,
) -> SessionInfo:
    """Create a session, or resume it when `session_id` already exists for this user (then
    `resumed` is true). Call this first: every other tool takes the returned `session_id`.
    A session with `ttl_seconds` refuses writes once it expires but stays readable.
    With `agent_url` the agent is checked before the session exists; state, memory and knowledge
    then live on the agent's side, and session_chat talks to it."""
    return layer(ctx).sessions.create(
        session_id, user_id, ttl_seconds, metadata, agent_url, timeout, owner=owner(ctx)
    )


def session_get(ctx: Context, session_id: SessionId) -> SessionInfo:
    """Read a session's status, expiry (`expires_at`, `time_to_expiry`) and metadata."""
    return layer(ctx).sessions.get(session_id, owner=owner(ctx))


def session_list(
    ctx: Context,
    user_id: Annotated[Name | None, Field(description="omitted: default_user")] = None,
    status: Annotated[Literal["active", "closed", "expired"] | None, Field(description="filter")] = None,
    limit: Annotated[int, Field(strict=True, ge=1, le=200)] = 50,
    cursor: Annotated[Cursor | None, Field(description="next_cursor of a page")] = None,
) -> SessionPage:
    """List a user's sessions, newest first, a page at a time. Use it to find a session to resume."""
    return layer(ctx).sessions.list(user_id, status, limit, cursor, owner=owner(ctx))


@announces(SESSION)
def session_close(ctx: Context, session_id: SessionId) -> SessionInfo:
    """Close a session: it becomes read-only for good (reads keep working). Closing twice is harmless."""
    return layer(ctx).sessions.close(session_id, owner=owner(ctx))


TOOLS = [
    ToolSpec(session_create, WRITE_IDEMPOTENT, "Create or resume a session"),
    ToolSpec(session_get, READ, "Get a session"),
    ToolSpec(session_list, READ, "List sessions"),
    ToolSpec(session_close, DESTRUCTIVE, "Close a session"),
]
