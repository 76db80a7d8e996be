"""Graceful shutdown of the HTTP transports: requests in progress finish and send their replies,
then the streams that would stay open until their clients leave are ended."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from starlette.types import Message, Receive

log = logging.getLogger("session_mcp.http")

_STOP_POLL_SECONDS = 0.1
"""How often the drain looks for uvicorn's exit flag: uvicorn's own main loop ticks at this rate."""
_SETTLE_SECONDS = 0.2
"""After the last handler returns, its reply still crosses a few in-process streams to the socket."""
LONG_LIVED = frozenset({"subscriptions/listen"})
"""Requests that stay open until the client leaves: never waited for on shutdown."""


@dataclass
class Drain:
    """On shutdown: let requests in progress finish and send their replies, then end the streams
    that stay open until the client leaves (the SSE stream, the streamable-HTTP GET stream, a
    `subscriptions/listen`).

    uvicorn stops accepting connections and waits for open ones to close; a stream never closes by
    itself, so it is ended here, once nothing it might carry a reply for is still running. A request
    counts from its arrival at the edge (a streamable-HTTP POST until its reply is sent) and while
    its handler runs (an SSE POST is answered 202 before its handler even starts)."""

    busy: int = 0
    closing: bool = False
    _idle: anyio.Event | None = None
    _streams: set[anyio.CancelScope] = field(default_factory=set)

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        if self.busy == 0:
            self._idle = anyio.Event()
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            if self.busy == 0 and self._idle is not None:
                self._idle.set()

    async def track(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: count every MCP request while its handler runs."""
        if ctx.method in LONG_LIVED:
            return await call_next(ctx)
        with self.counting():
            return await call_next(ctx)

    def closable(self, receive: Receive) -> Receive:
        """`receive` that reports a client disconnect once the drain ends the streams."""

        async def wrapped() -> Message:
            if not self.closing:
                with anyio.CancelScope() as scope:
                    self._streams.add(scope)
                    try:
                        return await receive()
                    finally:
                        self._streams.discard(scope)
            return {"type": "http.disconnect"}

        return wrapped

    async def idle(self) -> None:
        while True:
            while self.busy:
                assert self._idle is not None
                await self._idle.wait()
            await anyio.sleep(_SETTLE_SECONDS)
            if not self.busy:
                return

    async def run(self, should_stop: Callable[[], bool], timeout: float) -> None:
        """Wait for uvicorn to start shutting down, then drain within `timeout` seconds."""
        while not should_stop():
            await anyio.sleep(_STOP_POLL_SECONDS)
        log.info("shutting down: %d request(s) in progress get up to %gs to finish", self.busy, timeout)
        with anyio.move_on_after(timeout) as waited:
            await self.idle()
        if waited.cancelled_caught:
            log.warning("%d request(s) still running after %gs; cutting them off", self.busy, timeout)
        self.closing = True
        for scope in list(self._streams):
            scope.cancel()
