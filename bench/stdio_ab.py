"""Two builds of `session-mcp` side by side over stdio, called alternately: an A/B that survives a noisy machine.

Run by hand:  .venv/bin/python bench/stdio_ab.py --a OLD/bin/session-mcp [--b NEW/bin/session-mcp]
              [--size 10000] [--calls 60] [--rounds 5] [--database-url postgresql://...]

Why: on this shared 2-core machine a no-op tool took 2.0 ms in one run of bench/stdio_speed.py and
4.8 ms in the next, so two builds benchmarked one after the other differ by more than most changes
do. Here both servers run at once, each on its own copy of one populated data dir, and every call
goes to both with the same arguments, in alternating order; both see the same machine. Run with
the same executable as A and B first: the ratios it prints are this harness's own noise (0.96-1.00
measured here).

A build is any venv with session-mcp installed (`git worktree add /tmp/old REV`, then a venv there
with `pip install -e /tmp/old`). Each tool is timed `calls` times per round, in `rounds` rounds
interleaved across tools; p50 per build and the B/A ratio, and each server's peak RSS at the end,
are printed and written to bench/results/stdio_ab.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from scratch_schema import scratch_schema
from stdio_speed import SESSION, Sentences, children, memory_mb, populate, server_env

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stdio_ab.json"
TOOLS = ("memory_search", "memory_add", "state_increment", "state_get")
CALL_TIMEOUT = 60.0


def arguments(tool: str, i: int, queries: list[str], adds: list[str]) -> dict[str, Any]:
    if tool == "memory_search":
        return {"session_id": SESSION, "query": queries[i]}
    if tool == "memory_add":
        return {"session_id": SESSION, "text": adds[i]}
    return {"session_id": SESSION, "key": "ab-counter"}


def databases(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """Each build's database, populated alike: a copy of one SQLite file, or on PostgreSQL
    (--database-url) a schema each, filled with the same texts and vectors (no copy across)."""
    seed = work / "seed"
    print(f"populating {args.size} memories ...", flush=True)
    if not args.database_url:
        populate(seed, f"sqlite:///{seed}/session-mcp.db", args.size, Sentences(seed=1), set())
        for label in ("A", "B"):
            shutil.copytree(seed, work / label)
        return {label: f"sqlite:///{work / label}/session-mcp.db" for label in ("A", "B")}
    urls = {"A": args.database_url_a, "B": args.database_url_b}
    for label, url in urls.items():
        populate(work / label, url, args.size, Sentences(seed=1), set())
    return urls


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    urls = databases(args, work)
    n = args.calls * args.rounds
    words = Sentences(seed=7)
    queries = [words.one(4, 10) for _ in range(n + 10)]
    adds = Sentences(seed=99).distinct(n, set())
    builds = {"A": args.a, "B": args.b}
    times: dict[tuple[str, str], list[float]] = {}
    async with AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        pids: dict[str, int] = {}
        for label, command in builds.items():
            params = StdioServerParameters(command=command, env=server_env(work / label, urls[label]))
            errlog = stack.enter_context((work / f"{label}.log").open("w"))
            client = Client(
                stdio_client(params, errlog=errlog), read_timeout_seconds=CALL_TIMEOUT, mode="legacy"
            )
            before = children()
            clients[label] = await stack.enter_async_context(client)
            (pids[label],) = children() - before
        for client in clients.values():  # model loaded, caches built, before any timing
            await client.list_tools()
            for q in queries[-10:]:
                await client.call_tool("memory_search", {"session_id": SESSION, "query": q})
        done = dict.fromkeys(TOOLS, 0)
        for _ in range(args.rounds):
            for tool in TOOLS:
                for _ in range(args.calls):
                    call = arguments(tool, done[tool], queries, adds)
                    order = ("A", "B") if done[tool] % 2 == 0 else ("B", "A")
                    done[tool] += 1
                    for label in order:
                        start = time.perf_counter()
                        with anyio.fail_after(CALL_TIMEOUT):
                            result = await clients[label].call_tool(tool, call)
                        times.setdefault((tool, label), []).append(time.perf_counter() - start)
                        if result.is_error:
                            raise RuntimeError(f"{tool} on {label} failed: {result.content}")
        peak = {label: memory_mb(pid).get("VmHWM", float("nan")) for label, pid in pids.items()}
    out: dict[str, Any] = {"a": args.a, "b": args.b, "size": args.size, "calls": n, "tools": {}}
    out["database"] = "postgresql" if args.database_url else "sqlite"
    out["peak_rss_mb"] = peak
    print(f"peak RSS         A {peak['A']:7.1f} MB   B {peak['B']:7.1f} MB")
    for tool in TOOLS:
        a = statistics.median(times[(tool, "A")]) * 1000
        b = statistics.median(times[(tool, "B")]) * 1000
        out["tools"][tool] = {"a_p50_ms": round(a, 3), "b_p50_ms": round(b, 3), "b_over_a": round(b / a, 3)}
        print(f"{tool:16s} A {a:7.2f} ms   B {b:7.2f} ms   B/A {b / a:.3f}   ({n} calls each)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="the baseline build's session-mcp executable")
    parser.add_argument(
        "--b", default=str(Path(sys.prefix) / "bin" / "session-mcp"), help="default: this venv's"
    )
    parser.add_argument("--size", type=int, default=10_000, help="memories in the searched scope")
    parser.add_argument("--calls", type=int, default=60, help="calls per tool per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL database (postgresql://user@host:5432/db) to run both builds on, each in "
        "a schema of its own (stdio_ab_a_*, stdio_ab_b_*, dropped afterwards); default: SQLite files",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="stdio-ab-") as tmp,
        scratch_schema(args.database_url, "stdio_ab_a") as args.database_url_a,
        scratch_schema(args.database_url, "stdio_ab_b") as args.database_url_b,
    ):
        out = anyio.run(run, args, Path(tmp))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results written to {RESULTS}")


if __name__ == "__main__":
    main()
