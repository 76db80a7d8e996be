"""Real HTTP apps for the outbound and remote-agent tests, served by uvicorn on 127.0.0.1 in a thread.

`launch_app` speaks the wire contract of PraisonAI's `Agent.launch(path=...)` (FastAPI there, Starlette
here, same behaviour on the wire): GET /health answers 200 at the root only, POST <path> takes
`{"query": ...}` and answers `{"response": ...}`, a body without `query` gets 422, and HEAD <path>
gets 405 because the route only takes POST."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Recorder:
    """Every request an app received, in order, whatever it answered (404s and 405s too)."""

    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.requests)

    def wrap(self, app: Any) -> Any:
        """The ASGI app `app`, recording each request (body included) before it sees it."""

        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            with self.lock:
                self.requests.append(Seen(scope["method"], scope["path"], headers, body))
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await app(scope, replay, send)

        return recorded


def app_of(routes: dict[str, tuple[list[str], Handler]]) -> Starlette:
    return Starlette(
        routes=[Route(path, handler, methods=methods) for path, (methods, handler) in routes.items()]
    )


def launch_app(path: str = "/agent") -> Starlette:
    """What `Agent.launch(path=path)` serves: one agent that echoes the query."""

    async def welcome(_: Request) -> Response:
        return JSONResponse({"message": "Welcome to PraisonAI Agents API on port 8000. See /docs for usage."})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "endpoints": [path]})

    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return JSONResponse({"detail": [{"loc": ["body", "query"], "msg": "Field required"}]}, 422)
        return JSONResponse({"response": f"echo: {body['query']}"})

    routes: dict[str, tuple[list[str], Handler]] = {"/health": (["GET"], health), path: (["POST"], chat)}
    if path != "/":
        routes["/"] = (["GET"], welcome)
    return app_of(routes)


@contextmanager
def serving(app: Any, **options: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 at a free port; yields the base URL (no trailing slash). `options`
    go to uvicorn.Config (ssl_certfile and ssl_keyfile serve https)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="error",
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    give_up = time.monotonic() + 10
    while not server.started:  # start-up, not a wait for behaviour under test
        if time.monotonic() > give_up or not thread.is_alive():
            raise RuntimeError("the test HTTP server did not start")
        time.sleep(0.01)
    try:
        yield f"{'https' if 'ssl_certfile' in options else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
