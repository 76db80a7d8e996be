"""Remote-agent sessions against real HTTP agents speaking PraisonAI's Agent.launch() contract."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fake_agent import Recorder, app_of, free_port, launch_app, serving
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from session_mcp.models.clock import ManualClock
from session_mcp.models.errors import (
    Conflict,
    InvalidArgument,
    LocalOnly,
    RemoteAgentError,
    RemoteAgentUnreachable,
    RemoteOnly,
    SessionClosed,
    SessionExpired,
    SessionNotFound,
    UrlNotAllowed,
)
from session_mcp.models.layer import SessionLayer
from session_mcp.models.remote import health_url, normalize_agent_url


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, Recorder]]:
    """Agent.launch(path='/agent'): GET /agent/health is 404, HEAD /agent is 405."""
    recorder = Recorder()
    with serving(recorder.wrap(launch_app("/agent"))) as base:
        yield base, recorder


@pytest.fixture(scope="module")
def oddities() -> Iterator[tuple[str, Recorder]]:
    """An agent at / that answers in every way a real one might get wrong."""
    recorder = Recorder()

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def plain(_: Request) -> Response:
        return PlainTextResponse("just words, no JSON")

    async def other_key(_: Request) -> Response:
        return JSONResponse({"answer": "42", "agent": "x"})

    async def structured(_: Request) -> Response:
        return JSONResponse({"response": {"text": "hi", "n": 1}})

    async def broken(_: Request) -> Response:
        return JSONResponse({"error": "Error processing query: boom"}, 500)

    async def slow(request: Request) -> Response:
        for _ in range(100):  # the handler's wait (5 s at most): the client gives up long before
            await anyio.sleep(0.05)
            if await request.is_disconnected():
                break
        return JSONResponse({"response": "too late"})

    async def to_metadata(_: Request) -> Response:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=307)

    routes: dict[str, Any] = {
        "/health": (["GET"], health),
        "/plain": (["POST"], plain),
        "/other": (["POST"], other_key),
        "/structured": (["POST"], structured),
        "/broken": (["POST"], broken),
        "/slow": (["POST"], slow),
        "/metadata": (["POST"], to_metadata),
    }
    with serving(recorder.wrap(app_of(routes))) as base:
        yield base, recorder


@pytest.fixture(scope="module")
def nothing() -> Iterator[tuple[str, Recorder]]:
    """An HTTP server that is not an agent: 404 for everything."""
    recorder = Recorder()
    with serving(recorder.wrap(app_of({}))) as base:
        yield base, recorder


def hostport(base: str) -> str:
    return base.removeprefix("http://")


def test_urls_without_a_scheme_get_http_and_other_schemes_are_refused() -> None:
    assert normalize_agent_url("192.168.1.10:8000/agent") == "http://192.168.1.10:8000/agent"
    assert normalize_agent_url(" localhost:8000 ") == "http://localhost:8000"
    assert normalize_agent_url("agents.local") == "http://agents.local"
    assert normalize_agent_url("HTTPS://a.example/x") == "HTTPS://a.example/x"
    assert normalize_agent_url("10.0.0.2:80/p?next=http://x") == "http://10.0.0.2:80/p?next=http://x"
    for bad in ("file:///etc/passwd", "file:/etc/passwd", "gopher://x/", "javascript:alert(1)"):
        with pytest.raises(UrlNotAllowed, match="agents are reached over http:// or https:// only"):
            normalize_agent_url(bad)
    assert health_url("http://h:1/agent/") == "http://h:1/agent/health"
    assert health_url("http://h:1") == "http://h:1/health"
    assert health_url("http://h:1/health") == "http://h:1/health"


def test_the_real_agent_launch_path_passes_the_probe_by_405_on_head(
    layer: SessionLayer, agent: tuple[str, Recorder]
) -> None:
    base, recorder = agent
    before = recorder.hits
    info = layer.sessions.create("remote_chat", agent_url=f"{hostport(base)}/agent", timeout=5)
    assert info.agent_url == f"{base}/agent" and info.timeout_seconds == 5
    probes = [(r.method, r.path) for r in recorder.requests[before:]]
    assert probes == [("GET", "/agent/health"), ("HEAD", "/agent")]


def test_a_healthy_root_agent_passes_on_get_health_alone(
    layer: SessionLayer, oddities: tuple[str, Recorder]
) -> None:
    base, recorder = oddities
    before = recorder.hits
    info = layer.sessions.create("root", agent_url=base)
    assert info.timeout_seconds == layer.config.limits.agent_timeout_seconds
    assert [(r.method, r.path) for r in recorder.requests[before:]] == [("GET", "/health")]


@pytest.mark.parametrize("where", ["not_an_agent", "refused_port", "metadata"])
def test_an_agent_that_is_not_there_creates_nothing(
    layer: SessionLayer, nothing: tuple[str, Recorder], where: str
) -> None:
    url = {
        "not_an_agent": f"{nothing[0]}/agent",
        "refused_port": f"127.0.0.1:{free_port()}/agent",
        "metadata": "169.254.169.254/latest",
    }[where]
    expected = UrlNotAllowed if where == "metadata" else RemoteAgentUnreachable
    with pytest.raises(expected) as failed:
        layer.sessions.create("ghost", agent_url=url, timeout=2)
    if where == "not_an_agent":
        assert "GET http://127.0.0.1:" in failed.value.message and "answered 404" in failed.value.message
    if where == "refused_port":
        assert failed.value.message.startswith("no agent answered at http://127.0.0.1:")
        assert "Connection refused" in failed.value.message
    with pytest.raises(SessionNotFound):
        layer.sessions.get("ghost")
    assert layer.sessions.list().sessions == []


def test_chat_sends_the_agent_launch_body_and_records_the_exchange(
    layer: SessionLayer, agent: tuple[str, Recorder]
) -> None:
    base, recorder = agent
    layer.sessions.create("remote_chat", "user_456", agent_url=f"{base}/agent")
    reply = layer.remote.chat("remote_chat", "Hello from a remote client", {"temperature": 0.2})
    assert reply.response == "echo: Hello from a remote client" and reply.elapsed_ms >= 0
    sent = recorder.requests[-1]
    assert (sent.method, sent.path, sent.headers["content-type"]) == ("POST", "/agent", "application/json")
    assert sent.json() == {
        "query": "Hello from a remote client",
        "session_id": "remote_chat",
        "user_id": "user_456",
        "temperature": 0.2,
    }
    assert "authorization" not in sent.headers and "cookie" not in sent.headers
    messages = layer.history.get("remote_chat").messages
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hello from a remote client"),
        ("assistant", "echo: Hello from a remote client"),
    ]


@pytest.mark.parametrize("field", ["query", "session_id", "user_id"])
def test_extra_may_not_override_the_fields_chat_fills_in(
    layer: SessionLayer, agent: tuple[str, Recorder], field: str
) -> None:
    base, recorder = agent
    layer.sessions.create("r", agent_url=f"{base}/agent")
    before = recorder.hits
    with pytest.raises(InvalidArgument, match=f"extra may not set {field}"):
        layer.remote.chat("r", "hi", {field: "other"})
    assert recorder.hits == before and layer.history.get("r").messages == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/plain", "just words, no JSON"),
        ("/other", '{"answer":"42","agent":"x"}'),
        ("/structured", '{"text": "hi", "n": 1}'),
    ],
)
def test_the_reply_is_the_response_field_or_else_the_body(
    layer: SessionLayer, oddities: tuple[str, Recorder], path: str, expected: str
) -> None:
    base, _ = oddities
    layer.sessions.create("odd", agent_url=f"{base}{path}")
    assert layer.remote.chat("odd", "question").response == expected


def test_an_agent_error_is_remote_agent_error_and_nothing_is_recorded(
    layer: SessionLayer, oddities: tuple[str, Recorder]
) -> None:
    base, _ = oddities
    layer.sessions.create("err", agent_url=f"{base}/broken")
    with pytest.raises(RemoteAgentError) as failed:
        layer.remote.chat("err", "question")
    assert 'answered HTTP 500: {"error":"Error processing query: boom"}' in failed.value.message
    assert "try again" in failed.value.message
    assert layer.history.get("err").messages == []


def test_a_slow_agent_times_out_within_the_sessions_timeout(
    layer: SessionLayer, oddities: tuple[str, Recorder]
) -> None:
    base, _ = oddities
    layer.sessions.create("slow", agent_url=f"{base}/slow", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RemoteAgentError, match=r"did not answer within 0.5 s \(the session's timeout\)"):
        layer.remote.chat("slow", "question")
    assert time.monotonic() - started < 3
    assert layer.history.get("slow").messages == []


def test_a_redirect_to_a_refused_host_is_url_not_allowed(
    layer: SessionLayer, oddities: tuple[str, Recorder]
) -> None:
    base, _ = oddities
    layer.sessions.create("redir", agent_url=f"{base}/metadata")
    with pytest.raises(UrlNotAllowed) as refused:
        layer.remote.chat("redir", "question")
    assert "redirected to http://169.254.169.254/latest/meta-data/" in refused.value.message
    assert "link-local" in refused.value.message


def test_an_agent_that_went_away_is_unreachable(layer: SessionLayer) -> None:
    recorder = Recorder()
    with serving(recorder.wrap(launch_app("/"))) as base:
        layer.sessions.create("gone", agent_url=base)
    with pytest.raises(RemoteAgentUnreachable, match="check that it is running"):
        layer.remote.chat("gone", "anyone there?")


def test_chat_on_a_local_session_is_remote_only(layer: SessionLayer) -> None:
    layer.sessions.create("local")
    with pytest.raises(RemoteOnly, match="create a session with agent_url"):
        layer.remote.chat("local", "hello")


def test_state_memory_and_context_on_a_remote_session_are_local_only_reads_included(
    layer: SessionLayer, agent: tuple[str, Recorder]
) -> None:
    base, _ = agent
    layer.sessions.create("r", agent_url=f"{base}/agent")
    calls: list[Any] = [
        lambda: layer.state.get("r", "k"),
        lambda: layer.state.restore("r"),
        lambda: layer.state.set("r", "k", 1),
        lambda: layer.state.increment("r", "k"),
        lambda: layer.memory.search("r", "anything"),
        lambda: layer.memory.add("r", "a fact"),
        lambda: layer.memory.clear("r"),
        lambda: layer.context.build("r", "anything"),
    ]
    for call in calls:
        with pytest.raises(LocalOnly) as refused:
            call()
        assert f"talks to a remote agent at {base}/agent" in refused.value.message
        assert "run this on the agent's side" in refused.value.message
    layer.remote.chat("r", "history is recorded by chat and stays readable")
    assert len(layer.history.get("r").messages) == 2


def test_resuming_keeps_the_agent_and_a_different_agent_is_a_conflict(
    layer: SessionLayer, agent: tuple[str, Recorder], oddities: tuple[str, Recorder]
) -> None:
    base, recorder = agent
    layer.sessions.create("r", agent_url=f"{base}/agent")
    before = recorder.hits
    resumed = layer.sessions.create("r")
    assert resumed.resumed and resumed.agent_url == f"{base}/agent"
    assert layer.sessions.create("r", agent_url=f"{hostport(base)}/agent").resumed
    assert recorder.hits == before  # resuming does not probe again
    with pytest.raises(Conflict, match="already exists with the agent at"):
        layer.sessions.create("r", agent_url=oddities[0])
    layer.sessions.create("l")
    with pytest.raises(Conflict, match="no remote agent"):
        layer.sessions.create("l", agent_url=f"{base}/agent")


def test_timeout_needs_an_agent_and_a_sane_value(layer: SessionLayer, agent: tuple[str, Recorder]) -> None:
    base, recorder = agent
    with pytest.raises(InvalidArgument, match="timeout applies to remote-agent sessions only"):
        layer.sessions.create("t", timeout=5)
    before = recorder.hits
    for bad in (0, -1, 601):
        with pytest.raises(InvalidArgument, match="timeout="):
            layer.sessions.create("t", agent_url=f"{base}/agent", timeout=bad)
    assert recorder.hits == before


def test_closed_and_expired_remote_sessions_refuse_chat_before_sending(
    layer: SessionLayer, agent: tuple[str, Recorder], clock: ManualClock
) -> None:
    base, recorder = agent
    layer.sessions.create("c", agent_url=f"{base}/agent")
    layer.sessions.close("c")
    layer.sessions.create("e", agent_url=f"{base}/agent", ttl_seconds=10)
    clock.advance(11)
    before = recorder.hits
    with pytest.raises(SessionClosed):
        layer.remote.chat("c", "hi")
    with pytest.raises(SessionExpired):
        layer.remote.chat("e", "hi")
    assert recorder.hits == before


def test_a_reply_over_the_cap_is_refused(layer: SessionLayer) -> None:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def huge(_: Request) -> Response:
        return JSONResponse({"response": "x" * 2_000_000})

    with serving(app_of({"/health": (["GET"], health), "/": (["POST"], huge)})) as base:
        layer.sessions.create("big", agent_url=base)
        with pytest.raises(
            RemoteAgentError, match=r"over the limit of 1048576.*ask the agent for a shorter answer"
        ):
            layer.remote.chat("big", "tell me everything")


def test_the_stored_url_and_timeout_survive_in_the_database(
    layer: SessionLayer, agent: tuple[str, Recorder]
) -> None:
    base, _ = agent
    layer.sessions.create("kept", agent_url=f"{hostport(base)}/agent", timeout=7.5)
    info = layer.sessions.get("kept")
    assert (info.agent_url, info.timeout_seconds) == (f"{base}/agent", 7.5)
    assert json.loads(info.model_dump_json())["timeout_seconds"] == 7.5
