"""Ingestion: what a `knowledge_add` source names (text, a file, a folder, a URL) read into memory,
checked against the roots and limits, then converted and chunked; storing is `knowledge.py`'s."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from session_mcp.models.chunking import Chunk, Chunker, join_pages
from session_mcp.models.documents import FORMATS, ParseLimits, convert, extension_for
from session_mcp.models.errors import (
    InvalidArgument,
    LimitExceeded,
    SessionError,
    UnsupportedFormat,
    UrlFetchFailed,
)
from session_mcp.models.outbound import OutboundFailure, OutboundPolicy, redact
from session_mcp.models.paths import Roots

Kind = Literal["auto", "path", "url", "text"]
Fetch = Callable[[str, int], tuple[str, bytes, str | None]]
"""(url, max_bytes) -> (final url, body, content type); models/outbound.py's policy behind it."""

_ACCEPT = (
    "text/html, application/xhtml+xml, application/pdf, text/markdown, text/plain, application/json, "
    "text/csv, application/vnd.openxmlformats-officedocument.*;q=0.9, */*;q=0.5"
)

MAX_SOURCE_CHARS = 1_000_000
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class KnowledgeConfig:
    """Roots and limits of the knowledge base (built by `server` from settings); the URL policy is
    `LayerConfig.url_policy`."""

    roots: tuple[Path, ...] = ()
    max_file_bytes: int = 50 * 1024 * 1024
    max_url_bytes: int = 20 * 1024 * 1024
    url_timeout_seconds: float = 30.0
    max_pages: int = 2_000
    max_chunks_per_document: int = 10_000
    max_chunks_per_call: int = 50_000
    max_files_per_call: int = 2_000
    parse_timeout_seconds: float = 30.0
    parse_memory_mb: int = 1024
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 32

    def parse_limits(self) -> ParseLimits:
        return ParseLimits(self.parse_timeout_seconds, self.parse_memory_mb, self.max_pages)


@dataclass(frozen=True)
class Loaded:
    """One document's bytes, before conversion."""

    source: str  # what identifies it in its scope: the resolved path, the final URL, text:<hash>
    name: str  # for the format and a fallback title
    data: bytes
    content_type: str | None = None
    is_text: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Prepared:
    title: str
    mime: str
    pages: int | None
    chunks: list[Chunk]


@dataclass(frozen=True)
class Plan:
    """What one call will read: items are loaded lazily so one bad file fails alone."""

    single: bool  # one text, file or URL: its failure is the call's error, not a skipped entry
    items: list[tuple[str, Callable[[], Loaded]]]
    skipped: list[tuple[str, str]]


def _looks_like_path(source: str) -> bool:
    if "\n" in source or len(source) > 4096:
        return False
    if source.startswith(("/", "./", "../", "~", "file:")) or os.sep in source:
        return True
    return " " not in source and bool(os.path.splitext(source)[1])


def classify(source: str, kind: Kind, roots: Roots) -> Literal["path", "url", "text"]:
    if kind != "auto":
        return kind
    if _URL_SCHEME.match(source) and not source.lower().startswith("file:"):
        return "url"  # http(s), and any other scheme:// so that the URL policy names the refusal
    if not _looks_like_path(source):
        return "text"
    try:
        found = os.path.lexists(roots.resolve(source))
    except SessionError:
        found = True  # outside the roots: the path branch reports it
    if not found:
        raise InvalidArgument(
            f"'{source}' looks like a file name but no such file exists under the allowed roots "
            f"({roots.describe()}); fix the path, or pass kind='text' to store these words as text"
        )
    return "path"


def plan_text(source: str) -> Plan:
    text = unicodedata.normalize("NFC", source).strip()
    if not text:
        raise InvalidArgument(
            "source is empty; send a file path, a folder, an http(s) URL or the text itself"
        )
    data = text.encode()
    first = next((line.strip("# ").strip() for line in text.splitlines() if line.strip()), "text")
    loaded = Loaded(f"text:{hashlib.sha256(data).hexdigest()[:16]}", first[:80], data, is_text=True)
    return Plan(True, [(loaded.source, lambda: loaded)], [])


def plan_path(source: str, roots: Roots, config: KnowledgeConfig) -> Plan:
    resolved = roots.resolve(source)
    if not resolved.exists():
        raise InvalidArgument(f"no file or folder '{source}' exists; check the path")
    if not resolved.is_dir():
        return Plan(True, [(str(resolved), _reader(roots, resolved, source, config))], [])
    items, skipped = [], []
    for path in roots.walk(resolved):
        shown = str(path)
        if os.path.splitext(path.name)[1].lower() not in FORMATS:
            skipped.append((shown, f"{UnsupportedFormat.code}: not a supported format"))
            continue
        items.append((shown, _reader(roots, path, shown, config)))
    if len(items) > config.max_files_per_call:
        raise LimitExceeded(
            f"'{source}' holds {len(items)} supported files, over the limit of {config.max_files_per_call} "
            "per call; add its subfolders one at a time"
        )
    return Plan(False, items, skipped)


