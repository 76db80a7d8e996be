"""Knowledge safety: the path matrix (symlinks, `..`, FIFOs, devices, prefix siblings, hard links)
and parser isolation (malformed and hostile PDFs fail alone, within the time and memory limits)."""

from __future__ import annotations

import os
import socket
import time
import zlib
from pathlib import Path

import pytest

from session_mcp.models.documents import ParseLimits, convert, extension_for
from session_mcp.models.errors import LimitExceeded, ParseFailed, PathNotAllowed, UnsupportedFormat
from session_mcp.models.layer import SessionLayer
from session_mcp.models.paths import Roots

CANARY = "CANARY-SECRET-7f3a"


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "kb"
    outside = tmp_path / "outside"
    sibling = tmp_path / "kb-evil"
    for d in (root, outside, sibling):
        d.mkdir()
    (outside / "secret.txt").write_text(CANARY)
    (sibling / "x.txt").write_text(CANARY)
    (root / "ok.txt").write_text("fine words")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "linkdir").symlink_to(outside)
    os.mkfifo(root / "pipe.txt")
    os.link(outside / "secret.txt", root / "hard.txt")
    return {"root": root, "outside": outside, "sibling": sibling}


def refused(roots: Roots, raw: str) -> str:
    with pytest.raises((PathNotAllowed, ValueError)) as caught:
        path = roots.resolve(raw)
        roots.read_file(path, raw, 1 << 20)
    return str(caught.value)


def test_every_path_outside_the_roots_is_refused_and_the_message_names_the_roots(
    tree: dict[str, Path],
) -> None:
    root = tree["root"]
    roots = Roots.of([root])
    vectors = [
        "../outside/secret.txt",
        str(root / ".." / "outside" / "secret.txt"),
        "/etc/passwd",
        "/proc/self/environ",
        "file:///etc/passwd",
        "file://evil.example/etc/passwd",
        str(tree["sibling"] / "x.txt"),
        "link.txt",
        str(root / "linkdir" / "secret.txt"),
        "pipe.txt",
        "/dev/zero",
        "/dev/stdin",
        "hard.txt",
        "ok.txt\x00.pdf",
    ]
    for raw in vectors:
        started = time.monotonic()
        with pytest.raises((PathNotAllowed, ValueError, Exception)) as caught:
            path = roots.resolve(raw)
            roots.read_file(path, raw, 1 << 20)
        assert time.monotonic() - started < 1, raw
        assert getattr(caught.value, "code", "") in ("path_not_allowed", "invalid_argument"), raw
        if caught.value.code == "path_not_allowed":  # type: ignore[attr-defined]
            assert str(root) in str(caught.value), raw
    assert roots.read_file(roots.resolve("ok.txt"), "ok.txt", 100) == b"fine words"


def test_a_unix_socket_in_the_root_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(root / "sock.txt"))
        roots = Roots.of([root])
        with pytest.raises(PathNotAllowed):
            roots.read_file(roots.resolve("sock.txt"), "sock.txt", 100)
    finally:
        server.close()


def test_a_folder_walk_skips_what_leaves_the_root_and_no_canary_reaches_the_database(
    layer: SessionLayer, tree: dict[str, Path]
) -> None:
    layer.sessions.create("s1", "u1")
    added = layer.knowledge.add("s1", str(tree["root"]), declared_roots=[tree["root"]])
    assert [Path(d.source).name for d in added.documents] == ["ok.txt"]
    reasons = {Path(s.source).name: s.reason for s in added.skipped}
    assert set(reasons) == {"hard.txt", "link.txt", "pipe.txt"}
    assert all(r.startswith("path_not_allowed") for r in reasons.values())
    for raw in ("../kb-evil/x.txt", str(tree["outside"] / "secret.txt"), "link.txt"):
        with pytest.raises(PathNotAllowed):
            layer.knowledge.add("s1", raw, declared_roots=[tree["root"]])
    assert all(CANARY not in h.text for h in layer.knowledge.search("s1", CANARY, 10).results)


def test_without_declared_or_configured_roots_the_working_directory_is_the_root(
    layer: SessionLayer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer.sessions.create("s1", "u1")
    (tmp_path / "here.md").write_text("The heron waits by the reeds.")
    monkeypatch.chdir(tmp_path)
    assert layer.knowledge.add("s1", "here.md").documents[0].source == str(tmp_path / "here.md")
    with pytest.raises(PathNotAllowed, match=str(tmp_path)):
        layer.knowledge.add("s1", "/etc/hostname")


def test_a_file_named_pdf_that_is_not_one_is_refused_by_its_content() -> None:
    with pytest.raises(UnsupportedFormat, match="not"):
        extension_for("fake.pdf", b"hello there")
    assert extension_for("renamed.txt", b"%PDF-1.4 ...") == ".pdf"
    with pytest.raises(UnsupportedFormat, match="binary"):
        extension_for("x.txt", b"abc\x00def")


def test_a_malformed_pdf_fails_alone_with_parse_failed() -> None:
    with pytest.raises(ParseFailed, match="could not be parsed"):
        convert(
            b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ntrailer <<>>\n%%EOF", ".pdf", ParseLimits()
        )


def _flate_bomb_pdf(decompressed_mb: int) -> bytes:
    stream = zlib.compress(b"0 0 m " * (decompressed_mb * 1024 * 1024 // 6), 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_a_flate_bomb_pdf_is_contained_within_seconds() -> None:
    bomb = _flate_bomb_pdf(400)
    assert len(bomb) < 2 * 1024 * 1024
    started = time.monotonic()
    try:  # pypdf caps decompression itself; if it did not, the child's limits would stop it
        pages = convert(bomb, ".pdf", ParseLimits(timeout_seconds=8, memory_mb=256)).pages
        assert sum(len(p.text) for p in pages) < 1024 * 1024
    except ParseFailed:
        pass
    assert time.monotonic() - started < 10


def test_the_parser_child_dies_at_its_memory_limit_and_reports_parse_failed(tmp_path: Path) -> None:
    from knowledge_files import write_docx

    data = write_docx(tmp_path / "m.docx", "Heading", "lorem ipsum dolor " * 2_000_000).read_bytes()
    with pytest.raises(ParseFailed, match="out of memory"):
        convert(data, ".docx", ParseLimits(memory_mb=40))
    small = write_docx(tmp_path / "s.docx", "Heading", "body").read_bytes()
    assert convert(small, ".docx", ParseLimits()).pages[0].text.startswith("# Heading")


def test_a_parse_over_the_wall_time_is_stopped() -> None:
    pdf = _flate_bomb_pdf(50)
    with pytest.raises(ParseFailed, match="longer than"):
        convert(pdf, ".pdf", ParseLimits(timeout_seconds=0.05))


def test_page_limit_is_checked_before_text_is_extracted(tmp_path: Path) -> None:
    from knowledge_files import write_pdf

    data = write_pdf(tmp_path / "p.pdf", ["a", "b", "c"]).read_bytes()
    with pytest.raises(LimitExceeded, match="3 pages"):
        convert(data, ".pdf", ParseLimits(max_pages=2))
