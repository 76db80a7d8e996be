"""MCP over stdio on non-blocking pipes (server/pipes.py), in real child processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters, stdio_client

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the pipe transport is POSIX only")

NOISY_SERVER = textwrap.dedent(
    """
    import os, sys
    from mcp.server.mcpserver import MCPServer
    from session_mcp.server.pipes import serve_stdio

    server = MCPServer("noisy")

    @server.tool()
    def noisy() -> str:
        print("noise from print", flush=True)
        os.system("echo noise from a child")
        return "ok"

    serve_stdio(server, 1 << 20)
    print("after: blocking", os.get_blocking(0), os.get_blocking(1), file=sys.stderr, flush=True)
    """
)


async def test_stray_output_of_a_tool_or_its_child_misses_the_wire_and_blocking_mode_comes_back(
    tmp_path: Path,
) -> None:
    script = tmp_path / "noisy.py"
    script.write_text(NOISY_SERVER)
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        params = StdioServerParameters(command=sys.executable, args=[str(script)])
        with anyio.fail_after(60):
            async with Client(stdio_client(params, errlog=errlog)) as client:
                for _ in range(3):
                    result = await client.call_tool("noisy", {})
                    assert not result.is_error
                    assert result.content[0].text == "ok"  # type: ignore[union-attr]
            for _ in range(200):  # the server exits once its stdin closes
                if "after:" in log.read_text():
                    break
                await anyio.sleep(0.05)
    text = log.read_text()
    assert text.count("noise from print") == 3
    assert text.count("noise from a child") == 3
    # asyncio made the protocol's descriptors non-blocking; a terminal shares that with its shell.
    assert "after: blocking True True" in text


@pytest.mark.parametrize(("stdin", "pipes"), [("pipe", True), ("file", False)])
def test_pipes_serve_pipes_and_a_file_redirected_in_gets_the_sdk_transport(
    tmp_path: Path, stdin: str, pipes: bool
) -> None:
    code = "from session_mcp.server.pipes import _pipes_apply; print(_pipes_apply())"
    source = tmp_path / "in.txt"
    source.write_text("")
    with source.open("rb") as file:
        done = subprocess.run(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE if stdin == "pipe" else file,
            stdout=subprocess.PIPE,
            timeout=60,
            check=True,
        )
    assert done.stdout.decode().strip() == str(pipes)


ECHO_SERVER = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer
    from session_mcp.server.pipes import serve_stdio

    server = MCPServer("echo")

    @server.tool()
    def echo(text: str) -> str:
        return text

    serve_stdio(server, 4096)
    """
)


def _request(request_id: object, method: str, params: dict[str, object] | None = None) -> bytes:
    message: dict[str, object] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


def test_a_line_over_the_limit_is_refused_by_its_id_and_the_server_goes_on(tmp_path: Path) -> None:
    """Lines of 8 KB and 1 MB against a 4 KB limit: each is read past, never held whole, and
    answered with an error for its id (or a null id when none comes before the params)."""
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SERVER)
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    big = {"name": "echo", "arguments": {"text": "x" * 8000}}
    huge = {"name": "echo", "arguments": {"text": "y" * 1_000_000}}
    stdin = b"".join(
        [
            _request(1, "initialize", hello),
            b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n',
            _request(2, "tools/call", big),
            _request("three", "tools/call", huge),
            b'{"jsonrpc": "2.0", "method": "tools/call", "params": {"id": 99, "pad": "'
            + b"z" * 9000
            + b'"}}\n',
            _request(4, "tools/call", {"name": "echo", "arguments": {"text": "still here"}}),
        ]
    )
    # stdin stays open until every reply is in: at end of input the SDK cancels calls in flight.
    server = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(stdin)
        server.stdin.flush()
        lines = [server.stdout.readline() for _ in range(5)]  # bounded by the communicate timeout
    finally:
        _, stderr = server.communicate(timeout=60)
    replies = {r["id"]: r for r in map(json.loads, lines)}
    assert sorted(replies, key=str) == sorted([1, 2, "three", None, 4], key=str)
    for refused in (replies[2], replies["three"], replies[None]):
        assert refused["error"]["code"] == -32600
        assert "over 4096 bytes" in refused["error"]["message"]
        assert "SESSION_MCP_MAX_BODY_BYTES" in refused["error"]["message"]
    assert replies[4]["result"]["content"][0]["text"] == "still here"
    assert stderr.decode().count("refused a stdio message over 4096") == 3  # logged, to stderr


def test_a_line_the_sdk_cannot_read_is_answered_not_dropped_and_the_server_goes_on(tmp_path: Path) -> None:
    """The SDK drops a line it cannot parse without a reply, and its client waits out a timeout:
    here each gets a JSON-RPC error (under its id when it has a usable one), and a reply from the
    client that cannot be read is only logged."""
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SERVER)
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    stdin = b"".join(
        [
            _request(1, "initialize", hello),
            b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n',
            b"{this is not json\n",
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", '
            b'"arguments": {"text": "lone \\ud800 surrogate"}}}\n',
            b'{"jsonrpc": "1.0", "id": "three", "method": "tools/call"}\n',
            b'{"jsonrpc": "2.0", "id": 7, "result": {"bad": "\\udfff"}}\n',  # an unreadable reply
            b"[1, 2, 3]\n",
            b"[" * 2000 + b"]" * 2000 + b"\n",  # ended the server: json.loads raised RecursionError
            _request(4, "tools/call", {"name": "echo", "arguments": {"text": "still here"}}),
        ]
    )
    server = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stop = threading.Timer(60, server.kill)  # a reply that never comes ends the reads, not the run
    stop.start()
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(stdin)
        server.stdin.flush()
        lines = [server.stdout.readline() for _ in range(7)]
    finally:
        stop.cancel()
        _, stderr = server.communicate(timeout=60)
    assert all(lines), f"{sum(map(bool, lines))} of 7 replies came"
    replies = [json.loads(line) for line in lines]
    by_id = {r["id"]: r for r in replies if r["id"] is not None}
    nulls = [r for r in replies if r["id"] is None]
    assert sorted(by_id, key=str) == sorted([1, 2, "three", 4], key=str) and len(nulls) == 3
    assert nulls[0]["error"]["code"] == -32700 and "not valid JSON" in nulls[0]["error"]["message"]
    assert nulls[1]["error"]["code"] == -32600  # a JSON array is no message
    assert nulls[2]["error"]["code"] == -32600 and "nested too deeply" in nulls[2]["error"]["message"]
    for refused in (by_id[2], by_id["three"]):
        assert refused["error"]["code"] == -32600
        assert "not a JSON-RPC 2.0 message" in refused["error"]["message"]
    assert by_id[4]["result"]["content"][0]["text"] == "still here"
    assert "dropped a reply from the client" in stderr.decode()
