"""Retrieval quality of knowledge_search: modes hybrid vs vector vs keyword on documents with known answers.

Run by hand:  .venv/bin/python bench/knowledge_quality.py [--documents 150] [--variant fp32]

The document set (built at run time in a temp folder, nothing is copied into the repository):
the docstrings of the Python standard library installed with this interpreter, i.e. CPython's
own docstrings (PSF License Agreement, which allows copying and derived works; the text never
leaves the temp folder). Candidates are every public top-level stdlib module (a fixed skip list
of ones with import side effects, deprecated or platform-only) plus its public classes and
functions defined in that module (`__module__` equal to it, so re-exports are not counted
twice; C functions appear under their defining module, os.stat as posix.stat), using the
object's own `__doc__` (not inherited), `inspect.cleandoc`-ed, with at least
60 words; duplicates of the same text are dropped. --documents of them (default 150, at most 4
per module) are drawn with a fixed seed from the candidates sorted by name, and each is written
as `<qualified name>.md` holding `# <qualified name>` and the docstring. All are added with one
`knowledge_add` of the folder (service level: `SessionLayer.knowledge`, temp SQLite, the real
embedder, default chunking) and searched from the same session.

Question sets, each question with exactly one answer document (the one its words came from):
  middle    a prose sentence from the middle of the docstring (not its summary line: the prose
            sentence nearest the middle, 8-40 words, at least 5 content words), with every word
            naming the object removed (any token holding a part of its qualified name, e.g.
            `dumps`, `json.dumps()`); kept only if that sentence occurs in no other document.
            A lexical-overlap set: most words of the query are in the answer, in order.
  summary   the content words of the summary line (first prose sentence) only: stopwords (the
            service's own list, `ranking.keywords`) and the object's name removed, in order, at
            least 3 words, digits dropped, e.g. "Return the median (middle value) of numeric
            data" for statistics.median -> "return middle value numeric data". Keyword-light:
            a short bag of words with no sentence around it, sharing vocabulary with the
            summaries of neighbouring objects.
  sparse    3 content words (alphabetic, 3+ letters) drawn (seeded) from the middle sentence, in
            their order: the fewest keywords, the hardest set for the dense side.
A question is dropped if its query is empty after this, or identical to another's.

Scoring, document level: each query is searched with limit 10 in each mode; a result counts as a
hit when its chunk belongs to the answer document. Recall@1 / @5 / @10: a hit among the first
1 / 5 / 10 chunks; MRR: 1 / rank of the first hit (0 past 10). Hybrid minus each other mode is
given with a paired bootstrap 95% interval (2000 resamples over questions).
Results: tables on stdout and bench/results/knowledge_quality.json (--out to change).

What it does not measure: every query reuses the answer's own words (no paraphrases, which would
need hand-written or generated questions), so it favours the keyword side and says little about
what the dense side adds on reworded questions; the corpus is small (150 documents, ~300 chunks).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scratch_schema import scratch_schema

from session_mcp.models.config import LayerConfig
from session_mcp.models.embedder import Embedder
from session_mcp.models.ingestion import KnowledgeConfig
from session_mcp.models.layer import SessionLayer
from session_mcp.models.ranking import keywords

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "knowledge_quality.json"
MODES = ("hybrid", "vector", "keyword")
SETS = ("middle", "summary", "sparse")
LIMIT = 10
SKIP = frozenset(
    str.split(
        "antigravity this idlelib tkinter turtle turtledemo lib2to3 ensurepip venv pydoc_data msilib "
        "winreg winsound msvcrt nt ossaudiodev xxsubtype xxlimited sre_compile sre_parse sre_constants "
        "test tty pty crypt nis spwd audioop cgi cgitb imghdr mailcap nntplib pipes sndhdr sunau "
        "telnetlib uu xdrlib chunk aifc asynchat asyncore smtpd distutils imp"
    )
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_ALPHA = re.compile(r"^[A-Za-z][A-Za-z'-]*[.,;:!?)]*$")


@dataclass(frozen=True)
class Doc:
    name: str
    text: str


@dataclass(frozen=True)
class Question:
    set: str
    query: str
    answer: str  # Doc.name


# -- the document set ---------------------------------------------------------------------------


def candidates() -> list[Doc]:
    found: dict[str, Doc] = {}
    seen: set[str] = set()
    for module_name in sorted(sys.stdlib_module_names):
        if module_name.startswith("_") or module_name in SKIP:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
        except Exception:  # not built on this platform, or needs something absent
            continue
        objects: list[tuple[str, Any]] = [(module_name, module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_"):
                continue
            kind = inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)
            if kind and getattr(obj, "__module__", None) == module_name:
                objects.append((f"{module_name}.{attr}", obj))
        for name, obj in objects:
            raw = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
            if not isinstance(raw, str):
                continue
            doc = inspect.cleandoc(raw)
            if len(doc.split()) < 60 or doc in seen:
                continue
            seen.add(doc)
            found[name] = Doc(name, doc)
    return [found[k] for k in sorted(found)]


def choose(pool: list[Doc], count: int, per_module: int, seed: int) -> list[Doc]:
    order = list(pool)
    random.Random(seed).shuffle(order)
    chosen: list[Doc] = []
    per: dict[str, int] = defaultdict(int)
    for doc in order:
        module = doc.name.split(".")[0]
        if per[module] < per_module:
            per[module] += 1
            chosen.append(doc)
        if len(chosen) == count:
            break
    return sorted(chosen, key=lambda d: d.name)


# -- questions ----------------------------------------------------------------------------------


def prose_sentences(text: str) -> list[str]:
    """Sentences of the prose paragraphs: no doctest, code, signature or option-table lines."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if not lines or any(line.lstrip().startswith(">>>") for line in lines):
            continue
        if sum(line.startswith((" ", "\t")) for line in lines) > len(lines) / 2:
            continue  # an indented block: code or a table
        joined = " ".join(line.strip() for line in lines)
        for sentence in _SENTENCE_END.split(joined):
            tokens = sentence.split()
            if len(tokens) >= 3 and sum(bool(_ALPHA.match(t)) for t in tokens) >= 0.7 * len(tokens):
                out.append(sentence.strip())
    return out


