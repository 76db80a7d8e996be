"""Ingestion throughput of knowledge_add through the service layer, as ratios to baselines run alongside.

Run by hand:  .venv/bin/python bench/knowledge_ingest.py [--rounds 2] [--pages 100] [--files 200]

What is measured (service level: `SessionLayer.knowledge.add`, no MCP transport): a fresh temp
SQLite database per round (the default synchronous=FULL), the real embedder (default variant
unless --variant), one session per round so nothing is skipped as unchanged. The parse timeout is
raised to 120 s (default 30) only so a stall of this loaded machine cannot fail the run.
A default run takes ~4.5 min on the shared 2-core machine (embedding is ~95% of it, done twice).

  pdf      one generated PDF (fpdf2, helvetica 11pt): --pages pages, each a heading and 3-5
           paragraphs of 3-6 generated sentences (~250-350 words) -> pages/s, chunks/s.
  markdown a folder of --files generated .md files (a title, 2-5 `##` sections of paragraphs,
           bulleted or numbered lists; 300-800 words each), added as one folder -> files/s, chunks/s.

The text is generated from a fixed grammar and vocabulary (seeded), so every run ingests the same
bytes. Time split, by wrapping the service's own steps in this process: parse =
`ingestion.convert` (for PDF: the isolated pypdf subprocess), chunk = `Chunker.chunks` (token
counting included), embed = `Knowledge._embed` (batches of 64), store = `Knowledge._store` (one
transaction, FTS trigger, vector cache), other = the rest (path checks, reads, hashing, lookups).

Baselines, interleaved with the measured ingestion on the same embedder:
  embed-only  `layer.embedder.embed` on exactly the batches (64 chunk texts) the service embeds,
              each run right before or right after the service's own call on it (alternating per
              batch, through a stand-in for the service's embedder) and subtracted from the add()
              wall time and the embed step: paired per batch, so the load swings of this shared
              machine hit both alike.
              Ingestion's time over this is its overhead ratio; embed step / embed-only is the
              noise check (should be ~1).
  pypdf       in-process `PdfReader(...).pages[i].extract_text()` of the same PDF: the parse
              step's cost of isolation (subprocess spawn, rlimits, JSON) shows as the ratio.
An untimed warm-up embeds 96 texts of 1-12 sentences first. Figures are medians over --rounds.
Results: a table on stdout and bench/results/knowledge_ingest.json.
"""

from __future__ import annotations

import argparse
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
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from pypdf import PdfReader

import session_mcp.models.ingestion as ingestion
from session_mcp.models.config import LayerConfig
from session_mcp.models.embedder import Embedder
from session_mcp.models.ingestion import KnowledgeConfig
from session_mcp.models.layer import SessionLayer

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "knowledge_ingest.json"
EMBED_BATCH = 64  # models/knowledge.py's _EMBED_BATCH

# -- generated text -----------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


_ADJ = _words(
    "quiet ancient bright narrow copper hidden fragile northern rapid silent heavy wooden coastal "
    "elegant rusty gentle restless sturdy distant humid frozen golden crowded modest hollow vivid "
    "careful bitter loyal muddy polished remote seasonal tidal urban violet weathered young brisk"
)
_NOUN = _words(
    "harbour lantern engineer orchard ledger turbine glacier archive ferry vineyard compass "
    "surveyor canal workshop bridge monastery telescope railway cartographer bakery quarry meadow "
    "printer lighthouse caravan observatory textile mill granary clocktower reservoir apprentice "
    "merchant council valley estuary courier tannery foundry almanac garrison chapel market "
    "beekeeper shipyard furnace kiln glassblower weaver cooper dockyard fisherman schoolhouse"
)
_VERB = _words(
    "repaired inspected recorded measured delivered rebuilt catalogued polished abandoned "
    "expanded surveyed financed painted guarded restored described inherited sketched mapped "
    "auctioned translated reopened calibrated dismantled harvested insured flooded announced"
)
_PLACE = _words(
    "Ardmore Velden Castlebrook Oskarsholm Tirano Greywater Marlow Eastfield Quillon Brennt "
    "Saltcombe Harrowgate Luneford Pellinor Kestrel Bay Ironridge Westmarch Dunmore Calder"
)
_ADV = _words("slowly carefully twice quietly annually reluctantly promptly briefly eventually gladly")
_CONNECT = (
    "Meanwhile,",
    "In the spring,",
    "According to the ledger,",
    "After the storm,",
    "By the following year,",
    "Later that winter,",
    "As a result,",
    "Despite the cost,",
)


