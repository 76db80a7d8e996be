"""The knowledge tools through the in-memory MCP client: client roots, progress, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.types import CallToolResult, ListRootsResult, Root
from tool_calls import call, error

from session_mcp.models.clock import ManualClock
from session_mcp.models.embedder import Embedder
from session_mcp.server.app import build_server
from session_mcp.server.settings import Settings


@asynccontextmanager
async def rooted_client(
    settings: Settings, clock: ManualClock, embedder: Embedder, roots: list[Path]
) -> AsyncIterator[Client]:
    async def list_roots(_: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=r.as_uri(), name=r.name) for r in roots])  # type: ignore[arg-type]

    server = build_server(settings, clock=clock, embedder=embedder)
    # Roots are a request from server to client: the legacy handshake keeps that back-channel.
    async with Client(server, raise_exceptions=True, list_roots_callback=list_roots, mode="legacy") as client:
        yield client


async def test_knowledge_tools_add_a_folder_inside_client_roots_search_list_and_delete(
    settings: Settings, clock: ManualClock, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.md").write_text("# Boats\n\nThe amber canoe is moored by the mill.")
    (root / "docs" / "b.txt").write_text("Quinces ripen in late autumn.")
    outside = tmp_path / "elsewhere.md"
    outside.write_text("nothing to see")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with rooted_client(settings, clock, embedder, [root]) as client:
        await call(client, "session_create", session_id="s", user_id="u")
        result = await client.call_tool(
            "knowledge_add", {"session_id": "s", "source": str(root / "docs")}, progress_callback=on_progress
        )
        assert isinstance(result, CallToolResult) and not result.is_error, result.content
        added = result.structured_content
        assert added is not None and len(added["documents"]) == 2 and added["skipped"] == []
        assert progress and progress[-1][:2] == (2, 2)
        hits = (await call(client, "knowledge_search", session_id="s", query="amber canoe"))["results"]
        assert hits[0]["title"] == "Boats" and hits[0]["source"].endswith("a.md")
        for mode in ("vector", "keyword"):
            assert (await call(client, "knowledge_search", session_id="s", query="quinces", mode=mode))[
                "results"
            ]
        listed = (await call(client, "knowledge_list", session_id="s"))["documents"]
        assert len(listed) == 2
        text = await error(client, "knowledge_add", session_id="s", source=str(outside))
        assert text.startswith("path_not_allowed:") and str(root) in text
        context = await call(client, "get_context", session_id="s", query="Where is the canoe moored?")
        assert "## From your documents" in context["context"]
        gone = await call(client, "knowledge_delete", session_id="s", document_id=listed[0]["document_id"])
        assert gone["deleted"] is True
        text = await error(client, "knowledge_delete", session_id="s", document_id=listed[0]["document_id"])
        assert text.startswith("document_not_found:")
        text = await error(client, "knowledge_search", session_id="s", query="x", mode="fuzzy")
        assert text.startswith("invalid_argument:")


async def test_knowledge_add_does_not_block_other_tool_calls(
    settings: Settings, clock: ManualClock, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for n in range(30):
        (root / f"{n}.md").write_text(f"# Note {n}\n\n" + f"Sentence {n} about the topic of fish. " * 40)
    async with rooted_client(settings, clock, embedder, [root]) as client:
        await call(client, "session_create", session_id="s", user_id="u")
        adding = asyncio.create_task(
            client.call_tool("knowledge_add", {"session_id": "s", "source": str(root)})
        )
        got = await call(client, "session_get", session_id="s")
        assert got["session_id"] == "s" and not adding.done()
        result = await adding
        assert isinstance(result, CallToolResult) and not result.is_error
