"""knowledge_search latency at scale, service level (SessionLayer.knowledge.search, not over stdio).

Run by hand:  .venv/bin/python bench/knowledge_search_speed.py [--chunks 100000] [--queries 150] [--hnsw]
              .venv/bin/python bench/knowledge_search_speed.py --stdio [--hnsw]   (over stdio, see below)

Populating (not timed as search): one session's scope gets --chunks chunks in documents of 100,
inserted directly with SQL in this process (as bench/stdio_speed.py populates memories: bulk
INSERTs into the same tables, so the FTS5 trigger indexes every text). Embedding 100k real chunks
would take ~1 h on this 2-core machine, so:
  text     each chunk is 5-9 sentences drawn at random (seeded) from a pool of prose sentences of
           the installed CPython standard library's docstrings (PSF licence; read at run time,
           never written to the repository): technical English with a natural vocabulary, so the
           keyword side sees realistic posting lists.
  vectors  --base of those chunks are really embedded; every row's vector is one of them plus
           gaussian noise (norm ~0.35) re-normalised, so the dense scores have the spread of real
           embeddings rather than of uniform random vectors. The text and vector of a row do not
           correspond: these are timings, not quality (bench/knowledge_quality.py measures that).
Queries are other pool sentences (not their chunks), each run in every mode, interleaved.

Phases:
  exact   a layer with exact_search_below above the size: every search scans the scope's int8
          codes, its shortlist scored by a float16 copy below 20k chunks and by the stored
          vectors past that (the service's behaviour below 200k chunks, and HNSW's fallback).
  hnsw    (--hnsw) a fresh layer with exact_search_below at 20,000: the first search queues the
          background HNSW build; searches run once `wait_idle` says it is done (--build-budget
          seconds at most; the build time is reported). Off by default: the build alone can
          take minutes on this machine.
Baselines in the same rounds (each query runs all modes and baselines in a shuffled order):
  embed_one  `embedder.embed_one(query)`, the query embedding that hybrid and vector include: the
             rest (vector search, FTS5, fusion, row fetch) shows as difference and ratio.
  fts_sql    the keyword side alone: the service's own SQL before the vector search (the scopes'
             row counts, then the FTS5 bm25 query with 50 candidates per scope, both scopes, as
             `Hybrid.read` runs it) in one read transaction, for keyword mode.
Also reported: how many chunks the OR-ed keyword query matches (median over 30 queries); bm25
scores every match before ORDER BY/LIMIT, so keyword cost grows with it. Caveat: with 100k
chunks made of a 7.4k-sentence pool every sentence recurs ~90 times, so rare words match far
more chunks than in 100k chunks of distinct real text; common words behave about the same.
Results: a table on stdout and bench/results/knowledge_search_speed.json.

--stdio: the same database (populated the same way, into the session's own scope
`session:<session_id>` as models/knowledge.py names it, the session created first) is searched
by the real `session-mcp` console script over stdio (SESSION_MCP_DATA_DIR and
SESSION_MCP_DATABASE_URL point at it; bench/stdio_speed.py's spawn, legacy handshake so `ping`
works). Every query runs knowledge_search (limit 5) in each mode, and each call is preceded by an
MCP `ping`, all in a shuffled order per query; reported: p50/p90/p99 and the ratio of p50 to the
ping p50. The first knowledge_search after tools/list (it loads the model and the scope's chunk
codes, or its saved HNSW index) is reported separately.
  exact   the server with SESSION_MCP_EXACT_SEARCH_BELOW above the size: every vector search is
          the exact scan (the server's behaviour below 200k chunks, or until its index exists).
  hnsw    (--hnsw) the index is built in this process (as above) and saved to the data dir; the
          server runs with SESSION_MCP_EXACT_SEARCH_BELOW at 20,000 and loads it on its first
          search.
Results: bench/results/knowledge_search_speed_stdio.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text as sql

from session_mcp.models.config import LayerConfig
from session_mcp.models.embedder import Embedder
from session_mcp.models.layer import SessionLayer
from session_mcp.models.ranking import fts5_words, keywords
from session_mcp.models.tables import ChunkRow, DocumentRow

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "knowledge_search_speed.json"
RESULTS_STDIO = HERE / "results" / "knowledge_search_speed_stdio.json"
MODES = ("hybrid", "vector", "keyword")
BASELINES = ("embed_one", "fts_sql")
PER_DOCUMENT = 100
HNSW_BELOW = 20_000
"""exact_search_below for the --hnsw phase: the default (200,000) would search 100k chunks exactly."""
SESSION, USER = "search-bench", "bench-user"


def sentence_pool() -> list[str]:
    """Prose sentences of stdlib docstrings (modules, their classes, functions and methods)."""
    sys.path.insert(0, str(HERE))
    from knowledge_quality import SKIP, prose_sentences

    seen: set[str] = set()
    pool: list[str] = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:
            continue
        objects = [module]
        for value in vars(module).values():
            if inspect.isclass(value):
                objects.append(value)
                objects.extend(v for v in vars(value).values() if inspect.isfunction(v))
            elif inspect.isfunction(value) or inspect.isbuiltin(value):
                objects.append(value)
        for obj in objects:
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str):
                continue
            for sentence in prose_sentences(inspect.cleandoc(doc)):
                if 6 <= len(sentence.split()) <= 50 and sentence not in seen:
                    seen.add(sentence)
                    pool.append(sentence)
    return pool


def populate(layer: SessionLayer, pool: list[str], chunks: int, base: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    scope = f"session:{SESSION}"
    t = time.perf_counter()
    base_texts = [" ".join(rng.sample(pool, rng.randint(5, 9))) for _ in range(base)]
    base_vecs = np.concatenate([layer.embedder.embed(base_texts[i : i + 64]) for i in range(0, base, 64)])
    embed_s = time.perf_counter() - t
    documents = DocumentRow.__table__  # type: ignore[attr-defined]
    table = ChunkRow.__table__  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    t = time.perf_counter()
    for d in range(0, chunks, PER_DOCUMENT):
        count = min(PER_DOCUMENT, chunks - d)
        document_id = uuid.uuid4().hex
        texts = [" ".join(rng.sample(pool, rng.randint(5, 9))) for _ in range(count)]
        noise = nrng.normal(0.0, 0.35 / np.sqrt(base_vecs.shape[1]), (count, base_vecs.shape[1]))
        vecs = base_vecs[nrng.integers(0, base, count)] + noise.astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        at, rows = 0, []
        for n, (text, vec) in enumerate(zip(texts, vecs, strict=True)):
            rows.append(
                {
                    "chunk_id": uuid.uuid4().hex,
                    "document_id": document_id,
                    "scope": scope,
                    "ordinal": n,
                    "text": text,
                    "page": None,
                    "start": at,
                    "end": at + len(text),
                    "embedding": vec.astype(np.float32).tobytes(),
                }
            )
            at += len(text) + 2
        with layer.db.write() as conn:
            conn.execute(
                documents.insert().values(
                    document_id=document_id,
                    scope=scope,
                    owner=SESSION,
                    session_id=SESSION,
                    source=f"bench://doc-{d // PER_DOCUMENT}",
                    title=f"Document {d // PER_DOCUMENT}",
                    mime="text/markdown",
                    sha256=hashlib.sha256(document_id.encode()).hexdigest(),
                    pages=None,
                    chunk_count=count,
                    meta="{}",
                    created_at=now,
                    updated_at=now,
                )
            )
            seqs = conn.execute(table.insert().returning(table.c.seq), rows).scalars().all()
            layer.knowledge.rows.count(conn, scope, len(seqs), max(seqs))  # as knowledge_add does
        if (d // PER_DOCUMENT) % 200 == 199:
            print(f"  populate: {d + count}/{chunks} chunks, {time.perf_counter() - t:.0f}s", flush=True)
    return {
        "base_embedded": base,
        "base_embed_s": round(embed_s, 1),
        "insert_s": round(time.perf_counter() - t, 1),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(pct(ms, 0.9), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(layer: SessionLayer, queries: list[str]) -> dict[str, Any]:
    knowledge, embedder = layer.knowledge, layer.embedder
    first_s, first = timed(lambda: knowledge.search(SESSION, queries[0], 5, "hybrid"))
    if not first.results:
        raise RuntimeError("the first search found nothing")
    scopes = [f"session:{SESSION}", f"user:{USER}"]

    def fts_sql(query: str) -> dict[int, float]:
        with layer.db.read() as conn:  # the scopes' row counts, then the keyword query
            return knowledge.hybrid.read(conn, scopes, query, 10, 0.0).keyword

    times: dict[str, list[float]] = {m: [] for m in (*MODES, *BASELINES)}
    for n, query in enumerate(queries):
        order = [*MODES, *BASELINES]
        random.Random(n).shuffle(order)  # no mode always runs right after another
        for mode in order:
            if mode == "embed_one":
                times[mode].append(timed(lambda q=query: embedder.embed_one(q))[0])
            elif mode == "fts_sql":
                times[mode].append(timed(lambda q=query: fts_sql(q))[0])
            else:
                s, hits = timed(lambda q=query, m=mode: knowledge.search(SESSION, q, 5, m))
                times[mode].append(s)
                if not hits.results:
                    raise RuntimeError(f"{mode} found nothing for {query!r}")
    out: dict[str, Any] = {"first_search_s": round(first_s, 3)}
    for mode, values in times.items():
        out[mode] = stats_ms(values)
        if mode in MODES:
            base = "fts_sql" if mode == "keyword" else "embed_one"
            p50, b50 = statistics.median(values), statistics.median(times[base])
            out[mode]["baseline"] = base
            out[mode]["p50_minus_baseline_ms"] = round((p50 - b50) * 1000, 2)
            out[mode]["p50_ratio_to_baseline"] = round(p50 / b50, 2)
    with layer.db.read() as conn:  # how many chunks each keyword query matches (the bm25 work)
        matches = [
            int(
                conn.execute(
                    sql("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH :q"),
                    {"q": fts5_words(keywords(q))},
                ).scalar_one()
            )
            for q in queries[:30]
        ]
    out["keyword_matches_per_query"] = {"median": statistics.median(matches), "max": max(matches), "n": 30}
    return out


def database_url(work: Path) -> str:
    return f"sqlite:///{work}/search.db"


def layer_for(work: Path, embedder: Embedder, exact_below: int) -> SessionLayer:
    return SessionLayer(
        LayerConfig(database_url=database_url(work), data_dir=work / "data", exact_search_below=exact_below),
        embedder=embedder,
    )


# -- over stdio ----------------------------------------------------------------------------------


async def measure_stdio(work: Path, queries: list[str], extra_env: dict[str, str]) -> dict[str, Any]:
    """Spawn the real `session-mcp` on the populated data dir; time knowledge_search against ping."""
    from stdio_speed import MODEL_TIMEOUT, SERVER, memory_mb, server_env, spawn

    env = {**server_env(work / "data", database_url(work)), **extra_env}
    log = work / "server.log"
    async with spawn([str(SERVER)], env, log) as srv:
        for _ in range(20):  # warm the connection, untimed
            await srv.ping()
        t = time.perf_counter()
        first = await srv.call(
            "knowledge_search", MODEL_TIMEOUT, session_id=SESSION, query=queries[0], limit=5, mode="hybrid"
        )
        first_s = time.perf_counter() - t
        if not first["results"]:
            raise RuntimeError("the first search found nothing")
        for q in queries[:10]:  # warm the model at query lengths, untimed (as the service-level run)
            await srv.call("knowledge_search", session_id=SESSION, query=q, limit=5, mode="vector")
        times: dict[str, list[float]] = {m: [] for m in (*MODES, "ping")}
        for n, query in enumerate(queries):
            order = list(MODES)
            random.Random(n).shuffle(order)
            for mode in order:
                t = time.perf_counter()
                await srv.ping()
                times["ping"].append(time.perf_counter() - t)
                t = time.perf_counter()
                hits = await srv.call("knowledge_search", session_id=SESSION, query=query, limit=5, mode=mode)
                times[mode].append(time.perf_counter() - t)
                if not hits["results"]:
                    raise RuntimeError(f"{mode} found nothing for {query!r}")
            if n % 50 == 49:
                print(f"  {n + 1}/{len(queries)} queries", flush=True)
        rss = memory_mb(srv.pid)
    out: dict[str, Any] = {
        "first_search_s": round(first_s, 3),
        "first_search_from_spawn_s": round(first_s + (srv.listed_at - srv.spawned_at), 3),
        "start_to_tools_list_s": round(srv.listed_at - srv.spawned_at, 3),
        "server_rss_mb": rss,
    }
    ping50 = statistics.median(times["ping"])
    for mode, values in times.items():
        out[mode] = stats_ms(values)
        if mode in MODES:
            p50 = statistics.median(values)
            out[mode]["p50_minus_ping_ms"] = round((p50 - ping50) * 1000, 2)
            out[mode]["p50_ratio_to_ping"] = round(p50 / ping50, 1)
    return out


def run_stdio(args: argparse.Namespace, pool: list[str], queries: list[str], env: dict[str, Any]) -> int:
    import anyio
    from mcp.shared.exceptions import MCPDeprecationWarning
    from stdio_speed import SERVER, kill_leftovers

    warnings.simplefilter("ignore", MCPDeprecationWarning)  # ping warns on every call
    if not SERVER.exists():
        print(f"{SERVER} not found: install the project into this venv", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: dict[str, Any] = {}
    server_env: dict[str, str] = {}
    if args.variant is not None:
        server_env["SESSION_MCP_EMBEDDING_VARIANT"] = args.variant
    try:
        with tempfile.TemporaryDirectory(prefix="knowledge-search-stdio-") as tmp:
            work = Path(tmp)
            kwargs = {} if args.variant is None else {"variant": args.variant}
            # the server's own model cache (data dir / models): its first search loads, not converts
            embedder = Embedder(cache_dir=work / "data" / "models", **kwargs)
            embedder.warm()
            env["embedder_variant"] = embedder.variant
            layer = layer_for(work, embedder, args.chunks + 1)
            try:
                layer.sessions.create(SESSION, USER)  # the chunks' session exists; scope session:<id>
                print(f"populating {args.chunks} chunks from {len(pool)} docstring sentences", flush=True)
                results["populate"] = populate(layer, pool, args.chunks, args.base, args.seed)
                print(f"  {results['populate']}", flush=True)
            finally:
                layer.close()
            print("exact: session-mcp over stdio, exact search ...", flush=True)
            exact_env = {**server_env, "SESSION_MCP_EXACT_SEARCH_BELOW": str(args.chunks + 1)}
            results["exact"] = anyio.run(measure_stdio, work, queries, exact_env)
            print(f"  exact: {json.dumps(results['exact'])}", flush=True)
            if args.hnsw:
                layer = layer_for(work, embedder, HNSW_BELOW)
                try:
                    t = time.perf_counter()
                    layer.knowledge.search(SESSION, queries[0], 5, "vector")  # queues the build
                    done = layer.knowledge_vectors.wait_idle(args.build_budget)
                    results["hnsw_build_s"] = round(time.perf_counter() - t, 1)
                    mode = layer.knowledge_vectors.mode(f"session:{SESSION}")
                    results["hnsw_ready"] = done and mode == "hnsw"
                finally:
                    layer.close()  # saves the index into the data dir
                saved = sorted(p.name for p in (work / "data" / "indexes").rglob("*") if p.is_file())
                results["hnsw_files"] = saved
                print(f"  hnsw build {results['hnsw_build_s']}s, ready {results['hnsw_ready']}", flush=True)
                if results["hnsw_ready"]:
                    print("hnsw: session-mcp over stdio, its index loaded ...", flush=True)
                    hnsw_env = {**server_env, "SESSION_MCP_EXACT_SEARCH_BELOW": str(HNSW_BELOW)}
                    results["hnsw"] = anyio.run(measure_stdio, work, queries, hnsw_env)
            results["server_log_tail"] = (work / "server.log").read_text(errors="replace")[-2000:]
    finally:
        kill_leftovers()
    env["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env["wall_s"] = round(time.perf_counter() - started, 1)
    report = {"environment": env, "settings": vars(args), "results": results}
    RESULTS_STDIO.parent.mkdir(exist_ok=True)
    RESULTS_STDIO.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nknowledge_search over stdio (real session-mcp, legacy handshake), {args.chunks} chunks in "
        f"one session scope, SQLite, embedder {env['embedder_variant']}, limit 5, {args.queries} queries "
        f"per mode, load {'/'.join(env['loadavg_start'])} -> {'/'.join(env['loadavg_end'])}"
    )
    print(
        f"{'phase':<6} {'mode':<8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50-ping ms':>12} {'p50/ping':>9}"
    )
    for phase in ("exact", "hnsw"):
        if phase not in results:
            continue
        r = results[phase]
        for mode in (*MODES, "ping"):
            m = r[mode]
            extra = (
                f"{m['p50_minus_ping_ms']:>12.2f} {m['p50_ratio_to_ping']:>8.1f}x"
                if mode in MODES
                else f"{'(baseline)':>12}"
            )
            print(f"{phase:<6} {mode:<8} {m['p50_ms']:>8.2f} {m['p90_ms']:>8.2f} {m['p99_ms']:>8.2f} {extra}")
        print(
            f"{phase:<6} first knowledge_search after tools/list {r['first_search_s']:.2f}s "
            f"(spawn -> first result {r['first_search_from_spawn_s']:.2f}s); "
            f"server RSS {r['server_rss_mb']}"
        )
    if "hnsw_build_s" in results:
        print(f"hnsw index built in-process in {results['hnsw_build_s']}s (not part of the server timings)")
    print(f"\nwrote {RESULTS_STDIO.relative_to(HERE.parent)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--base", type=int, default=512, help="chunks really embedded for the vectors")
    parser.add_argument("--hnsw", action="store_true", help="also measure after the HNSW build")
    parser.add_argument("--build-budget", type=float, default=600.0)
    parser.add_argument("--variant", default=None, help="embedding variant (default: the server default)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--stdio", action="store_true", help="search through the real session-mcp over stdio")
    args = parser.parse_args()
    started = time.perf_counter()
    pool = sentence_pool()
    rng = random.Random(args.seed + 1)
    queries = [q for q in rng.sample(pool, args.queries * 2) if len(q.split()) <= 25][: args.queries]
    env: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "sentence_pool": len(pool),
    }
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        env["git_head"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    if args.stdio:
        return run_stdio(args, pool, queries, env)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="knowledge-search-") as tmp:
        work = Path(tmp)
        kwargs = {} if args.variant is None else {"variant": args.variant}
        embedder = Embedder(cache_dir=work / "models", **kwargs)
        embedder.warm()
        env["embedder_variant"] = embedder.variant
        layer = layer_for(work, embedder, args.chunks + 1)
        try:
            layer.sessions.create(SESSION, USER)
            print(f"populating {args.chunks} chunks from {len(pool)} docstring sentences", flush=True)
            results["populate"] = populate(layer, pool, args.chunks, args.base, args.seed)
            print(f"  {results['populate']}", flush=True)
            for q in queries[:10]:  # warm the model at query lengths, untimed
                embedder.embed_one(q)
            results["exact"] = measure(layer, queries)
            print(f"  exact: {json.dumps(results['exact'])}", flush=True)
        finally:
            layer.close()
        if args.hnsw:
            layer = layer_for(work, embedder, HNSW_BELOW)
            try:
                t = time.perf_counter()
                layer.knowledge.search(SESSION, queries[0], 5, "vector")  # queues the build
                done = layer.knowledge_vectors.wait_idle(args.build_budget)
                build_s = time.perf_counter() - t
                mode = layer.knowledge_vectors.mode(f"session:{SESSION}")
                results["hnsw_build_s"] = round(build_s, 1)
                results["hnsw_ready"] = done and mode == "hnsw"
                print(f"  hnsw build {build_s:.0f}s, scope served by {mode}", flush=True)
                if results["hnsw_ready"]:
                    results["hnsw"] = measure(layer, queries)
            finally:
                layer.close()
    env["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env["wall_s"] = round(time.perf_counter() - started, 1)
    report = {"environment": env, "settings": vars(args), "results": results}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nknowledge_search, service level (not stdio), {args.chunks} chunks in one scope, SQLite, "
        f"embedder {env['embedder_variant']}, limit 5, {args.queries} queries, "
        f"load {'/'.join(env['loadavg_start'])} -> {'/'.join(env['loadavg_end'])}"
    )
    print(
        f"{'phase':<6} {'mode':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'baseline':>10} {'p50-base ms':>12} {'p50/base':>9}"
    )
    for phase in ("exact", "hnsw"):
        if phase not in results:
            continue
        for mode in (*MODES, *BASELINES):
            r = results[phase][mode]
            extra = (
                f"{r['baseline']:>10} {r['p50_minus_baseline_ms']:>12.2f} {r['p50_ratio_to_baseline']:>8.2f}x"
                if mode in MODES
                else f"{'(baseline)':>10}"
            )
            print(
                f"{phase:<6} {mode:<10} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {extra}"
            )
        m = results[phase]["keyword_matches_per_query"]
        print(
            f"{phase:<6} first search (loads the scope's vectors) {results[phase]['first_search_s']:.2f}s; "
            f"keyword query matches median {m['median']:.0f}, max {m['max']} chunks"
        )
    print(f"\nwrote {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