class Prose:
    """Seeded sentences from a small grammar: varied, English-like, identical on every run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def sentence(self) -> str:
        r = self.rng
        adj, noun, noun2 = r.choice(_ADJ), r.choice(_NOUN), r.choice(_NOUN)
        verb, place, adv = r.choice(_VERB), r.choice(_PLACE), r.choice(_ADV)
        year, count = r.randint(1720, 1990), r.randint(2, 480)
        forms = (
            f"The {adj} {noun} in {place} {verb} the {noun2} {adv} in {year}.",
            f"{r.choice(_CONNECT)} the {noun} of {place} {verb} {count} {noun2}s near the {r.choice(_ADJ)} {r.choice(_NOUN)}.",
            f"Records from {year} show that the {noun2} was {verb} by a {adj} {noun} from {place}.",
            f"Every {r.choice(_ADJ)} season the {noun} {verb} the {adj} {noun2}, which cost {count} crowns.",
            f"Nobody in {place} remembers why the {noun} {verb} the {noun2} so {adv}.",
            f"The {noun2} of the {adj} {noun} was {verb} {adv}, and {count} people came to see it.",
        )
        return r.choice(forms)

    def paragraph(self, low: int = 3, high: int = 6) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(low, high)))

    def title(self) -> str:
        r = self.rng
        return f"The {r.choice(_ADJ).title()} {r.choice(_NOUN).title()} of {r.choice(_PLACE)}"


def write_pdf(path: Path, pages: int, seed: int) -> int:
    prose = Prose(seed)
    pdf = FPDF()
    pdf.set_auto_page_break(True, margin=15)
    for n in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("helvetica", "B", size=14)
        pdf.multi_cell(0, 8, f"{n}. {prose.title()}")
        pdf.set_font("helvetica", size=11)
        for _ in range(prose.rng.randint(3, 5)):
            pdf.ln(3)
            pdf.multi_cell(0, 5.5, prose.paragraph())
    pdf.output(str(path))
    return pdf.page_no()


def markdown_file(prose: Prose) -> str:
    r = prose.rng
    target = r.randint(300, 800)
    parts = [f"# {prose.title()}", prose.paragraph(2, 3)]
    words = len(parts[1].split())
    sections = r.randint(2, 5)
    for s in range(sections):
        parts.append(f"## {prose.title()}")
        budget = (target - words) // (sections - s)
        used = 0
        while used < budget:
            kind = r.random()
            if kind < 0.2:
                block = "\n".join(f"- {prose.sentence()}" for _ in range(r.randint(3, 6)))
            elif kind < 0.3:
                block = "\n".join(f"{i}. {prose.sentence()}" for i in range(1, r.randint(3, 6) + 1))
            else:
                block = prose.paragraph()
            parts.append(block)
            used += len(block.split())
        words += used
    return "\n\n".join(parts) + "\n"


def write_markdown(folder: Path, files: int, seed: int) -> int:
    prose = Prose(seed)
    folder.mkdir(parents=True)
    words = 0
    for n in range(files):
        text = markdown_file(prose)
        words += len(text.split())
        (folder / f"note-{n:03d}.md").write_text(text, encoding="utf-8")
    return words


# -- timing -------------------------------------------------------------------------------------


class Split:
    """Seconds spent in each wrapped step of one add() call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.baseline_s = 0.0
        self.chunks = 0

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t

        return timed


class PairedEmbedder:
    """Stands in for the service's embedder: every batch it embeds is also embedded by the baseline,
    right before or right after (alternating), on the same texts; the baseline's time is kept apart."""

    def __init__(self, embedder: Embedder, split: Split) -> None:
        self._embedder = embedder
        self._split = split
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed(self, texts: list[str]) -> Any:
        first = self._calls % 2 == 0
        self._calls += 1
        if not first:
            self._split.baseline_s += embed_only(self._embedder, texts)
        out = self._embedder.embed(texts)
        if first:
            self._split.baseline_s += embed_only(self._embedder, texts)
        self._split.chunks += len(texts)
        return out


