"""History: ordered messages with tool calls intact, per agent, per session."""

from __future__ import annotations

import threading

import pytest

from session_mcp.models.errors import InvalidArgument
from session_mcp.models.layer import SessionLayer


@pytest.fixture
def sid(layer: SessionLayer) -> str:
    return layer.sessions.create("h").session_id


def test_messages_come_back_in_order_with_tool_calls_intact(layer: SessionLayer, sid: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    assert layer.history.add(sid, "user", "add one").index == 0
    assert layer.history.add(sid, "assistant", "", tool_calls=[call]).index == 1
    assert layer.history.add(sid, "tool", "2", tool_call_id="call_1").index == 2
    layer.history.add(sid, "assistant", "It is 2.")
    messages = layer.history.get(sid).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1].tool_calls == [call]
    assert messages[2].tool_call_id == "call_1"
    assert [m.index for m in messages] == [0, 1, 2, 3]


def test_limit_returns_the_last_messages_in_order(layer: SessionLayer, sid: str) -> None:
    for n in range(5):
        layer.history.add(sid, "user", f"m{n}")
    assert [m.content for m in layer.history.get(sid, limit=2).messages] == ["m3", "m4"]


def test_agent_filter_keeps_one_agents_messages(layer: SessionLayer, sid: str) -> None:
    layer.history.add(sid, "user", "to a", agent="a")
    layer.history.add(sid, "user", "to b", agent="b")
    assert [m.content for m in layer.history.get(sid, agent="b").messages] == ["to b"]


def test_tool_message_without_call_id_is_refused(layer: SessionLayer, sid: str) -> None:
    with pytest.raises(InvalidArgument):
        layer.history.add(sid, "tool", "2")
    with pytest.raises(InvalidArgument):
        layer.history.add(sid, "user", "x", tool_calls=[{"id": "c"}])
    with pytest.raises(InvalidArgument):
        layer.history.add(sid, "user", "   ")
    assert layer.history.get(sid).messages == []


def test_concurrent_adds_get_distinct_dense_indexes(layer: SessionLayer, sid: str) -> None:
    def work() -> None:
        for n in range(10):
            layer.history.add(sid, "user", f"{threading.get_ident()}-{n}")

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [m.index for m in layer.history.get(sid).messages] == list(range(50))


def test_history_is_per_session(layer: SessionLayer, sid: str) -> None:
    layer.sessions.create("other")
    layer.history.add(sid, "user", "mine")
    assert layer.history.get("other").messages == []
