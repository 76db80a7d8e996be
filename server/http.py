"""The HTTP transports: the ASGI app (health, Host/Origin checks, bearer auth, body limit) over one
session layer, and its uvicorn run with a graceful shutdown.

A request meets, in order: `/health` (answered here, no checks, for load balancers), the Host and
Origin check (421 / 403, before anything else so a rebinding page learns nothing), the bearer
token (401), then the SDK's transport, which checks the same Host/Origin settings again, the
content type (400) and the body size (413), and binds each MCP session to the user that opened it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal

import anyio
import uvicorn
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from session_mcp.models.clock import Clock
from session_mcp.models.embedder import Embedder
from session_mcp.models.layer import SessionLayer
from session_mcp.server.app import build_server, running_layer
from session_mcp.server.auth import StaticTokenVerifier, TokenTable
from session_mcp.server.drain import LONG_LIVED, Drain
from session_mcp.server.exposure import HttpConfigError, transport_security
from session_mcp.server.settings import Settings

log = logging.getLogger("session_mcp.http")

Transport = Literal["sse", "streamable-http"]
MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGES_PATH = "/messages/"
HEALTH_PATH = "/health"
ENDPOINTS: dict[Transport, str] = {"streamable-http": MCP_PATH, "sse": SSE_PATH}


# -- the ASGI app --------------------------------------------------------------------------------


@dataclass
class Runtime:
    """What the edge needs to know about the running app."""

    transport: Transport
    drain: Drain = field(default_factory=Drain)
    layer: SessionLayer | None = None
    should_stop: Callable[[], bool] | None = None
    """Set by HttpServer: true once uvicorn begins shutting down."""


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class _Edge:
    """The outermost layer: health, then the Host/Origin check, then stream bookkeeping for the drain."""

    def __init__(self, app: ASGIApp, runtime: Runtime, security: TransportSecuritySettings) -> None:
        self._app = app
        self._runtime = runtime
        self._security = TransportSecurityMiddleware(security)
        self._endpoint = ENDPOINTS[runtime.transport]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] == HEALTH_PATH:
            await self._health(scope, send)
            return
        refusal = await self._security.validate_request(Request(scope))
        if refusal is not None:
            await self._refuse(scope, send, refusal.status_code)
            return
        drain = self._runtime.drain
        kind = self._kind(scope)
        if kind == "stream":
            await self._app(scope, drain.closable(receive), _answered_once(send))
        elif kind == "request":
            with drain.counting():
                await self._app(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    def _kind(self, scope: Scope) -> Literal["stream", "request", "other"]:
        """A stream stays open until the client leaves; a request ends with its reply."""
        path, method = scope["path"], scope["method"]
        if path == self._endpoint and method == "GET":
            return "stream"
        if path == MCP_PATH == self._endpoint:
            # a modern request names its method in a header: listening is a stream, not a request
            long_lived = Headers(scope=scope).get("mcp-method") in LONG_LIVED
            return "stream" if long_lived else "request"
        if path == MESSAGES_PATH and self._endpoint == SSE_PATH:
            return "request"
        return "other"

    async def _health(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send_json(send, 405, {"error": "use GET /health"}, {"allow": "GET, HEAD"})
            return
        runtime = self._runtime
        if runtime.layer is None or runtime.drain.closing or (runtime.should_stop and runtime.should_stop()):
            status = "starting" if runtime.layer is None else "stopping"
            await _send_json(send, 503, {"status": status})
            return
        body = {"status": "ok", "transport": runtime.transport, "version": version("session-mcp")}
        await _send_json(send, 200, body)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int) -> None:
        headers = Headers(scope=scope)
        if status == 421:
            host = (headers.get("host") or "")[:100]
            message = (
                f"Host {host!r} is not a name this server answers to; if clients reach it by that name, "
                "the operator adds it to SESSION_MCP_ALLOWED_HOSTS"
            )
        else:
            origin = (headers.get("origin") or "")[:100]
            message = (
                f"Origin {origin!r} may not call this server; if that page should, the operator adds it "
                "to SESSION_MCP_ALLOWED_ORIGINS"
            )
        await _send_json(
            send, status, {"error": "forbidden" if status == 403 else "misdirected", "message": message}
        )


def _answered_once(send: Send) -> Send:
    """Let a stream's response start only once. When its stream ends, the SDK's SSE endpoint returns
    a second, empty response; its start is dropped (uvicorn would log it as an error) and its empty
    last body ends the stream's chunked response cleanly."""
    started = complete = False

    async def wrapped(message: Message) -> None:
        nonlocal started, complete
        if complete or (message["type"] == "http.response.start" and started):
            return
        started = started or message["type"] == "http.response.start"
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete = True
        await send(message)

    return wrapped


