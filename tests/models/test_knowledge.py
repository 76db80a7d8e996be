"""The knowledge base service on SQLite and PostgreSQL: every format, re-adds, scopes, limits, context."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from knowledge_files import write_all, write_pdf
from sqlalchemy import func, select, update

from session_mcp.models.clock import ManualClock
from session_mcp.models.errors import (
    DocumentNotFound,
    InvalidArgument,
    LimitExceeded,
    LocalOnly,
    SessionClosed,
)
from session_mcp.models.layer import SessionLayer
from session_mcp.models.tables import ChunkRow, ChunkScopeRow, DocumentRow, SessionRow


def count_rows(layer: SessionLayer) -> tuple[int, int]:
    with layer.db.read() as conn:
        documents = len(conn.execute(select(DocumentRow.__table__)).all())  # type: ignore[attr-defined]
        chunks = len(conn.execute(select(ChunkRow.__table__)).all())  # type: ignore[attr-defined]
    return documents, chunks


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    root.mkdir()
    return root


def test_every_format_in_a_folder_is_ingested_and_found_by_its_phrase(layer: SessionLayer, kb: Path) -> None:
    layer.sessions.create("s1", "u1")
    made = write_all(kb / "docs")
    (kb / "docs" / "picture.png").write_bytes(b"\x89PNG\r\n")
    added = layer.knowledge.add("s1", str(kb / "docs"), declared_roots=[kb])
    assert {Path(d.source).suffix for d in added.documents} == set(made)
    assert all(d.status == "added" and d.chunks >= 1 for d in added.documents)
    assert [Path(s.source).name for s in added.skipped] == ["picture.png"]
    assert added.skipped[0].reason.startswith("unsupported_format")
    for ext, (path, phrase) in made.items():
        hits = layer.knowledge.search("s1", phrase, limit=1).results
        assert hits and hits[0].source == str(path), ext
        assert phrase in hits[0].text
        assert hits[0].text == layer_text_slice(hits[0].text, hits[0].start, hits[0].end)
    pdf_hit = layer.knowledge.search("s1", "obsidian glacier", limit=1).results[0]
    assert pdf_hit.page == 2
    assert layer.knowledge.search("s1", "crimson kite", limit=1).results[0].page == 2
    html_hit = layer.knowledge.search("s1", "tangerine ferry", limit=1).results[0]
    assert html_hit.title == "Harbour page" and "secret" not in html_hit.text


def layer_text_slice(text: str, start: int, end: int) -> str:
    assert 0 <= start < end and end - start == len(text)
    return text


def test_re_adding_an_unchanged_source_is_a_no_op_and_a_changed_one_replaces_its_chunks(
    layer: SessionLayer, kb: Path
) -> None:
    layer.sessions.create("s1", "u1")
    note = kb / "note.md"
    note.write_text("# Note\n\nThe password hint is a blue giraffe.")
    first = layer.knowledge.add("s1", str(note), declared_roots=[kb]).documents[0]
    again = layer.knowledge.add("s1", str(note), declared_roots=[kb]).documents[0]
    assert (again.status, again.document_id) == ("unchanged", first.document_id)
    note.write_text("# Note\n\nThe password hint is now an orange pelican.")
    changed = layer.knowledge.add("s1", str(note), declared_roots=[kb]).documents[0]
    assert (changed.status, changed.document_id) == ("updated", first.document_id)
    assert count_rows(layer) == (1, 1)
    hits = layer.knowledge.search("s1", "giraffe", mode="keyword").results
    assert hits == []
    assert "pelican" in layer.knowledge.search("s1", "pelican").results[0].text


def test_raw_text_and_kind_settle_what_a_source_is(layer: SessionLayer, kb: Path) -> None:
    layer.sessions.create("s1", "u1")
    with pytest.raises(InvalidArgument, match="kind='text'"):
        layer.knowledge.add("s1", "notes.txt", declared_roots=[kb])
    stored = layer.knowledge.add("s1", "notes.txt", kind="text", declared_roots=[kb]).documents[0]
    assert stored.source.startswith("text:") and stored.title == "notes.txt"
    layer.knowledge.add("s1", "Otters hold hands while they sleep.", metadata={"from": "chat"})
    listed = layer.knowledge.list("s1").documents
    assert {d.title for d in listed} == {"notes.txt", "Otters hold hands while they sleep."}
    assert any(d.metadata == {"from": "chat"} for d in listed)


def test_session_knowledge_is_private_and_user_knowledge_is_shared_by_the_users_sessions(
    layer: SessionLayer,
) -> None:
    layer.sessions.create("a1", "alice")
    layer.sessions.create("a2", "alice")
    layer.sessions.create("b1", "bob")
    layer.knowledge.add("a1", "Canary-session: the vault code is 1111.")
    layer.knowledge.add("a1", "Canary-user: alice prefers window seats.", scope="user")
    layer.knowledge.add("b1", "Canary-bob: the vault code is 2222.", scope="user")
    for mode in ("hybrid", "vector", "keyword"):
        seen_a1 = {h.text for h in layer.knowledge.search("a1", "vault code window seats", 10, mode).results}  # type: ignore[arg-type]
        seen_a2 = {h.text for h in layer.knowledge.search("a2", "vault code window seats", 10, mode).results}  # type: ignore[arg-type]
        seen_b1 = {h.text for h in layer.knowledge.search("b1", "vault code window seats", 10, mode).results}  # type: ignore[arg-type]
        assert not any("bob" in t for t in seen_a1 | seen_a2), mode
        assert not any("1111" in t for t in seen_a2 | seen_b1), mode
        assert not any("alice" in t for t in seen_b1), mode
    assert [d.scope for d in layer.knowledge.list("a2").documents] == ["user"]
    foreign = layer.knowledge.list("b1").documents[0].document_id
    with pytest.raises(DocumentNotFound):
        layer.knowledge.delete("a1", foreign)
    assert "2222" in layer.knowledge.search("b1", "vault code").results[0].text


def test_delete_removes_the_document_and_its_chunks_from_search(layer: SessionLayer) -> None:
    layer.sessions.create("s1", "u1")
    doc = layer.knowledge.add("s1", "Pangolins are covered in keratin scales.").documents[0]
    assert layer.knowledge.search("s1", "pangolin scales").results
    deleted = layer.knowledge.delete("s1", doc.document_id)
    assert deleted.deleted and deleted.chunks == 1
    assert layer.knowledge.search("s1", "pangolin scales").results == []
    assert count_rows(layer) == (0, 0)


def test_get_context_has_a_knowledge_section(layer: SessionLayer) -> None:
    layer.sessions.create("s1", "u1")
    layer.knowledge.add("s1", "The Freedonia capital city is Fredville, founded in 1802.")
    built = layer.context.build("s1", "What is the capital of Freedonia?")
    assert "## From your documents" in built.context and "Fredville" in built.context
    assert any(item.section == "knowledge" for item in built.items)


def test_knowledge_tools_refuse_remote_agent_sessions(layer: SessionLayer) -> None:
    layer.sessions.create("r1", "u1")
    with layer.db.write() as conn:
        conn.execute(
            update(SessionRow.__table__)  # type: ignore[attr-defined]
            .where(SessionRow.__table__.c.session_id == "r1")  # type: ignore[attr-defined]
            .values(agent_url="https://agent.example/")
        )
    for call in (
        lambda: layer.knowledge.add("r1", "some text"),
        lambda: layer.knowledge.search("r1", "text"),
        lambda: layer.knowledge.list("r1"),
        lambda: layer.knowledge.delete("r1", "x"),
    ):
        with pytest.raises(LocalOnly):
            call()


def test_a_closed_session_refuses_knowledge_add_and_nothing_is_written(layer: SessionLayer) -> None:
    layer.sessions.create("s1", "u1")
    layer.sessions.close("s1")
    with pytest.raises(SessionClosed):
        layer.knowledge.add("s1", "Some words.")
    assert count_rows(layer) == (0, 0)


def test_chunk_and_page_limits_refuse_the_document_and_write_nothing(layer: SessionLayer, kb: Path) -> None:
    layer.sessions.create("s1", "u1")
    long_text = "\n\n".join(
        f"Paragraph {i} talks about topic number {i} at some length." * 5 for i in range(40)
    )
    small = dataclasses.replace(layer.knowledge.config, max_chunks_per_document=3)
    layer.knowledge.config = small
    with pytest.raises(LimitExceeded, match="chunks, over the limit of 3"):
        layer.knowledge.add("s1", long_text)
    write_pdf(kb / "long.pdf", [f"page {n}" for n in range(5)])
    layer.knowledge.config = dataclasses.replace(small, max_pages=4)
    with pytest.raises(LimitExceeded, match="5 pages, over the limit of 4"):
        layer.knowledge.add("s1", str(kb / "long.pdf"), declared_roots=[kb])
    (kb / "big.txt").write_text("x" * 2000)
    layer.knowledge.config = dataclasses.replace(small, max_file_bytes=1000)
    with pytest.raises(LimitExceeded, match="2000 bytes, over the file limit of 1000"):
        layer.knowledge.add("s1", str(kb / "big.txt"), declared_roots=[kb])
    assert count_rows(layer) == (0, 0)


def test_the_per_call_chunk_limit_skips_what_does_not_fit_in_a_folder(layer: SessionLayer, kb: Path) -> None:
    layer.sessions.create("s1", "u1")
    for n in range(3):
        (kb / f"{n}.md").write_text(f"# Doc {n}\n\nDocument number {n} is short.")
    layer.knowledge.config = dataclasses.replace(layer.knowledge.config, max_chunks_per_call=2)
    added = layer.knowledge.add("s1", str(kb), declared_roots=[kb])
    assert len(added.documents) == 2
    assert len(added.skipped) == 1 and added.skipped[0].reason.startswith("limit_exceeded")


def test_progress_reports_documents_and_chunks(layer: SessionLayer, kb: Path) -> None:
    layer.sessions.create("s1", "u1")
    for n in range(2):
        (kb / f"{n}.md").write_text(f"# Doc {n}\n\nDocument number {n}.")
    seen: list[tuple[float, float | None, str]] = []
    layer.knowledge.add("s1", str(kb), declared_roots=[kb], progress=lambda d, t, m: seen.append((d, t, m)))
    assert seen[-1][:2] == (2, 2)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert any("chunks embedded" in m for _, _, m in seen)


def chunk_counts(layer: SessionLayer) -> dict[str, tuple[int, int]]:
    """chunk_scopes as stored, and the same figures counted from the chunks themselves."""
    with layer.db.read() as conn:
        stored = {
            scope: (count, top)
            for scope, count, top in conn.execute(
                select(ChunkScopeRow.__table__.c.scope, ChunkScopeRow.row_count, ChunkScopeRow.max_seq)  # type: ignore[attr-defined]
            )
        }
        rows = ChunkRow.__table__.c  # type: ignore[attr-defined]
        counted = {
            scope: (count, top)
            for scope, count, top in conn.execute(
                select(rows.scope, func.count(), func.max(rows.seq)).group_by(rows.scope)
            )
        }
    for scope in set(stored) - set(counted):
        counted[scope] = (0, stored[scope][1])  # an emptied scope keeps its highest seq
    assert stored == counted
    return stored


def test_chunk_scope_counts_follow_every_knowledge_write(
    layer: SessionLayer, kb: Path, clock: ManualClock
) -> None:
    layer.sessions.create("s1", "u1", ttl_seconds=60)
    note = kb / "note.md"
    note.write_text("# Note\n\n" + "The lighthouse keeper counts gulls at dawn. " * 60)
    added = layer.knowledge.add("s1", str(note), declared_roots=[kb]).documents[0]
    assert chunk_counts(layer)["session:s1"][0] == added.chunks > 1
    note.write_text("# Note\n\nShorter now: one chunk about gulls.")
    layer.knowledge.add("s1", str(note), declared_roots=[kb])  # replaced: fewer chunks, newer seqs
    assert chunk_counts(layer)["session:s1"][0] == 1
    user_doc = layer.knowledge.add("s1", "Harbour tides turn at noon.", kind="text", scope="user")
    assert chunk_counts(layer)["user:u1"][0] == 1
    layer.knowledge.delete("s1", user_doc.documents[0].document_id)
    assert chunk_counts(layer)["user:u1"][0] == 0
    clock.advance(60 + layer.sweeper.limits.sweeper_grace_seconds + 1)
    assert layer.sweeper.sweep() == 1  # the expired session's own knowledge goes
    assert chunk_counts(layer)["session:s1"][0] == 0
