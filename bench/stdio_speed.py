"""Speed of the real `session-mcp` over stdio, as ratios to baselines measured in the same run.

Run by hand:  .venv/bin/python bench/stdio_speed.py [--sizes 10000,100000] [--cold-runs 5] [--database-url URL]

Every figure comes from the spawned console script talking MCP over its stdin/stdout through the
SDK's `Client`; the machine is shared and noisy, so each figure sits next to a baseline taken in
the same run, on the same server process and interleaved with it in rounds:

  start     spawn -> `tools/list` answered, fresh data dir and again on the same dir (model cache
            warm), median of --cold-runs; baseline: a minimal MCPServer with one no-op tool,
            spawned from this same file by the same interpreter (`--noop-server`).
  calls     MCP `ping` (a no-op answered by the same server) interleaved with each measured tool.
  scale     one user's long-term memory scope populated in this process (SessionLayer on the same
            database, synthetic sentences embedded in batches, bulk SQL insert), then searched and
            added to through the server; peak RSS is the server's VmHWM. A scope at or past the
            HNSW threshold is timed only once the server's background build of its index has
            ended (seen by the index file it writes), as a user's steady state has it.

Connections use the initialize handshake (mode="legacy", 2025-11-25): `ping` exists only there;
the SDK's default mode negotiates 2026-07-28, which answers `ping` with "Method not found", so
state_increment is also timed once on such a connection for comparison.

Results: a table on stdout and bench/results/stdio_speed.json. Every client call has a timeout;
every server process and temp dir is removed on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning
from scratch_schema import scratch_schema

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stdio_speed.json"
SERVER = Path(sys.prefix) / "bin" / "session-mcp"

CALL_TIMEOUT = 30.0
"""Ceiling on any one ordinary call (a loaded 2-core machine can stall a process for seconds)."""
HANDSHAKE_TIMEOUT = 120.0
"""The SDK's per-request timeout: the backstop for the handshake, which cannot sit under fail_after."""
BUILD_TIMEOUT = 1800.0
"""Ceiling on a first search that builds a scope's cache or HNSW index from 100k+ rows."""
MODEL_TIMEOUT = 300.0
"""Ceiling on the first search of a fresh data dir (the model is converted and loaded)."""

USER = "bench-user"
SESSION = "bench-session"
SCOPE = f"long:{USER}"
TARGETS = {"store_p50_ms": 5.0, "search_p50_ms": 5.0, "start_s": 1.0, "peak_rss_mb": 250.0}
PEERS: dict[str, Any] = {
    "noop_tool_ms": 1.0,
    "mcp_memory_service": {"store_p50_ms": 20.0, "search_p50_ms": 21.0, "start_s": 1.3, "peak_rss_mb": 267.0},
}


# -- the no-op baseline server (this file, spawned with --noop-server) ---------------------------


