"""Schema upgrades: a database made by an older version gains the new tables and indexes with the right contents."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from stored_memories import MEMORIES, store

from session_mcp.models.database import Database
from session_mcp.models.hybrid import FullText
from session_mcp.models.migrations import MIGRATIONS, migrate
from session_mcp.models.tables import ChunkRow, ChunkScopeRow, DocumentRow

_D = DocumentRow.__table__  # type: ignore[attr-defined]
_C = ChunkRow.__table__  # type: ignore[attr-defined]
_S = ChunkScopeRow.__table__  # type: ignore[attr-defined]
BEFORE_CHUNK_COUNTS = [name for name, _ in MIGRATIONS].index("chunk scope counts")


def test_upgrading_counts_the_chunks_an_older_version_stored(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert migrate(db, MIGRATIONS[:BEFORE_CHUNK_COUNTS]) == BEFORE_CHUNK_COUNTS
        now = datetime.now(UTC)
        with db.write() as conn:
            for doc, scope, chunks in (("d1", "session:s1", 3), ("d2", "user:u1", 2), ("d3", "user:u1", 4)):
                conn.execute(
                    _D.insert().values(
                        document_id=doc, scope=scope, owner="o", session_id="s1", source=doc, title=doc, mime="text/plain",
                        sha256=doc, pages=None, chunk_count=chunks, meta="{}", created_at=now, updated_at=now,
                    )
                )  # fmt: skip
                conn.execute(
                    _C.insert(),
                    [
                        dict(chunk_id=f"{doc}-{n}", document_id=doc, scope=scope, ordinal=n, text="t",
                             page=None, start=0, end=1, embedding=b"\0" * 1536)
                        for n in range(chunks)
                    ],
                )  # fmt: skip
            top = {scope: seq for scope, seq in conn.execute(select(_C.c.scope, _C.c.seq).order_by(_C.c.seq))}
        assert migrate(db) == len(MIGRATIONS)
        with db.read() as conn:
            counted = {
                scope: (n, m)
                for scope, n, m in conn.execute(select(_S.c.scope, _S.c.row_count, _S.c.max_seq))
            }
        assert counted == {"session:s1": (3, top["session:s1"]), "user:u1": (6, top["user:u1"])}
        assert migrate(db) == len(MIGRATIONS)  # a second start changes nothing
    finally:
        db.close()


BEFORE_SCOPED_KEYWORDS = [name for name, _ in MIGRATIONS].index("keyword index by scope")


def test_upgrading_indexes_the_scope_of_every_stored_row_for_keyword_search(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert migrate(db, MIGRATIONS[:BEFORE_SCOPED_KEYWORDS]) == BEFORE_SCOPED_KEYWORDS
        with db.write() as conn:
            store(conn, [("long:ann", "ann likes green tea"), ("long:bob", "bob likes black tea"),
                         ("long:bob", "bob drinks coffee")], first=1)  # fmt: skip
            store(conn, [("long:zoë 名前", "zoë likes tea")], first=5)
        assert migrate(db) == len(MIGRATIONS)
        fulltext = FullText("memories")
        with db.write() as conn:
            store(conn, [("long:ann", "ann drinks tea at noon")], first=4)
            conn.execute(MEMORIES.delete().where(MEMORIES.c.memory_id == "m3"))

        def found(scopes: list[str], words: list[str]) -> set[str]:
            with db.read() as conn:
                seqs = list(fulltext.scores(conn, scopes, words, 10))
                rows = conn.execute(select(MEMORIES.c.memory_id).where(MEMORIES.c.seq.in_(seqs)))
                return {r[0] for r in rows}

        assert found(["long:ann"], ["tea"]) == {"m1", "m4"}  # a stored row, and one added since
        assert found(["long:bob"], ["tea", "coffee"]) == {"m2"}  # the deleted row is gone
        assert found(["long:ann", "long:bob"], ["tea"]) == {"m1", "m2", "m4"}
        assert found(["long:zoë 名前"], ["tea"]) == {"m5"}  # a scope's tag is its UTF-8, in SQL as here
        with db.read() as conn:  # FTS5's own check of the index against the rows it mirrors
            conn.exec_driver_sql("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
    finally:
        db.close()
