"""Prompt context: relevant memory, state and recent conversation in one block within a token budget."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import RowMapping, bindparam, select

from session_mcp.models.database import Database
from session_mcp.models.embedder import Embedder
from session_mcp.models.history import Histories
from session_mcp.models.hybrid import Announce, Reading, scanning_beside
from session_mcp.models.knowledge import Knowledge, scopes_of
from session_mcp.models.limits import Limits
from session_mcp.models.memory import Memory, clean_text, scope_of
from session_mcp.models.schemas import ContextItem, ContextResult, MemoryType, Message
from session_mcp.models.sessions import Sessions
from session_mcp.models.state import value_of
from session_mcp.models.tables import StateRow

_T = StateRow.__table__  # type: ignore[attr-defined]
_STATE = (  # built once (see sessions.py): the most recently changed first
    select(_T).where(_T.c.session_id == bindparam("sid")).order_by(_T.c.updated_at.desc(), _T.c.key)
)

HEADINGS = {
    "long_term_memory": "## What I know about the user (long-term memory)",
    "session_memory": "## Notes from this session (short-term memory)",
    "knowledge": "## From your documents",
    "session_state": "## Session state",
    "recent_conversation": "## Recent conversation",
}
ORDER = list(HEADINGS)
_MEMORY_SECTIONS: tuple[tuple[str, MemoryType], ...] = (
    ("long_term_memory", "long"),
    ("session_memory", "short"),
)


@dataclass(frozen=True)
class _Read:
    """What get_context reads before it needs the query's vector."""

    state_rows: list[RowMapping]
    messages: list[Message]
    memory: dict[str, Reading]
    knowledge: Reading | None


@dataclass
class _Candidate:
    item: ContextItem
    line: str


def _normalised(line: str) -> str:
    return " ".join(line.lower().split())


class Contexts:
    def __init__(
        self,
        db: Database,
        sessions: Sessions,
        memory: Memory,
        histories: Histories,
        embedder: Embedder,
        limits: Limits,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.knowledge = knowledge
        self.db = db
        self.sessions = sessions
        self.memory = memory
        self.histories = histories
        self.embedder = embedder
        self.limits = limits

    def build(
        self,
        session_id: str,
        query: str,
        max_items: int = 5,
        max_tokens: int = 1000,
        *,
        owner: str | None = None,
    ) -> ContextResult:
        cleaned = clean_text(query, self.limits.max_text_chars, "query")
        budget = min(max_tokens, self.limits.context_max_tokens)
        with self.db.read() as conn:  # one snapshot for every section

            def read(announce: Announce) -> _Read:  # on a side thread (see scanning_beside)
                session = self.sessions.local(conn, session_id, owner)
                state_rows = list(conn.execute(_STATE, {"sid": session_id}).mappings())
                messages = self.histories.recent(conn, session_id, None, max_items)
                memory = {
                    name: self.memory.read(
                        conn,
                        [scope_of(memory_type, session)],
                        cleaned,
                        max_items,
                        announce(name, self.memory.hybrid),
                    )
                    for name, memory_type in _MEMORY_SECTIONS
                }
                knowledge = None
                if self.knowledge is not None and not session.agent_url:
                    knowledge = self.knowledge.read(
                        conn,
                        scopes_of(session),
                        cleaned,
                        max_items,
                        announce("knowledge", self.knowledge.hybrid),
                    )
                return _Read(state_rows, messages, memory, knowledge)

            # The query is embedded once, for every section, and each section's vectors scanned as
            # soon as read() has caught them up, while it goes on to the next section's full text.
            vector, scanned, got = scanning_beside(self.embedder, cleaned, max_items, read)
            sections: dict[str, list[_Candidate]] = {name: [] for name in ORDER}
            for name, reading in got.memory.items():
                for hit in self.memory.finish(conn, reading, vector, scanned.get(name)):
                    item = ContextItem(section=name, source_id=hit.memory_id, text=hit.text, score=hit.score)  # type: ignore[arg-type]
                    sections[name].append(_Candidate(item, f"- {hit.text}"))
            if got.knowledge is not None and self.knowledge is not None:
                for passage in self.knowledge.finish(conn, got.knowledge, vector, scanned.get("knowledge")):
                    where = (
                        f"{passage.title}, p. {passage.page}" if passage.page is not None else passage.title
                    )
                    item = ContextItem(
                        section="knowledge",
                        source_id=passage.chunk_id,
                        text=passage.text,
                        score=passage.score,
                    )
                    sections["knowledge"].append(
                        _Candidate(item, f"- [{where}] {' '.join(passage.text.split())}")
                    )
        state_rows, messages = got.state_rows, got.messages
        words = {w for w in cleaned.lower().split() if len(w) > 2}
        # State keys the query mentions come first, then the most recently changed.
        state_rows.sort(key=lambda r: 0 if any(w in r["key"].lower() for w in words) else 1)
        for row in state_rows[:max_items]:
            line = f"{row['key']}: {json.dumps(value_of(row), ensure_ascii=False)}"
            item = ContextItem(section="session_state", source_id=row["key"], text=line)
            sections["session_state"].append(_Candidate(item, f"- {line}"))
        for message in reversed(messages):  # newest first: they matter most when the budget is short
            speaker = message.role if message.agent is None else f"{message.role} ({message.agent})"
            line = f"{speaker}: {message.content}"
            item = ContextItem(section="recent_conversation", source_id=message.message_id, text=line)
            sections["recent_conversation"].append(_Candidate(item, f"- {line}"))
        return self._pack(sections, budget)

    def _pack(self, sections: dict[str, list[_Candidate]], budget: int) -> ContextResult:
        """Take the best remaining line of each section in turn until the budget is spent, so no one
        section starves the others; lines already seen in an earlier section are dropped."""
        chosen: dict[str, list[_Candidate]] = {name: [] for name in ORDER}
        seen: set[str] = set()
        used = 0
        # Every candidate line's tokens in one tokenizer call, not one call per line.
        texts = [*HEADINGS.values(), *(c.line for cands in sections.values() for c in cands)]
        tokens = dict(zip(texts, self.embedder.count_tokens_batch(texts), strict=True))
        queues = {name: list(cands) for name, cands in sections.items()}
        progress = True
        while progress:
            progress = False
            for name in ORDER:
                while queues[name]:
                    candidate = queues[name].pop(0)
                    key = _normalised(candidate.item.text)
                    if key in seen:
                        continue
                    cost = tokens[candidate.line] + 1
                    if not chosen[name]:
                        cost += tokens[HEADINGS[name]] + 2
                    if used + cost > budget:
                        continue  # too long for what is left; a shorter line may still fit
                    seen.add(key)
                    chosen[name].append(candidate)
                    used += cost
                    progress = True
                    break
        blocks: list[str] = []
        items: list[ContextItem] = []
        for name in ORDER:
            if not chosen[name]:
                continue
            lines = [c.line for c in chosen[name]]
            if name == "recent_conversation":
                lines.reverse()  # read in the order it was said
                chosen[name].reverse()
            blocks.append(HEADINGS[name] + "\n" + "\n".join(lines))
            items.extend(c.item for c in chosen[name])
        context = "\n\n".join(blocks)
        return ContextResult(context=context, items=items, tokens=self.embedder.count_tokens(context))
