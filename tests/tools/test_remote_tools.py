"""session_create(agent_url=...) and session_chat through the in-memory MCP client, against a real agent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_agent import Recorder, free_port, launch_app, serving
from mcp import Client
from tool_calls import call, error


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with serving(recorder.wrap(launch_app("/agent"))) as base:
        yield base, recorder


async def test_session_chat_is_listed_as_an_open_world_write(client: Client) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    chat = listed["session_chat"]
    assert chat.annotations is not None
    assert (chat.annotations.open_world_hint, chat.annotations.read_only_hint) == (True, False)
    assert list(chat.input_schema["properties"]) == ["session_id", "message", "extra"]
    assert set(chat.output_schema["properties"]) == {"response", "elapsed_ms"}  # type: ignore[index]
    create = listed["session_create"].input_schema["properties"]
    assert {"agent_url", "timeout"} <= set(create)


async def test_a_remote_session_chats_through_the_tools(client: Client, agent: tuple[str, Recorder]) -> None:
    base, recorder = agent
    hostport = base.removeprefix("http://")
    created = await call(
        client, "session_create", session_id="remote_chat", agent_url=f"{hostport}/agent", timeout=30
    )
    assert created["agent_url"] == f"{base}/agent" and created["timeout_seconds"] == 30
    reply = await call(
        client, "session_chat", session_id="remote_chat", message="Hello", extra={"lang": "en"}
    )
    assert reply["response"] == "echo: Hello" and isinstance(reply["elapsed_ms"], int)
    assert recorder.requests[-1].json() == {
        "query": "Hello",
        "session_id": "remote_chat",
        "user_id": "default_user",
        "lang": "en",
    }
    history = (await call(client, "history_get", session_id="remote_chat"))["messages"]
    assert [(m["role"], m["content"]) for m in history] == [("user", "Hello"), ("assistant", "echo: Hello")]
    for name, arguments in (
        ("state_get", {"key": "k"}),
        ("state_set", {"key": "k", "value": 1}),
        ("memory_search", {"query": "q"}),
        ("memory_add", {"text": "t"}),
        ("get_context", {"query": "q"}),
    ):
        text = await error(client, name, session_id="remote_chat", **arguments)
        assert text.startswith("local_only: session 'remote_chat' talks to a remote agent at ")
        assert "run this on the agent's side" in text


async def test_tool_errors_name_the_problem_and_the_fix(client: Client, agent: tuple[str, Recorder]) -> None:
    base, recorder = agent
    text = await error(client, "session_create", session_id="x", agent_url=f"127.0.0.1:{free_port()}/agent")
    assert text.startswith("remote_agent_unreachable: no agent answered at http://127.0.0.1:")
    assert text.endswith("Nothing was created")
    assert (await error(client, "session_get", session_id="x")).startswith("session_not_found: ")
    text = await error(client, "session_create", session_id="x", agent_url="http://169.254.169.254/")
    assert text.startswith(
        "url_not_allowed: http://169.254.169.254/ resolves to 169.254.169.254, a link-local address"
    )
    text = await error(client, "session_create", session_id="x", agent_url="8.8.8.8:8000/agent")
    assert "a public address not in SESSION_MCP_AGENT_ALLOW" in text
    await call(client, "session_create", session_id="local")
    text = await error(client, "session_chat", session_id="local", message="hi")
    assert text.startswith("remote_only: session 'local' is local")
    await call(client, "session_create", session_id="r", agent_url=f"{base}/agent")
    before = recorder.hits
    text = await error(
        client, "session_chat", session_id="r", message="hi", extra={"user_id": "someone_else"}
    )
    assert text.startswith("invalid_argument: extra may not set user_id")
    text = await error(client, "session_chat", session_id="r", message="")
    assert text.startswith("invalid_argument: ")
    text = await error(client, "session_create", session_id="y", agent_url=f"{base}/agent", timeout=0)
    assert text.startswith("invalid_argument: ")
    assert recorder.hits == before
