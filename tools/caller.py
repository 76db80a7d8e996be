"""Who is calling and what they may reach: the session layer and the authenticated user of a request."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context

from session_mcp.models.errors import EngineError

if TYPE_CHECKING:  # imported by the server once it is serving, not when tools are listed
    from session_mcp.models.layer import SessionLayer

STARTING_TIMEOUT_S = 300.0
"""How long a call waits for the layer to finish starting (a migration of a large database)."""


class LayerSlot:
    """The session layer as tools reach it. The server's lifespan yields the slot at once and fills
    it when the layer is built, so `initialize` and `tools/list` never wait for the database, the
    model or the imports behind them; a call that arrives earlier waits here, in its worker thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._layer: SessionLayer | None = None
        self._failure: str | None = None

    def fill(self, layer: SessionLayer) -> None:
        self._layer = layer
        self._ready.set()

    def fail(self, reason: str) -> None:
        self._failure = reason
        self._ready.set()

    def get(self, timeout: float = STARTING_TIMEOUT_S) -> SessionLayer:
        if not self._ready.wait(timeout):
            raise EngineError(f"the session store is still starting after {timeout:.0f} s; try again shortly")
        if self._layer is None:
            raise EngineError(
                f"the session store could not start ({self._failure}); the server's log has the details. "
                "Fix the setting it names and restart the server"
            )
        return self._layer


def layer(ctx: Context[Any, Any]) -> SessionLayer:
    found = ctx.request_context.lifespan_context
    assert isinstance(found, LayerSlot), "the server lifespan must yield a LayerSlot"
    return found.get()


def owner(ctx: Context[Any, Any]) -> str | None:
    """The authenticated user, when the transport authenticates; None over stdio, where the host
    process is the only caller and user ids come from the sessions themselves."""
    token = get_access_token()
    return None if token is None else token.client_id
