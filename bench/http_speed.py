"""Speed of `state_increment` over the HTTP transports, as ratios to stdio measured in the same run.

Run by hand:  .venv/bin/python bench/http_speed.py [--calls 500] [--concurrent 200] [--rounds 5]

Three real `session-mcp` processes, each on its own SQLite file in a temp dir: one over stdio (the
SDK client spawns it), one `serve --transport streamable-http` and one `serve --transport sse`,
both on 127.0.0.1 with a bearer token (the team set-up: auth on). Each is driven through the SDK's
`Client`, in both protocol eras: "legacy" (the initialize handshake, what hosts speak today; on
streamable HTTP that is an `Mcp-Session-Id` session with SSE-framed replies) and "auto" (2026-07-28,
one stateless POST per call). The machine is shared and noisy, so the sequential calls of every
transport alternate in rounds and each figure stands beside stdio's from the same rounds.

  sequential  --calls state_increment calls, one at a time: p50/p99 latency and calls/s
  concurrent  --concurrent calls in flight at once on one client: calls/s, and the final counter
              checked against the number acknowledged

Results: a table on stdout and bench/results/http_speed.json. Every call has a timeout; servers
are stopped (SIGTERM, then SIGKILL by PID if they linger) and temp dirs removed, also on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from stdio_speed import ratio, summary

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "http_speed.json"
SERVER = Path(sys.prefix) / "bin" / "session-mcp"
CALL_TIMEOUT = 30.0
START_TIMEOUT = 60.0
TOKEN = "bench-token-0123456789abcdef"
SESSION = "bench"
TRANSPORTS = ("stdio", "streamable-http", "sse")
SERVING = re.compile(r"serving MCP over \S+ at (http://\S+) ")


@contextmanager
def http_process(transport: str, data_dir: Path, log: Path) -> Iterator[str]:
    """`session-mcp serve` on 127.0.0.1:<free port>; yields its endpoint once /health answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_MCP_")} | {
        "SESSION_MCP_DATA_DIR": str(data_dir),
        "SESSION_MCP_WARM_MODEL": "false",
        "SESSION_MCP_AUTH_TOKENS": f"{TOKEN}=bench",
        "SESSION_MCP_LOG_LEVEL": "INFO",  # the start-up line names the port; no access log at INFO
    }
    with log.open("w") as errlog:
        process = subprocess.Popen(
            [str(SERVER), "serve", "--transport", transport, "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx2.Client(timeout=5) as http:
            while True:
                found = SERVING.search(log.read_text())
                if found:
                    try:
                        if http.get(found.group(1).rsplit("/", 1)[0] + "/health").status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{transport} server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"warning: {transport} server {process.pid} ignored SIGTERM; killing it", file=sys.stderr)
            process.kill()
            process.wait()


@asynccontextmanager
async def connected(transport: str, target: str, mode: str, log: Path) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            errlog = stack.enter_context(log.open("a"))
            params = StdioServerParameters(
                command=str(SERVER),
                env={"SESSION_MCP_DATA_DIR": target, "SESSION_MCP_WARM_MODEL": "false"},
            )
            streams: Any = stdio_client(params, errlog=errlog)
        elif transport == "sse":
            streams = sse_client(target, headers=headers, timeout=CALL_TIMEOUT)
        else:
            http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            streams = streamable_http_client(target, http_client=http)
        client = await stack.enter_async_context(
            Client(streams, read_timeout_seconds=CALL_TIMEOUT, mode=mode)
        )
        with anyio.fail_after(CALL_TIMEOUT):
            await client.list_tools()  # the client checks results against the listed output schemas
            await client.call_tool("session_create", {"session_id": SESSION})
        yield client


async def increment(client: Client) -> int:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await client.call_tool("state_increment", {"session_id": SESSION, "key": "n"})
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"state_increment failed: {result.content}")
    return int(result.structured_content["value"])