@contextmanager
def instrumented(layer: SessionLayer, split: Split) -> Iterator[None]:
    knowledge = layer.knowledge
    convert = ingestion.convert
    ingestion.convert = split.wrap("parse", convert)  # type: ignore[assignment]
    knowledge.chunker.chunks = split.wrap("chunk", knowledge.chunker.chunks)  # type: ignore[method-assign]
    knowledge._embed = split.wrap("embed", knowledge._embed)  # type: ignore[method-assign]
    knowledge._store = split.wrap("store", knowledge._store)  # type: ignore[method-assign]
    knowledge.embedder = PairedEmbedder(layer.embedder, split)  # type: ignore[assignment]
    try:
        yield
    finally:
        ingestion.convert = convert
        knowledge.embedder = layer.embedder
        del knowledge.chunker.chunks, knowledge._embed, knowledge._store


def ingest(work: Path, embedder: Embedder, source: Path, round_: int, label: str) -> dict[str, Any]:
    config = KnowledgeConfig(roots=(work,), parse_timeout_seconds=120.0)
    data = work / f"data-{label}-{round_}"
    layer = SessionLayer(
        LayerConfig(database_url=f"sqlite:///{data}/bench.db", data_dir=data, knowledge=config),
        embedder=embedder,
    )
    try:
        session = layer.sessions.create(f"ingest-{label}-{round_}", "bench-user").session_id
        split = Split()
        with instrumented(layer, split):
            t = time.perf_counter()
            added = layer.knowledge.add(session, str(source), kind="path")
            wall = time.perf_counter() - t
    finally:
        layer.close()
    if added.skipped:
        raise RuntimeError(f"{label}: skipped {added.skipped[:3]}")
    total = wall - split.baseline_s  # the baseline ran inside add(); it is not ingestion time
    split.seconds["embed"] -= split.baseline_s
    steps = {k: round(v, 3) for k, v in split.seconds.items()}
    steps["other"] = round(total - sum(split.seconds.values()), 3)
    chunks = sum(d.chunks for d in added.documents)
    if chunks != split.chunks:
        raise RuntimeError(f"{label}: {chunks} chunks stored but {split.chunks} embedded")
    return {
        "total_s": total,
        "documents": len(added.documents),
        "chunks": chunks,
        "steps_s": steps,
        "embed_only_s": split.baseline_s,
    }


def embed_only(embedder: Embedder, texts: list[str]) -> float:
    t = time.perf_counter()
    for start in range(0, len(texts), EMBED_BATCH):
        embedder.embed(texts[start : start + EMBED_BATCH])
    return time.perf_counter() - t


def pypdf_in_process(path: Path) -> float:
    t = time.perf_counter()
    reader = PdfReader(io.BytesIO(path.read_bytes()))
    for page in reader.pages:
        page.extract_text()
    return time.perf_counter() - t


# -- main ---------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def summarise(
    label: str, units: str, count: int, runs: list[dict[str, Any]], base: list[float]
) -> dict[str, Any]:
    total = med([r["total_s"] for r in runs])
    chunks = runs[0]["chunks"]
    base_s = med(base)
    steps = {k: round(med([r["steps_s"].get(k, 0.0) for r in runs]), 3) for k in runs[0]["steps_s"]}
    return {
        "label": label,
        "units": units,
        "count": count,
        "documents": runs[0]["documents"],
        "chunks": chunks,
        "total_s_runs": [round(r["total_s"], 3) for r in runs],
        "total_s": round(total, 3),
        f"{units}_per_s": round(count / total, 2),
        "chunks_per_s": round(chunks / total, 2),
        "steps_s": steps,
        "steps_share": {k: round(v / total, 3) for k, v in steps.items()},
        "embed_only_s_runs": [round(b, 3) for b in base],
        "embed_only_s": round(base_s, 3),
        "embed_only_chunks_per_s": round(chunks / base_s, 2),
        "ingest_over_embed_only": round(total / base_s, 3),
        "embed_step_over_embed_only": round(steps["embed"] / base_s, 3),
    }


