"""Benchmark ScopedVectors: exact vs HNSW search latency, HNSW recall@10, build, save and load times.

Run by hand:  .venv/bin/python bench/vector_search.py [--sizes 10000,100000] [--data random,embedlike]

Two data sets of 384-d unit vectors in one scope:
  random     uniform on the sphere: the worst case for any graph index (no structure to exploit)
  embedlike  clustered and low-rank (256 clusters in a 48-d latent space, projected, plus noise):
             closer to what MiniLM sentence embeddings look like
Everything goes through ScopedVectors with an in-memory source, so the timings include the
per-search catch-up (one `stats` call). The first search is exact (the index is built or loaded in
the background); "during build" are searches answered by the exact store while the worker builds.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from session_mcp.models.vectors import ScopedVectors

DIM = 384
SCOPE = "bench"


class MemorySource:
    def __init__(self, vecs: NDArray[np.float32]) -> None:
        self.rows = {i + 1: v.tobytes() for i, v in enumerate(vecs)}

    def stats(self, scope: str) -> tuple[int, int]:
        return (max(self.rows, default=0), len(self.rows))

    def rows_after(self, scope: str, after_seq: int) -> Iterable[tuple[int, bytes]]:
        return ((s, v) for s, v in sorted(self.rows.items()) if s > after_seq)

    def all_keys(self, scope: str) -> Sequence[int]:
        return sorted(self.rows)

    def vectors(self, scope: str, seqs: Sequence[int]) -> Iterable[tuple[int, bytes]]:
        return [(s, self.rows[s]) for s in seqs if s in self.rows]


def dataset(kind: str, n: int, rng: np.random.Generator) -> NDArray[np.float32]:
    if kind == "random":
        x = rng.standard_normal((n, DIM))
    else:
        centres = rng.standard_normal((256, 48))
        z = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, 48))
        x = z @ rng.standard_normal((48, DIM)) + 0.5 * rng.standard_normal((n, DIM))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_searches(
    vs: ScopedVectors, queries: NDArray[np.float32], k: int
) -> tuple[list[list[int]], list[float]]:
    results, lat = [], []
    for q in queries:
        t = time.perf_counter()
        hits = vs.search(SCOPE, q, k)
        lat.append((time.perf_counter() - t) * 1000)
        results.append([key for key, _ in hits])
    return results, lat


def pct(lat: list[float], p: float) -> float:
    return float(np.percentile(lat, p))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(kind: str, n: int, nq: int) -> None:
    rng = np.random.default_rng(42)
    data = dataset(kind, n + nq, rng)
    vecs, queries = data[:n], data[n:]
    src = MemorySource(vecs)

    exact = ScopedVectors(dim=DIM, source=src, directory=None, exact_below=10**9, matrix_below=10**9)
    t = time.perf_counter()
    exact.search(SCOPE, queries[0], 10)
    exact_build = time.perf_counter() - t
    truth, exact_lat = timed_searches(exact, queries, 10)
    exact.close()
    del exact

    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        base = rss_mb()
        hnsw = ScopedVectors(dim=DIM, source=src, directory=directory, exact_below=0, save_every=10**9)
        t = time.perf_counter()
        hnsw.search(SCOPE, queries[0], 10)  # exact at once; the index is built in the background
        first = time.perf_counter() - t
        during: list[float] = []
        while hnsw.mode(SCOPE) != "hnsw" and len(during) < 2000:
            during += timed_searches(hnsw, queries[len(during) % nq :][:50], 10)[1]
        hnsw.wait_idle()
        ready = time.perf_counter() - t  # built, saved and switched to
        rss_ready = rss_mb() - base
        found, hnsw_lat = timed_searches(hnsw, queries, 10)
        recall = statistics.fmean(len(set(f) & set(g)) / 10 for f, g in zip(found, truth, strict=True))
        self_hits = sum(hnsw.search(SCOPE, vecs[i], 1)[0][0] == i + 1 for i in range(0, n, max(1, n // 200)))
        extra = dataset(kind, 1, rng)[0]
        src.rows[n + 1] = extra.tobytes()
        t = time.perf_counter()
        hnsw.note_added(SCOPE, n + 1, extra)  # dirty, so flush really writes
        add_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        hnsw.flush()
        save = time.perf_counter() - t
        hnsw.close()
        del hnsw
        size_mb = sum(p.stat().st_size for p in directory.glob("*.usearch")) / 2**20
        base = rss_mb()
        again = ScopedVectors(dim=DIM, source=src, directory=directory, exact_below=0)
        t = time.perf_counter()
        again.search(SCOPE, queries[0], 10)  # exact from the source; the file loads in the background
        again_first = time.perf_counter() - t
        again.wait_idle()
        load = time.perf_counter() - t
        assert again.mode(SCOPE) == "hnsw"
        rss_again = rss_mb() - base
        again.close()
        del src.rows[n + 1]

    print(
        f"{kind:9s} n={n:>7,d}  exact p50 {pct(exact_lat, 50):6.2f} ms p99 {pct(exact_lat, 99):6.2f} ms"
        f" (load from source {exact_build:5.2f} s)\n"
        f"    first search {first:5.2f} s; during build p50 {pct(during, 50):6.2f} ms"
        f" p99 {pct(during, 99):6.2f} ms ({len(during)} searches); HNSW built+saved in background {ready:6.1f} s\n"
        f"    HNSW p50 {pct(hnsw_lat, 50):6.2f} ms p99 {pct(hnsw_lat, 99):6.2f} ms recall@10 {recall:.4f}"
        f" self@1 {self_hits}/{len(range(0, n, max(1, n // 200)))}; note_added {add_ms:5.2f} ms\n"
        f"    flush {save:5.2f} s, file {size_mb:6.1f} MiB; restart: first search {again_first:5.2f} s,"
        f" HNSW loaded in background {load:5.2f} s\n"
        f"    RSS added by the scope: {rss_ready:6.0f} MiB built, {rss_again:6.0f} MiB after restart;"
        f" process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:6.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--data", default="embedlike,random")
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    for kind in args.data.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            run(kind, n, args.queries)


if __name__ == "__main__":
    main()
