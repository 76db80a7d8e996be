"""The real `session-mcp` process over stdio: protocol hygiene, kill -9 durability, several processes at once.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture); servers share one data dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types
import pytest
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client.session import IncomingMessage
from mcp.client.stdio import get_default_environment
from mcp.types import CallToolResult, TextContent
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from session_mcp.models.embedder import Embedder

pytestmark = pytest.mark.e2e

SCRIPT = Path(sys.prefix) / "bin" / "session-mcp"
CALL_TIMEOUT = 30.0
"""Ceiling on any one tool call; generous because a loaded 2-core machine can stall a process."""
HANDSHAKE_TIMEOUT = 60.0
"""The SDK's per-request timeout, a backstop for the handshake (which cannot sit under fail_after)."""

_names = itertools.count()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted model, built once; each data dir gets hard links to it instead of converting again."""
    cache = tmp_path_factory.mktemp("e2e-model-cache")
    Embedder(cache_dir=cache).warm()
    return cache


@dataclass(frozen=True)
class Deployment:
    """One data dir and one database, shared by every server process a test starts."""

    data_dir: Path
    database_url: str
    log_dir: Path
    warm_model: bool = True

    def env(self) -> dict[str, str]:
        return get_default_environment() | {
            "SESSION_MCP_DATA_DIR": str(self.data_dir),
            "SESSION_MCP_DATABASE_URL": self.database_url,
            "SESSION_MCP_WARM_MODEL": "true" if self.warm_model else "false",
            "SESSION_MCP_LOG_LEVEL": "INFO",
        }


@pytest.fixture
def deployment(database_url: str, tmp_path: Path, model_cache: Path) -> Deployment:
    data_dir = tmp_path / "data"
    models = data_dir / "models"
    models.mkdir(parents=True)
    for cached in model_cache.iterdir():
        try:
            os.link(cached, models / cached.name)
        except OSError:
            shutil.copy2(cached, models / cached.name)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    return Deployment(data_dir=data_dir, database_url=database_url, log_dir=log_dir)


@dataclass
class Server:
    """A live server process and the SDK client connected to it."""

    client: Client
    pid: int
    log: Path
    stray: list[Exception] = field(default_factory=list)
    """Anything on stdout that was not a JSON-RPC message, as the transport reported it."""

    async def result(self, name: str, **arguments: Any) -> CallToolResult:
        with anyio.fail_after(CALL_TIMEOUT):
            return await self.client.call_tool(name, arguments)

    async def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        result = await self.result(name, **arguments)
        assert not result.is_error, f"{name}({arguments}) failed: {result.content}"
        content: dict[str, Any] | None = result.structured_content
        assert content is not None
        return content

    async def error(self, name: str, **arguments: Any) -> str:
        result = await self.result(name, **arguments)
        assert result.is_error, f"{name}({arguments}) should have failed: {result.structured_content}"
        first = result.content[0]
        assert isinstance(first, TextContent)
        return first.text


def log_tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


@asynccontextmanager
async def serve(deployment: Deployment, name: str | None = None) -> AsyncIterator[Server]:
    """Start `session-mcp` on the deployment; leaving the block closes stdin and the server exits.

    The console script runs through `sh -c '... exec'` only so that its PID (the same process after
    exec) lands in a file: the SDK's stdio transport does not expose the process it spawns.
    """
    label = f"{name or 'server'}-{next(_names)}"
    log = deployment.log_dir / f"{label}.log"
    pidfile = deployment.log_dir / f"{label}.pid"
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", 'echo $$ > "$0" && exec "$1"', str(pidfile), str(SCRIPT)],
        env=deployment.env(),
    )
    stray: list[Exception] = []

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            stray.append(message)
        await anyio.lowlevel.checkpoint()

    with log.open("w") as errlog:
        try:
            transport = stdio_client(params, errlog=errlog)
            async with Client(
                transport, read_timeout_seconds=HANDSHAKE_TIMEOUT, message_handler=on_message
            ) as client:
                yield Server(client=client, pid=int(pidfile.read_text()), log=log, stray=stray)
        except Exception as exc:
            exc.add_note(f"--- stderr of {label} (last lines) ---\n{log_tail(log)}")
            raise


EXPECTED_TOOLS = {
    "session_create", "session_get", "session_list", "session_close",
    "state_get", "state_set", "state_increment", "state_delete", "state_save", "state_restore",
    "memory_add", "memory_search", "memory_delete", "memory_clear",
    "knowledge_add", "knowledge_search", "knowledge_list", "knowledge_delete",
    "get_context", "history_add", "history_get", "session_chat",
}  # fmt: skip

SESSION = "crash-session"
COUNTER = "hits"


async def test_server_answers_tools_list_over_stdio_and_logs_nothing_to_stdout(
    deployment: Deployment,
) -> None:
    async with serve(deployment) as server:
        with anyio.fail_after(CALL_TIMEOUT):
            listed = await server.client.list_tools()
        assert {tool.name for tool in listed.tools} == EXPECTED_TOOLS
        await server.call("session_create", session_id="hello")
    assert server.stray == [], f"non-protocol output on stdout: {server.stray}"

    # The same over raw pipes, through shutdown: every stdout line must be a JSON-RPC message.
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LATEST_HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
    ]
    log = deployment.log_dir / "raw.log"
    with log.open("w") as errlog, anyio.fail_after(CALL_TIMEOUT * 2):
        async with await anyio.open_process([str(SCRIPT)], env=deployment.env(), stderr=errlog) as process:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send("".join(json.dumps(r) + "\n" for r in requests).encode())
            output = b""
            async for chunk in process.stdout:
                output += chunk
                if b'"id":2' in output.replace(b" ", b"") and output.endswith(b"\n"):
                    break
            await process.stdin.aclose()  # the host hangs up: the server must exit by itself
            async for chunk in process.stdout:
                output += chunk
            returncode = await process.wait()
    assert returncode == 0, log_tail(log)
    lines = output.decode().splitlines()
    messages = [mcp_types.jsonrpc_message_adapter.validate_json(line) for line in lines]
    tools_reply = next(m for m in messages if getattr(m, "id", None) == 2)
    assert {tool["name"] for tool in tools_reply.result["tools"]} == EXPECTED_TOOLS  # type: ignore[union-attr]


@dataclass(frozen=True)
class Op:
    tool: str
    arguments: dict[str, Any]


@dataclass
class Ledger:
    """What the client was told (acknowledged) and what it cannot know (indeterminate), over all rounds."""

    state: dict[str, Any] = field(default_factory=dict)
    keys_sent: set[str] = field(default_factory=set)
    increments_acked: int = 0
    increments_indeterminate: int = 0
    memories: dict[str, str] = field(default_factory=dict)  # text -> memory_id
    texts_sent: set[str] = field(default_factory=set)
    history: dict[str, int] = field(default_factory=dict)  # content -> index
    contents_sent: set[str] = field(default_factory=set)
    rounds: list[str] = field(default_factory=list)
    """One line per kill round, for failure messages: acks, indeterminate calls, when the kill came."""


_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "re",
    "tu",
    "va",
    "be",
    "si",
    "no",
    "pe",
    "zu",
    "ra",
    "go",
    "di",
    "fe",
    "ha",
    "ju",
    "xo",
    "qui",
    "wy",
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(4))


def workload(round_: int, rng: random.Random, size: int) -> list[Op]:
    ops = []
    for i in range(size):
        kind = rng.choices(("set", "incr", "memory", "history"), weights=(3, 3, 2, 2))[0]
        if kind == "set":
            value = {"round": round_, "i": i, "note": _word(rng)}
            ops.append(Op("state_set", {"session_id": SESSION, "key": f"r{round_}-k{i}", "value": value}))
        elif kind == "incr":
            ops.append(Op("state_increment", {"session_id": SESSION, "key": COUNTER}))
        elif kind == "memory":
            # Made-up words make every text its own best keyword match as well as its own nearest vector.
            text = f"Round {round_} note {i}: the user keeps a {_word(rng)} beside the {_word(rng)}."
            ops.append(Op("memory_add", {"session_id": SESSION, "text": text}))
        else:
            ops.append(
                Op("history_add", {"session_id": SESSION, "role": "user", "content": f"r{round_}-m{i}"})
            )
    return ops


def _note_sent(ledger: Ledger, op: Op) -> None:
    if op.tool == "state_set":
        ledger.keys_sent.add(op.arguments["key"])
    elif op.tool == "memory_add":
        ledger.texts_sent.add(op.arguments["text"])
    elif op.tool == "history_add":
        ledger.contents_sent.add(op.arguments["content"])


def _note_acked(ledger: Ledger, op: Op, result: dict[str, Any]) -> None:
    if op.tool == "state_set":
        ledger.state[op.arguments["key"]] = op.arguments["value"]
    elif op.tool == "state_increment":
        ledger.increments_acked += 1
    elif op.tool == "memory_add":
        ledger.memories[op.arguments["text"]] = result["memory_id"]
    else:
        ledger.history[op.arguments["content"]] = result["index"]


async def run_until_killed(server: Server, ops: list[Op], kill_after_acks: int, ledger: Ledger) -> None:
    """Run `ops` 8 at a time; after `kill_after_acks` acknowledgements SIGKILL the server with calls in
    flight. Calls that fail because the process died are indeterminate: they may or may not have landed."""
    pending = iter(ops)
    killed = anyio.Event()
    enough = anyio.Event()
    acked = indeterminate = 0

    async def worker() -> None:
        nonlocal acked, indeterminate
        for op in pending:
            if killed.is_set():
                return
            _note_sent(ledger, op)
            try:
                result = await server.result(op.tool, **op.arguments)
            except (MCPError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                if not killed.is_set():
                    raise
                indeterminate += 1
                ledger.increments_indeterminate += op.tool == "state_increment"
                return
            assert not result.is_error, f"{op.tool} refused: {result.content}"
            assert result.structured_content is not None
            _note_acked(ledger, op, result.structured_content)
            acked += 1
            if acked >= kill_after_acks:
                enough.set()

    started = anyio.current_time()
    killed_at = started

    async def killer() -> None:
        nonlocal killed_at
        await enough.wait()
        os.kill(server.pid, signal.SIGKILL)
        killed_at = anyio.current_time()
        killed.set()

    with anyio.fail_after(CALL_TIMEOUT * 2):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(killer)
            for _ in range(8):
                tasks.start_soon(worker)
    ledger.rounds.append(
        f"killed {(killed_at - started) * 1000:.0f} ms in: {acked} acked, {indeterminate} indeterminate"
    )
    assert indeterminate > 0 and acked + indeterminate < len(ops), f"not killed mid-workload: {ledger.rounds}"


async def test_acknowledged_writes_survive_sigkill_and_search_agrees_with_rows(
    deployment: Deployment,
) -> None:
    seed = os.environ.get("SESSION_MCP_E2E_SEED") or str(random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)  # workload and kill points; SESSION_MCP_E2E_SEED=<seed> replays them
    ledger = Ledger(rounds=[f"seed {seed}"])
    for round_ in range(3):
        async with serve(deployment, f"round{round_}") as server:
            await server.call("session_create", session_id=SESSION)
            await run_until_killed(server, workload(round_, rng, 300), rng.randint(10, 50), ledger)

    rounds = "; ".join(ledger.rounds)
    async with serve(deployment, "after") as server:
        state = (await server.call("state_restore", session_id=SESSION))["state"]
        for key, value in ledger.state.items():
            assert state.get(key) == value, f"acknowledged state_set of {key!r} lost ({rounds})"
        assert set(state) - {COUNTER} <= ledger.keys_sent, "state holds keys nobody wrote"

        counter = state.get(COUNTER, 0)
        low, high = ledger.increments_acked, ledger.increments_acked + ledger.increments_indeterminate
        assert low <= counter <= high, f"counter {counter} outside [{low}, {high}] ({rounds})"

        messages = (await server.call("history_get", session_id=SESSION, limit=1000))["messages"]
        assert [m["index"] for m in messages] == list(range(len(messages)))
        contents = [m["content"] for m in messages]
        assert len(set(contents)) == len(contents), "a history message was stored twice"
        assert set(contents) <= ledger.contents_sent, "history holds messages nobody sent"
        for content, index in ledger.history.items():
            assert contents[index] == content, f"acknowledged {content!r} not at index {index} ({rounds})"

        found: set[str] = set()
        for text, memory_id in ledger.memories.items():
            hits = (await server.call("memory_search", session_id=SESSION, query=text, limit=5))["results"]
            assert memory_id in [hit["memory_id"] for hit in hits], (
                f"acknowledged memory {text!r} not found ({rounds})"
            )
            for hit in hits:
                assert hit["text"] in ledger.texts_sent, f"search returned a memory nobody added: {hit}"
                if hit["text"] in ledger.memories:
                    assert hit["memory_id"] == ledger.memories[hit["text"]], f"two rows for {hit['text']!r}"
                found.add(hit["memory_id"])
        for memory_id in found:  # every id search hands out is a real row
            assert (await server.call("memory_delete", session_id=SESSION, memory_id=memory_id))["deleted"]

    if deployment.database_url.startswith("sqlite:///"):
        path = deployment.database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_three_server_processes_incrementing_one_key_lose_nothing(deployment: Deployment) -> None:
    deployment = dataclasses.replace(deployment, warm_model=False)  # no memory here: spare the 2 cores
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(serve(deployment, f"p{n}")) for n in range(3)]
        await servers[0].call("session_create", session_id="shared")
        returned: list[int] = []

        async def ten_increments(server: Server) -> None:
            for _ in range(10):
                written = await server.call("state_increment", session_id="shared", key="n")
                returned.append(written["value"])

        with anyio.fail_after(CALL_TIMEOUT * 4):
            async with anyio.create_task_group() as tasks:
                for server in servers:
                    for _ in range(10):  # 10 in flight per process, 100 increments each
                        tasks.start_soon(ten_increments, server)

        final = await servers[2].call("state_get", session_id="shared", key="n")
    assert (final["value"], final["version"]) == (300, 300)
    assert sorted(returned) == list(range(1, 301)), "two increments saw the same old value"


async def test_memory_added_through_one_process_is_found_through_another(deployment: Deployment) -> None:
    async with serve(deployment, "a") as a, serve(deployment, "b") as b:
        await a.call("session_create", session_id="shared", user_id="u")
        # B builds its vector cache before A's write, so finding A's memory means B noticed it.
        await b.call("memory_add", session_id="shared", text="The project is built with the Rust compiler.")
        assert len((await b.call("memory_search", session_id="shared", query="compiler"))["results"]) == 1

        added = await a.call(
            "memory_add", session_id="shared", text="The user's favourite drink is green tea."
        )
        query = "Which beverage does this person enjoy?"  # no word in common: only the vectors can match
        hits = (await b.call("memory_search", session_id="shared", query=query))["results"]
        assert hits and hits[0]["memory_id"] == added["memory_id"], hits

        assert (await b.call("memory_delete", session_id="shared", memory_id=added["memory_id"]))["deleted"]
        for text in (query, "The user's favourite drink is green tea."):
            hits = (await a.call("memory_search", session_id="shared", query=text))["results"]
            assert added["memory_id"] not in [hit["memory_id"] for hit in hits]
        text = await a.error("memory_delete", session_id="shared", memory_id=added["memory_id"])
        assert text.startswith("memory_not_found: ")


async def test_state_survives_a_clean_restart(deployment: Deployment) -> None:
    deployment = dataclasses.replace(deployment, warm_model=False)
    async with serve(deployment, "first") as server:
        await server.call("session_create", session_id="durable", user_id="u")
        await server.call("state_set", session_id="durable", key="profile", value={"lang": "pt", "n": [1, 2]})
        await server.call("state_increment", session_id="durable", key="visits", increment=3)

    async with serve(deployment, "second") as server:
        resumed = await server.call("session_create", session_id="durable", user_id="u")
        assert resumed["resumed"]
        profile = await server.call("state_get", session_id="durable", key="profile")
        assert profile == {
            "key": "profile",
            "value": {"lang": "pt", "n": [1, 2]},
            "found": True,
            "version": 1,
        }
        visits = await server.call("state_get", session_id="durable", key="visits")
        assert (visits["value"], visits["version"]) == (3, 1)
