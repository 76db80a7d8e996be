"""knowledge_add with an http(s) URL through the in-memory MCP client: allowed when listed, refused by default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_agent import Recorder, app_of, serving
from mcp import Client
from mcp.types import CallToolResult, TextContent
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from session_mcp.models.clock import ManualClock
from session_mcp.models.embedder import Embedder
from session_mcp.server.app import build_server
from session_mcp.server.settings import Settings


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, Recorder]]:
    async def page(_: Request) -> Response:
        return HTMLResponse("<title>Orchard</title><h1>Orchard</h1><p>The russet apples ripen last.</p>")

    recorder = Recorder()
    with serving(recorder.wrap(app_of({"/orchard": (["GET"], page)}))) as base:
        yield base, recorder


async def test_knowledge_add_fetches_a_listed_url_and_refuses_it_by_default(
    settings: Settings, clock: ManualClock, embedder: Embedder, site: tuple[str, Recorder]
) -> None:
    base, recorder = site
    url = base + "/orchard"
    allowed = settings.model_copy(update={"url_allow": "public,loopback"})
    async with Client(build_server(allowed, clock=clock, embedder=embedder), raise_exceptions=True) as client:
        await client.call_tool("session_create", {"session_id": "s"})
        result = await client.call_tool("knowledge_add", {"session_id": "s", "source": url})
        assert isinstance(result, CallToolResult) and not result.is_error, result.content
        assert result.structured_content is not None
        (document,) = result.structured_content["documents"]
        assert (document["source"], document["title"], document["status"]) == (url, "Orchard", "added")
        found = await client.call_tool("knowledge_search", {"session_id": "s", "query": "russet apples"})
        assert found.structured_content is not None
        assert found.structured_content["results"][0]["source"] == url
    hits = recorder.hits
    async with Client(
        build_server(settings, clock=clock, embedder=embedder), raise_exceptions=True
    ) as client:
        await client.call_tool("session_create", {"session_id": "s"})
        refused = await client.call_tool("knowledge_add", {"session_id": "s", "source": url})
        assert isinstance(refused, CallToolResult) and refused.is_error
        first = refused.content[0]
        assert isinstance(first, TextContent) and first.text.startswith("url_not_allowed:")
        assert "SESSION_MCP_URL_ALLOW" in first.text
    assert recorder.hits == hits
