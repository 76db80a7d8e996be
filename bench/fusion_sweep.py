"""Offline sweep of hybrid fusion functions (and keyword query builders) on LoCoMo.

Stores the LoCoMo dev conversations once, exactly as bench/locomo.py does, into --workdir (reused
when it is already there), collects each question's raw candidate lists once (dense cosine and
FTS5 bm25, 1000 deep, so every depth below is a truncation), caches them in the workdir, then
scores many fusion functions in pure Python. Choose on conversations 0-2, confirm on 3-4.
The data is CC BY-NC 4.0 and stays in ../shared/data/locomo and the workdir, never in the project.

    python bench/fusion_sweep.py --workdir /tmp/locomo-sweep [--data PATH] [--only REGEX]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pickle
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locomo import DEFAULT_DATA, evidence_ids, load, score
from sqlalchemy import text

from session_mcp.models.config import LayerConfig
from session_mcp.models.embedder import Embedder
from session_mcp.models.layer import SessionLayer
from session_mcp.models.memory import clean_text
from session_mcp.models.ranking import STOPWORDS, fts5_words, keywords

DEEP = 1000  # candidates collected per list; every depth evaluated is a truncation of these
SELECT, CONFIRM = (0, 1, 2), (3, 4)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

Scores = dict[int, float]
Fusion = Callable[[list[tuple[int, float]], list[tuple[int, float]]], Scores]


# ---------------------------------------------------------------- keyword query builders


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _bigrams(query: str, keep_stopwords: bool) -> list[str]:
    raw = _WORD.findall(query.lower())
    pairs: dict[str, None] = {}
    for a, b in itertools.pairwise(raw):
        if keep_stopwords or (a not in STOPWORDS and b not in STOPWORDS):
            pairs[f"{a} {b}"] = None
    return list(pairs)


def q_content(query: str) -> str:
    return fts5_words(keywords(query))


def q_all(query: str) -> str:
    return " OR ".join(_quote(w) for w in dict.fromkeys(_WORD.findall(query.lower())))


def q_content_bigrams(query: str) -> str:
    terms = [_quote(w) for w in keywords(query)] + [_quote(p) for p in _bigrams(query, False)]
    return " OR ".join(terms)


def q_all_bigrams(query: str) -> str:
    words = [_quote(w) for w in dict.fromkeys(_WORD.findall(query.lower()))]
    return " OR ".join(words + [_quote(p) for p in _bigrams(query, True)])


QUERIES: dict[str, Callable[[str], str]] = {
    "content": q_content,
    "all": q_all,
    "content+bi": q_content_bigrams,
    "all+bi": q_all_bigrams,
}

# ---------------------------------------------------------------- store and collect


def build(workdir: Path, data: list[Any]) -> tuple[SessionLayer, list[str]]:
    marker = workdir / "stored.json"
    url = f"sqlite:///{workdir}/locomo.db"
    if not marker.exists():  # absent or half built: start clean
        for leftover in (workdir / "locomo.db", workdir / "indexes"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
    embedder = Embedder(cache_dir=workdir / "models")
    layer = SessionLayer(
        LayerConfig(database_url=url, data_dir=workdir, sqlite_synchronous="OFF"), embedder=embedder
    )
    if marker.exists():
        return layer, json.loads(marker.read_text())
    started = time.perf_counter()
    sessions = [load(layer, conversation, n) for n, conversation in enumerate(data)]
    layer.vectors.flush()
    marker.write_text(json.dumps(sessions))
    print(f"stored {len(sessions)} conversations in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return layer, sessions


def collect(workdir: Path, data: list[Any]) -> list[dict[str, Any]]:
    cache = workdir / "candidates.pickle"
    if cache.exists():
        loaded: list[dict[str, Any]] = pickle.loads(cache.read_bytes())
        return loaded
    layer, _ = build(workdir, data)
    sql = text(
        "SELECT m.seq, -bm25(memories_fts) FROM memories_fts "
        "JOIN memories m ON m.seq = memories_fts.rowid "
        "WHERE memories_fts MATCH :q AND m.scope = :scope "
        "ORDER BY bm25(memories_fts) LIMIT :k"
    )
    questions: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n, conversation in enumerate(data):
        scope = f"long:locomo-{n}"
        with layer.db.read() as conn:
            rows = conn.execute(text("SELECT seq, meta FROM memories WHERE scope = :s"), {"s": scope})
            dia = {int(seq): str(json.loads(meta).get("dia_id")) for seq, meta in rows}
        for qa in conversation["qa"]:
            relevant = evidence_ids(qa.get("evidence", []))
            if not relevant:
                continue
            question = clean_text(str(qa["question"]), 100_000, "query")
            vector = layer.embedder.embed_one(question)
            dense = [(int(s), float(c)) for s, c in layer.vectors.search(scope, vector, DEEP)]
            kw: dict[str, list[tuple[int, float]]] = {}
            with layer.db.read() as conn:
                for name, build_query in QUERIES.items():
                    expr = build_query(question)
                    kw[name] = (
                        [
                            (int(s), float(v))
                            for s, v in conn.execute(sql, {"q": expr, "scope": scope, "k": DEEP})
                        ]
                        if expr
                        else []
                    )
            questions.append(
                {
                    "conv": n,
                    "category": qa["category"],
                    "relevant": relevant,
                    "dense": dense,
                    "keyword": kw,
                    "dia": {
                        s: dia[s] for s in {s for s, _ in dense} | {s for v in kw.values() for s, _ in v}
                    },
                }
            )
    layer.close()
    print(f"collected {len(questions)} questions in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    cache.write_bytes(pickle.dumps(questions))
    return questions


# ---------------------------------------------------------------- normalisers and fusions


def min_max(scores: list[tuple[int, float]]) -> Scores:
    if not scores:
        return {}
    values = [v for _, v in scores]
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return dict.fromkeys((s for s, _ in scores), 1.0)
    return {s: (v - low) / (high - low) for s, v in scores}


def z_score(scores: list[tuple[int, float]]) -> Scores:
    if len(scores) < 2:
        return dict.fromkeys((s for s, _ in scores), 0.0)
    values = [v for _, v in scores]
    mean, sd = statistics.fmean(values), statistics.pstdev(values)
    return {s: (v - mean) / (sd or 1.0) for s, v in scores}


def max_norm(scores: list[tuple[int, float]]) -> Scores:
    if not scores:
        return {}
    top = max(v for _, v in scores)
    return {s: v / top if top > 0 else 0.0 for s, v in scores}


def identity(scores: list[tuple[int, float]]) -> Scores:
    return dict(scores)


def blend(
    dnorm: Callable[[list[tuple[int, float]]], Scores],
    knorm: Callable[[list[tuple[int, float]]], Scores],
    w: float,
    missing: str = "zero",
) -> Fusion:
    """w x dnorm(dense) + (1 - w) x knorm(keyword); a candidate absent from a list scores 0 or that list's minimum."""

    def fuse(dense: list[tuple[int, float]], keyword: list[tuple[int, float]]) -> Scores:
        d, k = dnorm(dense), knorm(keyword)
        wd = 1.0 if not k else 0.0 if not d else w
        dm = min(d.values()) if d and missing == "min" else 0.0
        km = min(k.values()) if k and missing == "min" else 0.0
        return {s: wd * d.get(s, dm) + (1 - wd) * k.get(s, km) for s in d.keys() | k.keys()}

    return fuse


