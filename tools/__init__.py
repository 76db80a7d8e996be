"""session_mcp.tools: the MCP surface, one module per family; `ALL_TOOLS` is the catalogue."""

from session_mcp.tools import context, history, knowledge, memory, remote, sessions, state
from session_mcp.tools.catalog import ToolSpec

ALL_TOOLS: list[ToolSpec] = [
    *sessions.TOOLS,
    *state.TOOLS,
    *memory.TOOLS,
    *knowledge.TOOLS,
    *context.TOOLS,
    *history.TOOLS,
    *remote.TOOLS,
]
