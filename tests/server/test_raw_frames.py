"""Raw frames over stdio and both HTTP transports (the reliability plan's R10): valid JSON-RPC
messages mutated byte by byte, cut short, nested 100k deep, batched, sent as notifications or (over
HTTP) with the wrong content type. Over HTTP no frame may get a 5xx or break the connection; over
stdio the real `session-mcp` must go on reading. After every batch a real request must still be
answered, and nothing may log an error or a traceback. Run longer by hand with
SESSION_MCP_FUZZ_EXAMPLES=2500 (5,000 frames per transport)."""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from http_servers import CALL_TIMEOUT, TOKENS, Running, connect
from mcp_types.version import LATEST_HANDSHAKE_VERSION

FRAMES = int(os.environ.get("SESSION_MCP_FUZZ_EXAMPLES", "250")) * 2
"""Mutated frames per transport."""
BATCH = 100
"""Frames between two checks that a real client is still answered."""
AUTH = {"authorization": f"Bearer {TOKENS['alice']}"}
JSON = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def request(request_id: int | None, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params is not None:
        message["params"] = params
    return message


def opening(version: str = "2025-11-25") -> dict[str, Any]:
    """The initialize request every transport starts with (id 1)."""
    hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "fz", "version": "0"}}
    return request(1, "initialize", hello)


def tool(request_id: int, name: str, **arguments: Any) -> dict[str, Any]:
    return request(request_id, "tools/call", {"name": name, "arguments": arguments})


VALID = [
    tool(2, "session_create", session_id="fz", user_id="ignored-with-a-token"),
    tool(3, "state_increment", session_id="fz", key="n", increment=2),
    tool(4, "state_set", session_id="fz", key="a", value={"x": [1, 2, "y"], "z": None}),
    tool(5, "memory_add", session_id="fz", text="I like green tea in the morning"),
    tool(6, "memory_search", session_id="fz", query="which tea"),
    tool(7, "history_add", session_id="fz", role="user", content="hello"),
    tool(8, "get_context", session_id="fz", query="tea"),
    request(9, "ping"),
    request(10, "tools/list"),
    request(11, "resources/read", {"uri": "session://fz/state"}),
    request(12, "prompts/get", {"name": "context", "arguments": {"session_id": "fz", "query": "x"}}),
    request(None, "prompts/get", {"name": "context", "arguments": {}}),  # a notification: no answer
    request(None, "notifications/cancelled", {"requestId": 3}),
]


def mutated(rng: random.Random, frame: bytes) -> bytes:
    """One mutation of a valid frame, of the kinds the reliability plan lists."""
    kind = rng.randrange(11)
    if kind == 0:  # flipped bits
        flipped = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if kind == 1:  # cut short
        return frame[: rng.randrange(len(frame))]
    if kind == 2:  # random bytes inserted
        at = rng.randrange(len(frame))
        return frame[:at] + rng.randbytes(rng.randint(1, 8)) + frame[at:]
    if kind == 3:  # invalid UTF-8 inside a string
        return frame.replace(b'"', b'"\xff\xfe', 1)
    if kind == 4:  # nested 100k deep
        return b"[" * 100_000 + b"]" * 100_000
    if kind == 5:  # a batch, which this protocol version no longer has
        return b"[" + frame + b"," + frame + b"]"
    if kind == 6:  # an id that is an object
        return frame.replace(b'"id": ', b'"id": {"x": ', 1)
    if kind == 7:  # the wrong protocol marker
        return frame.replace(b'"jsonrpc": "2.0"', b'"jsonrpc": 2', 1)
    if kind == 8:  # params of every wrong shape
        message = json.loads(frame)
        message["params"] = rng.choice(
            [None, [], "x", 1, {"name": None}, {"arguments": "x"}, {"name": "x" * 5000}]
        )
        return json.dumps(message).encode()
    if kind == 9:  # NUL bytes only
        return b"\x00" * rng.randint(0, 64)
    return frame.replace(b'"', b"'", rng.randint(1, 5))  # single quotes: not JSON