async def sequential(clients: dict[str, Client], calls: int, rounds: int) -> dict[str, list[float]]:
    """`calls` increments per transport, one at a time, the transports taking turns in rounds."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    for client in clients.values():  # warm each path once (first-call costs are not the figure)
        for _ in range(10):
            await increment(client)
    per_round = [calls // rounds + (1 if r < calls % rounds else 0) for r in range(rounds)]
    for count in per_round:
        for name, client in clients.items():
            for _ in range(count):
                start = time.perf_counter()
                await increment(client)
                times[name].append(time.perf_counter() - start)
    return times


async def concurrent(client: Client, in_flight: int) -> dict[str, Any]:
    before = (await client.call_tool("state_get", {"session_id": SESSION, "key": "n"})).structured_content
    assert before is not None
    acked: list[int] = []
    failures: list[str] = []

    async def one() -> None:
        try:
            acked.append(await increment(client))
        except Exception as exc:
            failures.append(repr(exc)[:200])

    start = time.perf_counter()
    with anyio.fail_after(CALL_TIMEOUT * 4):
        async with anyio.create_task_group() as tasks:
            for _ in range(in_flight):
                tasks.start_soon(one)
    total = time.perf_counter() - start
    after = (await client.call_tool("state_get", {"session_id": SESSION, "key": "n"})).structured_content
    assert after is not None
    return {
        "in_flight": in_flight,
        "total_s": round(total, 3),
        "calls_per_s": round(len(acked) / total, 1),
        "acknowledged": len(acked),
        "failed": len(failures),
        "failures": failures[:5],
        "final_equals_acknowledged": after["value"] - before["value"] == len(acked),
    }


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE.parent, capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "uvicorn": version("uvicorn"),
        "session_mcp": version("session-mcp"),
        "git_head": git("rev-parse", "HEAD").strip(),
        "git_modified": git("status", "--porcelain").splitlines(),
        "cpus": os.cpu_count(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    r: dict[str, Any] = {
        "environment": environment(),
        "settings": {
            "calls": args.calls,
            "concurrent": args.concurrent,
            "rounds": args.rounds,
            "auth": "bearer",
        },
        "modes": {},
    }
    with (
        http_process("streamable-http", work / "streamable", work / "streamable.log") as streamable_url,
        http_process("sse", work / "sse", work / "sse.log") as sse_url,
    ):
        targets = {"stdio": str(work / "stdio"), "streamable-http": streamable_url, "sse": sse_url}
        for mode in ("legacy", "auto"):
            print(f"mode {mode}: sequential ...", flush=True)
            async with AsyncExitStack() as stack:
                clients: dict[str, Client] = {}
                for name in TRANSPORTS:
                    clients[name] = await stack.enter_async_context(
                        connected(name, targets[name], mode, work / "stdio.log")
                    )
                protocol = {name: c.protocol_version for name, c in clients.items()}
                times = await sequential(clients, args.calls, args.rounds)
                figures: dict[str, Any] = {name: summary(times[name]) for name in clients}
                print(f"mode {mode}: {args.concurrent} in flight ...", flush=True)
                for name, client in clients.items():
                    figures[name]["protocol"] = protocol[name]
                    figures[name]["concurrent"] = await concurrent(client, args.concurrent)
            base = figures["stdio"]
            for name in clients:
                if name == "stdio":
                    continue
                figures[name]["p50_ratio_to_stdio"] = ratio(figures[name]["p50_ms"], base["p50_ms"])
                figures[name]["calls_per_s_ratio_to_stdio"] = ratio(
                    figures[name]["calls_per_s"], base["calls_per_s"]
                )
                figures[name]["concurrent"]["calls_per_s_ratio_to_stdio"] = ratio(
                    figures[name]["concurrent"]["calls_per_s"], base["concurrent"]["calls_per_s"]
                )
            r["modes"][mode] = figures
    r["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    r["server_logs_tail"] = {
        name: (work / f"{name}.log").read_text(errors="replace")[-1500:] for name in ("streamable", "sse")
    }
    return r


def print_table(r: dict[str, Any]) -> None:
    print(
        f"{'mode':<7} {'transport':<16} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8} {'p50/stdio':>10} "
        f"{'calls/s/stdio':>14} {'conc. calls/s':>14} {'conc./stdio':>12}"
    )
    for mode, figures in r["modes"].items():
        for name, f in figures.items():
            conc = f["concurrent"]
            print(
                f"{mode:<7} {name:<16} {f['p50_ms']:>8} {f['p99_ms']:>8} {f['calls_per_s']:>8} "
                f"{f.get('p50_ratio_to_stdio', 1.0):>10} {f.get('calls_per_s_ratio_to_stdio', 1.0):>14} "
                f"{conc['calls_per_s']:>14} {conc.get('calls_per_s_ratio_to_stdio', 1.0):>12}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", type=int, default=500, help="sequential state_increment calls per transport"
    )
    parser.add_argument("--concurrent", type=int, default=200, help="state_increment calls in flight")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns the transports take (noise spreads evenly)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if not SERVER.exists():
        print(f"{SERVER} not found: install the project into this venv", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="http-speed-"))
    try:
        results = anyio.run(run, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
