"""Remote-agent sessions: the probe before one is created, and session_chat, over the wire contract
of PraisonAI's `Agent.launch()` servers.

The contract (reference: PraisonAI `Session` with `agent_url`, and `Agent.launch(path=...)`):
probe with GET `<url>/health` (or the URL itself when it already names /health), else HEAD `<url>`
without following redirects; 200 from either, or 405 from HEAD (a POST-only route), means an agent
is there. Chat is POST `<url>` with JSON `{"query", "session_id", "user_id", ...extra}`; the answer
is the reply's `response` field, or the whole body when it has none (or is not JSON).
Every request goes through the outbound policy (models.outbound): no other code here touches HTTP.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit, urlunsplit

from pydantic import JsonValue

from session_mcp.models.database import Database
from session_mcp.models.errors import (
    InvalidArgument,
    RemoteAgentError,
    RemoteAgentUnreachable,
    UrlNotAllowed,
)
from session_mcp.models.history import Histories
from session_mcp.models.limits import Limits
from session_mcp.models.memory import clean_text
from session_mcp.models.outbound import (
    MAX_URL_CHARS,
    OutboundFailure,
    OutboundPolicy,
    OutboundResponse,
    redact,
)
from session_mcp.models.schemas import ChatReply
from session_mcp.models.sessions import Sessions, encode_json

RESERVED_FIELDS = ("query", "session_id", "user_id")
PROBE_MAX_BYTES = 65_536
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")


def normalize_agent_url(raw: str) -> str:
    """The URL as the seed library takes it: `http://` is added when no scheme is given, so
    `192.168.1.10:8000/agent` and `localhost:8000` work. A scheme other than http(s) is refused
    rather than prefixed (the seed would have turned `file:/etc` into `http://file:/etc`)."""
    url = raw.strip()
    if not url:
        raise InvalidArgument("agent_url is empty; pass the agent's URL, e.g. 192.168.1.10:8000/agent")
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgument(f"agent_url is {len(url)} characters, over the limit of {MAX_URL_CHARS}")
    scheme = _SCHEME.match(url)
    # `host:8000` looks like a scheme followed by a port: a digit after the colon means a port.
    if scheme and (scheme.group(2) or not url[scheme.end() : scheme.end() + 1].isdigit()):
        if scheme.group(1).lower() not in ("http", "https"):
            raise UrlNotAllowed(
                f"agent_url {redact(url)[:200]!r} uses the {scheme.group(1)}: scheme; agents are reached "
                "over http:// or https:// only"
            )
        return url
    return f"http://{url}"


def health_url(agent_url: str) -> str:
    """Where the probe looks first: `<url>/health`, or the URL itself if it already names /health."""
    if "/health" in agent_url:
        return agent_url
    parts = urlsplit(agent_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/health"))


def reply_text(answer: OutboundResponse) -> str:
    """The agent's `response` field (JSON-encoded when it is not a string), else the whole body."""
    body = answer.text()
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict) and "response" in data:
        value = data["response"]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return body


def _snippet(answer: OutboundResponse) -> str:
    text = " ".join(answer.text().split())
    return f": {text[:200]}" if text else ""


