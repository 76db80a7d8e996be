"""The SQL engine: URL handling, SQLite pragmas, and read and write transactions."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from session_mcp.models.errors import EngineError, InvalidArgument

log = logging.getLogger("session_mcp.database")


def normalise_url(url: str) -> str:
    """Accept the `postgresql://user@host/db` form users copy from providers and pick our driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidArgument(
            f"database URL {url!r} cannot be parsed; use sqlite:///path/to.db or postgresql://user@host:5432/db"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise InvalidArgument(f"database backend {backend!r} is not supported; use SQLite or PostgreSQL")
    return parsed.render_as_string(hide_password=False)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


class Database:
    """One engine per process. Writes on SQLite take the write lock up front (BEGIN IMMEDIATE), so a
    transaction never fails half-way on a lock upgrade; on PostgreSQL writes serialise on row locks."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=30, pool_pre_ping=True)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            self._configure_sqlite(sqlite_synchronous)

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    def _configure_sqlite(self, synchronous: str) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite so BEGIN is ours to issue.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            statement = (
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("session_mcp_write") else "BEGIN"
            )
            # Straight to the driver: every transaction runs this, and SQLAlchemy's execute path
            # (events, result set-up) cost ~35 us of a ~200 us one-statement read here.
            try:
                conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
            except sqlite3.OperationalError as exc:  # locked past the busy timeout: as any statement
                raise OperationalError(statement, None, exc) from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        try:
            with self.engine.connect().execution_options(session_mcp_write=True) as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            log.exception("database write failed")
            raise EngineError("the database could not complete the write; try again") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read transaction, and one snapshot: SQLite's WAL gives a reader one; PostgreSQL's
        default (read committed) would give each statement its own, so reads ask for repeatable
        read there (a read-only transaction never fails to serialise)."""
        try:
            connection = self.engine.connect()
            if not self.is_sqlite:
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            log.exception("database read failed")
            raise EngineError("the database could not complete the read; try again") from exc

    def close(self) -> None:
        self.engine.dispose()