def run_noop_server() -> None:
    """A minimal MCP server over stdio: what any Python MCP server pays before doing anything."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("noop")

    @server.tool()
    def noop() -> str:
        """Do nothing."""
        return "ok"

    server.run("stdio")


# -- statistics ----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    total = sum(seconds)
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else math.nan,
        "mean_ms": round(statistics.fmean(ms), 3) if ms else math.nan,
        "calls_per_s": round(len(ms) / total, 1) if total > 0 else math.nan,
    }


# -- server processes ----------------------------------------------------------------------------


def children() -> set[int]:
    """Live (non-zombie) child processes of this process, from /proc (the SDK hides the one it spawns)."""
    me = os.getpid()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == me:
            found.add(int(entry.name))
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS of a process, in MB (MiB)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


SPAWNED: set[int] = set()
"""Every server PID this process started; any still alive at exit is killed, by PID."""


def kill_leftovers() -> None:
    for pid in sorted(SPAWNED & children()):
        print(f"warning: server {pid} still alive at exit; killing it", file=sys.stderr)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Server:
    client: Client
    pid: int
    spawned_at: float
    log: Path
    listed_at: float = 0.0
    errors: list[str] = field(default_factory=list)

    async def call(self, name: str, timeout: float = CALL_TIMEOUT, **arguments: Any) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            result = await self.client.call_tool(name, arguments, read_timeout_seconds=timeout)
        if result.is_error:
            text = getattr(result.content[0], "text", repr(result.content)) if result.content else "?"
            raise RuntimeError(f"{name} failed: {text}")
        assert result.structured_content is not None
        return result.structured_content

    async def ping(self) -> None:
        with anyio.fail_after(CALL_TIMEOUT):
            await self.client.send_ping()


@asynccontextmanager
async def spawn(
    command: Sequence[str], env: dict[str, str], log: Path, mode: str = "legacy"
) -> AsyncIterator[Server]:
    """Start a server over stdio and list its tools (the client must list before calling, 2026-07-28).

    `mode="legacy"` is the initialize handshake (2025-11-25), what today's hosts speak and the only
    era that has `ping`; the SDK's default "auto" negotiates 2026-07-28, where `ping` is gone
    ("Method not found").
    """
    params = StdioServerParameters(command=command[0], args=list(command[1:]), env=env)
    before = children()
    with log.open("a") as errlog:
        started = time.perf_counter()
        try:
            async with Client(
                stdio_client(params, errlog=errlog), read_timeout_seconds=HANDSHAKE_TIMEOUT, mode=mode
            ) as c:
                new = children() - before
                if len(new) != 1:
                    raise RuntimeError(f"expected one new server process, found {sorted(new)}")
                pid = new.pop()
                SPAWNED.add(pid)
                server = Server(client=c, pid=pid, spawned_at=started, log=log)
                with anyio.fail_after(CALL_TIMEOUT):
                    await c.list_tools()
                server.listed_at = time.perf_counter()
                yield server
        except Exception as exc:
            errlog.flush()
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            exc.add_note(f"--- server stderr ({log}), last lines ---\n{tail}")
            raise


def server_env(data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    env = {"SESSION_MCP_DATA_DIR": str(data_dir)}
    if database_url:
        env["SESSION_MCP_DATABASE_URL"] = database_url
    return env


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def interleaved(
    server: Server, op: Callable[[int], Awaitable[Any]], n: int, rounds: int = 5
) -> tuple[list[float], list[float]]:
    """n timed calls of op(i) and n pings, alternating in rounds so that noise hits both alike."""
    op_times: list[float] = []
    ping_times: list[float] = []
    per_round = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    i = 0
    for count in per_round:
        for _ in range(count):
            ping_times.append(await timed(server.ping))
        for _ in range(count):
            op_times.append(await timed(functools.partial(op, i)))
            i += 1
    return op_times, ping_times


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else math.nan


# -- synthetic memories --------------------------------------------------------------------------


class Sentences:
    """Sentences of 8-20 words from the ~4000 commonest whole words of the model's own vocabulary
    (BERT's wordpiece list is roughly frequency-ordered), drawn Zipf-like so that function words
    are common and content words rare, as in real text. No external data."""

    def __init__(self, seed: int, words: int = 4000) -> None:
        vocab = json.loads(
            resources.files("session_mcp.models").joinpath("data/tokenizer.json").read_text("utf-8")
        )["model"]["vocab"]
        ranked = sorted((i, w) for w, i in vocab.items() if i >= 1996 and w.isascii() and w.isalpha())
        self.words = [w for _, w in ranked if len(w) > 1 or w in ("a", "i")][:words]
        weights = [1.0 / (rank + 20) for rank in range(len(self.words))]
        total = 0.0
        self.cum: list[float] = []
        for w in weights:
            total += w
            self.cum.append(total)
        self.rng = random.Random(seed)

    def one(self, low: int = 8, high: int = 20) -> str:
        words = self.rng.choices(self.words, cum_weights=self.cum, k=self.rng.randint(low, high))
        return " ".join(words).capitalize() + "."

    def distinct(self, n: int, used: set[str], low: int = 8, high: int = 20) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            s = self.one(low, high)
            if s not in used:
                used.add(s)
                out.append(s)
        return out


class OverBudget(Exception):
    """Populating would take longer than --populate-budget: run again with smaller --sizes."""


def populate(
    data_dir: Path,
    database_url: str,
    target: int,
    texts: Sentences,
    used: set[str],
    budget_s: float = math.inf,
    batch: int = 256,
) -> dict[str, Any]:
    """Bring the scope to `target` rows by embedding and bulk-inserting synthetic memories in-process.

    Gives up with OverBudget (rows inserted so far stay) once the projected total passes `budget_s`.
    """
    from sqlalchemy import func, select

    from session_mcp.models.config import LayerConfig
    from session_mcp.models.errors import SessionNotFound
    from session_mcp.models.layer import SessionLayer
    from session_mcp.models.tables import MemoryRow

    table = MemoryRow.__table__  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    layer = SessionLayer(LayerConfig(database_url=database_url, data_dir=data_dir))
    try:
        try:
            with layer.db.read() as conn:
                layer.sessions.readable(conn, SESSION, None)
        except SessionNotFound:
            layer.sessions.create(session_id=SESSION, user_id=USER)
        with layer.db.read() as conn:
            have = int(conn.execute(select(func.count()).where(table.c.scope == SCOPE)).scalar_one())
        missing = max(0, target - have)
        t_load = time.perf_counter()
        layer.embedder.warm()
        load_s = time.perf_counter() - t_load
        t_rows = time.perf_counter()
        embed_s = insert_s = 0.0
        done = 0
        last_report = time.perf_counter()
        while done < missing:
            chunk = texts.distinct(min(batch, missing - done), used)
            t = time.perf_counter()
            vectors = layer.embedder.embed(chunk)
            embed_s += time.perf_counter() - t
            now = datetime.now(UTC)
            rows = [
                {
                    "memory_id": uuid.uuid4().hex,
                    "scope": SCOPE,
                    "session_id": SESSION,
                    "user_id": USER,
                    "memory_type": "long",
                    "text": text,
                    "text_hash": hashlib.sha256(text.encode()).hexdigest(),
                    "meta": "{}",
                    "created_at": now,
                    "embedding": vector.astype("float32").tobytes(),
                }
                for text, vector in zip(chunk, vectors, strict=True)
            ]
            t = time.perf_counter()
            with layer.db.write() as conn:
                seqs = conn.execute(table.insert().returning(table.c.seq), rows).scalars().all()
                # As memory_add does: the scope's count row moves in the same transaction (a
                # bulk insert that skipped it would leave the counts drifted for the server).
                layer.memory.rows.count(conn, SCOPE, len(rows), max(seqs))
            insert_s += time.perf_counter() - t
            done += len(chunk)
            elapsed = time.perf_counter() - t_rows
            projected = elapsed / done * missing
            if done >= 2048 and projected > budget_s:
                raise OverBudget(
                    f"populating {target} rows would take ~{projected:.0f} s at "
                    f"{done / embed_s:.0f} texts/s embedded, over the budget of {budget_s:.0f} s"
                )
            if time.perf_counter() - last_report > 15 or done == missing:
                last_report = time.perf_counter()
                rate = done / embed_s if embed_s else 0.0
                eta = (missing - done) / rate if rate else 0.0
                print(
                    f"  populate: {have + done}/{target} rows, embedding {rate:.0f} texts/s, "
                    f"insert {done / insert_s if insert_s else 0:.0f} rows/s, eta {eta:.0f}s",
                    flush=True,
                )
        with layer.db.read() as conn:
            final = int(conn.execute(select(func.count()).where(table.c.scope == SCOPE)).scalar_one())
        if not layer.db.is_sqlite and missing:
            # What autovacuum does to a live database soon after a bulk load: planner statistics,
            # and the GIN index's pending list merged. Without it the first PostgreSQL run here
            # planned the full-text query by scope and rescanned the pending list (21.7 ms p50).
            with layer.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE memories")
    finally:
        layer.close()
    return {
        "rows_before": have,
        "rows_added": missing,
        "rows_after": final,
        "model_load_s": round(load_s, 2),
        "embed_s": round(embed_s, 1),
        "embed_texts_per_s": round(missing / embed_s, 1) if embed_s else None,
        "insert_s": round(insert_s, 1),
        "insert_rows_per_s": round(missing / insert_s, 1) if insert_s else None,
        "total_s": round(time.perf_counter() - t0, 1),
    }


# -- phases --------------------------------------------------------------------------------------


async def noop_baseline(work: Path, runs: int, calls: int) -> dict[str, Any]:
    """Start-up and a no-op tool call of a minimal MCPServer: the floor for any Python MCP server."""
    command = [sys.executable, str(Path(__file__).resolve()), "--noop-server"]
    starts = []
    tool_times: list[float] = []
    ping_times: list[float] = []
    for run in range(max(runs, 1)):  # the no-op tool's call times need one server even with runs=0
        async with spawn(command, {}, work / "noop.log") as srv:
            if run < runs:
                starts.append(srv.listed_at - srv.spawned_at)
            if run == 0:
                for _ in range(20):
                    await srv.ping()

                async def noop(_: int, srv: Server = srv) -> None:
                    with anyio.fail_after(CALL_TIMEOUT):
                        await srv.client.call_tool("noop", {}, read_timeout_seconds=CALL_TIMEOUT)

                tool_times, ping_times = await interleaved(srv, noop, calls)
    return {
        "start_s_runs": [round(s, 3) for s in starts],
        "start_s_median": round(statistics.median(starts), 3) if starts else None,
        "noop_tool": summary(tool_times),
        "ping": summary(ping_times),
    }


async def cold_start(work: Path, runs: int) -> dict[str, Any]:
    """Fresh data dir each run: spawn -> tools/list, spawn -> first memory_search; then the same dir again."""
    keys = ("list_s", "first_search_s", "peak_rss_mb")
    fresh: dict[str, list[float]] = {k: [] for k in keys}
    warm: dict[str, list[float]] = {k: [] for k in keys}
    for run in range(runs):
        data = work / f"cold-{run}"
        for label, into in (("fresh", fresh), ("warm", warm)):
            async with spawn([str(SERVER)], server_env(data), work / f"cold-{run}.log") as srv:
                into["list_s"].append(srv.listed_at - srv.spawned_at)
                await srv.call("session_create", session_id=f"cold-{label}", user_id=f"cold-{label}")
                await srv.call(
                    "memory_search", MODEL_TIMEOUT, session_id=f"cold-{label}", query="what did I say"
                )
                into["first_search_s"].append(time.perf_counter() - srv.spawned_at)
                into["peak_rss_mb"].append(memory_mb(srv.pid).get("VmHWM", math.nan))
            print(
                f"  cold start run {run + 1}/{runs} ({label}): tools/list {into['list_s'][-1]:.2f}s, "
                f"first memory_search {into['first_search_s'][-1]:.2f}s, peak RSS {into['peak_rss_mb'][-1]} MB",
                flush=True,
            )
        shutil.rmtree(data, ignore_errors=True)

    def med(d: dict[str, list[float]]) -> dict[str, Any]:
        return {
            **{f"{k}_median": round(statistics.median(v), 3) for k, v in d.items()},
            **{f"{k}_runs": [round(x, 3) for x in v] for k, v in d.items()},
        }

    return {"fresh_data_dir": med(fresh), "warm_model_cache": med(warm)}


async def calls_phase(srv: Server, n: int, concurrent: int) -> dict[str, Any]:
    """Ping baseline, state_increment sequential (interleaved with ping), then `concurrent` in flight."""
    await srv.call("session_create", session_id="calls", user_id="calls")
    for _ in range(20):
        await srv.ping()
        await srv.call("state_increment", session_id="calls", key="warmup")

    async def inc(_: int) -> None:
        await srv.call("state_increment", session_id="calls", key="seq")

    inc_times, ping_times = await interleaved(srv, inc, n)
    seq_value = (await srv.call("state_get", session_id="calls", key="seq"))["value"]

    acked = 0
    failures: list[str] = []

    async def one() -> None:
        nonlocal acked
        try:
            await srv.call("state_increment", session_id="calls", key="par")
            acked += 1
        except Exception as exc:  # counted, not raised: the check below compares acks to the value
            failures.append(repr(exc)[:300])

    start = time.perf_counter()
    with anyio.fail_after(CALL_TIMEOUT * 4):
        async with anyio.create_task_group() as tg:
            for _ in range(concurrent):
                tg.start_soon(one)
    total = time.perf_counter() - start
    par_value = (await srv.call("state_get", session_id="calls", key="par"))["value"]
    ping = summary(ping_times)
    seq = summary(inc_times)
    return {
        "ping": ping,
        "state_increment": {
            **seq,
            "final_value": seq_value,
            "final_value_ok": seq_value == n,
            "calls_per_s_ratio_to_ping": ratio(seq["calls_per_s"], ping["calls_per_s"]),
            "p50_ratio_to_ping": ratio(seq["p50_ms"], ping["p50_ms"]),
        },
        "state_increment_concurrent": {
            "in_flight": concurrent,
            "total_s": round(total, 3),
            "calls_per_s": round(concurrent / total, 1),
            "calls_per_s_ratio_to_ping": ratio(concurrent / total, ping["calls_per_s"]),
            "acknowledged": acked,
            "failed": len(failures),
            "failures": failures[:5],
            "final_value": par_value,
            "final_value_equals_acknowledged": par_value == acked,
        },
    }


async def warm_model(srv: Server) -> float:
    """Load the model through a search of an empty scope, so that the next search of the big scope
    times the cache/index build, not the model load the server started in the background."""
    await srv.call("session_create", session_id="warm-model", user_id="warm-model-user")
    return round(
        await timed(lambda: srv.call("memory_search", MODEL_TIMEOUT, session_id="warm-model", query="hello")),
        3,
    )


async def modern_calls(srv: Server, n: int) -> dict[str, Any]:
    """state_increment alone: a 2026-07-28 connection has no ping, so its baseline is the legacy one."""
    await srv.call("session_create", session_id="modern", user_id="calls")
    for _ in range(20):
        await srv.call("state_increment", session_id="modern", key="warmup")
    times = [
        await timed(lambda: srv.call("state_increment", session_id="modern", key="seq")) for _ in range(n)
    ]
    return summary(times)


def exact_search_below() -> int:
    """The server's default scope size from which a scope also gets an HNSW index."""
    from session_mcp.server.settings import Settings

    default = Settings.model_fields["exact_search_below"].default
    assert isinstance(default, int)
    return default


async def index_built(index_dir: Path, since: float, timeout: float) -> float:
    """Wait until the server has written an HNSW index file (modified after `since`, wall clock):
    its background worker writes one when a build ends. Returns the seconds waited."""
    start = time.perf_counter()
    try:
        with anyio.fail_after(timeout):
            while not any(f.stat().st_mtime >= since for f in index_dir.rglob("*.usearch")):
                await anyio.sleep(0.5)
    except TimeoutError:
        raise RuntimeError(
            f"no HNSW index file appeared under {index_dir} within {timeout:.0f} s: the server did not "
            "finish building or could not save the index (its log says which); nothing was timed"
        ) from None
    return time.perf_counter() - start


async def scale_phase(
    srv: Server,
    size: int,
    first_query: str,
    queries: list[str],
    adds: list[str],
    index_dir: Path,
    rounds: int = 5,
) -> dict[str, Any]:
    out: dict[str, Any] = {"size": size, "model_warmup_search_s": await warm_model(srv)}
    first: dict[str, Any] = {}

    async def first_search() -> None:
        first.update(await srv.call("memory_search", BUILD_TIMEOUT, session_id=SESSION, query=first_query))

    searched_at = time.time()
    out["first_search_s"] = round(await timed(first_search), 3)
    out["first_search_hits"] = len(first.get("results", []))
    out["rss_exact_mb"] = memory_mb(srv.pid)
    if size >= exact_search_below():
        # The HNSW index is built in the background while searches use the exact store: time the
        # searches (and the memory) with the index live, as a user's steady state has it.
        waited = await index_built(index_dir, searched_at, BUILD_TIMEOUT)
        out["index_build_s"] = round(out["first_search_s"] + waited, 1)
        print(f"  HNSW index built in {out['index_build_s']} s", flush=True)
    for q in queries[-5:]:  # a few more so that steady state starts after any lazy work
        await srv.call("memory_search", session_id=SESSION, query=q)

    hits: list[int] = []

    async def search(i: int) -> None:
        result = await srv.call("memory_search", session_id=SESSION, query=queries[i], limit=5)
        hits.append(len(result["results"]))

    search_times, ping_times = await interleaved(srv, search, len(queries) - 5, rounds)
    ping = summary(ping_times)
    s = summary(search_times)
    out["search"] = {
        **s,
        "p50_ratio_to_ping": ratio(s["p50_ms"], ping["p50_ms"]),
        "calls_per_s_ratio_to_ping": ratio(s["calls_per_s"], ping["calls_per_s"]),
        "hits_min": min(hits),
    }
    out["ping_during_search"] = ping
    out["rss_after_search_mb"] = memory_mb(srv.pid)

    deduplicated = 0

    async def add(i: int) -> None:
        nonlocal deduplicated
        result = await srv.call("memory_add", session_id=SESSION, text=adds[i], memory_type="long")
        deduplicated += bool(result["deduplicated"])

    add_times, add_ping_times = await interleaved(srv, add, len(adds), rounds)
    aping = summary(add_ping_times)
    a = summary(add_times)
    out["add"] = {
        **a,
        "p50_ratio_to_ping": ratio(a["p50_ms"], aping["p50_ms"]),
        "calls_per_s_ratio_to_ping": ratio(a["calls_per_s"], aping["calls_per_s"]),
        "deduplicated": deduplicated,
        "scope_rows_before": size,
    }
    out["ping_during_add"] = aping
    out["rss_end_mb"] = memory_mb(srv.pid)
    return out


async def restart_phase(srv: Server, query: str) -> dict[str, Any]:
    """A second server on the same data: what a user's next IDE session pays before its first search
    (the model first, through an empty scope; then the big scope's cache is rebuilt or loaded)."""
    model_s = await warm_model(srv)
    start = time.perf_counter()
    await srv.call("memory_search", BUILD_TIMEOUT, session_id=SESSION, query=query)
    return {
        "list_s": round(srv.listed_at - srv.spawned_at, 3),
        "model_warmup_search_s": model_s,
        "first_search_s": round(time.perf_counter() - start, 3),
        "first_search_from_spawn_s": round(time.perf_counter() - srv.spawned_at, 3),
        "rss_mb": memory_mb(srv.pid),
    }


# -- report --------------------------------------------------------------------------------------


def fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        x = f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return f"{x}{unit}"


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return ""
    return "ok" if value <= target else f"MISS ({value / target:.1f}x target)"


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str]] = []
    noop = r["noop_server"]
    peers = PEERS["mcp_memory_service"]
    if "cold_start" in r:
        for label, key in (("fresh data dir", "fresh_data_dir"), ("model cache warm", "warm_model_cache")):
            c = r["cold_start"][key]
            rows.append(
                (
                    f"start -> tools/list, {label} (median)",
                    fmt(c["list_s_median"], " s"),
                    f"{ratio(c['list_s_median'], noop['start_s_median'])}x no-op server",
                    f"<= 1 s: {verdict(c['list_s_median'], TARGETS['start_s'])}",
                    f"{peers['start_s']} s",
                )
            )
            rows.append(
                (
                    f"start -> first memory_search, {label}",
                    fmt(c["first_search_s_median"], " s"),
                    f"{ratio(c['first_search_s_median'], noop['start_s_median'])}x no-op server",
                    "",
                    "",
                )
            )
            rows.append(
                (
                    f"peak RSS after first search, {label}",
                    fmt(c["peak_rss_mb_median"], " MB"),
                    "",
                    f"<= 250 MB: {verdict(c['peak_rss_mb_median'], TARGETS['peak_rss_mb'])}",
                    f"{peers['peak_rss_mb']} MB",
                )
            )
    rows.append(
        (
            "no-op server start -> tools/list (baseline)",
            fmt(noop["start_s_median"], " s"),
            "1x",
            "",
            "",
        )
    )
    rows.append(
        (
            "no-op tool on the no-op server, p50 / p99",
            f"{fmt(noop['noop_tool']['p50_ms'])} / {fmt(noop['noop_tool']['p99_ms'])} ms",
            f"{ratio(noop['noop_tool']['p50_ms'], noop['ping']['p50_ms'])}x its ping",
            "",
            f"~{PEERS['noop_tool_ms']} ms",
        )
    )
    calls = r["calls"]
    p = calls["ping"]
    rows.append(
        (
            f"ping x{p['n']} sequential (baseline), p50 / p99",
            f"{fmt(p['p50_ms'])} / {fmt(p['p99_ms'])} ms, {fmt(p['calls_per_s'])}/s",
            "1x",
            "",
            "",
        )
    )
    s = calls["state_increment"]
    rows.append(
        (
            f"state_increment x{s['n']} sequential, p50 / p99",
            f"{fmt(s['p50_ms'])} / {fmt(s['p99_ms'])} ms, {fmt(s['calls_per_s'])}/s",
            f"{s['p50_ratio_to_ping']}x ping p50, {s['calls_per_s_ratio_to_ping']}x ping calls/s",
            "",
            "",
        )
    )
    m = calls.get("state_increment_modern")
    if m:
        rows.append(
            (
                f"state_increment x{m['n']}, {m['protocol_version']} connection",
                f"{fmt(m['p50_ms'])} / {fmt(m['p99_ms'])} ms, {fmt(m['calls_per_s'])}/s",
                f"{m['p50_ratio_to_ping']}x legacy ping p50",
                "",
                "",
            )
        )
    c = calls["state_increment_concurrent"]
    check = "ok" if c["final_value_equals_acknowledged"] and not c["failed"] else "FAILED"
    rows.append(
        (
            f"state_increment {c['in_flight']} in flight",
            f"{fmt(c['total_s'], ' s')}, {fmt(c['calls_per_s'])}/s",
            f"{c['calls_per_s_ratio_to_ping']}x ping calls/s",
            f"value {c['final_value']} == {c['acknowledged']} acks: {check}",
            "",
        )
    )
    for size, sc in r["scales"].items():
        n = int(size)
        if "skipped" in sc:
            rows.append((f"[{n}] SKIPPED", sc["skipped"], "", "", ""))
            continue
        sr = sc["search"]
        ad = sc["add"]
        at_10k = n == 10_000
        rows.append(
            (
                f"[{n}] populate (embed + bulk insert)",
                fmt(sc["populate"]["total_s"], " s"),
                f"{fmt(sc['populate']['embed_texts_per_s'])} texts/s embedded",
                "",
                "",
            )
        )
        rows.append(
            (
                f"[{n}] first search (loads the cache)",
                fmt(sc["first_search_s"], " s"),
                f"RSS then: {fmt(sc['rss_exact_mb'].get('VmHWM', math.nan), ' MB')}",
                "",
                "",
            )
        )
        if "index_build_s" in sc:
            rows.append(
                (f"[{n}] HNSW index built in the background", fmt(sc["index_build_s"], " s"), "", "", "")
            )
        rows.append(
            (
                f"[{n}] memory_search x{sr['n']} p50 / p99",
                f"{fmt(sr['p50_ms'])} / {fmt(sr['p99_ms'])} ms",
                f"{sr['p50_ratio_to_ping']}x ping p50",
                f"p50 <= 5 ms: {verdict(sr['p50_ms'], TARGETS['search_p50_ms'])}" if at_10k else "",
                f"{peers['search_p50_ms']} ms" if at_10k else "",
            )
        )
        rows.append(
            (
                f"[{n}] memory_add x{ad['n']} p50 / p99 (max)",
                f"{fmt(ad['p50_ms'])} / {fmt(ad['p99_ms'])} ({fmt(ad['max_ms'])}) ms",
                f"{ad['p50_ratio_to_ping']}x ping p50",
                f"p50 <= 5 ms: {verdict(ad['p50_ms'], TARGETS['store_p50_ms'])}" if at_10k else "",
                f"{peers['store_p50_ms']} ms" if at_10k else "",
            )
        )
        hwm = sc["rss_after_search_mb"].get("VmHWM", math.nan)
        rows.append(
            (
                f"[{n}] server peak RSS after searches",
                fmt(hwm, " MB"),
                f"end: {fmt(sc['rss_end_mb'].get('VmHWM', math.nan), ' MB')}",
                f"<= 250 MB: {verdict(hwm, TARGETS['peak_rss_mb'])}",
                f"{peers['peak_rss_mb']} MB",
            )
        )
        rs = sc.get("restart")
        if rs:
            rows.append(
                (
                    f"[{n}] restart: tools/list, first search",
                    f"{fmt(rs['list_s'], ' s')}, {fmt(rs['first_search_s'], ' s')}",
                    f"peak RSS {fmt(rs['rss_mb'].get('VmHWM', math.nan), ' MB')}",
                    "",
                    "",
                )
            )
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("measure", "value", "vs baseline (same run)", "target", "peer*")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(line)
    print(
        "* peers measured by others, not by this script: a no-op tool over stdio ~1 ms/call; "
        "mcp-memory-service stores in ~20 ms, searches in ~21 ms p50, starts in 1.3 s, peaks at 267 MB."
    )


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE.parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "session_mcp": version("session-mcp"),
        "git_head": git("rev-parse", "HEAD"),
        "git_modified": git("status", "--porcelain").splitlines(),
        "cpus": os.cpu_count(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -- main ----------------------------------------------------------------------------------------


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stdio-speed-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    r: dict[str, Any] = {"environment": environment(), "targets": TARGETS, "peers": PEERS}
    r["settings"] = {
        "sizes": args.sizes,
        "database": "postgresql" if args.database_url else "sqlite",
        "cold_runs": args.cold_runs,
        "calls": args.calls,
        "concurrent": args.concurrent,
        "searches": args.searches,
        "adds": args.adds,
        "populate_budget_s": args.populate_budget,
        "protocol": "legacy initialize handshake (ping exists only there), except state_increment_modern",
    }
    print(f"work dir {work}; load average {r['environment']['loadavg_start']}", flush=True)

    print("no-op MCPServer baseline ...", flush=True)
    r["noop_server"] = await noop_baseline(work, args.cold_runs, args.calls)

    if args.cold_runs:
        print("cold start ...", flush=True)
        r["cold_start"] = await cold_start(work, args.cold_runs)

    data = work / "scale"
    # The scale phases' database: SQLite in the work dir, or a schema of this run's own in the
    # --database-url database (scratch_schema), dropped at the end.
    database_url = args.database_url or f"sqlite:///{data / 'bench.db'}"
    env = server_env(data, database_url)
    used: set[str] = set()
    texts = Sentences(seed=1)
    populate_stats = populate(data, database_url, 0, texts, used)  # creates the session, loads the model
    print("calls: ping and state_increment ...", flush=True)
    async with spawn([str(SERVER)], env, work / "scale.log") as srv:
        r["calls"] = await calls_phase(srv, args.calls, args.concurrent)
        r["calls"]["protocol_version"] = srv.client.protocol_version
    print("calls: state_increment on a 2026-07-28 connection (SDK default mode) ...", flush=True)
    async with spawn([str(SERVER)], env, work / "scale.log", mode="auto") as srv:
        r["calls"]["state_increment_modern"] = await modern_calls(srv, args.calls)
        r["calls"]["state_increment_modern"]["protocol_version"] = srv.client.protocol_version
    inc = r["calls"]["state_increment_modern"]
    inc["p50_ratio_to_ping"] = ratio(inc["p50_ms"], r["calls"]["ping"]["p50_ms"])

    r["scales"] = {}
    budget_left = args.populate_budget
    query_words = Sentences(seed=2)
    for size in args.sizes:
        print(f"scale {size}: populating ...", flush=True)
        try:
            pop = populate(data, database_url, size, texts, used, budget_left)
        except OverBudget as exc:
            print(f"  skipped: {exc}", flush=True)
            r["scales"][str(size)] = {"size": size, "skipped": str(exc)}
            break
        budget_left -= pop["total_s"]
        print(f"  populated in {pop['total_s']} s ({pop['rows_added']} rows added)", flush=True)
        stored = sorted(used)
        pick = random.Random(size)
        queries = []
        for i in range(args.searches + 7):
            if i % 2:
                queries.append(query_words.one(4, 10))  # unrelated wording
            else:  # a fragment of something stored: "what did I say about ..."
                words = pick.choice(stored).rstrip(".").split()
                start = pick.randrange(0, max(1, len(words) - 6))
                queries.append(" ".join(words[start : start + 6]))
        adds = texts.distinct(args.adds, used)
        print(f"scale {size}: searching and adding through the server ...", flush=True)
        async with spawn([str(SERVER)], env, work / "scale.log") as srv:
            sc = await scale_phase(srv, size, queries[0], queries[1:-1], adds, data / "indexes")
        sc["populate"] = pop
        async with spawn([str(SERVER)], env, work / "scale.log") as srv:
            sc["restart"] = await restart_phase(srv, queries[-1])
        print(
            f"  first search {sc['first_search_s']} s; search p50 {sc['search']['p50_ms']} ms; "
            f"add p50 {sc['add']['p50_ms']} ms; peak RSS {sc['rss_after_search_mb']}; "
            f"restart first search {sc['restart']['first_search_s']} s",
            flush=True,
        )
        r["scales"][str(size)] = sc
    r["populate_session"] = populate_stats
    r["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    r["server_log_tail"] = (work / "scale.log").read_text(errors="replace")[-2000:]
    return r


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noop-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sizes",
        type=lambda s: sorted(int(x) for x in s.split(",") if x),
        default=[10_000, 100_000],
        help="memories in the one scope, comma separated (default 10000,100000)",
    )
    parser.add_argument("--cold-runs", type=int, default=5, help="spawns per start-up figure (0: skip)")
    parser.add_argument("--calls", type=int, default=500, help="sequential ping / state_increment calls")
    parser.add_argument("--concurrent", type=int, default=200, help="state_increment calls in flight")
    parser.add_argument("--searches", type=int, default=300, help="memory_search calls per size")
    parser.add_argument("--adds", type=int, default=300, help="memory_add calls per size")
    parser.add_argument(
        "--populate-budget",
        type=float,
        default=900.0,
        help="seconds allowed for populating all sizes; a size projected past it is skipped (default 900)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="run the calls and scale phases on this PostgreSQL database, in a schema of the run's own "
        "that is dropped afterwards (kept with --keep); default: SQLite in the work dir (cold start "
        "always uses SQLite)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (databases, server logs)")
    args = parser.parse_args(argv)
    if args.noop_server:
        run_noop_server()
        return 0
    # Client.send_ping warns on every call that 2026-07-28 dropped ping; these connections are legacy.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    if not SERVER.exists():
        print(f"{SERVER} not found: install the project into this venv", file=sys.stderr)
        return 2
    try:
        with (
            workdir(args.keep) as work,
            scratch_schema(args.database_url, "stdio_speed", keep=args.keep) as args.database_url,
        ):
            results = anyio.run(run, args, work)
    finally:
        kill_leftovers()
    print()
    print_table(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
