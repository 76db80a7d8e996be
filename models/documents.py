"""Document conversion: bytes of a supported format to text with page numbers, parsed in a
resource-limited subprocess so a hostile file fails alone.

Converters. markitdown was measured and not chosen: `markitdown[pdf,docx,pptx,xlsx]` pulls in
about 25 packages (pandas, magika with its own ONNX model, pdfminer.six, pdfplumber, pypdfium2,
requests: a second HTTP client outside models/outbound.py), and its PDF converter returns one
string for the whole file, losing page numbers. The maintained single-format libraries it wraps
are used directly instead: pypdf (pure Python, text per page), python-docx, python-pptx (one
page per slide), openpyxl (read-only, cached values), and BeautifulSoup + markdownify for HTML
(headings survive as `#` lines, which the chunker follows). Plain text, Markdown, reStructuredText,
CSV and JSON are decoded in process; everything else is parsed in a child process.

Isolation (reliability plan R15): the child is `python -I -m session_mcp.models.documents`; it
sets RLIMIT_AS (address space, `parse_memory_mb`) and RLIMIT_CPU before reading its input, the
parent kills it at a wall timeout (`parse_timeout_seconds`), and a crash, a MemoryError, a signal
or malformed output all become `parse_failed` for that one document. The server's own memory
never holds a parse tree of untrusted input.
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

from session_mcp.models.errors import LimitExceeded, ParseFailed, UnsupportedFormat

TEXT_FORMATS = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".rst": "text/x-rst",
    ".csv": "text/csv",
    ".json": "application/json",
}
PARSED_FORMATS = {
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
FORMATS = TEXT_FORMATS | PARSED_FORMATS
_MIME_TO_EXT = {"text/plain": ".txt", "text/markdown": ".md", "text/x-rst": ".rst", "text/csv": ".csv"}
_MIME_TO_EXT |= {mime: ext for ext, mime in PARSED_FORMATS.items()} | {"application/json": ".json"}
_MIME_TO_EXT |= {  # other names servers use for the same formats
    "text/x-markdown": ".md",
    "application/xhtml+xml": ".html",
    "application/x-pdf": ".pdf",
    "text/json": ".json",
    "application/csv": ".csv",
    "text/comma-separated-values": ".csv",
}
_ZIP_MARKERS = {"word/": ".docx", "ppt/": ".pptx", "xl/": ".xlsx"}
_PAGES_EXCEEDED = 3


@dataclass(frozen=True)
class Page:
    text: str
    page: int | None  # 1-based where the format has pages (PDF pages, PPTX slides)


@dataclass(frozen=True)
class Converted:
    title: str | None
    mime: str
    pages: list[Page]


@dataclass(frozen=True)
class ParseLimits:
    timeout_seconds: float = 30.0
    memory_mb: int = 1024
    max_pages: int = 2_000


def extension_for_type(content_type: str | None) -> str | None:
    """The extension of a supported format named by a Content-Type header (parameters ignored)."""
    if not content_type:
        return None
    return _MIME_TO_EXT.get(content_type.split(";")[0].strip().lower())


def extension_for(name: str, data: bytes, content_type: str | None = None) -> str:
    """The format of a file by its content first (magic bytes), then its content type (a fetched
    URL's Content-Type), then its name."""
    served = extension_for_type(content_type)
    ext = served or os.path.splitext(name.lower())[1]
    if data.startswith(b"%PDF-"):
        return ".pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            names = []
        for prefix, office in _ZIP_MARKERS.items():
            if any(n.startswith(prefix) for n in names):
                return office
        raise UnsupportedFormat(
            f"'{name}' is a ZIP archive but not a DOCX, PPTX or XLSX file; unzip it first"
        )
    if ext in (".pdf", ".docx", ".pptx", ".xlsx"):
        how = f"served as {content_type}" if served else f"named {ext}"
        raise UnsupportedFormat(f"'{name}' is {how} but its content is not {ext}; check the file")
    if ext not in FORMATS:
        supported = " ".join(sorted(FORMATS))
        raise UnsupportedFormat(f"'{name}' has no supported format (supported: {supported})")
    if ext in TEXT_FORMATS and b"\x00" in data[:8192]:
        raise UnsupportedFormat(f"'{name}' looks binary, not {ext} text; send a text or document file")
    return ext


def convert(data: bytes, ext: str, limits: ParseLimits) -> Converted:
    if ext in TEXT_FORMATS:
        text = data.decode("utf-8-sig", errors="replace")
        return Converted(title=None, mime=TEXT_FORMATS[ext], pages=[Page(text, None)])
    return _convert_in_child(data, ext, limits)


def _convert_in_child(data: bytes, ext: str, limits: ParseLimits) -> Converted:
    cpu = max(1, math.ceil(limits.timeout_seconds))
    command = [
        sys.executable,
        "-I",
        "-m",
        __name__,
        ext,
        str(limits.memory_mb),
        str(cpu),
        str(limits.max_pages),
    ]
    try:
        done = subprocess.run(
            command, input=data, capture_output=True, timeout=limits.timeout_seconds, check=False
        )
    except subprocess.TimeoutExpired:
        raise ParseFailed(
            f"parsing took longer than {limits.timeout_seconds:g} s and was stopped; the file may be "
            "malformed or hostile. Convert it to text or PDF again, or raise SESSION_MCP_KNOWLEDGE_PARSE_TIMEOUT_SECONDS"
        ) from None
    if done.returncode == _PAGES_EXCEEDED:
        count = done.stdout.decode(errors="replace").strip()
        raise LimitExceeded(
            f"the document has {count} pages, over the limit of {limits.max_pages}; split it or "
            "ask the user to raise SESSION_MCP_KNOWLEDGE_MAX_PAGES"
        )
    if done.returncode != 0:
        why = "it ran out of memory or CPU time" if done.returncode < 0 else "the converter rejected it"
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ParseFailed(
            f"the {ext} file could not be parsed ({why}: {last[0][:200]}); check that it opens, or "
            "export it again"
        )
    try:
        out = json.loads(done.stdout)
        pages = [Page(str(p["text"]), p["page"]) for p in out["pages"]]
        return Converted(title=out["title"], mime=PARSED_FORMATS[ext], pages=pages)
    except (ValueError, KeyError, TypeError) as exc:
        raise ParseFailed(f"the {ext} converter returned unreadable output ({exc}); try again") from None


# -- the child process -------------------------------------------------------------------------


class _TooManyPages(Exception):
    def __init__(self, pages: int) -> None:
        self.pages = pages


def _pdf(data: bytes, max_pages: int) -> tuple[str | None, list[Page]]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("the PDF is encrypted with a password")
    count = len(reader.pages)
    if count > max_pages:
        raise _TooManyPages(count)
    title = reader.metadata.title if reader.metadata else None
    return title, [Page(page.extract_text() or "", n) for n, page in enumerate(reader.pages, 1)]


def _docx(data: bytes) -> tuple[str | None, list[Page]]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    lines: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            style = block.style.name if block.style is not None else ""
            level = style.removeprefix("Heading ").strip()
            prefix = "#" * int(level) + " " if style.startswith("Heading ") and level.isdigit() else ""
            prefix = "# " if style == "Title" else prefix
            lines.append(prefix + block.text)
        elif isinstance(block, Table):
            lines.extend(" | ".join(cell.text for cell in row.cells) for row in block.rows)
    title = document.core_properties.title or None
    return title, [Page("\n\n".join(line for line in lines if line.strip()), None)]


def _pptx(data: bytes, max_pages: int) -> tuple[str | None, list[Page]]:
    from pptx import Presentation

    deck = Presentation(io.BytesIO(data))
    if len(deck.slides) > max_pages:
        raise _TooManyPages(len(deck.slides))
    pages = []
    for n, slide in enumerate(deck.slides, 1):
        lines = []
        title_shape = slide.shapes.title
        if title_shape is not None and title_shape.text_frame.text.strip():
            lines.append("# " + title_shape.text_frame.text.strip())
        for shape in slide.shapes:
            if shape is title_shape:
                continue
            if shape.has_text_frame and shape.text_frame.text.strip():
                lines.append(shape.text_frame.text)
            if getattr(shape, "has_table", False) and shape.has_table:
                lines.extend(" | ".join(c.text for c in row.cells) for row in shape.table.rows)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                lines.append(notes)
        pages.append(Page("\n\n".join(lines), n))
    return deck.core_properties.title or None, pages


def _xlsx(data: bytes) -> tuple[str | None, list[Page]]:
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    blocks = []
    for sheet in book.worksheets:
        rows = [
            " | ".join("" if v is None else str(v) for v in row)
            for row in sheet.iter_rows(values_only=True)
            if any(v is not None for v in row)
        ]
        blocks.append(f"## {sheet.title}\n\n" + "\n".join(rows))
    title = book.properties.title or None
    book.close()
    return title, [Page("\n\n".join(blocks), None)]


def _html(data: bytes) -> tuple[str | None, list[Page]]:
    from bs4 import BeautifulSoup
    from markdownify import markdownify

    soup = BeautifulSoup(data, "lxml")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "object"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else None
    if soup.head is not None:
        soup.head.decompose()
    text = markdownify(str(soup), heading_style="ATX", strip=["a", "img"])
    return title or None, [Page(text, None)]


def _child(argv: list[str]) -> int:
    ext, memory_mb, cpu_seconds, max_pages = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    data = sys.stdin.buffer.read()
    try:
        parsed: tuple[str | None, list[Page]]
        if ext == ".pdf":
            parsed = _pdf(data, max_pages)
        elif ext == ".docx":
            parsed = _docx(data)
        elif ext == ".pptx":
            parsed = _pptx(data, max_pages)
        elif ext == ".xlsx":
            parsed = _xlsx(data)
        else:
            parsed = _html(data)
    except _TooManyPages as exc:
        sys.stdout.write(str(exc.pages))
        return _PAGES_EXCEEDED
    title, pages = parsed
    out: dict[str, Any] = {
        "title": str(title).strip() if title else None,
        "pages": [{"text": p.text, "page": p.page} for p in pages],
    }
    sys.stdout.write(json.dumps(out, ensure_ascii=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1:]))
    except MemoryError:
        sys.stderr.write("out of memory\n")
        sys.exit(2)
    except Exception as exc:  # one line for the parent's error message, never a traceback
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        sys.exit(1)