def without_name(sentence: str, name: str) -> str:
    parts = [p for p in name.split(".") if p]
    pattern = re.compile(
        "|".join(rf"(?<![A-Za-z0-9]){re.escape(p)}(?![A-Za-z0-9])" for p in parts), re.IGNORECASE
    )
    return " ".join(t for t in sentence.split() if not pattern.search(t))


def questions(docs: list[Doc], seed: int) -> list[Question]:
    rng = random.Random(seed)
    squashed = {d.name: " ".join(d.text.split()) for d in docs}
    out: list[Question] = []
    for doc in docs:
        sentences = prose_sentences(doc.text)
        if not sentences:
            continue
        summary = [w for w in keywords(without_name(sentences[0], doc.name)) if not w.isdigit()]
        if len(summary) >= 3:
            out.append(Question("summary", " ".join(summary), doc.name))
        rest = sentences[1:]
        middle = len(rest) / 2
        for sentence in sorted(rest, key=lambda s: abs(rest.index(s) - middle)):
            words = sentence.split()
            content = keywords(without_name(sentence, doc.name))
            if not 8 <= len(words) <= 40 or len(content) < 5:
                continue
            flat = " ".join(words)
            if any(flat in text for name, text in squashed.items() if name != doc.name):
                continue
            out.append(Question("middle", without_name(sentence, doc.name), doc.name))
            plain = [w for w in content if w.isalpha() and len(w) >= 3]
            if len(plain) >= 3:
                picked = sorted(rng.sample(range(len(plain)), 3))
                out.append(Question("sparse", " ".join(plain[i] for i in picked), doc.name))
            break
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for q in out:
        counts[q.set, q.query.lower()] += 1
    return [q for q in out if q.query and counts[q.set, q.query.lower()] == 1]


# -- scoring ------------------------------------------------------------------------------------


def rank_of(sources: list[str], answer: str) -> int | None:
    return next((i + 1 for i, s in enumerate(sources) if s == answer), None)


