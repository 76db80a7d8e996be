"""Entry point of the Claude Desktop extension bundle: the `session-mcp` console script, run from server/lib."""

import sys

from session_mcp.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
