"""session_mcp.models."""
