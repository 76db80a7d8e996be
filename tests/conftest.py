"""Shared fixtures: the real model (loaded once), real SQLite files and real PostgreSQL schemas."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from mcp import Client

from session_mcp.models.clock import ManualClock
from session_mcp.models.config import LayerConfig
from session_mcp.models.embedder import Embedder
from session_mcp.models.layer import SessionLayer
from session_mcp.models.limits import Limits
from session_mcp.server.app import build_server
from session_mcp.server.settings import Settings

T = TypeVar("T")
POSTGRES_URL = os.environ.get("SESSION_MCP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_REQUIRED = os.environ.get("SESSION_MCP_TEST_POSTGRES") == "required"


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


_PG_PROBLEM = _postgres_reachable()


def pytest_report_header() -> str:
    if _PG_PROBLEM is None:
        return f"postgresql: {POSTGRES_URL}"
    return f"postgresql: UNREACHABLE ({_PG_PROBLEM}); PostgreSQL tests will be skipped"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _PG_PROBLEM is not None and not POSTGRES_REQUIRED:
        terminalreporter.write_line(
            f"NOTE: PostgreSQL at {POSTGRES_URL} was unreachable, so every PostgreSQL variant was SKIPPED. "
            "Set SESSION_MCP_TEST_POSTGRES_URL to run them.",
            yellow=True,
        )


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    model = Embedder(cache_dir=tmp_path_factory.mktemp("model-cache"))
    model.warm()
    return model


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema per test, dropped afterwards, so tests never see each other's rows."""
    if _PG_PROBLEM is not None:
        if POSTGRES_REQUIRED:
            pytest.fail(f"PostgreSQL is required here but unreachable: {_PG_PROBLEM}")
        pytest.skip(f"PostgreSQL unreachable: {_PG_PROBLEM}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'session-mcp.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def limits() -> Limits:
    return Limits()


@pytest.fixture
def layer(
    database_url: str, tmp_path: Path, clock: ManualClock, embedder: Embedder, limits: Limits
) -> Iterator[SessionLayer]:
    built = SessionLayer(
        LayerConfig(database_url=database_url, data_dir=tmp_path / "data", limits=limits),
        clock=clock,
        embedder=embedder,
    )
    yield built
    built.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, warm_model=False)


@asynccontextmanager
async def held(manager: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit `manager` in one task of its own.

    pytest-asyncio sets a fixture up and tears it down in different tasks, and anyio refuses to
    exit a cancel scope (the MCP client's task group) from a task other than the one that entered it."""
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with manager as value:
                entered.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            raise

    task = asyncio.create_task(hold())
    try:
        yield await entered
    finally:
        stop.set()
        await task


@pytest.fixture
async def client(settings: Settings, clock: ManualClock, embedder: Embedder) -> AsyncIterator[Client]:
    server = build_server(settings, clock=clock, embedder=embedder)
    async with held(Client(server, raise_exceptions=True)) as connected:
        yield connected
