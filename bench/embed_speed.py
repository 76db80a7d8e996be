"""Embedding speed and agreement of the model variants: python bench/embed_speed.py [--threads N].

Speed: the same 256 generated sentences through every variant in the same process, rounds
interleaved so that machine noise hits all variants alike; the median round counts.
Load: each variant in a fresh process, first with an empty cache (cold) then with the cache the
cold run left (cached); RSS is measured right after loading.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy

from session_mcp.models.embedder import Embedder

VARIANTS = ("as-shipped", "fp32", "int8-dynamic")

SUBJECTS = [
    "The committee",
    "My neighbour's dog",
    "A small startup in Berlin",
    "The database migration",
    "Our quarterly report",
    "The new compiler",
    "A retired teacher",
    "The river",
    "This recipe",
    "The support ticket",
    "Her grandmother",
    "The orchestra",
    "An unexpected storm",
    "The API gateway",
]
VERBS = [
    "announced",
    "delayed",
    "rewrote",
    "ignored",
    "celebrated",
    "investigated",
    "summarised",
    "broke",
    "improved",
    "questioned",
    "flooded",
    "translated",
    "scheduled",
    "rejected",
]
OBJECTS = [
    "the budget for next year",
    "a surprisingly long list of bugs",
    "the old wooden bridge",
    "three chapters of the novel",
    "every failing integration test",
    "the clinical trial results",
    "a plan to reduce energy costs",
    "the login page",
    "the harvest festival",
    "a pull request",
]
TAILS = [
    "",
    ".",
    " after a long meeting on Friday.",
    " because the previous version kept crashing under load.",
    " while the rain kept falling on the empty streets of the town.",
    ", and nobody was surprised, given how many warnings had been ignored over the past three years "
    "by people who should have known better.",
]
QUESTIONS = [
    "How do I reset my password?",
    "What time does the museum open on Sundays?",
    "Why is the sky blue?",
    "Can I bring my bicycle on the train?",
    "Which vitamins are found in spinach?",
    "Where did I leave the keys to the shed?",
]


def make_texts(n: int = 256, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            texts.append(rng.choice(QUESTIONS))
        elif kind == 7:
            # Paragraph-sized texts: a few per batch dominate padding and compute.
            parts = [
                f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
                for _ in range(rng.randint(3, 9))
            ]
            texts.append(" ".join(parts))
        else:
            texts.append(
                f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
            )
    return texts


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(variant: str, cache_dir: str, threads: int) -> None:
    t = time.perf_counter()
    emb = Embedder(cache_dir=Path(cache_dir), variant=variant, threads=threads)
    emb.warm()
    load = time.perf_counter() - t
    emb.embed(["warm-up sentence"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"load_s": load, "rss_mb": rss_now_mb(), "peak_rss_mb": peak}))


def measure_load(variant: str, cache_dir: Path, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(cache_dir), "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "CACHE_DIR"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.threads)
        return

    texts = make_texts()
    with tempfile.TemporaryDirectory() as tmp:
        print("load (fresh process each; cold = empty cache, cached = second run)")
        for variant in VARIANTS:
            cache = Path(tmp) / variant
            cold = measure_load(variant, cache, args.threads)
            warm = measure_load(variant, cache, args.threads)
            print(
                f"  {variant:13s} cold {cold['load_s']:5.2f}s (peak RSS {cold['peak_rss_mb']:4.0f} MB)   "
                f"cached {warm['load_s']:5.2f}s   RSS after load {warm['rss_mb']:4.0f} MB"
            )

        embedders = {
            v: Embedder(cache_dir=Path(tmp) / v, variant=v, threads=args.threads, batch_size=args.batch_size)
            for v in VARIANTS
        }
        vectors = {v: e.embed(texts) for v, e in embedders.items()}  # also the warm-up round
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for v, e in embedders.items():
                t = time.perf_counter()
                e.embed(texts)
                rates[v].append(len(texts) / (time.perf_counter() - t))

    tokens = embedders["fp32"].count_tokens_batch(texts)
    span = f"{min(tokens)}-{max(tokens)} tokens, mean {statistics.mean(tokens):.0f}"
    print(
        f"\nspeed: {len(texts)} texts ({span}), "
        f"batch {args.batch_size}, threads {args.threads or 'default'}, median of {args.rounds} rounds"
    )
    median = {v: statistics.median(r) for v, r in rates.items()}
    for v in VARIANTS:
        cos = numpy.einsum("ij,ij->i", vectors[v], vectors["fp32"])
        print(
            f"  {v:13s} {median[v]:7.1f} texts/s  x{median[v] / median['as-shipped']:.2f} vs as-shipped  "
            f"x{median[v] / median['fp32']:.2f} vs fp32   cosine to fp32 mean {cos.mean():.5f} "
            f"min {cos.min():.5f}"
        )


if __name__ == "__main__":
    main()
