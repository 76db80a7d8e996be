"""Sessions: creation with TTL, lookup scoped to a user, listing, closing, and the write guard."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import JsonValue
from sqlalchemy import Connection, and_, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from session_mcp.models.clock import Clock, from_db, iso, to_db
from session_mcp.models.database import Database, DriverStatement
from session_mcp.models.errors import (
    Conflict,
    InvalidArgument,
    LimitExceeded,
    LocalOnly,
    RemoteOnly,
    SessionClosed,
    SessionExpired,
    SessionNotFound,
)
from session_mcp.models.limits import Limits
from session_mcp.models.schemas import SessionInfo, SessionPage, SessionStatus
from session_mcp.models.tables import SessionRow

DEFAULT_USER = "default_user"
MAX_AGENT_TIMEOUT_SECONDS = 600.0
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_S = SessionRow.__table__  # type: ignore[attr-defined]

# Every tool call runs one of these first, so they are built once: building and cache-keying an
# expression per call cost ~0.2 ms a statement here, executing a prebuilt one ~0.04 ms.
# (Parameters named like a column are reserved in an UPDATE, hence `sid`.)
_READ = DriverStatement(select(_S).where(_S.c.session_id == bindparam("sid")))  # every call runs it
_OPEN = (_S.c.session_id == bindparam("sid"), _S.c.status == "active")
_LIVE = or_(_S.c.expires_at.is_(None), _S.c.expires_at > bindparam("now"))
# On the driver's cursor (DriverStatement): every write runs one of them.
_TOUCH = DriverStatement(update(_S).where(*_OPEN, _LIVE).values(updated_at=bindparam("now")).returning(*_S.c))
_TOUCH_OWNED = DriverStatement(
    update(_S)
    .where(*_OPEN, _LIVE, _S.c.user_id == bindparam("owner"))
    .values(updated_at=bindparam("now"))
    .returning(*_S.c)
)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session's row as read, one field per column of SessionRow. Every tool call reads one, and
    building the SQLModel table object instead (validation, then SQLAlchemy's instrumented
    attributes) cost 55-86 us a call here, against ~6 us for this."""

    session_id: str
    user_id: str
    parent_id: str | None
    agent_url: str | None
    timeout_seconds: float | None
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    purged_at: datetime | None
    meta: str
    message_count: int

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> SessionRecord:
        return cls(**row)


def check_id(value: str, what: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value[:80]!r} is not valid; use 1-128 characters from letters, digits and _.:@- "
            "starting with a letter or digit"
        )
    return value


