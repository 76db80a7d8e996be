"""The sweeper: purges expired sessions' session-scoped data after a grace period, and keeps the
keyword indexes merged."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select, update

from session_mcp.models.clock import Clock, to_db
from session_mcp.models.database import Database
from session_mcp.models.knowledge import Knowledge
from session_mcp.models.limits import Limits
from session_mcp.models.memory import Memory
from session_mcp.models.tables import MessageRow, SessionRow, StateRow

log = logging.getLogger("session_mcp.sweeper")
_S = SessionRow.__table__  # type: ignore[attr-defined]
_T = StateRow.__table__  # type: ignore[attr-defined]
_H = MessageRow.__table__  # type: ignore[attr-defined]
_MERGE_PAGES = 256
"""Pages one merge step writes, in a write transaction of its own, so that a write waits behind the
sweeper for one step at most. Measured on indexes grown one memory_add at a time: 10k memories
merged in one step of 12 ms, 30k in two of 24 and 11 ms (keyword queries then took 0.83x and 0.86x
as long)."""
_MERGE_STEPS = 1000
"""Steps one sweep takes per keyword index at most (an index of up to ~1 GB merged in one sweep);
what is left waits for the next sweep."""


class Sweeper:
    """Expired sessions keep their row (reads say `expired`); their state, short-term memory,
    session knowledge and history go. Long-term memory and user knowledge belong to the user and
    are never swept."""

    def __init__(
        self,
        db: Database,
        memory: Memory,
        clock: Clock,
        limits: Limits,
        batch: int = 200,
        *,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.db = db
        self.memory = memory
        self.knowledge = knowledge
        self.clock = clock
        self.limits = limits
        self.batch = batch

    def sweep(self) -> int:
        """Purge every session past expiry plus grace, then merge the keyword indexes; returns
        how many sessions were purged."""
        purged = self._purge()
        self.merge_keyword_indexes()
        return purged

    def merge_keyword_indexes(self) -> int:
        """Fold each keyword index into one segment, a bounded step per write transaction (see
        FullText.merge_step); returns the steps that did work. The server sweeps on start and
        every sweeper interval, so searches run on a merged index however memories arrived."""
        if not self.db.is_sqlite:  # PostgreSQL's index is not kept in segments
            return 0
        indexes = [self.memory.hybrid.fulltext]
        if self.knowledge is not None:
            indexes.append(self.knowledge.hybrid.fulltext)
        worked = 0
        for fulltext in indexes:
            for _ in range(_MERGE_STEPS):
                with self.db.write() as conn:
                    if not fulltext.merge_step(conn, _MERGE_PAGES):
                        break
                worked += 1
        if worked:
            log.info("merged the keyword indexes in %d steps", worked)
        return worked

    def _purge(self) -> int:
        purged = 0
        while True:
            cutoff = to_db(self.clock.now() - timedelta(seconds=self.limits.sweeper_grace_seconds))
            with self.db.write() as conn:
                due = [
                    sid
                    for (sid,) in conn.execute(
                        select(_S.c.session_id)
                        .where(
                            _S.c.expires_at.is_not(None), _S.c.expires_at <= cutoff, _S.c.purged_at.is_(None)
                        )
                        .limit(self.batch)
                    )
                ]
                if not due:
                    break
                # One statement per table for the whole batch, not a loop of deletes per session.
                conn.execute(delete(_T).where(_T.c.session_id.in_(due)))
                conn.execute(delete(_H).where(_H.c.session_id.in_(due)))
                scopes = self.memory.purge_sessions(conn, due)
                knowledge_scopes = [] if self.knowledge is None else self.knowledge.purge_sessions(conn, due)
                conn.execute(
                    update(_S).where(_S.c.session_id.in_(due)).values(purged_at=to_db(self.clock.now()))
                )
            for scope in scopes:
                self.memory.vectors.drop(scope)
            for scope in knowledge_scopes:
                assert self.knowledge is not None
                self.knowledge.vectors.drop(scope)
            purged += len(due)
            if len(due) < self.batch:
                break
        if purged:
            log.info("swept %d expired sessions", purged)
        return purged
