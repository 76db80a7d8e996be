"""The HTTP transports through real uvicorn on 127.0.0.1: the whole tool suite over SSE and over
streamable HTTP, the hardening matrix, per-user isolation, the CLI's refusals and graceful shutdown."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from http_servers import (
    CALL_TIMEOUT,
    START_TIMEOUT,
    TOKEN_TABLE,
    TOKENS,
    Held,
    Running,
    connect,
    connect_to,
    http_server,
)
from mcp import Client, types
from mcp.shared.exceptions import MCPError
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from session_mcp.models.embedder import Embedder
from session_mcp.server.app import build_server
from session_mcp.server.auth import TokenTableError, load_token_table
from session_mcp.server.exposure import HttpConfigError, transport_security
from session_mcp.server.http import Transport
from session_mcp.server.settings import Settings

# The tool suite (tests/tools/test_tools.py) runs here again, unchanged: its tests take the
# `client` fixture, which tests/server/conftest.py provides over HTTP, once per transport.
_TOOL_TESTS = str(Path(__file__).resolve().parents[1] / "tools")
if _TOOL_TESTS not in sys.path:
    sys.path.insert(0, _TOOL_TESTS)  # where pytest itself imports it from (rootdir-relative, no package)
tool_suite = importlib.import_module("test_tools")
globals().update({name: getattr(tool_suite, name) for name in dir(tool_suite) if name.startswith("test_")})

call = tool_suite.call
error = tool_suite.error

SCRIPT = Path(sys.prefix) / "bin" / "session-mcp"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": LATEST_HANDSHAKE_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "http-test", "version": "0"},
    },
}
ACCEPT = {"accept": "application/json, text/event-stream"}


def bearer(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[user]}"}


@asynccontextmanager
async def opened(
    running: Running, headers: dict[str, str], body: Any = INITIALIZE
) -> AsyncIterator[httpx2.Response]:
    """Open the transport's endpoint the way a client starts: POST initialize to /mcp, GET /sse.
    Only the status line and headers are awaited; a stream that opens is closed on the way out."""
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        if running.transport == "sse":
            request = http.build_request("GET", running.endpoint, headers=headers)
        else:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            base = {"content-type": "application/json", **ACCEPT}
            request = http.build_request(
                "POST", running.endpoint, headers={**base, **headers}, content=content
            )
        response = await http.send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()


async def status_of(running: Running, headers: dict[str, str]) -> int:
    async with opened(running, headers) as response:
        return response.status_code


# -- the hardening matrix ------------------------------------------------------------------------


async def test_a_valid_token_opens_the_transport(secured: Running) -> None:
    assert await status_of(secured, bearer("alice")) == 200


async def test_health_answers_without_a_token_and_whatever_the_host(secured: Running) -> None:
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        response = await http.get(secured.base + "/health", headers={"host": "10.1.2.3:8000"})
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "transport": secured.transport,
            "version": response.json()["version"],
        }
        assert (await http.post(secured.base + "/health")).status_code == 405


async def test_no_token_is_401_with_a_bearer_challenge(secured: Running) -> None:
    async with opened(secured, {}) as response:
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="session-mcp"'
        body = json.loads(await response.aread())
        assert "Authorization: Bearer" in body["error_description"]


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKENS['alice']}x", f"Bearer {TOKENS['alice'][:-1]}", "Bearer", f"Basic {TOKENS['alice']}"],
    ids=["longer", "prefix", "empty", "basic-scheme"],
)
async def test_a_wrong_token_is_401(secured: Running, authorization: str) -> None:
    async with opened(secured, {"authorization": authorization}) as response:
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer realm="session-mcp"')


async def test_a_token_in_the_query_string_is_not_accepted(secured: Running) -> None:
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        response = await http.get(f"{secured.endpoint}?access_token={TOKENS['alice']}")
    assert response.status_code == 401


@pytest.mark.parametrize("token", [None, "alice"], ids=["no-token", "valid-token"])
async def test_an_unlisted_host_is_421_before_the_token_is_looked_at(
    secured: Running, token: str | None
) -> None:
    headers = {"host": f"evil.example:{secured.port}", **(bearer(token) if token else {})}
    async with opened(secured, headers) as response:
        assert response.status_code == 421
        assert "SESSION_MCP_ALLOWED_HOSTS" in json.loads(await response.aread())["message"]


async def test_an_unlisted_origin_is_403_and_a_loopback_origin_is_served(secured: Running) -> None:
    assert await status_of(secured, {"origin": "http://evil.example", **bearer("alice")}) == 403
    assert await status_of(secured, {"origin": f"http://127.0.0.1:{secured.port}", **bearer("alice")}) == 200


@pytest.fixture
def small_body_settings(edge_settings: Settings) -> Settings:
    return edge_settings.model_copy(update={"max_body_bytes": 64 * 1024})


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_oversized_body_is_413(
    small_body_settings: Settings, transport: Transport, embedder: Embedder, chunked: bool
) -> None:
    with http_server(small_body_settings, transport, TOKEN_TABLE, embedder=embedder) as running:
        url = (
            running.endpoint
            if transport == "streamable-http"
            else f"{running.base}/messages/?session_id={'0' * 32}"
        )
        payload = json.dumps({**INITIALIZE, "padding": "x" * 100_000}).encode()

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(payload), 8192):
                yield payload[start : start + 8192]

        headers = {"content-type": "application/json", **ACCEPT, **bearer("alice")}
        async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
            response = await http.post(url, headers=headers, content=pieces() if chunked else payload)
            assert response.status_code == 413
            # just under the limit is fine (for SSE: an unknown session, so 404, not 413)
            small = json.dumps({**INITIALIZE, "padding": "x" * 60_000}).encode()
            response = await http.post(url, headers=headers, content=small)
            assert response.status_code == (200 if transport == "streamable-http" else 404)


async def test_a_body_that_is_not_json_content_is_400(secured: Running) -> None:
    url = (
        secured.endpoint
        if secured.transport == "streamable-http"
        else f"{secured.base}/messages/?session_id={'0' * 32}"
    )
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        response = await http.post(
            url, headers={"content-type": "text/plain", **ACCEPT, **bearer("alice")}, content=b"{}"
        )
    assert response.status_code == 400


async def test_another_users_transport_session_answers_404(secured: Running) -> None:
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        if secured.transport == "streamable-http":
            async with opened(secured, bearer("alice")) as response:
                session = response.headers["mcp-session-id"]
            url = secured.endpoint
            extra = {"mcp-session-id": session, "mcp-protocol-version": LATEST_HANDSHAKE_VERSION}
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            headers = {"content-type": "application/json", **ACCEPT, **extra}
            assert (await http.post(url, headers={**headers, **bearer("bob")}, json=ping)).status_code == 404
            assert (
                await http.post(url, headers={**headers, **bearer("alice")}, json=ping)
            ).status_code == 200
        else:
            async with opened(secured, bearer("alice")) as stream:
                lines = stream.aiter_lines()
                with anyio.fail_after(CALL_TIMEOUT):
                    endpoint = next_line = ""
                    while not next_line.startswith("data: /messages/"):
                        next_line = await anext(lines)
                    endpoint = next_line.removeprefix("data: ")
                url = secured.base + endpoint
                headers = {"content-type": "application/json"}
                assert (
                    await http.post(url, headers={**headers, **bearer("bob")}, json=INITIALIZE)
                ).status_code == 404
                assert (
                    await http.post(url, headers={**headers, **bearer("alice")}, json=INITIALIZE)
                ).status_code == 202


# -- the caller's user comes from the token -------------------------------------------------------


async def test_another_users_session_answers_session_not_found(team_server: Running, held: Held) -> None:
    async with (
        held(connect(team_server, TOKENS["alice"])) as alice,
        held(connect(team_server, TOKENS["bob"])) as bob,
    ):
        created = await call(alice, "session_create", session_id="alice-chat")
        assert created["user_id"] == "alice"
        await call(alice, "state_set", session_id="alice-chat", key="secret", value="alice's")
        await call(alice, "history_add", session_id="alice-chat", role="user", content="alice's message")
        await call(
            alice, "memory_add", session_id="alice-chat", text="Alice keeps her spare key under the blue pot"
        )

        for tool, arguments in [
            ("session_get", {}),
            ("state_get", {"key": "secret"}),
            ("state_restore", {}),
            ("state_set", {"key": "secret", "value": "bob's"}),
            ("history_get", {}),
            ("memory_search", {"query": "spare key"}),
            ("get_context", {"query": "spare key"}),
            ("session_close", {}),
        ]:
            text = await error(bob, tool, session_id="alice-chat", **arguments)
            assert text.startswith("session_not_found: "), (tool, text)

        # bob's own session sees none of alice's long-term memory
        assert (await call(bob, "session_create", session_id="bob-chat"))["user_id"] == "bob"
        found = await call(bob, "memory_search", session_id="bob-chat", query="where is the spare key?")
        assert found["results"] == []
        listed = await call(bob, "session_list")
        assert [s["session_id"] for s in listed["sessions"]] == ["bob-chat"]

        # and alice's data is untouched
        got = await call(alice, "state_get", session_id="alice-chat", key="secret")
        assert got["value"] == "alice's"


async def test_a_user_id_argument_cannot_name_another_user(team_server: Running, held: Held) -> None:
    async with held(connect(team_server, TOKENS["bob"])) as bob:
        assert (await call(bob, "session_create", session_id="mine", user_id="bob"))["user_id"] == "bob"
        for tool, arguments in [
            ("session_create", {"session_id": "theirs", "user_id": "alice"}),
            ("session_list", {"user_id": "alice"}),
        ]:
            text = await error(bob, tool, **arguments)
            assert text.startswith("invalid_argument: "), (tool, text)
        assert (await error(bob, "session_get", session_id="theirs")).startswith("session_not_found: ")


async def test_one_session_layer_serves_every_connection_and_closes_at_shutdown(
    edge_settings: Settings, transport: Transport, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="session_mcp.server")
    with http_server(edge_settings, transport, TOKEN_TABLE, embedder=embedder) as running:
        layer = running.app.runtime.layer
        for user in [
            "alice",
            "bob",
            "alice",
        ]:  # a connection each (on SSE, each enters the server's lifespan)
            async with connect(running, TOKENS[user]) as client:
                await call(client, "session_create", session_id=f"s-{user}")
                await call(client, "state_increment", session_id=f"s-{user}", key="visits")
        assert running.app.runtime.layer is layer
    assert running.app.runtime.layer is None
    messages = [record.getMessage() for record in caplog.records if record.name == "session_mcp.server"]
    assert messages.count("session layer open") == 1 and messages.count("session layer closed") == 1, messages
    assert messages.index("session layer open") < messages.index("session layer closed")


# -- tokens and allowlists -----------------------------------------------------------------------


def test_token_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    good = "a" * 20
    cases = {
        "no-equals": ("# team tokens\n\n" + f"{good}=alice\nnot-a-pair\n", "line 4: expected token=user"),
        "short": ("short=alice\n", "line 1: the token is shorter than 16 characters"),
        "bad-user": (f"{good}=al ice\n", "line 1: user id 'al ice' is not valid"),
        "repeated": (f"{good}=alice\n{good}=bob\n", "line 2: repeats the token of"),
        "space": (f"{good} x=alice\n", "line 1: the token has a space"),
        "empty": ("# nothing yet\n", "has no token=user lines"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / f"{name}.tokens"
        path.write_text(text)
        with pytest.raises(TokenTableError) as raised:
            load_token_table(None, path)
        assert str(path) in str(raised.value) and expected in str(raised.value), (name, str(raised.value))
        assert good not in str(raised.value), "an error message must never show a token"
    with pytest.raises(TokenTableError, match="does not exist"):
        load_token_table(None, tmp_path / "missing")
    with pytest.raises(TokenTableError, match="SESSION_MCP_AUTH_TOKENS entry 2: expected token=user"):
        load_token_table(f"{good}=alice,oops", None)


def test_token_table_maps_each_token_to_its_user_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-for-carol-0123456789=carol\n  tok-with-equals-0123456789==dave  \n")
    table = load_token_table("tok-for-alice-0123456789=alice, tok-for-bob-0123456789=bob", path)
    assert table is not None and len(table) == 4
    assert table.user_for("tok-for-alice-0123456789") == "alice"
    assert table.user_for("tok-with-equals-0123456789=") == "dave"  # base64 padding stays in the token
    assert table.user_for("tok-for-carol-0123456789") == "carol"
    for wrong in ["", "tok-for-alice", "tok-for-alice-0123456789 ", "TOK-FOR-ALICE-0123456789", "alice"]:
        assert table.user_for(wrong) is None
    assert load_token_table(None, None) is None


def test_allowlists_are_explicit_for_every_bind(edge_settings: Settings) -> None:
    loopback = transport_security(edge_settings)
    assert loopback.enable_dns_rebinding_protection
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*"} <= set(loopback.allowed_hosts)
    assert "http://localhost:*" in loopback.allowed_origins

    lan = transport_security(edge_settings.model_copy(update={"host": "10.0.0.5"}))
    assert {"10.0.0.5", "10.0.0.5:*"} <= set(lan.allowed_hosts)
    assert {"http://10.0.0.5:*", "https://10.0.0.5"} <= set(lan.allowed_origins)

    named = Settings(
        data_dir=edge_settings.data_dir,
        host="0.0.0.0",
        allowed_hosts="mcp.example.com, 10.0.0.5:8443",  # type: ignore[arg-type]  # as the environment gives it
        allowed_origins="https://app.example.com",  # type: ignore[arg-type]
    )
    chosen = transport_security(named)
    assert {"mcp.example.com", "mcp.example.com:*", "10.0.0.5:8443"} <= set(chosen.allowed_hosts)
    assert "10.0.0.5:*" not in chosen.allowed_hosts and "evil.example" not in chosen.allowed_hosts
    assert chosen.allowed_origins == ["https://app.example.com"]

    with pytest.raises(HttpConfigError, match="SESSION_MCP_ALLOWED_HOSTS"):
        transport_security(edge_settings.model_copy(update={"host": "0.0.0.0"}))


async def test_a_listed_host_name_is_served(edge_settings: Settings, embedder: Embedder) -> None:
    named = edge_settings.model_copy(update={"allowed_hosts": ["mcp.example.com"]})
    with http_server(named, "streamable-http", TOKEN_TABLE, embedder=embedder) as running:
        for host, origin, expected in [
            ("mcp.example.com", "https://mcp.example.com", 200),
            (f"mcp.example.com:{running.port}", None, 200),
            ("other.example.com", None, 421),
            ("mcp.example.com", "https://evil.example", 403),
        ]:
            headers = {"host": host, **bearer("alice"), **({"origin": origin} if origin else {})}
            assert await status_of(running, headers) == expected, (host, origin)


# -- the command line ----------------------------------------------------------------------------


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SESSION_MCP_")}
    return env | {
        "SESSION_MCP_DATA_DIR": str(settings.data_dir),
        "SESSION_MCP_DATABASE_URL": settings.resolved_database_url(),
        "SESSION_MCP_WARM_MODEL": "false",
        **extra,
    }


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_cli_refuses_a_non_loopback_bind_without_tokens(edge_settings: Settings, host: str) -> None:
    result = run_cli(
        "serve", "--transport", "streamable-http", "--host", host, "--port", "0", env=cli_env(edge_settings)
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to serve HTTP" in result.stderr and "--allow-unauthenticated" in result.stderr
    assert "SESSION_MCP_AUTH_TOKENS" in result.stderr
    assert "Uvicorn running" not in result.stderr and "Started server" not in result.stderr


def test_cli_refuses_a_wildcard_bind_without_allowed_hosts(edge_settings: Settings) -> None:
    env = cli_env(edge_settings, SESSION_MCP_AUTH_TOKENS=f"{TOKENS['alice']}=alice")
    result = run_cli("serve", "--transport", "sse", "--host", "0.0.0.0", "--port", "0", env=env)
    assert result.returncode == 2, result.stderr
    assert "SESSION_MCP_ALLOWED_HOSTS" in result.stderr


def test_cli_names_the_bad_line_of_the_token_file(edge_settings: Settings, tmp_path: Path) -> None:
    tokens = tmp_path / "team.tokens"
    tokens.write_text(f"# team\n{TOKENS['alice']}=alice\n{TOKENS['bob']}\n")
    env = cli_env(edge_settings, SESSION_MCP_AUTH_TOKENS_FILE=str(tokens))
    result = run_cli("serve", "--transport", "streamable-http", "--port", "0", env=env)
    assert result.returncode == 2, result.stderr
    assert f"session-mcp: {tokens} line 3: expected token=user" in result.stderr
    assert TOKENS["bob"] not in result.stderr


def test_cli_help_documents_the_http_options(edge_settings: Settings) -> None:
    result = run_cli("serve", "--help", env=cli_env(edge_settings))
    assert result.returncode == 0
    for text in [
        "streamable-http",
        "--host",
        "--port",
        "--allow-unauthenticated",
        "/health",
        "SESSION_MCP_AUTH_TOKENS",
    ]:
        assert text in result.stdout, text


# -- graceful shutdown ---------------------------------------------------------------------------

SERVING = re.compile(r"serving MCP over \S+ at (http://\S+) ")


@contextmanager
def spawned(args: list[str], env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`session-mcp serve ...` as a process, once its /health answers; yields it and its endpoint URL."""
    with log.open("w") as errlog:
        process = subprocess.Popen([str(SCRIPT), *args], env=env, stdout=subprocess.DEVNULL, stderr=errlog)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        endpoint = None
        with httpx2.Client(timeout=5) as http:
            while True:
                found = SERVING.search(log.read_text())
                if found:
                    endpoint = found.group(1)
                    try:
                        if http.get(endpoint.rsplit("/", 1)[0] + "/health").status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                assert process.poll() is None, f"the server exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the server did not become healthy:\n{log.read_text()}"
                time.sleep(0.02)  # polling interval
        yield process, endpoint
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_sigterm_finishes_calls_in_flight_then_exits_0_without_waiting_for_idle_streams(
    settings: Settings, transport: Transport, tmp_path: Path
) -> None:
    env = cli_env(
        settings,
        SESSION_MCP_AUTH_TOKENS=f"{TOKENS['alice']}=alice",
        SESSION_MCP_SHUTDOWN_TIMEOUT_SECONDS="30",
    )
    log = tmp_path / "server.log"
    acked_before: list[int] = []
    acked_after: list[int] = []
    failures: list[str] = []
    signalled = anyio.Event()
    signalled_at = time.monotonic()

    with spawned(["serve", "--transport", transport, "--port", "0"], env, log) as (process, endpoint):

        async def worker() -> None:
            """One client calling state_increment back to back until the server is gone. The SDK
            client gives up on every call in flight when one of its connections fails, so each worker
            keeps one call in flight: a failure then means the call never reached the server."""
            try:
                async with connect_to(transport, endpoint, TOKENS["alice"]) as client:
                    await client.list_tools()  # else the first call lists tools after its answer, to check it
                    while True:
                        result = await client.call_tool(
                            "state_increment", {"session_id": "drain", "key": "n"}
                        )
                        assert not result.is_error, result.content
                        value = result.structured_content["value"]  # type: ignore[index]
                        (acked_after if signalled.is_set() else acked_before).append(value)
            except Exception as exc:
                failures.append(repr(exc)[:200])

        async def idle_stream() -> None:
            """A host that connected and waits: on streamable HTTP (legacy handshake) it holds the GET stream."""
            try:
                async with connect_to(transport, endpoint, TOKENS["alice"], mode="legacy"):
                    await anyio.sleep_forever()
            except Exception:
                pass

        async def stop_after_some_acks() -> None:
            nonlocal signalled_at
            while len(acked_before) < 50:
                await anyio.sleep(0.005)
            process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            signalled.set()

        async with connect_to(transport, endpoint, TOKENS["alice"]) as setup:
            await call(setup, "session_create", session_id="drain")
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(idle_stream)
                tasks.start_soon(stop_after_some_acks)
                workers = anyio.create_task_group()
                async with workers:
                    for _ in range(12):
                        workers.start_soon(worker)
                tasks.cancel_scope.cancel()
        returncode = await anyio.to_thread.run_sync(lambda: process.wait(timeout=60))
        exited_in = time.monotonic() - signalled_at

    server_log = log.read_text()
    assert returncode == 0, server_log[-3000:]
    assert exited_in < 10, f"shutdown took {exited_in:.1f}s (waiting for idle streams?)\n{server_log[-3000:]}"
    assert "cutting them off" not in server_log and "Traceback" not in server_log, server_log[-3000:]
    assert acked_after, f"no call in flight at SIGTERM was answered; failures: {failures[:3]}"

    # Every answered increment is stored, and nothing ran without its caller hearing back.
    async with Client(build_server(settings)) as reader:
        final = (await call(reader, "state_get", session_id="drain", key="n"))["value"]
    acked = acked_before + acked_after
    unanswered = sorted(set(range(1, final + 1)) - set(acked))
    assert sorted(acked) == list(range(1, final + 1)), (
        f"{final} stored; no answer for {unanswered}: {failures[:3]}"
    )