class AgentClient:
    """Talks to remote agents through the outbound policy; knows nothing of sessions."""

    def __init__(self, policy: OutboundPolicy, max_response_bytes: int) -> None:
        self.policy = policy
        self.max_response_bytes = max_response_bytes

    def normalize(self, agent_url: str) -> str:
        url = normalize_agent_url(agent_url)
        try:
            self.policy.check(url)
        except OutboundFailure as exc:
            raise RemoteAgentUnreachable(
                f"no agent can be reached at {exc.url}: {exc.detail}; check the host name and call "
                "session_create again. Nothing was created"
            ) from exc
        return url

    def probe(self, agent_url: str, timeout: float) -> None:
        health = health_url(agent_url)
        try:
            got = self.policy.fetch(
                "GET",
                health,
                headers={"Accept": "application/json"},
                timeout=timeout,
                max_bytes=PROBE_MAX_BYTES,
            )
            if got.status == 200:
                return
            head = self.policy.fetch(
                "HEAD", agent_url, timeout=timeout, max_bytes=PROBE_MAX_BYTES, follow_redirects=False
            )
        except OutboundFailure as exc:
            raise RemoteAgentUnreachable(
                f"no agent answered at {redact(agent_url)}: {_failure(exc, timeout)}; check that the agent "
                "is running (PraisonAI: agent.launch(...)) and the URL, then call session_create again. "
                "Nothing was created"
            ) from exc
        if head.status in (200, 405):
            return
        raise RemoteAgentUnreachable(
            f"nothing at {redact(agent_url)} answers like an agent: GET {redact(health)} answered "
            f"{got.status} and HEAD {redact(agent_url)} answered {head.status} (an agent answers 200 to "
            "one of them, or 405 to HEAD); check the URL's host, port and path, then call session_create "
            "again. Nothing was created"
        )

    def send(self, agent_url: str, body: dict[str, JsonValue], timeout: float) -> tuple[str, int]:
        """POST `body` to the agent; returns its reply and how long it took, in milliseconds."""
        try:
            answer = self.policy.fetch(
                "POST",
                agent_url,
                json=body,
                headers={"Accept": "application/json"},
                timeout=timeout,
                max_bytes=self.max_response_bytes,
            )
        except OutboundFailure as exc:
            if exc.kind == "unreachable":
                raise RemoteAgentUnreachable(
                    f"the agent at {redact(agent_url)} cannot be reached: {exc.detail}; check that it is "
                    "running, then try session_chat again. Nothing was recorded"
                ) from exc
            raise RemoteAgentError(
                f"the agent at {redact(agent_url)} did not answer properly: {_failure(exc, timeout)}. "
                "Nothing was recorded"
            ) from exc
        if not 200 <= answer.status < 300:
            raise RemoteAgentError(
                f"the agent at {redact(agent_url)} answered HTTP {answer.status}{_snippet(answer)}; "
                f"{_status_advice(answer.status)}. Nothing was recorded"
            )
        return reply_text(answer), answer.elapsed_ms


def _failure(exc: OutboundFailure, timeout: float) -> str:
    if exc.kind == "timeout":
        return (
            f"it did not answer within {timeout:g} s (the session's timeout); try again, or create the "
            "session with a larger timeout"
        )
    if exc.kind == "too_large":
        return f"{exc.detail}; ask the agent for a shorter answer"
    return exc.detail


def _status_advice(status: int) -> str:
    if status in (401, 403):
        return "the agent wants credentials: the server's operator can configure them per host"
    if status == 404:
        return "the URL's path is not the agent's (Agent.launch(path=...) decides it)"
    if status == 422:
        return "the agent refused the request body; check the extra fields you passed"
    if status >= 500:
        return "the agent failed while answering; try again, or check the agent's logs"
    return "check the agent URL"


class RemoteChats:
    """session_chat: send a message to a remote session's agent and record the exchange in its history."""

    def __init__(
        self, db: Database, sessions: Sessions, histories: Histories, agents: AgentClient, limits: Limits
    ) -> None:
        self.db = db
        self.sessions = sessions
        self.histories = histories
        self.agents = agents
        self.limits = limits

    def chat(
        self,
        session_id: str,
        message: str,
        extra: dict[str, JsonValue] | None = None,
        *,
        owner: str | None = None,
    ) -> ChatReply:
        clean_text(message, self.limits.max_text_chars, "message")
        extra = extra or {}
        clashes = [name for name in RESERVED_FIELDS if name in extra]
        if clashes:
            raise InvalidArgument(
                f"extra may not set {', '.join(clashes)}: query, session_id and user_id are filled in "
                "from the message and the session; remove them from extra"
            )
        encode_json(extra, "extra", self.limits.max_value_bytes)
        with self.db.read() as conn:
            session = self.sessions.remote(conn, session_id, owner)
        with self.db.write() as conn:  # closed or expired sessions refuse before anything is sent
            self.sessions.writable(conn, session_id, owner, local=False)
        assert session.agent_url is not None
        body: dict[str, JsonValue] = {
            "query": message,
            "session_id": session.session_id,
            "user_id": session.user_id,
            **extra,
        }
        timeout = session.timeout_seconds or self.limits.agent_timeout_seconds
        reply, elapsed_ms = self.agents.send(session.agent_url, body, timeout)
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner, local=False)
            self.histories.append(conn, session_id, "user", message)
            self.histories.append(conn, session_id, "assistant", reply)
        return ChatReply(response=reply, elapsed_ms=elapsed_ms)
