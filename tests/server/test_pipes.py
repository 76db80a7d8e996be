"""MCP over stdio on non-blocking pipes (server/pipes.py), in real child processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
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

    serve_stdio(server)
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
