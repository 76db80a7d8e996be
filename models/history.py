"""Conversation history: ordered messages per session, tool calls and tool results kept intact."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import JsonValue
from sqlalchemy import Connection, bindparam, select, update

from session_mcp.models.clock import Clock, from_db, to_db
from session_mcp.models.database import Database, DriverStatement
from session_mcp.models.errors import InvalidArgument
from session_mcp.models.limits import Limits
from session_mcp.models.memory import clean_text
from session_mcp.models.schemas import History, Message, MessageAdded, Role
from session_mcp.models.sessions import Sessions, encode_json
from session_mcp.models.tables import MessageRow, SessionRow

_H = MessageRow.__table__  # type: ignore[attr-defined]
_S = SessionRow.__table__  # type: ignore[attr-defined]

# Built once (see sessions.py), on the driver's cursor (DriverStatement): history_add and
# history_get run them, and get_context the last two. The counter lives on the session row, so
# positions are dense and never race. Parameters never take a column's name (reserved in an
# UPDATE or INSERT).
_NEXT_POSITION = DriverStatement(
    update(_S)
    .where(_S.c.session_id == bindparam("sid"))
    .values(message_count=_S.c.message_count + 1)
    .returning(_S.c.message_count)
)
_APPEND = DriverStatement(_H.insert(), [c.name for c in _H.c if c.name != "seq"])  # seq: the database's
_OF_SESSION = select(_H).where(_H.c.session_id == bindparam("sid"))
_RECENT = DriverStatement(_OF_SESSION.order_by(_H.c.position.desc()).limit(bindparam("n")))
_RECENT_OF_AGENT = DriverStatement(
    _OF_SESSION.where(_H.c.agent == bindparam("of")).order_by(_H.c.position.desc()).limit(bindparam("n"))
)


def as_message(row: Any) -> Message:
    return Message(
        message_id=row["message_id"],
        index=row["position"],
        role=row["role"],
        content=row["content"],
        agent=row["agent"],
        tool_calls=None if row["tool_calls"] is None else json.loads(row["tool_calls"]),
        tool_call_id=row["tool_call_id"],
        created_at=from_db(row["created_at"]),
    )


class Histories:
    def __init__(self, db: Database, sessions: Sessions, clock: Clock, limits: Limits) -> None:
        self.db = db
        self.sessions = sessions
        self.clock = clock
        self.limits = limits

    def add(
        self,
        session_id: str,
        role: Role,
        content: str,
        agent: str | None = None,
        tool_calls: list[dict[str, JsonValue]] | None = None,
        tool_call_id: str | None = None,
        *,
        owner: str | None = None,
        local: bool = True,
    ) -> MessageAdded:
        if role == "tool" and not tool_call_id:
            raise InvalidArgument("a role='tool' message needs the tool_call_id of the call it answers")
        if tool_calls is not None and role != "assistant":
            raise InvalidArgument("tool_calls belong on role='assistant' messages")
        if not content.strip() and not tool_calls:
            raise InvalidArgument("content is empty; send the message text (or tool_calls for an assistant)")
        if content.strip():
            clean_text(content, self.limits.max_text_chars, "content")
        calls = (
            None if tool_calls is None else encode_json(tool_calls, "tool_calls", self.limits.max_value_bytes)
        )
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner, local=local)
            return self.append(conn, session_id, role, content, agent, calls, tool_call_id)

    def append(
        self,
        conn: Connection,
        session_id: str,
        role: Role,
        content: str,
        agent: str | None = None,
        tool_calls_json: str | None = None,
        tool_call_id: str | None = None,
    ) -> MessageAdded:
        """Append one message in the caller's transaction, after its own checks (`writable` first)."""
        message_id = uuid.uuid4().hex
        ((count,),) = _NEXT_POSITION.run(conn, {"sid": session_id})
        position = count - 1
        row = {
            "message_id": message_id,
            "session_id": session_id,
            "position": position,
            "agent": agent,
            "role": role,
            "content": content,
            "tool_calls": tool_calls_json,
            "tool_call_id": tool_call_id,
            "created_at": to_db(self.clock.now()),
        }
        _APPEND.run(conn, row)
        return MessageAdded(message_id=message_id, index=position)

    def get(
        self, session_id: str, agent: str | None = None, limit: int | None = None, *, owner: str | None = None
    ) -> History:
        with self.db.read() as conn:
            self.sessions.readable(conn, session_id, owner)
            return History(messages=self.recent(conn, session_id, agent, limit))

    def recent(self, conn: Any, session_id: str, agent: str | None, limit: int | None) -> list[Message]:
        params = {"sid": session_id, "of": agent, "n": limit or self.limits.max_history_page}
        rows = (_RECENT if agent is None else _RECENT_OF_AGENT).mappings(conn, params)
        return [as_message(r) for r in reversed(rows)]