def _reader(roots: Roots, path: Path, shown: str, config: KnowledgeConfig) -> Callable[[], Loaded]:
    def read() -> Loaded:
        real = roots.resolve(str(path))  # a symlink inside a walked folder is checked like any path
        return Loaded(str(real), real.name, roots.read_file(real, shown, config.max_file_bytes))

    return read


def url_fetcher(policy: OutboundPolicy, timeout_seconds: float) -> Fetch:
    """A `Fetch` through `policy` (every hop checked), within `timeout_seconds` in total. Raises
    UrlNotAllowed (the policy refused the URL or a redirect hop) or UrlFetchFailed."""

    def fetch(url: str, max_bytes: int) -> tuple[str, bytes, str | None]:
        try:
            response = policy.fetch(
                "GET", url, headers={"Accept": _ACCEPT}, timeout=timeout_seconds, max_bytes=max_bytes
            )
        except OutboundFailure as exc:
            raise UrlFetchFailed(_failure_message(exc, timeout_seconds, max_bytes)) from exc
        if not 200 <= response.status < 300:
            raise UrlFetchFailed(
                f"{redact(response.url)[:200]} answered HTTP {response.status}, not a document; check the "
                "URL in a browser, or download the file and add it by path"
            )
        return response.url, response.body, response.headers.get("content-type")

    return fetch


def _failure_message(exc: OutboundFailure, timeout_seconds: float, max_bytes: int) -> str:
    where = f"{exc.url[:200]}: {exc.detail}"
    if exc.kind == "timeout":
        return (
            f"fetching took longer than {timeout_seconds:g} s and was stopped ({where}); try again later, "
            "or ask the user to raise SESSION_MCP_KNOWLEDGE_URL_TIMEOUT_SECONDS"
        )
    if exc.kind == "too_large":
        return (
            f"the document is over the limit of {max_bytes} bytes ({where}); nothing was stored. Ask the "
            "user to raise SESSION_MCP_KNOWLEDGE_MAX_URL_BYTES, or add a smaller document"
        )
    if exc.kind == "unreachable":
        return f"the URL could not be reached ({where}); check the host name and that the site is up"
    if exc.kind == "redirects":
        return f"the URL redirects too often ({where}); add the final URL instead"
    return f"the server's answer was not usable ({where}); try again, or download the file and add it by path"


def plan_url(source: str, fetch: Fetch | None, config: KnowledgeConfig) -> Plan:
    if fetch is None:
        raise UnsupportedFormat(
            "URL ingestion is not available in this server; download the page and add the file"
        )
    shown = redact(source.strip())

    def load() -> Loaded:
        final, body, content_type = fetch(source.strip(), config.max_url_bytes)
        name = unquote(urlsplit(final).path.rstrip("/").rsplit("/", 1)[-1])  # the extension, if no type
        return Loaded(shown, name or shown, body, content_type)

    return Plan(True, [(shown, load)], [])


def prepare(loaded: Loaded, chunker: Chunker, config: KnowledgeConfig) -> Prepared:
    """Convert and chunk one document, within the page and chunk limits."""
    ext = ".md" if loaded.is_text else extension_for(loaded.name, loaded.data, loaded.content_type)
    converted = convert(loaded.data, ext, config.parse_limits())
    document = join_pages(converted.pages)
    if len(document.text) > MAX_SOURCE_CHARS * 50:
        raise LimitExceeded(f"'{loaded.name}' converts to {len(document.text)} characters; split it")
    chunks = chunker.chunks(document)
    if not chunks:
        raise InvalidArgument(f"'{loaded.name}' holds no text to index (a scanned PDF needs OCR first)")
    if len(chunks) > config.max_chunks_per_document:
        raise LimitExceeded(
            f"'{loaded.name}' makes {len(chunks)} chunks, over the limit of {config.max_chunks_per_document} "
            "per document; split it or ask the user to raise SESSION_MCP_KNOWLEDGE_MAX_CHUNKS_PER_DOCUMENT"
        )
    paged = [p.page for p in converted.pages if p.page is not None]
    title = converted.title or _first_heading(document.text) or loaded.name
    return Prepared(title[:300], converted.mime, max(paged) if paged else None, chunks)


def _first_heading(text: str) -> str | None:
    for line in _lines(text, 40):
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


def _lines(text: str, limit: int) -> Iterator[str]:
    for n, line in enumerate(text.splitlines()):
        if n >= limit:
            return
        yield line.strip()


def client_roots(configured: Sequence[Path], declared: Sequence[Path] | None) -> Roots:
    """The client's declared roots plus the configured ones; with neither, the working directory."""
    paths = [*(declared or []), *configured]
    return Roots.of(paths or [Path.cwd()])
