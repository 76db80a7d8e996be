"""Start-up: the handshake and tools/list never wait for the database, the model or their imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mcp import Client
from tool_calls import error

from session_mcp.server.app import build_server
from session_mcp.server.settings import Settings

# httpcore2: the outbound client's connections (models/pinned.py), loaded on the first request.
ENGINES = ("sqlalchemy", "sqlmodel", "numpy", "onnxruntime", "usearch", "tokenizers", "psycopg", "httpcore2")


def test_the_console_script_imports_no_engine_before_serving() -> None:
    probe = (
        "import sys\n"
        "from session_mcp.server import cli\n"
        "from session_mcp.server.app import build_server\n"
        "from session_mcp.server.settings import Settings\n"
        "build_server(Settings())\n"
        f"print(','.join(m for m in {ENGINES!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "", f"imported before serving: {done.stdout.strip()}"


async def test_a_store_that_cannot_start_still_lists_tools_and_every_call_says_why(tmp_path: Path) -> None:
    unreachable = "postgresql://postgres@127.0.0.1:1/none"  # port 1: refused at once
    settings = Settings(data_dir=tmp_path / "data", database_url=unreachable, warm_model=False)
    async with Client(build_server(settings)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "memory_search" in names and "session_create" in names
        for tool, arguments in (("session_create", {}), ("memory_search", {"session_id": "s", "query": "q"})):
            text = await error(client, tool, **arguments)
            assert text.startswith("engine_error: the session store could not start (")
            assert "restart the server" in text
