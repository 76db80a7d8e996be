"""session_mcp.server."""
