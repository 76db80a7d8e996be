"""Fixtures for the HTTP tests: servers per transport (open and with tokens) and the tool suite's client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from http_servers import TOKEN_TABLE, Held, Running, connect, http_server
from mcp import Client

from session_mcp.models.clock import Clock
from session_mcp.models.embedder import Embedder
from session_mcp.server.http import Transport
from session_mcp.server.settings import Settings


@pytest.fixture
def edge_settings(tmp_path: Path) -> Settings:
    """SQLite only: for tests of the HTTP edge, where the database does not matter."""
    return Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'edge.db'}", warm_model=False
    )


@pytest.fixture(params=["sse", "streamable-http"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def open_server(
    settings: Settings, transport: Transport, clock: Clock, embedder: Embedder
) -> Iterator[Running]:
    """No tokens, on loopback: what a developer runs next to their IDE."""
    with http_server(settings, transport, None, clock=clock, embedder=embedder) as running:
        yield running


@pytest.fixture
def secured(edge_settings: Settings, transport: Transport, embedder: Embedder) -> Iterator[Running]:
    """Tokens for alice and bob, on SQLite."""
    with http_server(edge_settings, transport, TOKEN_TABLE, embedder=embedder) as running:
        yield running


@pytest.fixture
def team_server(
    settings: Settings, transport: Transport, clock: Clock, embedder: Embedder
) -> Iterator[Running]:
    """Tokens for alice and bob, on each database."""
    with http_server(settings, transport, TOKEN_TABLE, clock=clock, embedder=embedder) as running:
        yield running


@pytest.fixture
def held(request: pytest.FixtureRequest) -> Held:
    """`held` from tests/conftest.py. Conftest modules are not importable by name (each is loaded as
    `conftest`), so it is fetched from pytest, which registers every conftest under its path."""
    root = request.config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))
    assert root is not None, "tests/conftest.py is not loaded"
    return root.held  # type: ignore[no-any-return]


@pytest.fixture
async def client(open_server: Running, held: Held) -> AsyncIterator[Client]:
    """The tool suite's `client`, over HTTP instead of in memory."""
    async with held(connect(open_server)) as connected:
        yield connected
