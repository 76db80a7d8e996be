"""The SQL engine: URL handling, SQLite pragmas, read and write transactions, and the hottest
statements run straight on the driver's cursor."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ClauseElement, Connection, Engine, bindparam, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, DisconnectionError, OperationalError

from session_mcp.models.errors import EngineError, InvalidArgument
from session_mcp.models.ranking import bm25_idf

log = logging.getLogger("session_mcp.database")

PING_AFTER_IDLE_S = 10.0
"""A pooled PostgreSQL connection idle this long is checked before use (see `_ping_when_idle`)."""


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

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
        ping_after_idle_s: float = PING_AFTER_IDLE_S,
    ) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=30)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            self._configure_sqlite(sqlite_synchronous)
        else:
            self._ping_when_idle(ping_after_idle_s)

    def _ping_when_idle(self, after_s: float) -> None:
        """Check a pooled PostgreSQL connection before use only if it sat idle `after_s` or more.

        A server, a proxy or an idle timeout may close a connection while it sits in the pool, and
        a request on it would fail. SQLAlchemy's pre-ping asks the server before every checkout: a
        round trip on every tool call (0.1-0.37 ms on loopback here, a full network round trip to a
        hosted database). A connection checked in moments ago is in use by a burst of calls and
        not worth asking about; one that failed the check is replaced (the pool retries)."""
        dialect = self.engine.dialect

        @event.listens_for(self.engine, "checkin")
        def _idle_from(_dbapi_conn: Any, record: Any) -> None:
            record.info["idle_since"] = time.monotonic()

        @event.listens_for(self.engine, "checkout")
        def _alive(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            idle_since = record.info.pop("idle_since", None)
            if idle_since is None or time.monotonic() - idle_since < after_s:
                return  # new, or idle too briefly to have been dropped
            try:
                dialect.do_ping(dbapi_conn)
            except Exception as exc:  # the driver's own error types: any failure means a dead link
                log.info(
                    "a pooled database connection idle for %.0f s was closed; reconnecting",
                    time.monotonic() - idle_since,
                )
                raise DisconnectionError("the pooled connection was closed while idle") from exc

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
            dbapi_conn.create_function("bm25_idf", 2, bm25_idf, deterministic=True)  # hybrid.FullText

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
        except DataError as exc:
            raise _refused_value(exc) from exc

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
        except DataError as exc:
            raise _refused_value(exc) from exc

    def close(self) -> None:
        self.engine.dispose()


def _refused_value(exc: DataError) -> InvalidArgument:
    """A value the database will not hold (PostgreSQL refuses a NUL character in text, for one): the
    caller's input, so it is reported as such, and the transaction was rolled back."""
    log.info("the database refused a value: %s", exc.orig if exc.orig is not None else exc)
    return InvalidArgument(
        "the database refused a value of this call as invalid data (a NUL character \\u0000 in a "
        "string, say); change the value and call again"
    )


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # in placeholder order for a positional driver, else each name once
    positional: bool
    processors: dict[str, Callable[[Any], Any]]
    fixed: dict[str, Any]  # the statement's own values (a literal in a comparison, say)

    def arguments(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        def value(name: str) -> Any:
            given = self.fixed[name] if name in self.fixed else params[name]
            process = self.processors.get(name)
            return given if process is None else process(given)

        if self.positional:
            return [value(name) for name in self.names]
        return {name: value(name) for name in self.names}


class DriverStatement:
    """A statement built once and run straight on the driver's cursor, for the hottest calls.

    `conn.execute` spends time outside the database on every call (an execution context, result
    set-up, events). Measured here, against the driver's cursor: memory_add's insert 165 against
    63 us, the scope-count upsert 46 against 3 us, the session touch every write runs 99 against
    26 us, and the session read every other call runs 45 against 15 us. The statement is compiled
    once per dialect; each value passes through its column type's own bind processor, and each
    returned value through its result processor, as `conn.execute` would, so what is stored and
    read is the same. Driver errors are raised as
    SQLAlchemy raises them (OperationalError, DataError, ...), which is what Database.write maps.
    Listeners of the engine's `before_cursor_execute` and `after_cursor_execute` events are called
    as for any statement (their return values are not used; there is no execution context)."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, _Compiled] = {}
        self._results: dict[str, tuple[list[str], list[Callable[[Any], Any] | None]]] = {}
        # Whether it returns rows of its own: SQLAlchemy adds RETURNING of a serial key to a plain
        # INSERT on PostgreSQL, which the caller did not ask for.
        self._reads = bool(getattr(statement, "returning_column_descriptions", None)) or hasattr(
            statement, "selected_columns"
        )

    def run(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows the statement returns (RETURNING), as tuples; [] if it returns none."""
        return self._execute(conn, params)[1]

    def mappings(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows the statement returns, as dicts by column name."""
        names, rows = self._execute(conn, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row the statement returns, as a dict by column name; None if it returns none."""
        names, rows = self._execute(conn, params)
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def _execute(
        self, conn: Connection, params: Mapping[str, Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        dialect = conn.dialect
        compiled = self._compiled.get(dialect.name) or self._compile(dialect)
        arguments = compiled.arguments(params)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        events = conn.dispatch  # listeners on cursor execution (tracing, tests) still see it
        try:
            if events.before_cursor_execute:
                events.before_cursor_execute(conn, cursor, compiled.sql, arguments, None, False)
            cursor.execute(compiled.sql, arguments)
            if events.after_cursor_execute:
                events.after_cursor_execute(conn, cursor, compiled.sql, arguments, None, False)
            if not cursor.description or not self._reads:  # an INSERT's implicit RETURNING (PostgreSQL)
                return [], []
            names, processors = self._results.get(dialect.name) or self._result_processors(dialect, cursor)
            rows = cursor.fetchall()
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                compiled.sql, arguments, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
        finally:
            cursor.close()
        if not any(processors):
            return names, [tuple(row) for row in rows]
        return names, [
            tuple(v if p is None else p(v) for p, v in zip(processors, row, strict=True)) for row in rows
        ]

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = self._statement.compile(dialect=dialect, column_keys=self._column_keys)
        if "POSTCOMPILE" in compiled.string:
            raise TypeError("DriverStatement sends no expanding IN list; compare with == or use conn.execute")
        positional = compiled.positional
        names = tuple(compiled.positiontup) if positional else tuple(dict.fromkeys(compiled.binds))
        processors, fixed = {}, {}
        for name in set(names):
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
            if not bind.required:
                fixed[name] = bind.effective_value
        made = _Compiled(compiled.string, names, positional, processors, fixed)
        self._compiled[dialect.name] = made
        return made

    def _result_processors(
        self, dialect: Dialect, cursor: Any
    ) -> tuple[list[str], list[Callable[[Any], Any] | None]]:
        """The returned columns' names and their types' result processors, from the statement's
        columns (a SELECT's, or a RETURNING's) and the driver's description of the first result
        (some processors use it)."""
        returning = getattr(self._statement, "returning_column_descriptions", None)
        selected = getattr(self._statement, "selected_columns", None)
        if returning:
            columns = [(column["name"], column["type"]) for column in returning]
        elif selected is not None:  # a SELECT, or text() given its columns
            columns = [(column.key, column.type) for column in selected]
        else:
            columns = []
        if not columns or len(columns) != len(cursor.description):
            raise TypeError("DriverStatement reads rows only of a SELECT or a RETURNING of table columns")
        names = [name for name, _ in columns]
        processors = [
            kind.dialect_impl(dialect).result_processor(dialect, described[1])
            for (_, kind), described in zip(columns, cursor.description, strict=True)
        ]
        self._results[dialect.name] = (names, processors)
        return names, processors


def listed(name: str, n: int) -> list[Any]:
    """Bind parameters `name_0` ... for a list of n values, in a statement a ListStatement builds."""
    return [bindparam(f"{name}_{i}") for i in range(n)]


class ListStatement:
    """A statement with list parameters (an IN list of scopes, say), run as a DriverStatement built
    for each combination of the lists' lengths: `build(**{list name: length})` writes the lists
    with `listed`. SQLAlchemy's expanding parameters would send them, but only via `conn.execute`:
    the scope counts every search reads took 65 us that way and 10 us on the driver, the row fetch
    of a 5-result search 109 against 59 us (measured in a read transaction). The `kept` most
    recently used lengths stay built: a search's row fetch has one per number of hits, up to twice
    its limit, and one of 200 parameters, compiled, held 70 KB (tracemalloc)."""

    def __init__(self, build: Callable[..., ClauseElement], *lists: str, kept: int = 32) -> None:
        self._build = build
        self._lists = lists
        self._kept = kept
        self._made: OrderedDict[tuple[int, ...], DriverStatement] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        statement, flat = self._for(params)
        return statement.run(conn, flat)

    def mappings(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        statement, flat = self._for(params)
        return statement.mappings(conn, flat)

    def _for(self, params: Mapping[str, Any]) -> tuple[DriverStatement, dict[str, Any]]:
        lengths = tuple(len(params[name]) for name in self._lists)
        with self._lock:
            statement = self._made.get(lengths)
            if statement is None:
                statement = DriverStatement(self._build(**dict(zip(self._lists, lengths, strict=True))))
                self._made[lengths] = statement
                if len(self._made) > self._kept:
                    self._made.popitem(last=False)
            else:
                self._made.move_to_end(lengths)
        flat = {name: value for name, value in params.items() if name not in self._lists}
        for name in self._lists:
            flat.update((f"{name}_{i}", value) for i, value in enumerate(params[name]))
        return statement, flat
