"""The `session-mcp` command: serve MCP over stdio (the default), SSE or streamable HTTP."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from session_mcp.server.app import build_server
from session_mcp.server.pipes import serve_stdio
from session_mcp.server.settings import Settings
from session_mcp.tools import ALL_TOOLS

if TYPE_CHECKING:
    from session_mcp.server.http import Transport


def _settings_help() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        rows.append(f"  SESSION_MCP_{name.upper():<28} {field.description} [default: {default}]")
    tools = [
        f"  {spec.name:<16} {' '.join((spec.fn.__doc__ or '').split('.')[0].split())}" for spec in ALL_TOOLS
    ]
    return (
        "settings (environment variables):\n"
        + "\n".join(rows)
        + "\n\ntools:\n"
        + "\n".join(tools)
        + "\n\nresources: session://{session_id}, session://{session_id}/state, session://{session_id}/history"
        + "\nprompt: context(session_id, query)"
    )


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="session-mcp",
        description="MCP server for durable sessions: state, semantic memory, context and history. "
        "With no arguments it serves MCP over stdio.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main.add_subparsers(dest="command")
    serve = commands.add_parser(
        "serve",
        help="serve MCP over stdio, SSE or streamable HTTP",
        description="Serve MCP. Over HTTP: streamable HTTP at /mcp, SSE at /sse (messages at /messages/), "
        "and GET /health for load balancers. Bearer tokens (SESSION_MCP_AUTH_TOKENS or "
        "SESSION_MCP_AUTH_TOKENS_FILE, token=user) fix each caller's user. Without tokens the server "
        "refuses any address but loopback unless given --allow-unauthenticated.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--transport",
        choices=["stdio", "sse", "streamable-http"],
        default="stdio",
        help="how clients connect (default: stdio)",
    )
    serve.add_argument("--host", help="HTTP bind address (default: SESSION_MCP_HOST, 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, help="HTTP port; 0 picks a free one (default: SESSION_MCP_PORT, 8000)"
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="serve HTTP on a non-loopback address without tokens: anyone who can connect may act as any "
        "user, so only behind something that authenticates (SESSION_MCP_ALLOW_UNAUTHENTICATED)",
    )
    return main


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _serve_http(settings: Settings, transport: Transport) -> int:
    # Imported here: stdio, the common case, never loads the HTTP app, its auth or its drain.
    from session_mcp.server.auth import TokenTableError, load_token_table
    from session_mcp.server.exposure import HttpConfigError, check_exposure
    from session_mcp.server.http import run_http

    tokens_env = settings.auth_tokens.get_secret_value() if settings.auth_tokens is not None else None
    try:
        tokens = load_token_table(tokens_env, settings.auth_tokens_file)
        check_exposure(settings, tokens)
        run_http(settings, transport, tokens)
    except (TokenTableError, HttpConfigError) as exc:
        sys.stderr.write(f"session-mcp: {exc}\n")
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"session-mcp: invalid settings:\n{exc}\n")
        return 2
    # stdout carries the protocol in stdio mode: every log line goes to stderr.
    # Libraries log to the root logger at INFO (onnxruntime's quantizer prints a line per tensor
    # while the int8 model is built): they get warnings only; our own loggers get the set level.
    logging.basicConfig(
        stream=sys.stderr, level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("session_mcp").setLevel(settings.log_level)
    if args.command == "serve" and args.transport != "stdio":
        overrides = {
            "host": args.host,
            "port": args.port,
            "allow_unauthenticated": args.allow_unauthenticated,
        }
        settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        return _serve_http(settings, args.transport)
    server = build_server(settings)
    serve_stdio(server, settings.max_body_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
