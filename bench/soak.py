"""A soak of the real `session-mcp` over stdio: a steady mixed workload for a while, with the
server's memory, open files and SQLite WAL sampled as it goes (the reliability plan's R16).

Run by hand:  .venv/bin/python bench/soak.py [--minutes 30] [--rate 50] [--database-url URL]

The workload is what a host's sessions do, in a steady state that should hold the server's
memory flat: sessions live 90 s (a TTL), so new ones keep being created while the sweeper (every
15 s here, no grace) purges the expired ones' state, short-term memory and history; each call is
one of state_increment, state_set, state_get, memory_add (short-term, or long-term drawn from a
fixed pool of texts, which deduplicates once the pool is used up), memory_search, history_add,
history_get and get_context, at `--rate` calls a second, paced. Every call must succeed: any error
is counted and its first lines printed.

Every `--sample` seconds: the server's VmRSS and VmHWM, its open file descriptors, the SQLite WAL's
size, calls and their p50 / p99 in the window, errors. Pass criteria (R16): RSS at the end within
10% of the first sample after `--warmup` seconds, the descriptor count flat after warm-up, the WAL
bounded (SQLite checkpoints it; the files are not sampled on PostgreSQL), no errors. Results: a
table on stdout and bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
from scratch_schema import scratch_schema
from stdio_speed import SERVER, Sentences, Server, kill_leftovers, memory_mb, pct, spawn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "soak.json"
TTL_SECONDS = 90
USERS = ("soak-ann", "soak-ben", "soak-cy")
MIX = {
    "state_increment": 20,
    "state_set": 10,
    "state_get": 15,
    "memory_add_short": 10,
    "memory_add_long": 5,
    "memory_search": 15,
    "history_add": 10,
    "history_get": 5,
    "get_context": 10,
}


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def file_mb(path: Path) -> float:
    try:
        return round(path.stat().st_size / 2**20, 2)
    except OSError:
        return 0.0


class Workload:
    """Sessions that come and go, and one call at a time drawn from MIX."""

    def __init__(self, server: Server, seed: int) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.texts = Sentences(seed)
        self.pool = self.texts.distinct(2000, set())  # long-term texts: the scope stops growing
        self.sessions: dict[str, float] = {}  # id -> when it expires (monotonic)
        self.created = 0
        self.run = uuid.uuid4().hex[:8]  # a database used before holds earlier runs' sessions

    async def session(self) -> str:
        now = time.monotonic()
        usable = [s for s, ends in self.sessions.items() if ends - now > 15]
        if len(usable) < 5:
            self.created += 1
            session_id = f"soak-{self.run}-{self.created}"
            await self.server.call(
                "session_create",
                session_id=session_id,
                user_id=USERS[self.created % len(USERS)],
                ttl_seconds=TTL_SECONDS,
            )
            self.sessions[session_id] = now + TTL_SECONDS
            usable.append(session_id)
        for gone in [s for s, ends in self.sessions.items() if ends < now]:
            del self.sessions[gone]
        return self.rng.choice(usable)

    async def step(self) -> str:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        session_id = await self.session()
        call = self.server.call
        if kind == "state_increment":
            await call(kind, session_id=session_id, key=f"n{self.rng.randrange(5)}")
        elif kind == "state_set":
            value = {"note": self.texts.one(), "n": self.rng.randrange(1000)}
            await call(kind, session_id=session_id, key=f"k{self.rng.randrange(20)}", value=value)
        elif kind == "state_get":
            await call(kind, session_id=session_id, key=f"k{self.rng.randrange(20)}")
        elif kind == "memory_add_short":
            await call("memory_add", session_id=session_id, text=self.texts.one(), memory_type="short")
        elif kind == "memory_add_long":
            await call(
                "memory_add", session_id=session_id, text=self.rng.choice(self.pool), memory_type="long"
            )
        elif kind == "memory_search":
            await call(kind, session_id=session_id, query=self.texts.one(4, 10))
        elif kind == "history_add":
            role = self.rng.choice(["user", "assistant"])
            await call(kind, session_id=session_id, role=role, content=self.texts.one())
        elif kind == "history_get":
            await call(kind, session_id=session_id, limit=20)
        else:
            await call(kind, session_id=session_id, query=self.texts.one(4, 10))
        return kind


async def soak(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    env = {
        "SESSION_MCP_DATA_DIR": str(data),
        "SESSION_MCP_SWEEPER_INTERVAL_SECONDS": "15",
        "SESSION_MCP_SWEEPER_GRACE_SECONDS": "0",
        "SESSION_MCP_LOG_LEVEL": "WARNING",
    }
    if args.database_url:
        env["SESSION_MCP_DATABASE_URL"] = args.database_url
    sqlite = not args.database_url or args.database_url.startswith("sqlite")
    wal = data / "session-mcp.db-wal"  # the files are SQLite's: on PostgreSQL they are not sampled
    samples: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    shown = 0
    async with spawn([str(SERVER)], env, data.parent / "soak.log") as server:
        work = Workload(server, args.seed)
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start + args.sample
        window: list[float] = []
        kinds: Counter[str] = Counter()
        done = 0
        while time.monotonic() < end:
            slot = start + done / args.rate
            if slot > time.monotonic():
                await anyio.sleep(slot - time.monotonic())  # pacing, not waiting for a result
            began = time.perf_counter()
            try:
                kinds[await work.step()] += 1
            except Exception as exc:  # counted and shown: a soak reports every failure, then goes on
                code = str(exc).split(":", 2)[1].strip() if ":" in str(exc) else type(exc).__name__
                errors[code] += 1
                if shown < 5:
                    shown += 1
                    print(f"  error: {str(exc)[:300]}", flush=True)
            window.append(time.perf_counter() - began)
            done += 1
            if time.monotonic() >= next_sample:
                memory = memory_mb(server.pid)
                sample = {
                    "t_s": round(time.monotonic() - start),
                    "rss_mb": memory.get("VmRSS"),
                    "hwm_mb": memory.get("VmHWM"),
                    "fds": open_fds(server.pid),
                    "wal_mb": file_mb(wal) if sqlite else None,
                    "db_mb": file_mb(data / "session-mcp.db") if sqlite else None,
                    "calls": len(window),
                    "p50_ms": round(pct(window, 50) * 1000, 2),
                    "p99_ms": round(pct(window, 99) * 1000, 2),
                    "errors": sum(errors.values()),
                    "sessions_created": work.created,
                }
                samples.append(sample)
                files = f" wal {sample['wal_mb']} MB db {sample['db_mb']} MB" if sqlite else ""
                print(
                    "  t={t_s:>5}s rss {rss_mb} MB (peak {hwm_mb}) fds {fds}".format(**sample)
                    + files
                    + " calls {calls} p50 {p50_ms} ms p99 {p99_ms} ms errors {errors}".format(**sample),
                    flush=True,
                )
                window = []
                next_sample += args.sample
    steady = [s for s in samples if s["t_s"] >= args.warmup] or samples
    first, last = steady[0], steady[-1]
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] if first["rss_mb"] else float("nan")
    fds = [s["fds"] for s in steady]
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "calls": done,
        "calls_by_kind": dict(kinds),
        "sessions_created": work.created,
        "errors": dict(errors),
        "samples": samples,
        "rss_after_warmup_mb": first["rss_mb"],
        "rss_end_mb": last["rss_mb"],
        "rss_growth": round(growth, 4),
        "peak_rss_mb": max(s["hwm_mb"] or 0 for s in samples),
        "fds_min_max": [min(fds), max(fds)],
        "wal_max_mb": max(s["wal_mb"] for s in samples) if sqlite else None,
        "p50_ms_median_of_windows": round(statistics.median(s["p50_ms"] for s in samples), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=50, help="calls a second")
    parser.add_argument("--sample", type=float, default=30, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120, help="seconds before the RSS baseline")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL database; the run uses a schema of its own, dropped after",
    )
    args = parser.parse_args()
    for name in ("minutes", "rate", "sample"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be more than 0, not {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, not {args.warmup}")
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as tmp,
        scratch_schema(args.database_url, "soak") as args.database_url,
    ):
        data = Path(tmp) / "data"
        try:
            result = anyio.run(soak, args, data)
        finally:
            kill_leftovers()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    ok = {
        "RSS within 10% after warm-up": abs(result["rss_growth"]) < 0.10,
        "descriptors flat after warm-up": result["fds_min_max"][1] - result["fds_min_max"][0] <= 2,
        "no errors": not result["errors"],
    }
    print(
        f"\n{result['calls']} calls in {args.minutes} min ({result['calls'] / (args.minutes * 60):.1f}/s), "
        f"{result['sessions_created']} sessions created; p50 of the windows' p50s "
        f"{result['p50_ms_median_of_windows']} ms"
    )
    print(
        f"RSS {result['rss_after_warmup_mb']} MB after warm-up -> {result['rss_end_mb']} MB at the end "
        f"({result['rss_growth']:+.1%}), peak {result['peak_rss_mb']} MB; descriptors "
        f"{result['fds_min_max'][0]}-{result['fds_min_max'][1]}; "
        f"WAL at most {result['wal_max_mb'] or '-'} MB; "
        f"errors {result['errors'] or 'none'}"
    )
    for name, passed in ok.items():
        print(f"  {name}: {'ok' if passed else 'FAILED'}")
    print(f"results written to {RESULTS}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
