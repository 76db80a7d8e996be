"""Every tool through the in-memory MCP client: schemas, annotations, results and error codes."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.types import INVALID_PARAMS, ErrorData
from tool_calls import call, error

from session_mcp.models.clock import ManualClock
from session_mcp.tools import ALL_TOOLS

EXPECTED_TOOLS = {
    "session_create", "session_get", "session_list", "session_close",
    "state_get", "state_set", "state_increment", "state_delete", "state_save", "state_restore",
    "memory_add", "memory_search", "memory_delete", "memory_clear",
    "knowledge_add", "knowledge_search", "knowledge_list", "knowledge_delete",
    "get_context", "history_add", "history_get", "session_chat",
}  # fmt: skip


async def test_every_tool_is_listed_with_output_schema_and_annotations(client: Client) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == EXPECTED_TOOLS == {s.name for s in ALL_TOOLS}
    for tool in listed.values():
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.annotations is not None and tool.description
        assert "ctx" not in tool.input_schema.get("properties", {})
    assert listed["state_get"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert listed["memory_clear"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert listed["session_close"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert listed["state_increment"].annotations.idempotent_hint is False  # type: ignore[union-attr]
    first = next(iter(listed["state_get"].input_schema["properties"]))
    assert first == "session_id"


async def test_server_instructions_describe_the_workflow(client: Client) -> None:
    assert client.instructions is not None and "get_context" in client.instructions


async def test_session_round_trip(client: Client, clock: ManualClock) -> None:
    created = await call(client, "session_create", session_id="chat_123", user_id="user_456", ttl_seconds=60)
    assert created["session_id"] == "chat_123" and created["time_to_expiry"] == 60 and not created["resumed"]
    assert (await call(client, "session_create", session_id="chat_123", user_id="user_456"))["resumed"]
    assert (await call(client, "session_get", session_id="chat_123"))["status"] == "active"
    listed = await call(client, "session_list", user_id="user_456")
    assert [s["session_id"] for s in listed["sessions"]] == ["chat_123"]
    clock.advance(61)
    text = await error(client, "state_set", session_id="chat_123", key="k", value=1)
    assert text.startswith("session_expired: session 'chat_123' expired at ")
    closed = await call(client, "session_close", session_id="chat_123")
    assert closed["status"] == "closed"


async def test_a_nul_character_in_any_argument_is_refused_by_name_on_both_databases(client: Client) -> None:
    """PostgreSQL cannot store a NUL in text or JSON; found by fuzzing as an internal error there."""
    await call(client, "session_create", session_id="s")
    await call(client, "state_set", session_id="s", key="k", value={"a": [1]})
    refused = [  # (tool, the argument named, arguments)
        ("session_get", "session_id", {"session_id": "s\x00"}),
        ("state_set", "value", {"session_id": "s", "key": "k", "value": {"a": ["x\x00"]}}),
        ("memory_add", "metadata", {"session_id": "s", "text": "a fact", "metadata": {"nul\x00key": 1}}),
        ("history_add", "content", {"session_id": "s", "role": "user", "content": "hi \x00"}),
    ]
    for tool, named, arguments in refused:
        text = await error(client, tool, **arguments)
        assert text.startswith(f"invalid_argument: {named} contains a NUL character"), text
    assert (await call(client, "state_get", session_id="s", key="k"))["value"] == {"a": [1]}
    assert (await call(client, "history_get", session_id="s"))["messages"] == []
    assert (await call(client, "memory_search", session_id="s", query="a fact"))["results"] == []


async def test_state_tools(client: Client) -> None:
    await call(client, "session_create", session_id="s")
    assert (await call(client, "state_set", session_id="s", key="score", value=10))["version"] == 1
    inc = await call(client, "state_increment", session_id="s", key="score", increment=5)
    assert inc == {"key": "score", "value": 15, "version": 2}
    got = await call(client, "state_get", session_id="s", key="score")
    assert got == {"key": "score", "value": 15, "found": True, "version": 2}
    text = await error(client, "state_set", session_id="s", key="score", value=1, expected_version=1)
    assert text.startswith("conflict: ")
    await call(client, "state_save", session_id="s", state={"user_preference": "Python"})
    assert (await call(client, "state_restore", session_id="s"))["state"] == {"user_preference": "Python"}
    assert (await call(client, "state_delete", session_id="s", key="user_preference"))["deleted"]
    await call(client, "state_set", session_id="s", key="name", value="x")
    assert (await error(client, "state_increment", session_id="s", key="name")).startswith("not_numeric: ")
    await call(client, "state_set", session_id="s", key="big", value=2**63 - 1)
    assert (await error(client, "state_increment", session_id="s", key="big")).startswith("out_of_range: ")
    got_default = await call(client, "state_get", session_id="s", key="missing", default=[1])
    assert got_default["value"] == [1] and not got_default["found"]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"increment": "5"}, "increment"),
        ({"increment": True}, "increment"),
        ({"increment": 2**64}, "increment"),
        ({"key": ""}, "key"),
        ({"key": 5}, "key"),
    ],
)
async def test_bad_arguments_are_invalid_argument_and_change_nothing(
    client: Client, arguments: dict[str, Any], field: str
) -> None:
    await call(client, "session_create", session_id="s")
    text = await error(client, "state_increment", **{"session_id": "s", "key": "n", **arguments})
    assert text.startswith("invalid_argument: ") or text.startswith("out_of_range: "), text
    assert field in text or text.startswith("out_of_range")
    assert (await call(client, "state_restore", session_id="s"))["state"] == {}


async def test_nan_over_the_wire_is_refused(client: Client) -> None:
    await call(client, "session_create", session_id="s")
    text = await error(client, "state_increment", session_id="s", key="n", increment=float("nan"))
    assert text.startswith("invalid_argument: ")


async def test_negative_ttl_over_the_wire(client: Client) -> None:
    text = await error(client, "session_create", session_id="neg", ttl_seconds=-5)
    assert text.startswith("invalid_argument: ttl_seconds=-5")
    assert (await error(client, "session_get", session_id="neg")).startswith("session_not_found: ")


async def test_memory_tools(client: Client) -> None:
    await call(client, "session_create", session_id="m", user_id="u")
    added = await call(client, "memory_add", session_id="m", text="User prefers concise answers")
    assert added["memory_type"] == "long" and not added["deduplicated"]
    again = await call(client, "memory_add", session_id="m", text="User prefers concise answers")
    assert again["deduplicated"] and again["memory_id"] == added["memory_id"]
    await call(client, "memory_add", session_id="m", text="Working on the parser", memory_type="short")
    found = await call(client, "memory_search", session_id="m", query="what does the user prefer?")
    assert found["results"][0]["memory_id"] == added["memory_id"]
    assert set(found["results"][0]) == {"memory_id", "text", "score", "memory_type", "metadata", "created_at"}
    assert (await call(client, "memory_clear", session_id="m"))["deleted"] == 1
    assert (await call(client, "memory_delete", session_id="m", memory_id=added["memory_id"]))["deleted"]
    text = await error(client, "memory_delete", session_id="m", memory_id=added["memory_id"])
    assert text.startswith("memory_not_found: ")
    text = await error(client, "memory_add", session_id="m", text="x", memory_type="medium")
    assert text.startswith("invalid_argument: ")


async def test_context_and_history_tools(client: Client) -> None:
    await call(client, "session_create", session_id="c")
    call_spec = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    await call(client, "history_add", session_id="c", role="user", content="hi")
    await call(client, "history_add", session_id="c", role="assistant", content="", tool_calls=[call_spec])
    added = await call(client, "history_add", session_id="c", role="tool", content="ok", tool_call_id="t1")
    assert added["index"] == 2
    messages = (await call(client, "history_get", session_id="c"))["messages"]
    assert messages[1]["tool_calls"] == [call_spec] and messages[2]["tool_call_id"] == "t1"
    await call(client, "memory_add", session_id="c", text="The user likes tea")
    built = await call(client, "get_context", session_id="c", query="what drink?", max_tokens=200)
    assert "The user likes tea" in built["context"] and built["tokens"] <= 200
    text = await error(client, "history_add", session_id="c", role="tool", content="x")
    assert text.startswith("invalid_argument: ")


async def test_resources_mirror_the_reads(client: Client) -> None:
    await call(client, "session_create", session_id="r")
    await call(client, "state_set", session_id="r", key="k", value=[1, 2])
    await call(client, "history_add", session_id="r", role="user", content="hello")
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert templates == {
        "session://{session_id}",
        "session://{session_id}/state",
        "session://{session_id}/history",
    }
    state = await client.read_resource("session://r/state")
    assert json.loads(state.contents[0].text)["state"] == {"k": [1, 2]}  # type: ignore[union-attr]
    info = await client.read_resource("session://r")
    assert json.loads(info.contents[0].text)["session_id"] == "r"  # type: ignore[union-attr]
    history = await client.read_resource("session://r/history")
    assert json.loads(history.contents[0].text)["messages"][0]["content"] == "hello"  # type: ignore[union-attr]


async def test_context_prompt_wraps_get_context(client: Client) -> None:
    await call(client, "session_create", session_id="p")
    await call(client, "memory_add", session_id="p", text="The user lives in Lisbon")
    prompt = await client.get_prompt("context", {"session_id": "p", "query": "where do I live?"})
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "Lisbon" in text and "where do I live?" in text


async def test_a_prompt_or_resource_that_cannot_be_had_says_why_and_what_to_send(client: Client) -> None:
    async def refusal(ask: Awaitable[Any]) -> ErrorData:
        with pytest.raises(MCPError) as refused:
            await ask
        assert refused.value.error.code == INVALID_PARAMS, refused.value.error
        return refused.value.error

    # The SDK alone answers the three prompts as "Internal server error", with no message.
    unknown = await refusal(client.get_prompt("contxt", {"session_id": "p", "query": "q"}))
    assert "there is no prompt 'contxt'; the prompts are: context" in unknown.message
    incomplete = await refusal(client.get_prompt("context", {"query": "q"}))
    assert "the prompt 'context' needs the argument session_id; send it in arguments" in incomplete.message
    ghost = await refusal(client.get_prompt("context", {"session_id": "ghost", "query": "q"}))
    assert ghost.message.startswith("session_not_found: ")
    assert (await refusal(client.read_resource("session://ghost/state"))).message.startswith(
        "session_not_found: "
    )
    await call(client, "session_create", session_id="p")
    prompt = await client.get_prompt("context", {"session_id": "p", "query": "anything"})
    assert "anything" in prompt.messages[0].content.text  # type: ignore[union-attr]


async def test_two_hundred_increments_in_flight_on_one_connection_lose_nothing(client: Client) -> None:
    await call(client, "session_create", session_id="busy")
    values: list[int] = []

    async def bump() -> None:
        values.append((await call(client, "state_increment", session_id="busy", key="n"))["value"])

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tasks:
            for _ in range(200):
                tasks.start_soon(bump)
    assert sorted(values) == list(range(1, 201))  # every call saw its own, distinct result
    final = await call(client, "state_get", session_id="busy", key="n")
    assert final["value"] == 200 and final["version"] == 200


async def test_listeners_hear_of_writes_to_the_session_resources_they_named(client: Client) -> None:
    await call(client, "session_create", session_id="s")
    await call(client, "session_create", session_id="t")
    async with (
        client.listen(resource_subscriptions=["session://s/state"]) as state_events,
        client.listen(resource_subscriptions=["session://s/history", "session://s"]) as other_events,
    ):
        await call(client, "state_set", session_id="t", key="k", value=1)  # another session's state
        await call(client, "state_increment", session_id="s", key="n")
        await call(client, "history_add", session_id="s", role="user", content="hi")
        await call(client, "session_close", session_id="s")
        with anyio.fail_after(30):
            assert getattr(await anext(state_events), "uri", None) == "session://s/state"
            assert getattr(await anext(other_events), "uri", None) == "session://s/history"
            assert getattr(await anext(other_events), "uri", None) == "session://s"
        refused = await error(client, "state_set", session_id="s", key="k", value=2)  # closed: no write
        assert refused.startswith("session_closed")
        await call(client, "state_set", session_id="t", key="k", value=3)
        await call(client, "state_save", session_id="t", state={})
        await call(client, "session_create", session_id="s2")
        async with client.listen(resource_subscriptions=["session://s2/state"]) as late:
            await call(client, "state_save", session_id="s2", state={"a": 1})
            with anyio.fail_after(30):
                assert getattr(await anext(late), "uri", None) == "session://s2/state"
