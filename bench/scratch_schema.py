"""A PostgreSQL schema of a benchmark run's own, so that no run meets an earlier run's rows.

A run given `--database-url postgresql://...` works in a new schema of that database
(`<prefix>_<8 hex>`, reached through the URL's `search_path`) and drops it at the end, also on
errors and Ctrl-C; SQLite URLs and None pass through unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def in_schema(database_url: str, schema: str) -> str:
    sep = "&" if "?" in database_url else "?"
    return f"{database_url}{sep}options=-csearch_path%3D{schema}"


def _plain(database_url: str) -> str:
    """The URL as psycopg takes it (without SQLAlchemy's `+driver`)."""
    scheme, rest = database_url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


@contextmanager
def scratch_schema(database_url: str | None, prefix: str, *, keep: bool = False) -> Iterator[str | None]:
    """The URL to use: `database_url` itself, or for PostgreSQL one into a new schema that is
    dropped when the block ends (kept, and its name printed, with `keep`)."""
    if not database_url or not database_url.startswith("postgresql"):
        yield database_url
        return
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_plain(database_url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield in_schema(database_url, schema)
    finally:
        if keep:
            print(f"kept PostgreSQL schema {schema}", flush=True)
        else:
            with psycopg.connect(_plain(database_url), autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
