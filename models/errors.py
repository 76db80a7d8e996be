"""The one error tree of session-mcp: every failure a caller can act on, with a stable code.

    SessionError                     (base; never raised itself)
    ├── InvalidArgument              invalid_argument
    ├── LimitExceeded                limit_exceeded
    ├── Conflict                     conflict
    ├── NotNumeric                   not_numeric
    ├── OutOfRange                   out_of_range
    ├── NotFound                     (base for missing things)
    │   ├── SessionNotFound          session_not_found
    │   ├── MemoryNotFound           memory_not_found
    │   └── DocumentNotFound         document_not_found
    ├── PathNotAllowed               path_not_allowed
    ├── UnsupportedFormat            unsupported_format
    ├── ParseFailed                  parse_failed (a converter failed, or hit its time/memory limit)
    ├── SessionUnwritable            (base for sessions that refuse writes)
    │   ├── SessionClosed            session_closed
    │   └── SessionExpired           session_expired
    ├── LocalOnly                    local_only
    ├── RemoteOnly                   remote_only
    ├── UrlNotAllowed                url_not_allowed (the outbound policy refused a URL or a redirect hop)
    ├── UrlFetchFailed               url_fetch_failed (an allowed URL could not be fetched: unreachable,
    │                                too slow, too large, or not a 2xx answer)
    ├── RemoteAgentUnreachable       remote_agent_unreachable (no agent answered at the URL)
    ├── RemoteAgentError             remote_agent_error (the agent answered badly, too much or too late)
    └── EngineError                  engine_error (the model or an index could not be used)

Messages are written for the model that reads them: what happened, then what to do next.
`server` maps this tree to MCP tool errors in one place; nothing else should catch it.
"""

from __future__ import annotations

from typing import ClassVar


class SessionError(Exception):
    """Base of every error a tool call can return to the model."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(SessionError):
    code = "invalid_argument"


class LimitExceeded(SessionError):
    code = "limit_exceeded"


class Conflict(SessionError):
    code = "conflict"


class NotNumeric(SessionError):
    code = "not_numeric"


class OutOfRange(SessionError):
    code = "out_of_range"


class NotFound(SessionError):
    code = "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"no session '{session_id}' exists for this user; "
            "call session_create (or session_list to see your sessions)"
        )
        self.session_id = session_id


class MemoryNotFound(NotFound):
    code = "memory_not_found"


class DocumentNotFound(NotFound):
    code = "document_not_found"


class PathNotAllowed(SessionError):
    code = "path_not_allowed"


class UnsupportedFormat(SessionError):
    code = "unsupported_format"


class ParseFailed(SessionError):
    code = "parse_failed"


class SessionUnwritable(SessionError):
    code = "session_unwritable"


class SessionClosed(SessionUnwritable):
    code = "session_closed"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session '{session_id}' is closed and read-only; "
            "its data can still be read, create a new session to write"
        )


class SessionExpired(SessionUnwritable):
    code = "session_expired"

    def __init__(self, session_id: str, expired_at: str) -> None:
        super().__init__(
            f"session '{session_id}' expired at {expired_at} and is read-only; "
            "create a new session to continue"
        )


class LocalOnly(SessionError):
    code = "local_only"


class RemoteOnly(SessionError):
    code = "remote_only"


class UrlNotAllowed(SessionError):
    code = "url_not_allowed"


class UrlFetchFailed(SessionError):
    code = "url_fetch_failed"


class RemoteAgentUnreachable(SessionError):
    code = "remote_agent_unreachable"


class RemoteAgentError(SessionError):
    code = "remote_agent_error"


class EngineError(SessionError):
    code = "engine_error"


ALL_ERRORS: tuple[type[SessionError], ...] = (
    InvalidArgument,
    LimitExceeded,
    Conflict,
    NotNumeric,
    OutOfRange,
    SessionNotFound,
    MemoryNotFound,
    DocumentNotFound,
    PathNotAllowed,
    UnsupportedFormat,
    ParseFailed,
    SessionClosed,
    SessionExpired,
    LocalOnly,
    RemoteOnly,
    UrlNotAllowed,
    UrlFetchFailed,
    RemoteAgentUnreachable,
    RemoteAgentError,
    EngineError,
)
"""Every concrete error, for the README's error table and its test."""