def rrf(c: float, w: float = 0.5) -> Fusion:
    def fuse(dense: list[tuple[int, float]], keyword: list[tuple[int, float]]) -> Scores:
        out: dict[int, float] = defaultdict(float)
        for weight, ranked in ((w, dense), (1 - w, keyword)):
            for rank, (s, _) in enumerate(ranked):
                out[s] += weight / (c + rank + 1)
        return out

    return fuse


def single(which: str) -> Fusion:
    def fuse(dense: list[tuple[int, float]], keyword: list[tuple[int, float]]) -> Scores:
        return dict(dense if which == "dense" else keyword)

    return fuse


def shift(scores: list[tuple[int, float]]) -> Scores:
    """Subtract the list's lowest score and keep the scale (cosine is calibrated across queries)."""
    if not scores:
        return {}
    low = min(v for _, v in scores)
    return {s: v - low for s, v in scores}


def neighbours(inner: Fusion, beta: float) -> Fusion:
    """Exploratory: add beta x the better adjacent turn's score (seq +- 1 is the next or previous turn)."""

    def fuse(dense: list[tuple[int, float]], keyword: list[tuple[int, float]]) -> Scores:
        base = inner(dense, keyword)
        keys = base.keys() | {s + step for s in base for step in (-1, 1)}
        return {s: base.get(s, 0.0) + beta * max(base.get(s - 1, 0.0), base.get(s + 1, 0.0)) for s in keys}

    return fuse


Variant = tuple[str, str, int, Fusion, bool]  # label, query builder, depth, fusion, eligible for selection


