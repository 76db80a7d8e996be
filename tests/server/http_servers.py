"""HTTP servers for the tests: the real app under real uvicorn on 127.0.0.1 (a free port), in a thread
of the test process so it shares the loaded model and the test's clock, plus SDK clients over it.

A plain module (conftest modules cannot be imported by name): tests/server/conftest.py and the
tests import it as `http_servers`."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from session_mcp.models.clock import Clock
from session_mcp.models.embedder import Embedder
from session_mcp.server.auth import TokenTable
from session_mcp.server.http import ENDPOINTS, HttpApp, HttpServer, Transport, bind, build_http_app
from session_mcp.server.settings import Settings

START_TIMEOUT = 60.0
"""Ceiling on a server becoming healthy (a loaded 2-core machine can stall a thread for seconds)."""
CALL_TIMEOUT = 30.0

TOKENS = {
    "alice": "alice-0123456789-token-abcdef",
    "bob": "bob-0123456789-token-ghijklmn",
}
TOKEN_TABLE = TokenTable.parse((f"test token {user}", f"{token}={user}") for user, token in TOKENS.items())


@dataclass
class Running:
    """A live HTTP server: where to reach it and the objects behind it."""

    transport: Transport
    base: str
    """http://127.0.0.1:<port>"""
    app: HttpApp
    server: HttpServer

    @property
    def endpoint(self) -> str:
        return self.base + ENDPOINTS[self.transport]

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


def _wait_healthy(base: str, thread: threading.Thread, failure: list[BaseException]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx2.Client(timeout=5) as http:
        while True:
            try:
                if http.get(base + "/health").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if failure or not thread.is_alive():
                raise RuntimeError(f"the HTTP server stopped while starting: {failure}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base}/health did not answer 200 within {START_TIMEOUT}s")
            time.sleep(0.02)  # polling interval, not a wait for anything to happen


@contextmanager
def http_server(
    settings: Settings,
    transport: Transport,
    tokens: TokenTable | None,
    *,
    clock: Clock | None = None,
    embedder: Embedder | None = None,
) -> Iterator[Running]:
    """Serve the app on 127.0.0.1:<free port> in a thread until the block ends, then stop it gracefully."""
    app = build_http_app(settings, transport, tokens, clock=clock, embedder=embedder)
    sock = bind("127.0.0.1", 0)
    server = HttpServer(app, settings, sock)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            anyio.run(server.serve)
        except BaseException as exc:  # SystemExit too: uvicorn exits when start-up fails
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"uvicorn-{transport}", daemon=True)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with sock:
        thread.start()
        try:
            _wait_healthy(base, thread, failure)
            yield Running(transport=transport, base=base, app=app, server=server)
        finally:
            server.stop()
            thread.join(timeout=settings.shutdown_timeout_seconds + 30)
    assert not thread.is_alive(), "the HTTP server did not stop"
    if failure:
        raise failure[0]


@asynccontextmanager
async def _streamable(url: str, headers: dict[str, str] | None) -> AsyncIterator[object]:
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def connect(running: Running, token: str | None = None, *, mode: str = "auto") -> Client:
    """An SDK client for the server, sending `token` as the bearer token when given."""
    return connect_to(running.transport, running.endpoint, token, mode=mode)


def connect_to(
    transport: Transport, endpoint: str, token: str | None = None, *, mode: str = "auto"
) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if transport == "sse":
        streams = sse_client(endpoint, headers=headers, timeout=CALL_TIMEOUT)
    else:
        streams = _streamable(endpoint, headers)
    return Client(streams, read_timeout_seconds=CALL_TIMEOUT, mode=mode)  # type: ignore[arg-type]


Held = Callable[[AbstractAsyncContextManager[Any]], AbstractAsyncContextManager[Any]]
"""The type of tests/conftest.py's `held` (the `held` fixture hands it out)."""