def metrics(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    return {
        "R@1": sum(r is not None and r <= 1 for r in ranks) / n,
        "R@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "R@10": sum(r is not None for r in ranks) / n,
        "MRR": sum(1 / r for r in ranks if r is not None) / n,
    }


def bootstrap_diff(a: list[float], b: list[float], seed: int, rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(a)
    diffs = sorted(sum(a[i] - b[i] for i in (rng.randrange(n) for _ in range(n))) / n for _ in range(rounds))
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]


def reciprocal(rank: int | None) -> float:
    return 0.0 if rank is None else 1 / rank


# -- main ---------------------------------------------------------------------------------------


def environment(embedder: Embedder) -> dict[str, Any]:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = ""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "docstrings_from": f"CPython {platform.python_version()} standard library ({sys.base_prefix})",
        "git_head": head,
        "cpus": os.cpu_count(),
        "embedder_variant": embedder.variant,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=150)
    parser.add_argument("--per-module", type=int, default=4)
    parser.add_argument("--variant", default=None, help="embedding variant (default: the server default)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL database (its own schema, dropped after); default: SQLite in a temp dir",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON report goes")
    args = parser.parse_args()
    started = time.perf_counter()
    pool = candidates()
    docs = choose(pool, args.documents, args.per_module, args.seed)
    qs = questions(docs, args.seed)
    by_set = {s: [q for q in qs if q.set == s] for s in SETS}
    print(
        f"{len(pool)} candidate docstrings, {len(docs)} documents from "
        f"{len({d.name.split('.')[0] for d in docs})} modules; questions: "
        + ", ".join(f"{s} {len(v)}" for s, v in by_set.items()),
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="knowledge-quality-") as tmp,
        scratch_schema(args.database_url, "knowledge_quality") as database_url,
    ):
        work = Path(tmp).resolve()
        folder = work / "stdlib-docs"
        folder.mkdir()
        for doc in docs:
            (folder / f"{doc.name}.md").write_text(f"# {doc.name}\n\n{doc.text}\n", encoding="utf-8")
        kwargs = {} if args.variant is None else {"variant": args.variant}
        embedder = Embedder(cache_dir=work / "models", **kwargs)
        layer = SessionLayer(
            LayerConfig(
                database_url=database_url or f"sqlite:///{work}/quality.db",
                data_dir=work / "data",
                knowledge=KnowledgeConfig(roots=(work,)),
            ),
            embedder=embedder,
        )
        try:
            session = layer.sessions.create("quality", "bench-user").session_id
            t = time.perf_counter()
            added = layer.knowledge.add(session, str(folder), kind="path")
            add_s = time.perf_counter() - t
            if added.skipped or len(added.documents) != len(docs):
                raise RuntimeError(f"not all documents were added: {added.skipped[:3]}")
            chunks = sum(d.chunks for d in added.documents)
            print(
                f"added {len(docs)} documents, {chunks} chunks in {add_s:.1f}s ({embedder.variant})",
                flush=True,
            )
            answer_source = {doc.name: str(folder / f"{doc.name}.md") for doc in docs}
            ranks: dict[str, dict[str, list[int | None]]] = {s: {m: [] for m in MODES} for s in SETS}
            for q in qs:
                for mode in MODES:
                    hits = layer.knowledge.search(session, q.query, LIMIT, mode).results  # type: ignore[arg-type]
                    ranks[q.set][mode].append(rank_of([h.source for h in hits], answer_source[q.answer]))
        finally:
            layer.close()
    results: dict[str, Any] = {}
    for s in SETS:
        per_mode = {m: {k: round(v, 4) for k, v in metrics(ranks[s][m]).items()} for m in MODES}
        hybrid = [reciprocal(r) for r in ranks[s]["hybrid"]]
        diffs = {}
        for other in ("vector", "keyword"):
            rr = [reciprocal(r) for r in ranks[s][other]]
            low, high = bootstrap_diff(hybrid, rr, args.seed)
            diffs[f"hybrid_minus_{other}_MRR"] = {
                "diff": round(sum(hybrid) / len(hybrid) - sum(rr) / len(rr), 4),
                "ci95": [round(low, 4), round(high, 4)],
            }
        results[s] = {
            "n": len(by_set[s]),
            "modes": per_mode,
            "paired": diffs,
            "examples": [{"query": q.query, "answer": q.answer} for q in by_set[s][:5]],
        }
    env = environment(embedder)
    env["wall_s"] = round(time.perf_counter() - started, 1)
    report = {
        "environment": env,
        "settings": vars(args) | {"limit": LIMIT},
        "documents": {"count": len(docs), "chunks": chunks, "names": [d.name for d in docs]},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_tables(results, env, len(docs), chunks)
    print(f"\nwrote {args.out}")
    return 0


def print_tables(results: dict[str, Any], env: dict[str, Any], docs: int, chunks: int) -> None:
    print(
        f"\nknowledge_search quality, {docs} stdlib docstrings ({env['docstrings_from']}), "
        f"{chunks} chunks, embedder {env['embedder_variant']}, limit {LIMIT}, document-level hits"
    )
    print(f"{'set':<8} {'n':>4} {'mode':<8} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6}")
    for s, r in results.items():
        for m, v in r["modes"].items():
            print(
                f"{s:<8} {r['n']:>4} {m:<8} {v['R@1']:>6.3f} {v['R@5']:>6.3f} {v['R@10']:>6.3f} {v['MRR']:>6.3f}"
            )
    print("\nhybrid minus other mode, MRR, paired bootstrap 95% CI")
    for s, r in results.items():
        parts = "  ".join(
            f"{k.removeprefix('hybrid_minus_').removesuffix('_MRR')}: {v['diff']:+.3f} "
            f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
            for k, v in r["paired"].items()
        )
        print(f"{s:<8} {parts}")
    for s, r in results.items():
        print(f"\n{s} examples:")
        for e in r["examples"][:3]:
            print(f"  {e['query']!r} -> {e['answer']}")


if __name__ == "__main__":
    sys.exit(main())
