"""MCP over stdio without worker threads: the SDK's stdio framing on non-blocking pipes.

The SDK's stdio transport reads and writes through anyio's file wrapper: a worker-thread hop for
every line read and two for every reply written. Given asyncio pipe transports instead (through
the SDK's own `stdio_server`, which then does the JSON-RPC framing as always), a `ping` took
0.42 ms against 0.75-0.80 ms and a no-op tool 0.62 against 1.00-1.05 ms, alternating on one
machine. Used where asyncio can watch the descriptors: POSIX, with stdin and stdout pipes, sockets
or terminals. Elsewhere (Windows, a file redirected in) the SDK's own transport serves.

A line may be up to SESSION_MCP_MAX_BODY_BYTES long, as an HTTP body may: asyncio's reader needs
a bound, and a longer line is read past and refused by its request id instead of ending the loop.
A line the SDK cannot read as a JSON-RPC message (not JSON, the wrong shape, a string with an
unpaired surrogate escape) is answered with a parse error or an invalid request, where the SDK
alone drops it without a reply and its client waits out a timeout.

While serving, fd 0 reads the null device and fd 1 writes to stderr, as under the SDK's transport,
so a stray print from a library or a child process never lands in the protocol; the protocol goes
through private duplicates, and both are put back on the way out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.types import INVALID_REQUEST, PARSE_ERROR

log = logging.getLogger("session_mcp.server")
_ID = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


def serve_stdio(server: MCPServer[Any], line_limit: int) -> None:
    """Serve `server` over this process's stdin and stdout until the client closes stdin.

    A line longer than `line_limit` bytes is read past, never held whole, and answered with an
    `invalid request` error; the server goes on with the next line (the SDK's own transport,
    used where pipes do not apply, has no limit)."""
    if not _pipes_apply():
        server.run("stdio")
        return
    anyio.run(_serve, server, line_limit, backend="asyncio")


def _pipes_apply() -> bool:
    if sys.platform == "win32":
        return False
    for fd in (0, 1):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return False
    return True


async def _serve(server: MCPServer[Any], line_limit: int) -> None:
    async with (
        _pipes(line_limit) as (lines, replies),
        stdio_server(lines, replies) as (read_stream, write_stream),  # type: ignore[arg-type]
    ):
        # MCPServer runs stdio only on its own transport; this is what its run_stdio_async does
        # with the streams (the SDK's in-memory client reaches for the same attribute).
        lowlevel = server._lowlevel_server
        answered = _Answered(read_stream, lines, replies)
        await lowlevel.run(answered, write_stream, lowlevel.create_initialization_options())


class _Answered:
    """The SDK's read stream, passing every item on, with each line the SDK could not parse answered.

    The SDK's reader parses one line at a time and hands the parse failure over before it reads the
    next, so the line behind a failure is the one `_Lines` handed out last."""

    def __init__(self, inner: Any, lines: _Lines, replies: _Replies) -> None:
        self._inner = inner
        self._lines = lines
        self._replies = replies

    @property
    def last_context(self) -> Any:  # the dispatcher reads the sender's context of each item here
        return getattr(self._inner, "last_context", None)

    async def __aenter__(self) -> _Answered:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._inner.__aexit__(*exc_info)

    def __aiter__(self) -> _Answered:
        return self

    async def __anext__(self) -> Any:
        item = await self._inner.__anext__()
        if isinstance(item, Exception):
            self._replies.unreadable(self._lines.last)
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Lines:
    """The client's lines, as `stdio_server` reads an async text file; too long a line is skipped
    and refused through `refuse`, with the start of it."""

    def __init__(self, reader: asyncio.StreamReader, refuse: Callable[[bytes], None]) -> None:
        self._reader = reader
        self._refuse = refuse
        self.last = ""  # the line handed out last: the one the SDK is parsing now

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # end of input: a last line may lack its newline
                if not exc.partial:
                    raise StopAsyncIteration from None
                line = exc.partial
            except asyncio.LimitOverrunError as exc:  # what was read is still buffered, up to the limit
                head = await self._reader.readexactly(exc.consumed)
                await self._skip_rest_of_line()
                self._refuse(head[:4096])
                continue
            self.last = line.decode("utf-8", errors="replace")
            return self.last

    async def _skip_rest_of_line(self) -> None:
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                return


class _Replies:
    """The client's side of the wire, as `stdio_server` writes an async text file; `flush` waits
    while the client is not reading (the transport's flow control)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()

    def too_long(self, head: bytes, limit: int) -> None:
        """Answer a request whose line was over `limit` bytes, by the id at its start if it has one
        (JSON-RPC puts it before the params; nothing later is trusted), else with a null id."""
        found = _ID.search(head.split(b'"params"', 1)[0])
        request_id = json.loads(found.group(1)) if found else None
        message = (
            f"request too large: the message is over {limit} bytes, the limit this server takes "
            "(SESSION_MCP_MAX_BODY_BYTES); send less in one call"
        )
        log.warning("refused a stdio message over %d bytes (request id %r)", limit, request_id)
        self._error(request_id, INVALID_REQUEST, message)

    def unreadable(self, line: str) -> None:
        """Answer a line the SDK could not read as a JSON-RPC message (it drops such a line without
        a word, and the client would wait out its timeout): a parse error if it is not JSON, else
        an invalid request, under the message's id when it has a usable one. A reply the client
        sent that cannot be read is only logged: there is no request of ours to answer it with."""
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("refused a stdio line that is not JSON")
            self._error(
                None,
                PARSE_ERROR,
                "parse error: the line is not valid JSON; send one JSON-RPC message per line",
            )
            return
        except RecursionError:  # arrays or objects nested past Python's recursion limit
            log.warning("refused a stdio line nested too deeply to read")
            self._error(
                None,
                INVALID_REQUEST,
                "invalid request: the message is nested too deeply to read (arrays or objects "
                "hundreds of levels deep); send a flatter message",
            )
            return
        request_id = message.get("id") if isinstance(message, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            request_id = None
        if (
            isinstance(message, dict)
            and "method" not in message
            and ("result" in message or "error" in message)
        ):
            log.warning(
                "dropped a reply from the client that is not a valid JSON-RPC response (id %r)", request_id
            )
            return
        log.warning(
            "refused a stdio message that is not a valid JSON-RPC message (request id %r)", request_id
        )
        self._error(
            request_id,
            INVALID_REQUEST,
            "invalid request: not a JSON-RPC 2.0 message this server can read (a field of the wrong type, "
            "or a string with an unpaired surrogate escape such as \\ud800); fix the message and send it again",
        )

    def _error(self, request_id: int | str | None, code: int, message: str) -> None:
        error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
        self._writer.write(json.dumps(error).encode("utf-8") + b"\n")


@asynccontextmanager
async def _pipes(line_limit: int) -> AsyncIterator[tuple[_Lines, _Replies]]:
    with _claimed(0, _null_for_reading) as fd_in, _claimed(1, _stderr_copy) as fd_out:
        async with _transports(fd_in, fd_out, line_limit) as ends:
            yield ends


@asynccontextmanager
async def _transports(fd_in: int, fd_out: int, line_limit: int) -> AsyncIterator[tuple[_Lines, _Replies]]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=line_limit)
    # closefd=False: the descriptors are _claimed's to close, after their blocking mode is back.
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd_in, "rb", closefd=False)
    )
    write_transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(), os.fdopen(fd_out, "wb", closefd=False)
    )
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    replies = _Replies(writer)
    try:
        yield _Lines(reader, lambda head: replies.too_long(head, line_limit)), replies
    finally:
        read_transport.close()
        write_transport.close()


@contextmanager
def _claimed(fd: int, diversion: Callable[[], int]) -> Iterator[int]:
    """A private duplicate of `fd` for the protocol; `fd` itself points at `diversion()` meanwhile."""
    private = _dup_above_std(fd)
    blocking = os.get_blocking(private)
    spare = diversion()
    os.dup2(spare, fd)
    os.close(spare)
    try:
        yield private
    finally:
        # Non-blocking mode belongs to the open file, which a terminal shares with the shell.
        os.set_blocking(private, blocking)
        os.dup2(private, fd)
        os.close(private)


def _dup_above_std(fd: int) -> int:
    import fcntl  # POSIX only, like this whole path

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def _null_for_reading() -> int:
    return os.open(os.devnull, os.O_RDONLY)


def _stderr_copy() -> int:
    try:
        return os.dup(2)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)
