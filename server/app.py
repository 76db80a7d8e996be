"""The app factory: an MCPServer with every tool, resource and prompt, over one session layer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.tools import Tool

from session_mcp.models.clock import Clock
from session_mcp.server.errors import error_codes, prompt_checks, read_errors, tool_errors
from session_mcp.server.flatschema import flattened
from session_mcp.server.listening import readable_resources_only
from session_mcp.server.settings import Settings
from session_mcp.tools import ALL_TOOLS
from session_mcp.tools.caller import LayerSlot
from session_mcp.tools.resources import PROMPTS, RESOURCES

if TYPE_CHECKING:  # the engines behind these load in the background once serving (see LayerSlot)
    from session_mcp.models.embedder import Embedder
    from session_mcp.models.layer import SessionLayer

log = logging.getLogger("session_mcp.server")

INSTRUCTIONS = """\
session-mcp keeps durable sessions for you.
1. Start with session_create (pass the same session_id later to resume it); use the returned session_id everywhere.
2. Store durable facts about the user with memory_add(memory_type="long"), scratch notes for this task with
   memory_type="short", structured values and counters with state_set / state_increment.
3. Before answering, call get_context with the user's message to recall what is relevant.
4. Record the conversation with history_add if the host does not keep it.
5. A session created with agent_url belongs to a remote agent: talk to it with session_chat (its state and
   memory live on the agent's side).
Errors start with a code (session_not_found, session_expired, conflict, ...) and say what to do next."""


@asynccontextmanager
async def running_layer(
    settings: Settings, *, clock: Clock | None = None, embedder: Embedder | None = None
) -> AsyncIterator[SessionLayer]:
    """The session layer with its sweeper (and the model warming) running; closed on the way out."""

    def build() -> SessionLayer:
        from session_mcp.models.layer import SessionLayer  # SQLAlchemy, numpy, onnxruntime, usearch

        return SessionLayer(settings.layer_config(), clock=clock, embedder=embedder)

    with anyio.CancelScope(shield=True):  # a layer built is always closed, even if shutdown came first
        layer = await anyio.to_thread.run_sync(build)
    log.info("session layer open")
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_sweep_forever, layer, settings.sweeper_interval_seconds)
            if settings.warm_model and not layer.embedder.loaded:
                # The handshake never waits for the model; the first search usually won't either.
                tasks.start_soon(_warm, layer)
            yield layer
            tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):  # also when the owner was cancelled (_keep_layer)
            await anyio.to_thread.run_sync(layer.close)
        log.info("session layer closed")


async def _keep_layer(
    settings: Settings, slot: LayerSlot, clock: Clock | None, embedder: Embedder | None
) -> None:
    """Build the layer into `slot` and keep it running until cancelled; a failure fills the slot
    with its reason, which every tool call then reports."""
    try:
        async with running_layer(settings, clock=clock, embedder=embedder) as layer:
            slot.fill(layer)
            await anyio.sleep_forever()
    except Exception as exc:
        log.exception("the session layer could not start")
        slot.fail(str(exc) or type(exc).__name__)


def build_server(
    settings: Settings,
    *,
    clock: Clock | None = None,
    embedder: Embedder | None = None,
    shared_layer: Callable[[], SessionLayer] | None = None,
) -> MCPServer[LayerSlot]:
    """Build the server. Tests pass a clock and a shared embedder; production passes neither.

    Without `shared_layer` each run of the server (stdio, the in-memory client) builds and closes
    its own layer, in the background: the lifespan yields at once, so the handshake and tools/list
    are answered while the database opens and the engines import. The HTTP app passes one: it runs
    a single layer for the whole process, because the SSE transport enters the server's lifespan
    once per connection."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[LayerSlot]) -> AsyncIterator[LayerSlot]:
        slot = LayerSlot()
        if shared_layer is not None:
            slot.fill(shared_layer())
            yield slot
            return
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_keep_layer, settings, slot, clock, embedder)
            yield slot
            tasks.cancel_scope.cancel()

    prompts = [Prompt.from_function(read_errors(fn)) for fn in PROMPTS]
    needs = {p.name: [a.name for a in p.arguments or () if a.required] for p in prompts}
    server: MCPServer[LayerSlot] = MCPServer(
        "session-mcp",
        title="session-mcp",
        version=version("session-mcp"),
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.log_level,
        middleware=[error_codes, prompt_checks(needs), readable_resources_only],
        tools=[
            _published(Tool.from_function(tool_errors(s.fn), title=s.title, annotations=s.annotations))
            for s in ALL_TOOLS
        ],
    )
    for resource in RESOURCES:
        server.resource(resource.uri, mime_type="application/json", description=resource.description)(
            read_errors(resource.fn)
        )
    for prompt in prompts:
        server.add_prompt(prompt)
    return server


def _published(tool: Tool) -> Tool:
    """`tool` with its input and output schemas free of `$ref` (see flatschema.py). The output
    schema is only what is published: results are still checked against the return model."""
    tool.parameters = flattened(tool.parameters)
    if tool.fn_metadata.output_schema is not None:
        tool.fn_metadata.output_schema = flattened(tool.fn_metadata.output_schema)
    return tool


async def _sweep_forever(layer: SessionLayer, interval: float) -> None:
    while True:
        try:
            # Not abandoned on cancel: shutdown waits for a sweep in progress, so its transaction
            # ends and its connection returns before the layer closes the pool.
            await anyio.to_thread.run_sync(layer.sweeper.sweep)
        except Exception:
            log.exception("sweep failed; will try again")
        await anyio.sleep(interval)


async def _warm(layer: SessionLayer) -> None:
    try:
        await anyio.to_thread.run_sync(layer.embedder.warm, abandon_on_cancel=True)
    except Exception:
        log.exception("could not load the embedding model; memory tools will report it")
