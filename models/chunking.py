"""Chunking: converted pages to token-bounded chunks that follow headings, paragraphs and sentences.

Sizes are counted in the embedding model's own wordpiece tokens (its tokenizer, via `count`),
so a chunk never exceeds what the model reads (256 positions, two of them [CLS] and [SEP]).
A chunk's text is always an exact slice of the document's text: `start` and `end` are character
offsets into the pages joined by blank lines (`Document.text`), so a hit can be located again.

How a page is cut: headings (`#` lines, reStructuredText underlines) start a new section and no
chunk crosses one; a section is split into paragraphs, a paragraph over the budget into sentences,
a sentence over it into word windows (and a word longer than the budget into character windows).
The pieces are packed greedily up to `max_tokens`; the next chunk of the same section starts with
the last pieces of the previous one, up to `overlap_tokens`, so a fact cut at a boundary is whole
in one of them. No chunk crosses a page either, so each records its page.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from session_mcp.models.documents import Page

MODEL_POSITIONS = 256
MAX_CHUNK_TOKENS = MODEL_POSITIONS - 2  # [CLS] and [SEP]
PAGE_SEPARATOR = "\n\n"

_HEADING = re.compile(r"^(#{1,6}\s+\S.*|.+\n[=\-~^\"'`#*+]{3,})\s*$", re.MULTILINE)
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n")
_WORD = re.compile(r"\s+")

Counter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Chunk:
    text: str
    page: int | None
    start: int
    end: int


@dataclass(frozen=True)
class Document:
    text: str
    pages: list[tuple[int, Page]]  # (offset of the page in `text`, page)


def join_pages(pages: Sequence[Page]) -> Document:
    offsets, parts, at = [], [], 0
    for page in pages:
        offsets.append((at, page))
        parts.append(page.text)
        at += len(page.text) + len(PAGE_SEPARATOR)
    return Document(PAGE_SEPARATOR.join(parts), offsets)


def _spans(text: str, pattern: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    """The stretches of text[start:end] between matches of `pattern`, without outer whitespace."""
    out, at = [], start
    for match in pattern.finditer(text, start, end):
        out.append((at, match.start()))
        at = match.end()
    out.append((at, end))
    trimmed = []
    for a, b in out:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            trimmed.append((a, b))
    return trimmed


def _sections(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [m.start() for m in _HEADING.finditer(text, start, end)]
    bounds = sorted({start, *cuts, end})
    return [(a, b) for a, b in itertools.pairwise(bounds) if text[a:b].strip()]


class Chunker:
    def __init__(self, count: Counter, max_tokens: int = 200, overlap_tokens: int = 32) -> None:
        if not 16 <= max_tokens <= MAX_CHUNK_TOKENS:
            raise ValueError(f"max_tokens must be 16..{MAX_CHUNK_TOKENS}, not {max_tokens}")
        self.count = count
        self.max_tokens = max_tokens
        self.overlap_tokens = min(overlap_tokens, max_tokens // 2)

    def chunks(self, document: Document) -> list[Chunk]:
        out: list[Chunk] = []
        text = document.text
        for offset, page in document.pages:
            for a, b in _sections(text, offset, offset + len(page.text)):
                out.extend(self._pack(text, self._pieces(text, a, b), page.page))
        return out

    def _pieces(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """(start, end, tokens) of pieces each within the budget, in order."""
        pieces: list[tuple[int, int, int]] = []
        levels = (_PARAGRAPH, _SENTENCE, _WORD)
        todo: list[tuple[int, int, int]] = [(start, end, 0)]
        while todo:
            batch, todo = todo, []
            counts = self.count([text[a:b] for a, b, _ in batch])
            for (a, b, level), tokens in zip(batch, counts, strict=True):
                if tokens <= self.max_tokens and level > 0:
                    pieces.append((a, b, tokens))
                elif level < len(levels):
                    todo.extend((x, y, level + 1) for x, y in _spans(text, levels[level], a, b))
                else:  # one "word" over the budget: character windows (a wordpiece covers >= 1 char)
                    step = self.max_tokens
                    pieces.extend((x, min(x + step, b), -1) for x in range(a, b, step))
        pieces.sort()
        unknown = [i for i, p in enumerate(pieces) if p[2] < 0]
        for i, tokens in zip(
            unknown, self.count([text[a:b] for a, b, _ in (pieces[i] for i in unknown)]), strict=True
        ):
            pieces[i] = (pieces[i][0], pieces[i][1], tokens)
        return pieces

    def _pack(self, text: str, pieces: list[tuple[int, int, int]], page: int | None) -> list[Chunk]:
        chunks: list[Chunk] = []
        current: list[tuple[int, int, int]] = []
        used = 0
        fresh = 0  # pieces in `current` that no earlier chunk holds
        for piece in pieces:
            if current and used + piece[2] > self.max_tokens:
                chunks.append(self._chunk(text, current, page))
                carry: list[tuple[int, int, int]] = []
                kept = 0
                for old in reversed(current):
                    if kept + old[2] > self.overlap_tokens or kept + old[2] + piece[2] > self.max_tokens:
                        break
                    carry.insert(0, old)
                    kept += old[2]
                current, used, fresh = carry, kept, 0
            current.append(piece)
            used += piece[2]
            fresh += 1
        if current and fresh:
            chunks.append(self._chunk(text, current, page))
        return chunks

    @staticmethod
    def _chunk(text: str, pieces: list[tuple[int, int, int]], page: int | None) -> Chunk:
        start, end = pieces[0][0], pieces[-1][1]
        return Chunk(text=text[start:end], page=page, start=start, end=end)