async def test_a_user_can_listen_only_to_their_own_sessions(team_server: Running, held: Held) -> None:
    async with (
        held(connect(team_server, TOKENS["alice"])) as alice,
        held(connect(team_server, TOKENS["bob"])) as bob,
    ):
        await call(alice, "session_create", session_id="alice-notes")
        await call(bob, "session_create", session_id="bob-notes")
        for uris in (
            ["session://alice-notes/state"],
            ["session://bob-notes", "session://alice-notes/history"],
        ):
            with pytest.raises(MCPError) as refused:
                async with bob.listen(resource_subscriptions=uris):
                    pass
            assert "session_not_found: " in str(refused.value) and "your own sessions" in str(refused.value)
        async with alice.listen(resource_subscriptions=["session://alice-notes/state"]) as events:
            await call(alice, "state_set", session_id="alice-notes", key="k", value=1)
            with anyio.fail_after(30):
                assert getattr(await anext(events), "uri", None) == "session://alice-notes/state"


async def test_a_listen_sent_as_a_notification_is_passed_on_unchecked_and_dropped(
    team_server: Running, held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    # A notification has no id to send a refusal to: the guard must let it through to the SDK,
    # which drops it (no listen is a notification), rather than raise where nobody hears it. On a
    # legacy connection: at 2026-07-28 streamable HTTP drops client notifications before the guard.
    caplog.set_level(logging.DEBUG, logger="mcp.server.runner")
    listen = types.Notification[dict[str, Any], str](
        method="subscriptions/listen",
        params={"notifications": {"resourceSubscriptions": ["session://alice-notes/state"]}},
    )
    async with (
        held(connect(team_server, TOKENS["alice"])) as alice,
        held(connect(team_server, TOKENS["bob"], mode="legacy")) as bob,
    ):
        await call(alice, "session_create", session_id="alice-notes")
        await bob.session.send_notification(listen)  # type: ignore[arg-type]

        def outcome() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "mcp.server.runner" and "subscriptions/listen" in r.getMessage()
            ]

        with anyio.fail_after(CALL_TIMEOUT):
            while not outcome():
                await anyio.sleep(0.01)  # polling interval, not a wait for anything to happen
        assert outcome() == ["no handler for notification subscriptions/listen"]
        await call(bob, "session_create", session_id="bob-notes")  # the connection still serves
