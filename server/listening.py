"""`subscriptions/listen` with the session store's scoping: a caller listens only to what it may read.

The SDK's listen handler matches events by URI alone, so over authenticated HTTP one user could
listen to another user's `session://...` resources and learn when they change. This middleware
checks every session URI in a listen request against the caller before the handler sees it.
"""

from __future__ import annotations

import re
from typing import Any

import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from session_mcp.models.errors import SessionError
from session_mcp.tools.caller import LayerSlot

_SESSION_URI = re.compile(r"session://([^/]+)(?:/.*)?")


def sessions_named(uris: list[Any]) -> list[str]:
    """The session ids of the `session://` URIs among `uris`."""
    found = []
    for uri in uris:
        matched = _SESSION_URI.fullmatch(str(uri))
        if matched:
            found.append(matched.group(1))
    return found


async def readable_resources_only(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    token = get_access_token()
    # Unauthenticated: one trusted host. A notification (no id) gets no answer to refuse with.
    if ctx.method != "subscriptions/listen" or token is None or ctx.request_id is None:
        return await call_next(ctx)
    notifications = (ctx.params or {}).get("notifications")
    uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
    if not isinstance(uris, list):  # malformed or absent: the SDK's own validation answers it
        return await call_next(ctx)
    slot = ctx.lifespan_context
    assert isinstance(slot, LayerSlot)
    user = token.client_id

    def check(session_ids: list[str]) -> None:
        for session_id in session_ids:
            slot.get().sessions.get(session_id, owner=user)  # SessionNotFound for anyone else's

    try:
        await anyio.to_thread.run_sync(check, sessions_named(uris))
    except SessionError as exc:
        raise MCPError(INVALID_PARAMS, f"{exc}; you can listen only to your own sessions") from exc
    return await call_next(ctx)
