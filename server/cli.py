"""The `session-mcp` command: serve MCP over stdio (the default)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from session_mcp.server.app import build_server
from session_mcp.server.settings import Settings
from session_mcp.tools import ALL_TOOLS


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
        help="serve MCP (stdio)",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--transport", choices=["stdio"], default="stdio", help="how clients connect")
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"session-mcp: invalid settings:\n{exc}\n")
        return 2
    # stdout carries the protocol in stdio mode: every log line goes to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = build_server(settings)
    _ = args
    server.run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
