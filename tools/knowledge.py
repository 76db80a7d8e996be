"""Knowledge tools: add files, folders, URLs or text to a session's or user's knowledge base, and search it."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPDeprecationWarning
from pydantic import Field, JsonValue

from session_mcp.models.paths import root_from_uri
from session_mcp.models.schemas import KnowledgeAdded, KnowledgeDeleted, KnowledgeList, KnowledgeResults
from session_mcp.tools.arguments import SessionId
from session_mcp.tools.caller import layer, owner
from session_mcp.tools.catalog import DESTRUCTIVE, READ, WRITE_IDEMPOTENT, ToolSpec

log = logging.getLogger("session_mcp.tools.knowledge")


async def declared_roots(ctx: Context[Any, Any]) -> list[Path] | None:
    """The client's roots (file:// URIs) when it declares the capability; None when it does not."""
    session = ctx.session
    capabilities = session.client_capabilities
    if capabilities is None or capabilities.roots is None or not session.can_send_request:
        return None
    try:
        with warnings.catch_warnings():  # roots are deprecated in the newest protocol, still used by hosts
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            listed = await session.list_roots()
    except Exception as exc:  # a client that declares roots but cannot list them: use ours only
        log.warning("the client declared roots but listing them failed: %s", exc)
        return None
    paths = [root_from_uri(str(root.uri)) for root in listed.roots]
    return [p for p in paths if p is not None] or None


async def knowledge_add(
    ctx: Context,
    session_id: SessionId,
    source: Annotated[
        str,
        Field(
            strict=True,
            min_length=1,
            max_length=1_000_000,
            description="a file path, a folder (read recursively), an http(s) URL, or the text itself",
        ),
    ],
    kind: Annotated[
        Literal["auto", "path", "url", "text"],
        Field(
            description="what `source` is; auto guesses, pass text to store a short string that looks like a file name"
        ),
    ] = "auto",
    scope: Annotated[
        Literal["session", "user"],
        Field(description="session: this session only; user: every session of this user"),
    ] = "session",
    metadata: Annotated[
        dict[str, JsonValue] | None, Field(description="any JSON object kept with each document")
    ] = None,
) -> KnowledgeAdded:
    """Add documents to the knowledge base so knowledge_search and get_context can quote them.
    Reads .txt .md .rst .csv .json .html .pdf .docx .pptx .xlsx files, whole folders, http(s) pages
    and plain text. Files must be inside the user's allowed folders. Adding an unchanged source again
    does nothing; a changed one is replaced. Files that cannot be read are listed in `skipped`."""
    # In a worker thread: right after start-up the layer may still be building.
    service = (await anyio.to_thread.run_sync(layer, ctx)).knowledge
    roots = await declared_roots(ctx)
    user = owner(ctx)

    def progress(done: float, total: float | None, message: str) -> None:
        anyio.from_thread.run(ctx.report_progress, done, total, message)

    work = functools.partial(
        service.add,
        session_id,
        source,
        kind,
        scope,
        metadata,
        owner=user,
        declared_roots=roots,
        progress=progress,
    )
    return await anyio.to_thread.run_sync(work)


def knowledge_search(
    ctx: Context,
    session_id: SessionId,
    query: Annotated[str, Field(strict=True, min_length=1, description="what you are looking for")],
    limit: Annotated[int, Field(strict=True, ge=1, le=50)] = 5,
    mode: Annotated[
        Literal["hybrid", "vector", "keyword"],
        Field(
            description="hybrid: meaning and keywords together (best); vector: meaning only; keyword: words only"
        ),
    ] = "hybrid",
) -> KnowledgeResults:
    """Search this session's and this user's documents; returns the best passages with their source,
    title and page. Quote `source` and `page` when you use a passage."""
    return layer(ctx).knowledge.search(session_id, query, limit, mode, owner=owner(ctx))


def knowledge_list(ctx: Context, session_id: SessionId) -> KnowledgeList:
    """List the documents this session can search (its own and its user's), newest first."""
    return layer(ctx).knowledge.list(session_id, owner=owner(ctx))


def knowledge_delete(
    ctx: Context,
    session_id: SessionId,
    document_id: Annotated[str, Field(strict=True, min_length=1, max_length=64)],
) -> KnowledgeDeleted:
    """Delete one document and all its passages by the `document_id` knowledge_add or knowledge_list gave."""
    return layer(ctx).knowledge.delete(session_id, document_id, owner=owner(ctx))


TOOLS = [
    ToolSpec(knowledge_add, WRITE_IDEMPOTENT, "Add documents to the knowledge base"),
    ToolSpec(knowledge_search, READ, "Search the knowledge base"),
    ToolSpec(knowledge_list, READ, "List knowledge documents"),
    ToolSpec(knowledge_delete, DESTRUCTIVE, "Delete a knowledge document"),
]
