"""History tools: append to and read a session's conversation, tool calls included."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field, JsonValue

from session_mcp.models.schemas import History, MessageAdded, Role
from session_mcp.tools.arguments import Count, LongName, Name, SessionId
from session_mcp.tools.caller import layer, owner
from session_mcp.tools.catalog import READ, WRITE, ToolSpec
from session_mcp.tools.notices import HISTORY, announces


@announces(HISTORY)
def history_add(
    ctx: Context,
    session_id: SessionId,
    role: Role,
    content: Annotated[str, Field(strict=True, description="the message text")],
    agent: Annotated[Name | None, Field(description="which agent spoke")] = None,
    tool_calls: Annotated[
        list[dict[str, JsonValue]] | None,
        Field(description="an assistant message's tool calls, kept verbatim"),
    ] = None,
    tool_call_id: Annotated[LongName | None, Field(description="for role=tool: the call it answers")] = None,
) -> MessageAdded:
    """Append a message to the session's conversation history; returns its `index` (0, 1, 2...)."""
    return layer(ctx).history.add(
        session_id, role, content, agent, tool_calls, tool_call_id, owner=owner(ctx)
    )


def history_get(
    ctx: Context,
    session_id: SessionId,
    agent: Annotated[Name | None, Field(description="only this agent's")] = None,
    limit: Annotated[Count | None, Field(description="the last N messages")] = None,
) -> History:
    """Read the conversation in order (oldest first), with tool calls and tool results intact."""
    return layer(ctx).history.get(session_id, agent, limit, owner=owner(ctx))


TOOLS = [
    ToolSpec(history_add, WRITE, "Add a message"),
    ToolSpec(history_get, READ, "Read the conversation"),
]