def environment(embedder: Embedder) -> dict[str, Any]:
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
        "git_head": head,
        "cpus": os.cpu_count(),
        "embedder_variant": embedder.variant,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--variant", default=None, help="embedding variant (default: the server default)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="knowledge-ingest-") as tmp:
        work = Path(tmp).resolve()
        kwargs = {} if args.variant is None else {"variant": args.variant}
        embedder = Embedder(cache_dir=work / "models", **kwargs)
        t = time.perf_counter()
        embedder.warm()
        warm_s = time.perf_counter() - t
        env = environment(embedder)
        pdf = work / "docs" / "report.pdf"
        pdf.parent.mkdir()
        pages = write_pdf(pdf, args.pages, args.seed)
        folder = work / "docs" / "notes"
        words = write_markdown(folder, args.files, args.seed + 1)
        print(
            f"embedder {embedder.variant} (loaded in {warm_s:.1f}s); pdf {pages} pages, "
            f"{pdf.stat().st_size / 1e6:.2f} MB; markdown {args.files} files, {words} words",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {"pdf": [], "markdown": []}
        base: dict[str, list[float]] = {"pdf": [], "markdown": []}
        pypdf_s: list[float] = []
        # Untimed warm-up: onnxruntime's first runs at new batch shapes are slower than later ones.
        embed_only(embedder, [Prose(0).paragraph(n, n) for n in range(1, 13) for _ in range(8)])
        for r in range(args.rounds):
            for label, source in (("pdf", pdf), ("markdown", folder)):
                run = ingest(work, embedder, source, r, label)
                base[label].append(run["embed_only_s"])
                runs[label].append(run)
                print(
                    f"  round {r + 1}/{args.rounds} {label}: {run['total_s']:.1f}s, {run['chunks']} chunks, "
                    f"embed-only {base[label][-1]:.1f}s",
                    flush=True,
                )
            pypdf_s.append(pypdf_in_process(pdf))
        results = {
            "pdf": summarise("pdf", "pages", pages, runs["pdf"], base["pdf"]),
            "markdown": summarise("markdown", "files", args.files, runs["markdown"], base["markdown"]),
        }
        pdf_parse = results["pdf"]["steps_s"]["parse"]
        results["pdf"]["pypdf_in_process_s"] = round(med(pypdf_s), 3)
        results["pdf"]["parse_over_pypdf_in_process"] = round(pdf_parse / med(pypdf_s), 2)
        results["markdown"]["words"] = words
    env["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env["model_load_s"] = round(warm_s, 2)
    env["wall_s"] = round(time.perf_counter() - started, 1)
    report = {"environment": env, "settings": vars(args), "results": results}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, env)
    print(f"\nwrote {RESULTS.relative_to(HERE.parent)}")
    return 0


def print_table(results: dict[str, Any], env: dict[str, Any]) -> None:
    print(
        f"\nknowledge_add, service level, SQLite, embedder {env['embedder_variant']}, "
        f"{env['cpus']} cpus, load {'/'.join(env['loadavg_start'])} -> {'/'.join(env['loadavg_end'])}"
    )
    head = f"{'source':<10} {'docs':>5} {'chunks':>6} {'total s':>8} {'units/s':>12} {'chunks/s':>9} {'embed-only chunks/s':>20} {'ingest/embed-only':>18} {'embed step/embed-only':>22}"
    print(head)
    for r in results.values():
        units = f"{r[r['units'] + '_per_s']:.2f} {r['units']}"
        print(
            f"{r['label']:<10} {r['documents']:>5} {r['chunks']:>6} {r['total_s']:>8.2f} {units:>12} "
            f"{r['chunks_per_s']:>9.2f} {r['embed_only_chunks_per_s']:>20.2f} {r['ingest_over_embed_only']:>17.2f}x {r['embed_step_over_embed_only']:>21.2f}x"
        )
    print("\ntime split (median s, share of total)")
    for r in results.values():
        parts = "  ".join(f"{k} {v:.2f}s ({r['steps_share'][k]:.0%})" for k, v in r["steps_s"].items())
        print(f"{r['label']:<10} {parts}")
    pdf = results["pdf"]
    print(
        f"\npdf parse in the isolated subprocess {pdf['steps_s']['parse']:.2f}s vs pypdf in process "
        f"{pdf['pypdf_in_process_s']:.2f}s: {pdf['parse_over_pypdf_in_process']:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
