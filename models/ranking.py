"""Hybrid ranking: keyword query building and the fusion of keyword and vector scores."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

# Function words that carry no topic; dropped so the keyword side matches on content words.
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "did",
        "does",
        "also",
        "ever",
    ]
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# Share of the (shifted, unscaled) cosine in the blend; see `fuse` for the measurement.
DENSE_WEIGHT = 0.7


def bm25_idf(rows: float, df: float) -> float:
    """BM25's idf of a word that `df` of `rows` texts contain, ln(1 + (N - df + 0.5) / (df + 0.5)):
    above 0 however common the word (an N below df counts as df). Registered as the SQL function
    `bm25_idf` on SQLite connections (database.py); PostgreSQL's keyword query writes it out."""
    rows = max(rows, df)
    return math.log(1.0 + (rows - df + 0.5) / (df + 0.5))


def keywords(query: str, limit: int = 32) -> list[str]:
    """Content words of a query, lower-cased, in order, without repeats."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
    return list(seen)[:limit]


def fts5_query(words: list[str], scopes: list[str] | None = None) -> str:
    """An FTS5 MATCH expression for rows whose text has any of the words, of these scopes only if
    given. Words are quoted so none is read as syntax; a scope is matched by its `scope_tag` token
    (the migration "keyword index by scope")."""
    matched = f"text : ({fts5_words(words)})"
    if not scopes:
        return matched
    return f"scope_tag : ({' OR '.join(scope_tag(scope) for scope in scopes)}) AND {matched}"


def fts5_words(words: list[str]) -> str:
    """An FTS5 MATCH expression that ORs the words; each is quoted so none is read as syntax."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def scope_tag(scope: str) -> str:
    """A scope as SQLite's `'x' || hex(scope)` writes it: `x` and its UTF-8 bytes in hex."""
    return "x" + scope.encode("utf-8").hex().upper()


def _min_max(scores: Mapping[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low < 1e-12:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - low) / (high - low) for k, v in scores.items()}


def _shift(scores: Mapping[int, float]) -> dict[int, float]:
    """Subtract the list's lowest score and keep the scale: the floor becomes 0, the spread stays."""
    if not scores:
        return {}
    low = min(scores.values())
    return {k: v - low for k, v in scores.items()}


def fuse(
    dense: Mapping[int, float], keyword: Mapping[int, float], dense_weight: float = DENSE_WEIGHT
) -> list[tuple[int, float]]:
    """Blend `w * (cosine - lowest candidate cosine) + (1 - w) * min-max(keyword)`, best first.

    A candidate missing from one list scores that list's floor there (0 after shifting). The
    cosine is shifted but not rescaled because it is calibrated across queries: its spread says
    how sure the dense side is, so a flat dense list (the model sees nothing distinctive) barely
    moves the keyword order, while a peaked one does. Min-max throws that away by stretching every
    dense list to [0, 1]. Keyword scores (bm25, ts_rank) are not comparable across queries, so
    they keep min-max. Ties go to the newer memory (higher seq).

    Measured on LoCoMo dev (bench/fusion_sweep.py, chosen on conversations 0-2, confirmed on 3-4;
    R@5, 50 candidates per list): this fusion at w=0.7 gives 0.584 / 0.567 (all 997 questions:
    R@5 0.576, R@10 0.664, MRR 0.475, nDCG@10 0.505), against 0.576 / 0.559 for min-max at w=0.3,
    0.572 / 0.532 for min-max at w=0.5, 0.547 / 0.552 keyword only and 0.373 / 0.385 dense only.
    Reciprocal-rank fusion is worse everywhere (0.47-0.56): it gives the much weaker dense
    ranking an equal vote whatever its scores say. Deeper candidate lists (100, 200) do not help.
    The w optimum is broad (0.5-0.8 all within 0.01), whereas min-max falls off past w=0.4, so
    this is the safer blend; over min-max at w=0.3 the gain is small (paired R@5 +0.005 on the
    confirmation split, 95% CI -0.012..+0.021), over the former w=0.5 it is +0.032 (+0.009..+0.054).
    Keeping stopwords in the keyword query costs 0.01-0.03 R@5; adding bigram phrases is neutral.
    Those figures are from FTS5's bm25(); with memories' keyword scores the idf sums of
    hybrid.FullText (2026-12-07), all 997 questions: w=0.7 R@5 0.614, w=0.5 / 0.6 / 0.8 0.600 /
    0.608 / 0.609."""
    d, k = _shift(dense), _min_max(keyword)
    if not k:
        dense_weight = 1.0
    elif not d:
        dense_weight = 0.0
    keys = set(d) | set(k)
    scored = [(key, dense_weight * d.get(key, 0.0) + (1 - dense_weight) * k.get(key, 0.0)) for key in keys]
    scored.sort(key=lambda item: (-item[1], -item[0]))
    return scored
