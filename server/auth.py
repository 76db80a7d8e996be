"""Bearer tokens for the HTTP transports: the token table (token -> user id) and its TokenVerifier.

A table comes from `SESSION_MCP_AUTH_TOKENS` (`token=user` pairs, comma separated) and/or
`SESSION_MCP_AUTH_TOKENS_FILE` (one `token=user` a line; blank lines and `#` comments are
skipped). The user id is what every tool scopes by: the verified token's `client_id`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mcp.server.auth.provider import AccessToken

from session_mcp.models.errors import InvalidArgument
from session_mcp.models.sessions import check_id

MIN_TOKEN_CHARS = 16
_NEW_TOKEN_HINT = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenTableError(ValueError):
    """The token table cannot be used; the message names the source and the line, never the token."""


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    user_id: str
    where: str


class TokenTable:
    """Which user each bearer token stands for. Tokens are kept only as SHA-256 digests."""

    def __init__(self, entries: Iterable[_Entry]) -> None:
        self._entries = tuple(entries)

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]]) -> TokenTable:
        """Build from `(where, "token=user")` pairs; `where` names the source in error messages."""
        entries: dict[bytes, _Entry] = {}
        for where, pair in pairs:
            token, sep, user_id = pair.strip().rpartition("=")  # the user id never holds '='; a token may
            if not sep or not token:
                raise TokenTableError(f"{where}: expected token=user (for example s3cret...=alice)")
            if any(c.isspace() or c == "," for c in token) or not token.isascii():
                raise TokenTableError(f"{where}: the token has a space, comma or non-ASCII character")
            if len(token) < MIN_TOKEN_CHARS:
                raise TokenTableError(
                    f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters; {_NEW_TOKEN_HINT}"
                )
            try:
                check_id(user_id, "user id")
            except InvalidArgument as exc:
                raise TokenTableError(f"{where}: {exc.message}") from None
            digest = _digest(token)
            if digest in entries:
                raise TokenTableError(
                    f"{where}: repeats the token of {entries[digest].where}; tokens must differ"
                )
            entries[digest] = _Entry(digest, user_id, where)
        return cls(entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def users(self) -> set[str]:
        return {entry.user_id for entry in self._entries}

    def user_for(self, token: str) -> str | None:
        """The token's user, or None. Compares against every entry in constant time per entry, so
        neither the position of a match nor how much of a token matched shows in the timing."""
        presented = _digest(token)
        found: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented) and found is None:
                found = entry.user_id
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def pairs_from_env(value: str, name: str = "SESSION_MCP_AUTH_TOKENS") -> list[tuple[str, str]]:
    items = [item for item in value.split(",") if item.strip()]
    return [(f"{name} entry {n}", item) for n, item in enumerate(items, 1)]


def pairs_from_file(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenTableError(f"token file {path} does not exist; create it or fix the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenTableError(f"token file {path} cannot be read: {exc}") from None
    return [
        (f"{path} line {number}", line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def load_token_table(env_value: str | None, file: Path | None) -> TokenTable | None:
    """The table from the environment value and/or the file; None when neither is given.

    Raises TokenTableError naming the bad entry or line; an empty file is an error too, since a
    server meant to have users would otherwise start with nobody able to call it."""
    if env_value is None and file is None:
        return None
    pairs = pairs_from_env(env_value) if env_value is not None else []
    if file is not None:
        from_file = pairs_from_file(file)
        if not from_file:
            raise TokenTableError(f"token file {file} has no token=user lines")
        pairs += from_file
    if not pairs:
        raise TokenTableError("SESSION_MCP_AUTH_TOKENS is set but holds no token=user pairs")
    return TokenTable.parse(pairs)


class StaticTokenVerifier:
    """The SDK's TokenVerifier over a TokenTable: the access token's client_id is the user id.

    These tokens are issued by the operator for this server alone, so there is no audience to
    check. `token` carries a fingerprint, not the secret, so nothing downstream can forward it."""

    def __init__(self, table: TokenTable) -> None:
        self._table = table

    async def verify_token(self, token: str) -> AccessToken | None:
        user_id = self._table.user_for(token)
        if user_id is None:
            return None
        fingerprint = "sha256:" + _digest(token).hex()[:16]
        return AccessToken(token=fingerprint, client_id=user_id, scopes=[], subject=user_id)
