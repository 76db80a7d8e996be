"""One HTTP exchange over a connection pinned to a checked target (outbound.py's client side).

`OutboundPolicy` checks a URL and resolves it to a `Target`; `exchange` then sends one request to
the target's checked addresses only (the name is never resolved again), with the Host header and
TLS SNI of the name, every socket wait bounded by the request's one deadline, and the body capped
after decompression. httpcore2's errors become `OutboundFailure`s here.

A module of its own so that httpcore2 (20 ms to import here) loads on the first request sent, not
while the server starts: nothing else imports it (import-linter checks that only this module and
outbound.py talk HTTP).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpcore2
import httpx2

from session_mcp.models.outbound import REDIRECTS, OutboundFailure, Target, redact


def exchange(
    target: Target,
    method: str,
    json: Any,
    headers: Mapping[str, str],
    deadline: float,
    max_bytes: int,
    ssl_context: ssl.SSLContext | None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request to `target` with these headers (httpx2
    adds Host and the like). Raises OutboundFailure when it cannot be had by `deadline`
    (time.monotonic) or the body passes `max_bytes`. Follows no redirect: the caller checks each
    hop first."""
    pool = httpcore2.ConnectionPool(
        ssl_context=ssl_context,
        network_backend=_PinnedBackend(target, deadline),
        max_connections=1,
        retries=0,
    )
    try:
        with httpx2.Client(
            transport=_PoolTransport(pool),
            follow_redirects=False,
            trust_env=False,
            timeout=max(deadline - time.monotonic(), 0.0),
        ) as client:
            request = client.build_request(method, target.url, json=json, headers=dict(headers))
            response = client.send(request, stream=True)
            try:
                return (
                    response.status_code,
                    _lower(response.headers),
                    _read(response, method, max_bytes, deadline, target),
                )
            finally:
                response.close()
    except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
        raise OutboundFailure("unreachable", redact(target.url), _reason(exc, "could not connect")) from exc
    except httpcore2.TimeoutException as exc:
        raise OutboundFailure("timeout", redact(target.url), "no complete answer in time") from exc
    except (httpcore2.NetworkError, httpcore2.ProtocolError, httpx2.HTTPError) as exc:
        raise OutboundFailure(
            "bad_response", redact(target.url), _reason(exc, "the answer was not valid HTTP")
        ) from exc


def _lower(headers: httpx2.Headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _reason(exc: Exception, fallback: str) -> str:
    text = str(exc).strip()
    return f"{fallback} ({text[:160]})" if text else fallback


def _read(response: httpx2.Response, method: str, max_bytes: int, deadline: float, target: Target) -> bytes:
    if method == "HEAD" or response.status_code in REDIRECTS:
        return b""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OutboundFailure(
            "too_large", redact(target.url), f"the answer is {declared} bytes, over the limit of {max_bytes}"
        )
    body = bytearray()
    for chunk in response.iter_bytes():  # decompressed, so a gzip bomb meets the same cap
        body += chunk
        if len(body) > max_bytes:
            raise OutboundFailure(
                "too_large", redact(target.url), f"the answer is over the limit of {max_bytes} bytes"
            )
        if time.monotonic() > deadline:
            raise httpcore2.ReadTimeout("deadline passed while reading the answer")
    return bytes(body)


class _DeadlineStream(httpcore2.NetworkStream):
    """A socket whose every wait ends at the request's deadline: a server trickling one byte a
    second cannot stretch the exchange past it."""

    def __init__(self, inner: httpcore2.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise error("deadline passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        wrapped = self._inner.start_tls(
            ssl_context, server_hostname, self._left(timeout, httpcore2.ConnectTimeout)
        )
        return _DeadlineStream(wrapped, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore2.NetworkBackend):
    """Connects to the checked addresses of one target and nowhere else; the URL keeps the name,
    so the Host header and TLS SNI (and certificate check) are the name's."""

    def __init__(self, target: Target, deadline: float) -> None:
        self._target = target
        self._deadline = deadline
        self._tcp = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        if host.lower() != self._target.host or port != self._target.port:
            raise httpcore2.ConnectError(f"{host}:{port} is not the checked target")
        failure: Exception = httpcore2.ConnectError("no address to connect to")
        for address in self._target.addresses:  # in resolver order; the next one only if this refuses
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise httpcore2.ConnectTimeout("deadline passed while connecting")
            wait = remaining if timeout is None else min(timeout, remaining)
            try:
                stream = self._tcp.connect_tcp(str(address), port, wait, socket_options=socket_options)
            except httpcore2.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        raise httpcore2.ConnectError("unix sockets are not reachable from here")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _ResponseStream(httpx2.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class _PoolTransport(httpx2.BaseTransport):
    """httpx2's request/response over our own connection pool (the stock transport cannot take
    a network backend). httpcore2 errors pass through to `exchange`, which translates them."""

    def __init__(self, pool: httpcore2.ConnectionPool) -> None:
        self._pool = pool

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.SyncByteStream)
        core = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        answer = self._pool.handle_request(core)
        assert isinstance(answer.stream, Iterable)
        return httpx2.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_ResponseStream(answer.stream),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()