class _RequireUser:
    """401 for a request without a valid bearer token, with a WWW-Authenticate header (RFC 6750)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or isinstance(scope.get("user"), AuthenticatedUser):
            await self._app(scope, receive, send)
            return
        presented = (Headers(scope=scope).get("authorization") or "").lower().startswith("bearer ")
        if presented:
            description = "the bearer token is not valid here; check it, or ask the operator for a token"
            challenge = (
                f'Bearer realm="session-mcp", error="invalid_token", error_description="{description}"'
            )
        else:
            description = 'send the header "Authorization: Bearer <token>"; the operator issues tokens'
            challenge = 'Bearer realm="session-mcp"'
        body = {"error": "invalid_token" if presented else "unauthorized", "error_description": description}
        await _send_json(send, 401, body, {"www-authenticate": challenge})


class _ParseFailuresAreWarnings(logging.Filter):
    """The SDK's SSE transport logs every POST that is no JSON-RPC message as an error, with a
    traceback quoting the body: the client's mistake, answered 400, so one warning line here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "Failed to parse message":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a POST that is no JSON-RPC message (answered 400)", ()
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_parse_failures() -> None:
    sse_log = logging.getLogger("mcp.server.sse")
    if not any(isinstance(f, _ParseFailuresAreWarnings) for f in sse_log.filters):
        sse_log.addFilter(_ParseFailuresAreWarnings())


@dataclass
class HttpApp:
    """The ASGI app of one HTTP transport and the runtime state its server drives."""

    asgi: ASGIApp
    runtime: Runtime


def build_http_app(
    settings: Settings,
    transport: Transport,
    tokens: TokenTable | None,
    *,
    clock: Clock | None = None,
    embedder: Embedder | None = None,
) -> HttpApp:
    """Build the app. Raises HttpConfigError when the Host allowlist cannot be worked out."""
    security = transport_security(settings)
    runtime = Runtime(transport)

    def current_layer() -> SessionLayer:
        assert runtime.layer is not None, "the HTTP app's lifespan builds the layer before serving"
        return runtime.layer

    server = build_server(settings, clock=clock, embedder=embedder, shared_layer=current_layer)
    server.middleware.append(runtime.drain.track)
    # sse-starlette would end every SSE response (replies in flight included) the moment uvicorn
    # sees a signal; the drain ends them itself once the replies are out.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    if transport == "sse":
        _quiet_parse_failures()
        mcp_app: ASGIApp = server.sse_app(
            sse_path=SSE_PATH,
            message_path=MESSAGES_PATH,
            max_request_body_size=settings.max_body_bytes,
            transport_security=security,
            host=settings.host,
        )
        serving: Callable[[], contextlib.AbstractAsyncContextManager[None]] = contextlib.nullcontext
    else:
        mcp_app = server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            max_request_body_size=settings.max_body_bytes,
            transport_security=security,
            host=settings.host,
        )
        serving = server.session_manager.run  # its Starlette lifespan; a mounted app's is not run
    if tokens is not None:
        mcp_app = AuthenticationMiddleware(
            _RequireUser(AuthContextMiddleware(mcp_app)),
            backend=BearerAuthBackend(StaticTokenVerifier(tokens)),
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with running_layer(settings, clock=clock, embedder=embedder) as layer:
            runtime.layer = layer
            try:
                async with serving(), anyio.create_task_group() as tasks:
                    if runtime.should_stop is not None:
                        tasks.start_soon(
                            runtime.drain.run, runtime.should_stop, settings.shutdown_timeout_seconds
                        )
                    yield
                    tasks.cancel_scope.cancel()
            finally:
                runtime.layer = None

    app = Starlette(routes=[Mount("/", app=mcp_app)], lifespan=lifespan)
    return HttpApp(asgi=_Edge(app, runtime, security), runtime=runtime)


# -- running it ----------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: a free one); HttpConfigError if that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise HttpConfigError(f"cannot resolve --host {host!r}: {exc.strerror}; give an IP address") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HttpConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or stop what is using it"
        ) from None
    return sock


def url_of(sock: socket.socket, transport: Transport) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{ENDPOINTS[transport]}"


class HttpServer:
    """uvicorn serving an HttpApp on one bound socket. `stop()` may be called from any thread."""

    def __init__(self, app: HttpApp, settings: Settings, sock: socket.socket) -> None:
        self._sock = sock
        config = uvicorn.Config(
            app.asgi,
            lifespan="on",
            ws="none",  # no WebSocket transport: nothing to serve there, nothing to guard
            log_config=None,  # our stderr logging
            log_level=settings.log_level.lower(),
            access_log=settings.log_level == "DEBUG",
            # The drain ends streams after its own timeout; this is the backstop behind it.
            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds) + 2,
        )
        self._uvicorn = uvicorn.Server(config)
        app.runtime.should_stop = lambda: self._uvicorn.should_exit

    async def serve(self) -> None:
        await self._uvicorn.serve(sockets=[self._sock])

    def stop(self) -> None:
        self._uvicorn.should_exit = True


class _Stopped(Exception):
    """A stop signal arrived; raised from our handler, which uvicorn calls again after its shutdown."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def run_http(settings: Settings, transport: Transport, tokens: TokenTable | None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and return."""
    app = build_http_app(settings, transport, tokens)
    sock = bind(settings.host, settings.port)
    auth = f"{len(tokens)} token(s) for {len(tokens.users())} user(s)" if tokens else "NO authentication"
    log.info(
        "serving MCP over %s at %s (health: %s); %s", transport, url_of(sock, transport), HEALTH_PATH, auth
    )
    # uvicorn catches these while it runs and raises them again once it has shut down: without
    # our handler SIGTERM would then kill the process instead of letting it exit 0.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with sock:
            anyio.run(HttpServer(app, settings, sock).serve)
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
