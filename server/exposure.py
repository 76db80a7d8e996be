"""Where the HTTP server may be reached and by whom: the loopback rule for running without tokens,
and the Host and Origin allowlists (always explicit: mcp 2.3 guards only loopback binds by itself)."""

from __future__ import annotations

import ipaddress

from mcp.server.transport_security import TransportSecuritySettings

from session_mcp.server.auth import TokenTable
from session_mcp.server.settings import Settings

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")


class HttpConfigError(ValueError):
    """Settings the HTTP server refuses to start with; the message says what to set instead."""


def is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, tokens: TokenTable | None) -> None:
    """Refuse a non-loopback bind without tokens unless the operator said so explicitly."""
    if tokens is not None or settings.allow_unauthenticated or is_loopback(settings.host):
        return
    raise HttpConfigError(
        f"refusing to serve HTTP on {settings.host!r} without bearer tokens: anyone who can reach it could "
        "read and change every user's sessions. Set SESSION_MCP_AUTH_TOKENS (token=user,...) or "
        "SESSION_MCP_AUTH_TOKENS_FILE, bind 127.0.0.1 instead, or pass --allow-unauthenticated "
        "(SESSION_MCP_ALLOW_UNAUTHENTICATED=true) if something in front of it authenticates every request"
    )


def _host_patterns(name: str) -> list[str]:
    """`name` as Host header patterns: a bare name matches with or without a port."""
    name = name.strip()
    if name.startswith("["):
        return [name] if "]:" in name else [name, f"{name}:*"]
    if name.count(":") > 1:  # a bare IPv6 address
        return [f"[{name}]", f"[{name}]:*"]
    return [name] if ":" in name else [name, f"{name}:*"]


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host and Origin allowlists, always explicit: the SDK turns its own on only for loopback binds."""
    names = list(settings.allowed_hosts)
    if not names and settings.host.strip() in _WILDCARD_BINDS:
        raise HttpConfigError(
            f"binding {settings.host!r} answers on every address, so the Host names clients use cannot be "
            "guessed; list them in SESSION_MCP_ALLOWED_HOSTS (comma separated, for example "
            "mcp.example.com,10.0.0.5:8000), or bind one address with --host"
        )
    if not names and not is_loopback(settings.host):
        names = [settings.host]
    hosts: list[str] = []
    for name in [*_LOOPBACK_NAMES, *names]:
        hosts += _host_patterns(name)
    if settings.allowed_origins:
        origins = list(settings.allowed_origins)
    else:
        origins = []
        for pattern in hosts:
            origins += [f"http://{pattern}", f"https://{pattern}"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(dict.fromkeys(hosts)),
        allowed_origins=list(dict.fromkeys(origins)),
    )
