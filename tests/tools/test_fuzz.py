"""Schema-driven fuzzing of every tool through the in-memory client on both databases, and through
the real `session-mcp` over stdio (the reliability plan's R9, sized for every test run): arguments drawn from each tool's published input schema, then some
corrupted, called against live sessions. Every reply must be a result that matches the tool's
output schema (the SDK client checks that) or a tool error that starts with one of our codes and
leaks no traceback, source file or path of the server's own (its data directory, where the
database and model cache live; the knowledge roots a refusal names are the user's, and meant to be
read); nothing may fail as `internal_error`; afterwards the per-scope counts the vector caches
trust must still equal the rows.

Network-facing arguments are left out (`url` sources and `agent_url`): their policies have tests of
their own with a resolver that never touches the network. Run longer by hand with
SESSION_MCP_FUZZ_EXAMPLES=5000.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.types import INVALID_REQUEST, PARSE_ERROR, CallToolResult, TextContent, Tool
from sqlalchemy import create_engine, text

from session_mcp.models.clock import ManualClock
from session_mcp.models.database import normalise_url
from session_mcp.models.embedder import Embedder
from session_mcp.models.errors import SessionError
from session_mcp.server.app import build_server
from session_mcp.server.settings import Settings

EXAMPLES = int(os.environ.get("SESSION_MCP_FUZZ_EXAMPLES", "250"))
SESSIONS = ("fuzz-a", "fuzz-b", "fuzz-c")  # fuzz-c belongs to another user
OWNERS = ("fuzz-user", "fuzz-user", "someone-else")
CODE = re.compile(r"^([a-z_]+): \S")
LEAKS = r"Traceback|File \"|site-packages|\.py\b"


def leaks_for(data_dir: Path) -> re.Pattern[str]:
    return re.compile(f"{LEAKS}|{re.escape(str(data_dir))}|{re.escape(str(Path(__file__).parents[2]))}")


def encodable(args: dict[str, Any]) -> bool:
    try:
        json.dumps(args, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def codes() -> set[str]:
    found: set[str] = set()
    todo: list[type[SessionError]] = [SessionError]
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo.extend(cls.__subclasses__())
    return found


def knowledge_root(tmp_path: Path) -> Path:
    """The one folder knowledge_add may read, with one file in it."""
    root = tmp_path / "kb"
    root.mkdir()
    (root / "notes.md").write_text("# Notes\n\nThe fuzzer may read this file.\n")
    return root


def open_sessions(portal: BlockingPortal, client: Client) -> None:
    """The live sessions the fuzzed calls mostly name, and one for session_close to close."""
    for session_id, user_id in [*zip(SESSIONS, OWNERS, strict=True), ("fuzz-closed", "fuzz-user")]:
        created = portal.call(
            client.call_tool, "session_create", {"session_id": session_id, "user_id": user_id}
        )
        assert not created.is_error


@pytest.fixture
def fuzzed(
    database_url: str, tmp_path: Path, clock: ManualClock, embedder: Embedder
) -> Iterator[tuple[BlockingPortal, Client]]:
    knowledge = knowledge_root(tmp_path)
    server_settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        warm_model=False,
        knowledge_roots=[knowledge],
    )
    server = build_server(server_settings, clock=clock, embedder=embedder)
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(Client(server, raise_exceptions=True)) as client,
    ):
        open_sessions(portal, client)
        yield portal, client


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800 lone",
            "../../etc/passwd",
            "'; DROP TABLE sessions; --",
            "é" * 300,
            "\u202e",
        ]
    )
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def arguments(tool: Tool, draw: Any) -> dict[str, Any]:
    """Valid arguments for `tool`, then (half the time) one of them corrupted or an unknown one added."""
    args: dict[str, Any] = draw(from_schema(tool.input_schema))
    args.pop("agent_url", None)
    if tool.name == "knowledge_add":
        args["kind"] = draw(st.sampled_from(["text", "path"]))
        if args["kind"] == "path" and draw(st.booleans()):
            args["source"] = draw(st.sampled_from(["notes.md", ".", "..", "/etc/passwd", "kb/../../x"]))
    if "session_id" in args and draw(st.integers(0, 7)):
        # Mostly live sessions, so calls get past the session check; closing one would end that.
        args["session_id"] = (
            "fuzz-closed" if tool.name == "session_close" else draw(st.sampled_from(SESSIONS))
        )
    if draw(st.booleans()):
        names = [*tool.input_schema.get("properties", {}), "unexpected"]
        args[draw(st.sampled_from(names))] = draw(JSON_VALUES)
    return args


def fuzz(
    portal: BlockingPortal, client: Client, examples: int, leaks: re.Pattern[str], *, wire: bool = False
) -> dict[str, int]:
    """Call random tools `examples` times, checking each reply; the count of each outcome. Over a
    `wire`, arguments no UTF-8 JSON can carry are skipped: the SDK client cannot send them."""
    tools = [t for t in portal.call(client.list_tools).tools if t.name != "session_chat"]
    known = codes()
    seen: dict[str, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(st.data())
    def one_call(data: st.DataObject) -> None:
        tool = data.draw(st.sampled_from(tools))
        args = arguments(tool, data.draw)
        if wire:
            assume(encodable(args))
        try:
            result = portal.call(client.call_tool, tool.name, args)
        except MCPError as exc:  # a JSON-RPC error: over a real transport, a message it cannot read
            assert exc.error.code in (INVALID_REQUEST, PARSE_ERROR), (tool.name, args, exc)
            seen["protocol_error"] = seen.get("protocol_error", 0) + 1
            return
        assert isinstance(result, CallToolResult)
        if not result.is_error:
            assert result.structured_content is not None
            seen["ok"] = seen.get("ok", 0) + 1
            return
        first = result.content[0]
        assert isinstance(first, TextContent)
        found = CODE.match(first.text)
        assert found is not None, (tool.name, args, first.text)
        assert found.group(1) in known and found.group(1) != "internal_error", (tool.name, args, first.text)
        assert not leaks.search(first.text), (tool.name, args, first.text)
        seen[found.group(1)] = seen.get(found.group(1), 0) + 1

    one_call()
    # The fuzz reached past argument checking: some calls succeeded, some were refused by a service.
    assert seen.get("ok", 0) > examples // 10, seen
    assert set(seen) - {"ok", "invalid_argument", "protocol_error"}, seen
    return seen


def test_no_tool_input_crashes_the_server_or_leaks_internals(
    fuzzed: tuple[BlockingPortal, Client], database_url: str, tmp_path: Path
) -> None:
    portal, client = fuzzed
    fuzz(portal, client, EXAMPLES, leaks_for(tmp_path / "data"))

    engine = create_engine(normalise_url(database_url))
    with engine.connect() as conn:
        for rows, counts in (("memories", "memory_scopes"), ("chunks", "chunk_scopes")):
            actual = dict(conn.execute(text(f"SELECT scope, count(*) FROM {rows} GROUP BY scope")).all())
            kept = {s: n for s, n in conn.execute(text(f"SELECT scope, row_count FROM {counts}")).all() if n}
            assert kept == actual, (rows, kept, actual)
            highest = dict(conn.execute(text(f"SELECT scope, max(seq) FROM {rows} GROUP BY scope")).all())
            marks = dict(conn.execute(text(f"SELECT scope, max_seq FROM {counts}")).all())
            assert all(marks.get(s, 0) >= m for s, m in highest.items()), (rows, marks, highest)
        if conn.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    engine.dispose()


def test_every_fuzzed_call_over_stdio_gets_a_reply(tmp_path: Path) -> None:
    """The real `session-mcp` over stdio (SQLite), a smaller run: the same checks through the real
    transport and its JSON, and every call answered within its 60 s timeout (the SDK's stdio
    reader dropped lines it could not read without a reply; test_pipes.py sends such lines raw)."""
    knowledge = knowledge_root(tmp_path)
    env = {
        "SESSION_MCP_DATA_DIR": str(tmp_path / "data"),
        "SESSION_MCP_KNOWLEDGE_ROOTS": str(knowledge),
        "PATH": os.environ.get("PATH", ""),
    }
    params = StdioServerParameters(command=str(Path(sys.prefix) / "bin" / "session-mcp"), env=env)
    with (
        (tmp_path / "stderr.log").open("w") as errlog,
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(
            Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60)
        ) as client,
    ):
        open_sessions(portal, client)
        seen = fuzz(portal, client, max(EXAMPLES // 2, 50), leaks_for(tmp_path / "data"), wire=True)
    assert "Traceback" not in (tmp_path / "stderr.log").read_text(), seen
