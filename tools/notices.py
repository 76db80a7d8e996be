"""Telling `subscriptions/listen` streams what changed: the session resources a write touched.

A listener names resource URIs (`session://{session_id}`, `.../state`, `.../history`); after a
write tool succeeds, its resource is announced on this process's subscription bus. Writes made by
another server process on the same database are not announced here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import Context

F = TypeVar("F", bound=Callable[..., Any])

SESSION = "session://{session_id}"
STATE = "session://{session_id}/state"
HISTORY = "session://{session_id}/history"


def announces(resource: str) -> Callable[[F], F]:
    """Run a sync write tool on a worker thread, as the SDK would, then announce `resource`
    (formatted with the session the call wrote to) to the streams listening for it."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            result = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
            ctx: Context[Any, Any] = kwargs["ctx"]
            session_id = kwargs.get("session_id") or getattr(result, "session_id", None)
            if session_id:
                await ctx.notify_resource_updated(resource.format(session_id=session_id))
            return result

        return run  # type: ignore[return-value]

    return decorate
