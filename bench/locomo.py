"""Retrieval quality on LoCoMo: Recall@5, Recall@10, MRR and nDCG@10 of memory_search.

Each dialogue turn is stored as a long-term memory "{speaker}: {text}" with {"dia_id", "session_date"}
metadata, one user per conversation; each question is searched with limit 10 and scored against its
evidence turns. The data is CC BY-NC 4.0 and is read from ../shared/data/locomo, never copied here.

    python bench/locomo.py [--data PATH] [--weights 0,0.5,1] [--variant fp32]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from scratch_schema import scratch_schema

from session_mcp.models.config import LayerConfig
from session_mcp.models.embedder import Embedder
from session_mcp.models.layer import SessionLayer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo-dev.json"


def evidence_ids(raw: list[str]) -> set[str]:
    ids: set[str] = set()
    for item in raw:
        ids.update(part for part in re.split(r"[;\s]+", item) if re.fullmatch(r"D\d+:\d+", part))
    return ids


def load(layer: SessionLayer, conversation: dict, index: int) -> str:  # type: ignore[type-arg]
    user = f"locomo-{index}"
    session_id = layer.sessions.create(f"conv-{index}", user).session_id
    talk = conversation["conversation"]
    texts, metas = [], []
    for key in sorted(
        (k for k in talk if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1])
    ):
        date = talk.get(f"{key}_date_time", "")
        for turn in talk[key]:
            texts.append(f"{turn['speaker']}: {turn['text']}")
            metas.append({"dia_id": turn["dia_id"], "session_date": date})
    for text, meta in zip(texts, metas, strict=True):
        layer.memory.add(session_id, text, "long", meta)
    return session_id


def score(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    hits = [1.0 if dia in relevant else 0.0 for dia in ranked[:10]]
    first = next((i for i, h in enumerate(hits) if h), None)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return {
        "R@5": len(relevant & set(ranked[:5])) / len(relevant),
        "R@10": len(relevant & set(ranked[:10])) / len(relevant),
        "MRR": 0.0 if first is None else 1 / (first + 1),
        "nDCG@10": sum(h / math.log2(i + 2) for i, h in enumerate(hits)) / ideal,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--weights", default="0,0.3,0.4,0.5,0.6,1", help="dense weights to compare (0 = keyword)"
    )
    parser.add_argument("--variant", default=None, help="embedding variant (default: the server default)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL database; the run uses a schema of its own, dropped after",
    )
    args = parser.parse_args()
    data = json.loads(args.data.read_text())
    with (
        tempfile.TemporaryDirectory() as tmp,
        scratch_schema(args.database_url, "locomo") as args.database_url,
    ):
        embedder_kwargs = {} if args.variant is None else {"variant": args.variant}
        embedder = Embedder(cache_dir=Path(tmp) / "models", **embedder_kwargs)
        url = args.database_url or f"sqlite:///{tmp}/locomo.db"
        layer = SessionLayer(LayerConfig(database_url=url, data_dir=Path(tmp)), embedder=embedder)
        started = time.perf_counter()
        sessions = [load(layer, conversation, n) for n, conversation in enumerate(data)]
        stored = time.perf_counter() - started
        print(
            f"stored {sum(1 for _ in range(len(sessions)))} conversations in {stored:.1f}s ({embedder.variant})"
        )
        for weight in (float(w) for w in args.weights.split(",")):
            layer.memory.dense_weight = weight
            totals: dict[str, float] = defaultdict(float)
            per_category: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            count = 0
            counts: dict[int, int] = defaultdict(int)
            for session_id, conversation in zip(sessions, data, strict=True):
                for qa in conversation["qa"]:
                    relevant = evidence_ids(qa.get("evidence", []))
                    if not relevant:
                        continue
                    hits = layer.memory.search(session_id, str(qa["question"]), "long", 10).results
                    metrics = score([str(h.metadata.get("dia_id")) for h in hits], relevant)
                    count += 1
                    counts[qa["category"]] += 1
                    for name, value in metrics.items():
                        totals[name] += value
                        per_category[qa["category"]][name] += value
            label = "keyword" if weight == 0 else "dense" if weight == 1 else f"blend {weight:.2f}"
            summary = "  ".join(f"{k} {v / count:.3f}" for k, v in totals.items())
            print(f"{label:<12} n={count}  {summary}")
            for category in sorted(per_category):
                line = "  ".join(f"{k} {v / counts[category]:.3f}" for k, v in per_category[category].items())
                print(f"    category {category} (n={counts[category]}): {line}")
        layer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