def variants() -> list[Variant]:
    out: list[Variant] = [
        ("dense only", "content", 50, single("dense"), True),
        ("keyword only", "content", 50, single("keyword"), True),
    ]
    for depth in (50, 100, 200):
        for w in (0.2, 0.3, 0.4, 0.5, 0.6):
            out.append((f"minmax w={w}", "content", depth, blend(min_max, min_max, w), True))
    for depth in (50, 200):
        for w in (0.2, 0.3, 0.4, 0.5):
            for miss in ("zero", "min"):
                out.append(
                    (f"zscore w={w} miss={miss}", "content", depth, blend(z_score, z_score, w, miss), True)
                )
                out.append(
                    (f"maxnorm w={w} miss={miss}", "content", depth, blend(max_norm, max_norm, w, miss), True)
                )
        for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            for miss in ("zero", "min"):
                out.append(
                    (
                        f"rawcos+mm(kw) w={w} miss={miss}",
                        "content",
                        depth,
                        blend(identity, min_max, w, miss),
                        True,
                    )
                )
                out.append(
                    (
                        f"rawcos+max(kw) w={w} miss={miss}",
                        "content",
                        depth,
                        blend(identity, max_norm, w, miss),
                        True,
                    )
                )
        for c in (10, 30, 60):
            for w in (0.5, 0.4, 0.3):
                out.append((f"rrf k={c} w={w}", "content", depth, rrf(c, w), True))
    for query in ("all", "content+bi", "all+bi"):
        out.append(("keyword only", query, 50, single("keyword"), True))
        for depth in (50, 100):
            for w in (0.2, 0.3, 0.4, 0.5):
                out.append((f"minmax w={w}", query, depth, blend(min_max, min_max, w), True))
            for w in (0.2, 0.3, 0.4):
                out.append((f"maxnorm w={w} miss=zero", query, depth, blend(max_norm, max_norm, w), True))
            for w in (0.6, 0.7, 0.8):
                out.append(
                    (f"rawcos+mm(kw) w={w} miss=min", query, depth, blend(identity, min_max, w, "min"), True)
                )
            out.append(("rrf k=60 w=0.4", query, depth, rrf(60, 0.4), True))
    for beta in (0.2, 0.4):  # exploratory, not a fusion of the two lists alone: never selected
        for label, inner in (
            ("minmax w=0.3", blend(min_max, min_max, 0.3)),
            ("rawcos+mm(kw) w=0.7 miss=min", blend(identity, min_max, 0.7, "min")),
        ):
            out.append(
                (f"[explore] {label} +neighbours b={beta}", "content", 50, neighbours(inner, beta), False)
            )
    return out


METRICS = ("R@5", "R@10", "MRR", "nDCG@10")


def evaluate(questions: list[dict[str, Any]], query: str, depth: int, fuse: Fusion) -> list[dict[str, float]]:
    """Per-question metrics, in question order."""
    out = []
    for q in questions:
        scores = fuse(q["dense"][:depth], q["keyword"][query][:depth])
        ranked = sorted(scores.items(), key=lambda item: (-item[1], -item[0]))[:10]
        out.append(score([q["dia"].get(s, "") for s, _ in ranked], q["relevant"]))
    return out


def mean(rows: list[dict[str, float]], metric: str) -> float:
    return sum(r[metric] for r in rows) / len(rows)


def paired(a: list[dict[str, float]], b: list[dict[str, float]]) -> str:
    diffs = [x["R@5"] - y["R@5"] for x, y in zip(a, b, strict=True)]
    m = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{m:+.3f} (95% CI {m - half:+.3f}..{m + half:+.3f}, n={len(diffs)})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workdir", type=Path, required=True, help="persistent cache (database, candidates)")
    parser.add_argument("--only", default=None, help="regex on labels to evaluate")
    parser.add_argument("--sort", action="store_true", help="sort by selection-split R@5")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.data.read_text())
    questions = collect(args.workdir, data)
    parts = {"select": SELECT, "confirm": CONFIRM, "all": SELECT + CONFIRM}
    index = {
        name: [i for i, q in enumerate(questions) if q["conv"] in convs] for name, convs in parts.items()
    }
    rows: list[tuple[str, bool, dict[str, list[dict[str, float]]]]] = []
    for label, query, depth, fuse, eligible in variants():
        name = f"{label} q={query} d={depth}"
        if args.only and not re.search(args.only, name):
            continue
        per_q = evaluate(questions, query, depth, fuse)
        rows.append((name, eligible, {part: [per_q[i] for i in idx] for part, idx in index.items()}))
    if args.sort:
        rows.sort(key=lambda r: (-mean(r[2]["select"], "R@5"), -mean(r[2]["select"], "R@10")))
    sizes = ", ".join(f"{part} n={len(idx)}" for part, idx in index.items())
    print(
        f"{'variant':<52} | select conv 0-2 | confirm conv 3-4 | all five   (each R@5 R@10 MRR nDCG@10; {sizes})"
    )
    for name, _, parts_rows in rows:
        cells = " | ".join(" ".join(f"{mean(parts_rows[p], m):.3f}" for m in METRICS) for p in parts)
        print(f"{name:<52} | {cells}")
    eligible = [r for r in rows if r[1]]
    if not eligible:
        return 0
    best = max(eligible, key=lambda r: (mean(r[2]["select"], "R@5"), mean(r[2]["select"], "R@10")))
    print(f"\nselected on conv 0-2 (best R@5, then R@10): {best[0]}")
    for base in ("minmax w=0.3 q=content d=50", "minmax w=0.5 q=content d=50", "keyword only q=content d=50"):
        found = [r for r in rows if r[0] == base]
        if found:
            print(
                f"  R@5 vs {base}: confirm {paired(best[2]['confirm'], found[0][2]['confirm'])}; "
                f"all {paired(best[2]['all'], found[0][2]['all'])}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
