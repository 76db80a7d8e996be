"""Who is calling and what they may reach: the session layer and the authenticated user of a request."""

from __future__ import annotations

from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context

from session_mcp.models.layer import SessionLayer


def layer(ctx: Context[Any, Any]) -> SessionLayer:
    found = ctx.request_context.lifespan_context
    assert isinstance(found, SessionLayer), "the server lifespan must yield the SessionLayer"
    return found


def owner(ctx: Context[Any, Any]) -> str | None:
    """The authenticated user, when the transport authenticates; None over stdio, where the host
    process is the only caller and user ids come from the sessions themselves."""
    token = get_access_token()
    return None if token is None else token.client_id
