"""The one place domain errors become MCP errors: tool errors whose text starts with a stable code."""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import CallToolResult, TextContent

from session_mcp.models.errors import InvalidArgument, NotFound, SessionError

log = logging.getLogger("session_mcp.errors")
F = TypeVar("F", bound=Callable[..., Any])
_PREFIX = "Error executing tool "


def storable(arguments: dict[str, Any]) -> None:
    """Refuse a tool argument no database can store, naming it, before anything runs: a NUL
    character, which PostgreSQL refuses in text and JSON (so SQLite alone would keep it), or an
    unpaired surrogate, which is no UTF-8 at all. Both can sit in a string, a key or anywhere
    inside a JSON value. Over stdio and HTTP the SDK's JSON parser already refuses a surrogate
    escape; a caller in the same process (the in-memory client) reaches here with one."""

    def flaw(value: Any) -> str | None:
        if isinstance(value, str):
            if "\x00" in value:
                return "a NUL character (\\u0000)"
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return "an unpaired surrogate (\\ud800-\\udfff)"
            return None
        if isinstance(value, dict):
            return next((f for k, v in value.items() if (f := flaw(k) or flaw(v))), None)
        if isinstance(value, list | tuple):
            return next((f for v in value if (f := flaw(v))), None)
        return None

    for name, value in arguments.items():
        if found := flaw(value):
            raise InvalidArgument(f"{name} contains {found}, which cannot be stored; remove it")


def tool_errors(fn: F) -> F:
    """Return a SessionError as an error result the model reads: `code: what happened; what next`."""

    def refused(exc: SessionError) -> CallToolResult:
        log.info("%s refused: %s", fn.__name__, exc.code)
        return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)

    if inspect.iscoroutinefunction(fn):  # long tools run async so they never hold a worker

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                storable(kwargs)
                return await fn(*args, **kwargs)
            except SessionError as exc:
                return refused(exc)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            storable(kwargs)
            return fn(*args, **kwargs)
        except SessionError as exc:
            return refused(exc)

    return wrapper  # type: ignore[return-value]


def resource_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except SessionError as exc:
            raise ResourceError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _tidy_validation(detail: str) -> str:
    """Turn pydantic's multi-line report into `field: problem` pairs the model can act on."""
    lines = [
        line for line in detail.splitlines()[1:] if not line.strip().startswith("For further information")
    ]
    problems: list[str] = []
    field = ""
    for line in lines:
        if not line.startswith(" "):
            field = line.strip()
        else:
            message = re.sub(r"\s*\[type=.*$", "", line.strip())
            problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems) or detail


async def error_codes(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Give the SDK's own tool errors (bad arguments, crashes) a stable code too."""
    result = await call_next(ctx)
    if ctx.method != "tools/call":
        return result
    if isinstance(result, dict) and result.get("isError"):
        result = CallToolResult.model_validate(result)  # the handler may answer with the wire form
    if not isinstance(result, CallToolResult) or not result.is_error:
        return result
    first = result.content[0] if result.content else None
    if not isinstance(first, TextContent) or not first.text.startswith(_PREFIX):
        return result
    name, sep, detail = first.text[len(_PREFIX) :].partition(": ")
    if not sep:
        text = (
            f"internal_error: {name} failed unexpectedly; the server logged the details. "
            "Try again; if it keeps failing, report it"
        )
    elif "validation error" in detail:
        text = f"invalid_argument: {_tidy_validation(detail)}; fix the arguments and call {name} again"
    else:
        text = detail
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