@asynccontextmanager
async def raw_channel(
    running: Running, http: httpx2.AsyncClient
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Where raw frames go for this transport, and with which headers: the streamable endpoint with
    a session opened by a raw initialize, or SSE's message URL while its event stream is read (and
    dropped) by a task of its own, as a client would keep it open."""
    if running.transport == "streamable-http":
        opened = await http.post(
            running.endpoint, json=opening(LATEST_HANDSHAKE_VERSION), headers={**JSON, **AUTH}
        )
        assert opened.status_code == 200, opened.text
        headers = {**JSON, **AUTH, "mcp-session-id": opened.headers["mcp-session-id"]}
        await http.post(running.endpoint, json=request(None, "notifications/initialized"), headers=headers)
        yield running.endpoint, headers
        return
    async with http.stream(
        "GET", running.endpoint, headers={**AUTH, "accept": "text/event-stream"}
    ) as events:
        assert events.status_code == 200
        lines = events.aiter_lines()
        path = ""
        async for line in lines:
            if line.startswith("data: /messages/"):
                path = line.removeprefix("data: ")
                break
        async with anyio.create_task_group() as tasks:

            async def drain() -> None:
                async for _ in lines:
                    pass

            tasks.start_soon(drain)
            url = running.base + path
            await http.post(url, json=opening(), headers={**JSON, **AUTH})
            await http.post(url, json=request(None, "notifications/initialized"), headers={**JSON, **AUTH})
            yield url, {**JSON, **AUTH}
            tasks.cancel_scope.cancel()


async def test_mutated_frames_get_no_5xx_and_a_real_client_is_still_answered(
    secured: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(f"http-fuzz-{secured.transport}")
    statuses: dict[int, int] = {}
    async with (
        httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http,
        raw_channel(secured, http) as (url, headers),
        connect(secured, TOKENS["alice"]) as client,
    ):
        await client.call_tool("session_create", {"session_id": "fz"})
        for sent in range(1, FRAMES + 1):
            frame = mutated(rng, json.dumps(rng.choice(VALID)).encode())
            sent_headers = headers
            if rng.random() < 0.05:
                sent_headers = {
                    **headers,
                    "content-type": rng.choice(["text/plain", "application/json; charset=latin-1"]),
                }
            answer = await http.post(url, content=frame, headers=sent_headers)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (frame[:300], answer.status_code, answer.text[:300])
            if sent % BATCH == 0:
                with anyio.fail_after(CALL_TIMEOUT):
                    listed = await client.list_tools()
                assert any(t.name == "memory_search" for t in listed.tools)
    assert sum(statuses.values()) == FRAMES and statuses.get(400, 0) > FRAMES // 4, statuses
    complaints = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not complaints, [f"{r.name}: {r.getMessage()}" for r in complaints[:5]]
    if secured.transport == "sse":  # the SDK logs each such POST as an error with a traceback
        refused = [r for r in caplog.records if r.getMessage().startswith("refused a POST that is no")]
        assert refused and all(r.levelno == logging.WARNING for r in refused)


def test_mutated_lines_never_end_the_stdio_server(tmp_path: Path) -> None:
    """The real `session-mcp` over stdio: every line a mutated frame (a line break inside one
    becomes a space, as a line-framed client would have to send it), a ping after every batch."""
    env = {"PATH": os.environ.get("PATH", ""), "SESSION_MCP_DATA_DIR": str(tmp_path / "data")}
    stderr = (tmp_path / "stderr.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.prefix) / "bin" / "session-mcp")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    assert server.stdin is not None and server.stdout is not None
    replies: queue.Queue[dict[str, Any]] = queue.Queue()

    def read(out: Any) -> None:
        for line in out:
            replies.put(json.loads(line))

    reader = threading.Thread(target=read, args=(server.stdout,), daemon=True)
    reader.start()

    def send(frame: bytes) -> None:
        server.stdin.write(frame.replace(b"\n", b" ") + b"\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]

    def answered(request_id: int) -> bool:
        deadline = time.monotonic() + CALL_TIMEOUT
        while time.monotonic() < deadline:
            try:
                reply = replies.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if reply.get("id") == request_id:
                return "result" in reply
        return False

    rng = random.Random("stdio-fuzz")
    try:
        send(json.dumps(opening()).encode())
        send(json.dumps(request(None, "notifications/initialized")).encode())
        assert answered(1)
        for sent in range(1, FRAMES + 1):
            send(mutated(rng, json.dumps(rng.choice(VALID)).encode()))
            if sent % BATCH == 0:
                send(json.dumps(request(1_000_000 + sent, "ping")).encode())
                assert answered(1_000_000 + sent), f"no answer to a ping after {sent} frames"
        assert server.poll() is None
    finally:
        server.stdin.close()
        server.wait(timeout=60)
        reader.join(timeout=60)  # it ends at the end of the server's output
        server.stdout.close()
        stderr.close()
    log = (tmp_path / "stderr.log").read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert "refused a stdio line nested too deeply to read" in log  # the mutations reached the reader
