"""Hybrid ranking: keyword query building and the fusion of keyword and vector scores."""

from __future__ import annotations

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

DENSE_WEIGHT = 0.5


def keywords(query: str, limit: int = 32) -> list[str]:
    """Content words of a query, lower-cased, in order, without repeats."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
    return list(seen)[:limit]


def fts5_query(words: list[str]) -> str:
    """An FTS5 MATCH expression that ORs the words; each is quoted so none is read as syntax."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def _min_max(scores: Mapping[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low < 1e-12:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - low) / (high - low) for k, v in scores.items()}


def fuse(
    dense: Mapping[int, float], keyword: Mapping[int, float], dense_weight: float = DENSE_WEIGHT
) -> list[tuple[int, float]]:
    """Blend min-max-normalised scores; a candidate missing from one list scores 0 there.

    Measured on LoCoMo (bench/locomo.py): a normalised blend beats reciprocal-rank fusion, which
    gives the weaker dense ranking an equal vote."""
    d, k = _min_max(dense), _min_max(keyword)
    if not k:
        dense_weight = 1.0
    elif not d:
        dense_weight = 0.0
    keys = set(d) | set(k)
    scored = [(key, dense_weight * d.get(key, 0.0) + (1 - dense_weight) * k.get(key, 0.0)) for key in keys]
    scored.sort(key=lambda item: (-item[1], -item[0]))
    return scored
