"""The one place domain errors become MCP errors: tool errors whose text starts with a stable code,
and for resources and prompts JSON-RPC errors whose message does."""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, TextContent

from session_mcp.models.errors import EngineError, InvalidArgument, SessionError

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


def read_errors(fn: F) -> F:
    """A resource's or prompt's SessionError as the JSON-RPC error the client gets, with the code
    and message intact: invalid params (the caller's to fix), or an internal error for an engine
    that failed. The SDK passes an MCPError through; anything else from a prompt it answers as a
    bare "Internal server error" and logs a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SessionError as exc:
            log.info("%s refused: %s", fn.__name__, exc.code)
            raise MCPError(
                INTERNAL_ERROR if isinstance(exc, EngineError) else INVALID_PARAMS, str(exc)
            ) from exc

    return wrapper  # type: ignore[return-value]


def prompt_checks(required: Mapping[str, Sequence[str]]) -> ServerMiddleware[Any]:
    """`prompts/get` refused as invalid params, with what to send instead, when it names no prompt
    of `required` (prompt name -> the arguments it needs) or leaves one of its arguments out: the
    SDK answers both as an internal error without a message, and logs a traceback for each."""

    async def check(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params or {}
        name, arguments = params.get("name"), params.get("arguments") or {}
        # Anything malformed (no name, arguments not an object) is the SDK's validation's to answer;
        # a notification (no id) gets no answer at all.
        asked = ctx.method == "prompts/get" and ctx.request_id is not None
        if asked and isinstance(name, str) and isinstance(arguments, Mapping):
            if name not in required:
                raise MCPError(
                    INVALID_PARAMS,
                    f"invalid_argument: there is no prompt {name[:100]!r}; "
                    f"the prompts are: {', '.join(sorted(required))} (prompts/list describes them)",
                )
            missing = [arg for arg in required[name] if arg not in arguments]
            if missing:
                raise MCPError(
                    INVALID_PARAMS,
                    f"invalid_argument: the prompt {name!r} needs the argument{'s' if len(missing) > 1 else ''} "
                    f"{' and '.join(missing)}; send {'them' if len(missing) > 1 else 'it'} in arguments",
                )
        return await call_next(ctx)

    return check


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