def encode_json(value: Any, what: str, max_bytes: int) -> str:
    """Canonical JSON for storage; refuses NaN and infinities, which JSON cannot carry."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidArgument(f"{what} contains NaN or an infinity; send finite numbers only") from exc
    if len(encoded.encode()) > max_bytes:
        raise LimitExceeded(
            f"{what} is {len(encoded.encode())} bytes as JSON, over the limit of {max_bytes}; store less"
        )
    return encoded


def local_only(session_id: str, agent_url: str) -> LocalOnly:
    return LocalOnly(
        f"session '{session_id}' talks to a remote agent at {agent_url}; state, memory and knowledge "
        "live on the agent's side, so run this on the agent's side (session_chat talks to it)"
    )


class AgentProbe(Protocol):
    """What session creation needs of the remote-agent client (models.remote.AgentClient)."""

    def normalize(self, agent_url: str) -> str:
        """The URL to store (`http://` added when no scheme is given), checked against the outbound
        policy without connecting; raises UrlNotAllowed or InvalidArgument."""
        ...

    def probe(self, agent_url: str, timeout: float) -> None:
        """Raise RemoteAgentUnreachable unless an agent answers at `agent_url`."""
        ...


TTL_CEILING_S = 100 * 366 * 86_400
"""The longest TTL any server takes, whatever its maximum setting: past it the expiry date could
leave the range a datetime holds (year 9999)."""


class Sessions:
    def __init__(self, db: Database, clock: Clock, limits: Limits, agents: AgentProbe | None = None) -> None:
        self.db = db
        self.clock = clock
        self.limits = limits
        self.agents = agents

    # -- guards used by every service -------------------------------------------------------------

    def readable(self, conn: Connection, session_id: str, owner: str | None = None) -> SessionRecord:
        row = _READ.first(conn, {"sid": session_id})
        if row is None or (owner is not None and row["user_id"] != owner):
            raise SessionNotFound(session_id)
        return SessionRecord.of(row)

    def writable(
        self, conn: Connection, session_id: str, owner: str | None = None, *, local: bool = True
    ) -> SessionRecord:
        """Check the session accepts writes and touch it, in the caller's transaction.

        The touch is an UPDATE, so on PostgreSQL it row-locks the session: a close and a write to
        the same session serialise, and no write commits after the close."""
        params = {"sid": session_id, "now": to_db(self.clock.now()), "owner": owner}
        touched = (_TOUCH if owner is None else _TOUCH_OWNED).first(conn, params)
        if touched is None:
            row = self.readable(conn, session_id, owner)
            if row.status == "closed":
                raise SessionClosed(session_id)
            assert row.expires_at is not None
            raise SessionExpired(session_id, iso(from_db(row.expires_at)))
        session = SessionRecord.of(touched)
        if local and session.agent_url:
            raise local_only(session_id, session.agent_url)
        return session

    def local(self, conn: Connection, session_id: str, owner: str | None = None) -> SessionRecord:
        """`readable`, for reads of what a remote session keeps on the agent's side (state, memory,
        knowledge, context): those refuse with local_only, as the seed library does."""
        session = self.readable(conn, session_id, owner)
        if session.agent_url:
            raise local_only(session_id, session.agent_url)
        return session

    def remote(self, conn: Connection, session_id: str, owner: str | None = None) -> SessionRecord:
        """`readable`, for session_chat: a local session refuses with remote_only."""
        session = self.readable(conn, session_id, owner)
        if not session.agent_url:
            raise RemoteOnly(
                f"session '{session_id}' is local, with no remote agent to chat with; create a session "
                "with agent_url=... (the agent's URL) to use session_chat, or answer yourself here"
            )
        return session

    # -- tools ------------------------------------------------------------------------------------

    def create(
        self,
        session_id: str | None = None,
        user_id: str | None = None,
        ttl_seconds: float | None = None,
        metadata: dict[str, JsonValue] | None = None,
        agent_url: str | None = None,
        timeout: float | None = None,
        *,
        owner: str | None = None,
    ) -> SessionInfo:
        """Create a session, or resume an existing one of this user. With `agent_url` the session
        talks to a remote agent: the URL is checked and the agent probed before anything is stored."""
        user = check_id(owner or user_id or DEFAULT_USER, "user_id")
        if owner is not None and user_id is not None and user_id != owner:
            raise InvalidArgument("user_id must be your own user when the server authenticates you; omit it")
        if ttl_seconds is None:
            ttl_seconds = self.limits.default_ttl_seconds
        if ttl_seconds is not None:
            if ttl_seconds < 0:
                raise InvalidArgument(
                    f"ttl_seconds={ttl_seconds} is negative; use null for no expiry or a number of seconds >= 0"
                )
            if not ttl_seconds <= TTL_CEILING_S:  # also NaN: an expiry must be a date the database can hold
                raise InvalidArgument(
                    f"ttl_seconds={ttl_seconds} is more than 100 years or not a number; "
                    "use null for a session that never expires"
                )
            if self.limits.max_ttl_seconds is not None and ttl_seconds > self.limits.max_ttl_seconds:
                raise LimitExceeded(
                    f"ttl_seconds={ttl_seconds} is over the server's maximum of "
                    f"{self.limits.max_ttl_seconds}; ask for a shorter TTL"
                )
        meta = encode_json(metadata or {}, "metadata", self.limits.max_metadata_bytes)
        remote = self._remote(agent_url, timeout)
        if session_id is not None:
            check_id(session_id, "session_id")
            return self._create_or_resume(session_id, user, ttl_seconds, meta, remote)
        self._probe(remote)
        for _ in range(8):
            candidate = uuid.uuid4().hex[:8]
            try:
                return self._insert(candidate, user, ttl_seconds, meta, remote)
            except IntegrityError:
                continue  # a collision on 32 random bits: draw again
        raise Conflict("could not allocate a fresh session id; pass your own session_id")

    def _remote(self, agent_url: str | None, timeout: float | None) -> tuple[str, float] | None:
        """The checked agent URL and timeout to store, or None for a local session. Connects to nothing."""
        if agent_url is None:
            if timeout is not None:
                raise InvalidArgument(
                    "timeout applies to remote-agent sessions only; pass agent_url as well, or omit timeout"
                )
            return None
        if self.agents is None:
            raise InvalidArgument("this server is not set up for remote agents; omit agent_url")
        if timeout is None:
            timeout = self.limits.agent_timeout_seconds
        if not 0 < timeout <= MAX_AGENT_TIMEOUT_SECONDS:
            raise InvalidArgument(
                f"timeout={timeout} is out of range; use seconds above 0 and at most {MAX_AGENT_TIMEOUT_SECONDS:g}"
            )
        return self.agents.normalize(agent_url), float(timeout)

    def _probe(self, remote: tuple[str, float] | None) -> None:
        if remote is not None:
            assert self.agents is not None
            self.agents.probe(*remote)

    def _create_or_resume(
        self, session_id: str, user: str, ttl: float | None, meta: str, remote: tuple[str, float] | None
    ) -> SessionInfo:
        with self.db.read() as conn:
            existing = conn.execute(select(_S).where(_S.c.session_id == session_id)).mappings().first()
        if existing is None:
            self._probe(remote)  # before anything is stored: an unreachable agent leaves no session
            try:
                return self._insert(session_id, user, ttl, meta, remote)
            except IntegrityError:
                with self.db.read() as conn:
                    existing = (
                        conn.execute(select(_S).where(_S.c.session_id == session_id)).mappings().first()
                    )
                assert existing is not None
        row = SessionRecord.of(existing)
        if row.user_id != user:
            # Say nothing about who holds it.
            raise Conflict(f"session id '{session_id}' cannot be used; choose another id or omit session_id")
        if remote is not None and row.agent_url != remote[0]:
            where = f"the agent at {row.agent_url}" if row.agent_url else "no remote agent (it is local)"
            raise Conflict(
                f"session '{session_id}' already exists with {where}; omit agent_url to resume it, "
                "or choose another session_id for this agent"
            )
        return self.info(row, resumed=True)

    def _insert(
        self,
        session_id: str,
        user: str,
        ttl: float | None,
        meta: str,
        remote: tuple[str, float] | None = None,
    ) -> SessionInfo:
        now = self.clock.now()
        expires = None if ttl is None else now + timedelta(seconds=ttl)
        values = {
            "session_id": session_id,
            "user_id": user,
            "status": "active",
            "created_at": to_db(now),
            "updated_at": to_db(now),
            "expires_at": None if expires is None else to_db(expires),
            "meta": meta,
            "message_count": 0,
            "agent_url": None if remote is None else remote[0],
            "timeout_seconds": None if remote is None else remote[1],
        }
        with self.db.write() as conn:
            conn.execute(insert(_S).values(**values))
            row = self.readable(conn, session_id)
        return self.info(row)

    def get(self, session_id: str, *, owner: str | None = None) -> SessionInfo:
        with self.db.read() as conn:
            return self.info(self.readable(conn, session_id, owner))

    def close(self, session_id: str, *, owner: str | None = None) -> SessionInfo:
        with self.db.write() as conn:
            row = self.readable(conn, session_id, owner)
            if row.status != "closed":
                conn.execute(
                    update(_S)
                    .where(_S.c.session_id == session_id)
                    .values(status="closed", updated_at=to_db(self.clock.now()))
                )
            row = self.readable(conn, session_id, owner)
        return self.info(row)

    def list(
        self,
        user_id: str | None = None,
        status: SessionStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        owner: str | None = None,
    ) -> SessionPage:
        if owner is not None and user_id is not None and user_id != owner:
            raise InvalidArgument("user_id must be your own user when the server authenticates you; omit it")
        user = check_id(owner or user_id or DEFAULT_USER, "user_id")
        now = to_db(self.clock.now())
        query = select(_S).where(_S.c.user_id == user)
        live = or_(_S.c.expires_at.is_(None), _S.c.expires_at > now)
        if status == "closed":
            query = query.where(_S.c.status == "closed")
        elif status == "active":
            query = query.where(_S.c.status == "active", live)
        elif status == "expired":
            query = query.where(_S.c.status == "active", ~live)
        if cursor is not None:
            created, after_id = _decode_cursor(cursor)
            query = query.where(
                or_(_S.c.created_at < created, and_(_S.c.created_at == created, _S.c.session_id < after_id))
            )
        query = query.order_by(_S.c.created_at.desc(), _S.c.session_id.desc()).limit(limit + 1)
        with self.db.read() as conn:
            rows = [SessionRecord.of(r) for r in conn.execute(query).mappings()]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = _encode_cursor(rows[-1].created_at, rows[-1].session_id)
        return SessionPage(sessions=[self.info(r) for r in rows], next_cursor=next_cursor)

    def info(self, row: SessionRecord, *, resumed: bool = False) -> SessionInfo:
        now = self.clock.now()
        expires = None if row.expires_at is None else from_db(row.expires_at)
        expired = expires is not None and expires <= now
        status: SessionStatus = "closed" if row.status == "closed" else ("expired" if expired else "active")
        return SessionInfo(
            session_id=row.session_id,
            user_id=row.user_id,
            status=status,
            created_at=from_db(row.created_at),
            updated_at=from_db(row.updated_at),
            expires_at=expires,
            time_to_expiry=None if expires is None else max(0.0, (expires - now).total_seconds()),
            is_expired=expired,
            metadata=json.loads(row.meta),
            agent_url=row.agent_url,
            timeout_seconds=row.timeout_seconds,
            resumed=resumed,
        )


def _encode_cursor(created: datetime, session_id: str) -> str:
    raw = json.dumps([created.isoformat(), session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, session_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(session_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("cursor is not one this server issued; pass next_cursor unchanged") from exc
