"""Frozen, self-validating settings for the stages. ``jobs/`` maps CLI options onto these;
the pipeline and the manifest use them as they are. Every validation raises
:class:`ConfigError` with one line that names the fix.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UserError
from .ids import DEFAULT_CODEC, ChunkIdCodec

__all__ = [
    "DEFAULT_CONCEPTS",
    "DEVICES",
    "FORMATS",
    "MAX_NPROBE",
    "MAX_SEED",
    "MAX_TOKENS",
    "POOL_FEATURES",
    "POOL_METHODS",
    "STAGE_RANGES",
    "TEXT_UNITS",
    "ChunkConfig",
    "ChunkingPolicy",
    "ConfigError",
    "ContextPolicy",
    "EmbedConfig",
    "IndexConfig",
    "Pooling",
    "Range",
    "ReadOptions",
    "TrainConfig",
]

FORMATS = ("auto", "jsonl", "parquet", "text")
TEXT_UNITS = ("file", "line")


class ConfigError(UserError):
    """Bad settings; the message is one line naming the fix."""


@dataclass(frozen=True)
class Range:
    """The values one numeric option takes: ``lo`` to ``hi`` (None: no bound on that
    side), both ends included unless ``lo_open`` / ``hi_open``; ``kind`` int or float (a
    float must be finite: NaN passes every comparison, so it is refused by name).

    Every limit lives in one table of these: :data:`STAGE_RANGES` (the stages' and
    ``tda model train``'s options, by flag) and ``REQUEST_RANGES`` in
    :mod:`tda.schemas.request` (an attribution's). The settings below check with them and
    the command line builds its option types from them, so both refuse the same values
    with the same words."""

    lo: int | float | None
    hi: int | float | None
    kind: type = int
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        """The range in words: ``in 1..100`` (integers), ``in (0, 10]`` (floats),
        ``at least 1``, ``at most 5``, ``finite``."""
        lo, hi = (None if b is None else _number(b) for b in (self.lo, self.hi))
        if lo is not None and hi is not None:
            if self.kind is int:
                return f"in {lo}..{hi}"
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{'above' if self.lo_open else 'at least'} {lo}"
        if hi is not None:
            return f"{'below' if self.hi_open else 'at most'} {hi}"
        return "finite"

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is in the range, else ``must be in 1..100, got 0``."""
        bounds = self.describe()
        if not _is_number(value, self.kind):
            number = "an integer" if self.kind is int else "a finite number"
            return f"must be {number}{'' if bounds == 'finite' else ' ' + bounds}, got {value!r}"
        if not self.contains(value):
            return f"must be {bounds}, got {_number(value)}"
        return None

    def contains(self, value: int | float) -> bool:
        """Whether a number (already of the right kind) is inside the bounds."""
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def check(self, flag: str, value: Any) -> None:
        """Raise :class:`ConfigError` ``<flag> must be in 1..100, got 0`` unless in range."""
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(f"{flag} {problem}")


def _is_number(value: Any, kind: type) -> bool:
    """An integer (``kind`` int; numpy's too, not bool) or a finite real (``kind`` float)."""
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real) and math.isfinite(value)


def _number(value: int | float) -> str:
    """A bound or value as written: ints as they are, floats without a trailing ``.0``."""
    return str(value) if isinstance(value, numbers.Integral) else f"{value:g}"


# Tokens in one chunk or one forward-pass window: above any model's context (Steerling
# 8B: 4096), so the model's own limit decides, yet small enough that no size product
# overflows.
MAX_TOKENS = 2**20
# FAISS clamps nprobe to the index's list count; 2**20 lists is beyond the largest IVF
# index a 1.35T-token corpus needs (~2**35 chunks at 64 tokens, ~2**17.5 per list).
MAX_NPROBE = 2**20
MAX_SEED = 2**63 - 1  # the largest seed (a signed 64-bit integer; torch takes [0, 2**64))

# Every stage option's range, by flag (see Range). Why each upper bound: sizes of one
# worker's memory or of FAISS / Arrow types, never a product decision.
STAGE_RANGES: dict[str, Range] = {
    # tda chunk / tda build
    "--chunk-size": Range(1, MAX_TOKENS),
    "--stride": Range(1, MAX_TOKENS),  # and at most --chunk-size (ChunkingPolicy)
    "--dataset-id": Range(0, DEFAULT_CODEC.max_dataset),
    # an Arrow string holds at most 2 GiB, and a record takes a few times its size
    "--max-doc-bytes": Range(1, 2**30),
    # tda embed / tda build
    "--window": Range(1, MAX_TOKENS),
    "--context": Range(0, MAX_TOKENS - 1),  # and below --window (ContextPolicy)
    "--batch-tokens": Range(1, 2**24),
    "--top-k-concepts": Range(1, 1024),
    # tda index build / tda build
    "--shards": Range(1, 2**20),
    "--shard-size": Range(1, 2**40),
    "--memory-budget": Range(1, 2**50),  # 1 PiB
    "--train-sample": Range(1, 2**32),
    "--nprobe": Range(1, MAX_NPROBE),
    "--threads": Range(1, 4096),
    "--reduce": Range(1, 65536),  # and below the embedding dimension (the index plan)
    # tda model train / tda tokenizer train
    "--steps": Range(1, 10**7),
    "--d-model": Range(1, 65536),
    "--layers": Range(1, 1024),
    "--heads": Range(1, 1024),
    "--vocab-size": Range(260, 2**20),  # 256 bytes + the tokenizer's 4 special tokens
    "--max-seq": Range(8, MAX_TOKENS),
    "--batch-size": Range(1, 65536),
    "--lr": Range(0.0, 10.0, float, lo_open=True),
    "--holdout": Range(0.0, 0.5, float, hi_open=True),
    "--max-train-tokens": Range(1, 2**40),
    "--known-only": Range(0.0, 1.0, float),
    "--bottleneck": Range(0.0, 1.0, float),
    "--residual-weight": Range(0.0, 100.0, float),
    "--label-spread": Range(0, 1024),
    "--known-topk": Range(1, 4096),
    "--known-hidden": Range(0, 65536),  # 0: the linear known head
    "--head-epochs": Range(0, 1000),  # 0: no concept phase
    "--head-batches": Range(1, 100_000),
    "--vector-epochs": Range(1, 1000),
    "--seed": Range(0, MAX_SEED),
    "--max-docs": Range(1, None),
    # tda scan / tda prune list
    "--min-weight": Range(0.0, 1.0, float),
    "--top": Range(1, 100_000),  # hits kept per exemplar, all held in memory
    "--min-score": Range(None, None, float),
    "--min-share": Range(0.0, 1.0, float),
    # tda search: a chunk id is a non-negative int64
    "--chunk-id": Range(0, 2**63 - 1),
    # tda serve (port 0: any free port); below 1 KiB no request body fits, above 1 GiB
    # one buffered body alone could exhaust a small server
    "--port": Range(0, 65535),
    "--max-request-bytes": Range(2**10, 2**30),
}


def _check_ranges(values: dict[str, Any]) -> None:
    """Each ``{flag: value}`` (None skipped) against :data:`STAGE_RANGES`."""
    for flag, value in values.items():
        if value is not None:
            STAGE_RANGES[flag].check(flag, value)


@dataclass(frozen=True)
class ReadOptions:
    """How records are read out of corpus files and turned into documents."""

    format: str = "auto"  # auto: by extension (after stripping .gz/.zst/...)
    text_field: str = "text"  # JSONL key / Parquet column; dotted paths reach nested fields
    id_field: str = "id"  # missing -> "<file name>#<record index>"
    source: str | None = None  # one source name for every file
    source_field: str | None = None  # per-record source; absent -> dead letter
    text_unit: str = "file"  # plain text: one document per file, or per line
    # 16 MiB: above the longest books and Wikipedia pages; bounds the memory one record takes.
    max_doc_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.text_unit not in TEXT_UNITS:
            raise ConfigError(
                f"--text-unit must be one of {', '.join(TEXT_UNITS)}, got {self.text_unit!r}"
            )
        for name in ("text_field", "id_field"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} must not be empty")
        if self.source is not None and self.source_field is not None:
            raise ConfigError("give --source or --source-field, not both")
        if self.source is not None and not self.source.strip():
            raise ConfigError("--source must not be empty")
        if self.source_field is not None and not self.source_field:
            raise ConfigError("--source-field must not be empty")
        if self.max_doc_bytes < 1:
            raise ConfigError(f"--max-doc-bytes must be positive, got {self.max_doc_bytes}")
        _check_ranges({"--max-doc-bytes": self.max_doc_bytes})


@dataclass(frozen=True)
class ChunkingPolicy:
    """Token windows cut from each document (never across documents).

    Chunks start at token 0, stride, 2*stride, ... until one reaches the document's end;
    the last one keeps its true length. ``stride == chunk_size`` (the default) tiles the
    document; a smaller stride overlaps; a larger one would silently skip tokens and is
    refused.
    """

    # 64: Steerling attends bidirectionally inside 64-token blocks, so chunks align to them.
    chunk_size: int = 64
    stride: int | None = None  # None: equal to chunk_size
    store_text: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"--chunk-size must be at least 1, got {self.chunk_size}")
        if self.stride is not None and not 1 <= self.stride <= self.chunk_size:
            raise ConfigError(
                f"--stride must be between 1 and --chunk-size ({self.chunk_size}), "
                f"got {self.stride}; a larger stride would drop tokens"
            )
        _check_ranges({"--chunk-size": self.chunk_size})

    @property
    def step(self) -> int:
        return self.chunk_size if self.stride is None else self.stride


@dataclass(frozen=True)
class ChunkConfig:
    """Everything ``tda chunk`` needs; validated on construction."""

    inputs: tuple[str, ...]
    out: str  # build root; the stage writes out/chunks and out/deadletter
    tokenizer: str  # tokenizer SPEC (see attribution.tokenizer.load_tokenizer)
    read: ReadOptions = field(default_factory=ReadOptions)
    chunking: ChunkingPolicy = field(default_factory=ChunkingPolicy)
    dataset_id: int = 0
    codec: ChunkIdCodec = DEFAULT_CODEC
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one INPUT path, URL or glob")
        if not self.out:
            raise ConfigError("--out ROOT is required")
        if not self.tokenizer:
            raise ConfigError("--tokenizer SPEC is required")
        if not 0 <= self.dataset_id <= self.codec.max_dataset:
            raise ConfigError(
                f"--dataset-id must be in 0..{self.codec.max_dataset}, got {self.dataset_id}"
            )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")

    def settings(self) -> dict[str, Any]:
        """The settings that decide the output (for the run record and resume checks)."""
        return {
            "read": asdict(self.read),
            "chunking": asdict(self.chunking),
            "dataset_id": self.dataset_id,
            "id_codec": self.codec.to_dict(),
        }


POOL_METHODS = ("mean", "max", "last", "weights")
POOL_FEATURES = ("concepts", "known", "hidden")
CONCEPT_REDUCERS = ("max", "mean")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Pooling:
    """How one chunk's per-token concept activations become what the index stores.

    Dense vector (L2-normalised), by ``method``:

    * ``mean`` / ``max`` / ``last``: mean, element-wise max, or the last token of the
      chunk's per-token ``features`` (D = the model's hidden size), where ``features`` is
      ``concepts`` (known + unknown concept features: the concept bottleneck's output
      without the residual), ``known`` (known-concept features only) or ``hidden`` (the
      final hidden state = concepts + residual; standardised first by the model's own
      pooling statistics when it has them, as builtin models of format 2 do);
    * ``weights``: the known-concept weight vector itself, mean over the chunk's tokens
      (D = number of known concepts).

    Sparse side: the ``top_k`` known concepts by their weight over the chunk's tokens,
    reduced by ``concept_reducer`` (``max``: the strongest firing anywhere in the chunk, so a
    concept that fires on a few tokens is not diluted; ``mean``).
    """

    method: str = "mean"
    # hidden: docs/quality.md (planted facts): mean-pooled final hidden states find the
    # source with MRR 0.253 / 0.237 (verbatim / long prompt) against 0.184 / 0.109 for
    # mean:concepts, whose vectors a few common directions dominate on a small model.
    features: str = "hidden"
    concept_reducer: str = "max"
    # 32: Steerling's known head uses its top-32 concepts per token (topk_features).
    top_k: int = 32

    def __post_init__(self) -> None:
        if self.method not in POOL_METHODS:
            raise ConfigError(
                f"--pooling must be one of {', '.join(POOL_METHODS)} (optionally METHOD:FEATURES), "
                f"got {self.method!r}"
            )
        if self.features not in POOL_FEATURES:
            raise ConfigError(
                f"pooling features must be one of {', '.join(POOL_FEATURES)}, got {self.features!r}"
            )
        if self.concept_reducer not in CONCEPT_REDUCERS:
            raise ConfigError(
                f"--concept-pooling must be one of {', '.join(CONCEPT_REDUCERS)}, "
                f"got {self.concept_reducer!r}"
            )
        _check_ranges({"--top-k-concepts": self.top_k})

    @property
    def name(self) -> str:
        """``mean:concepts``, ``max:hidden``, ... or ``weights``."""
        return "weights" if self.method == "weights" else f"{self.method}:{self.features}"

    @classmethod
    def parse(cls, name: str, **kwargs: Any) -> Pooling:
        """``"mean"``, ``"max:known"``, ``"weights"`` -> Pooling (features default: the
        field's, ``hidden``)."""
        method, _, features = name.partition(":")
        return cls(method=method, features=features or cls.features, **kwargs)


@dataclass(frozen=True)
class ContextPolicy:
    """How documents are cut into forward-pass windows (resolved against the model).

    A window holds up to ``window`` tokens of one document and is encoded in ONE forward
    pass; each chunk is pooled from the first window that holds it whole. A window after
    the first starts ``context`` tokens before its first chunk (rounded down to a multiple
    of ``align``), so chunks near a window start still see left context. ``align`` is the
    model's attention block (64 for Steerling: blocks are counted from position 0, so a
    window must start on a block boundary for chunks to stay block-aligned), 1 otherwise.
    """

    window: int
    context: int
    align: int = 1

    def __post_init__(self) -> None:
        if self.align < 1:
            raise ConfigError(f"window alignment must be positive, got {self.align}")
        if self.window < 1 or self.window % self.align:
            raise ConfigError(
                f"--window must be a positive multiple of {self.align}, got {self.window}"
            )
        if self.context < 0 or self.context % self.align or self.context >= self.window:
            raise ConfigError(
                f"--context must be a multiple of {self.align} in 0..{self.window - 1}, "
                f"got {self.context}"
            )


@dataclass(frozen=True)
class EmbedConfig:
    """Everything ``tda embed`` needs; validated on construction."""

    root: str  # build root holding chunks/; the stage writes root/embeddings
    model: str  # model SPEC: builtin:DIR, DIR, steerling:ID_OR_PATH
    # Both None: each chunk encoded alone (window = chunk size, context 0), measured best in
    # docs/quality.md. Window None, context given: the model's limit capped at 1024.
    window: int | None = None
    context: int | None = None  # None: 0 without a window, else a quarter of the window
    # 16384 tokens per forward pass (padding included): ~16 MB of activations per layer
    # for a 256-wide model on CPU; GPU workers raise it.
    batch_tokens: int = 16384
    device: str = "auto"
    pooling: Pooling = field(default_factory=Pooling)
    trust_remote_code: bool = False
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("ROOT is required")
        if not self.model:
            raise ConfigError("--model SPEC is required")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"--window must be positive, got {self.window}")
        if self.context is not None and self.context < 0:
            raise ConfigError(f"--context must not be negative, got {self.context}")
        if self.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens must be positive, got {self.batch_tokens}")
        _check_ranges(
            {
                "--window": self.window,
                "--context": self.context,
                "--batch-tokens": self.batch_tokens,
            }
        )
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")


METRICS = ("ip", "l2")
# Retrieval channels: the concept-space vectors (FAISS, always built), exact spans over
# token ids (a suffix table per shard) and BM25 over words (term postings per shard).
CHANNELS = ("dense", "span", "lexical")
INDEX_CHANNELS = ("span", "lexical")  # built beside the dense shards unless left out
# How the dense channel re-ranks its compressed candidates exactly (``--refine``): by
# stored codes of the (transformed) vectors in float16 or 8 bits per dimension, memory-
# mapped beside each shard, or by the embeddings table's float16 vectors (no extra file).
REFINES = ("none", "fp16", "sq8", "embeddings")


@dataclass(frozen=True)
class IndexConfig:
    """Everything ``tda index build`` needs; validated on construction."""

    root: str  # build root holding embeddings/; the stage writes root/index
    factory: str | None = None  # None: chosen from vector count, dimension, memory budget
    shards: int | None = None  # number of shards (files are grouped to balance them)
    shard_size: int | None = None  # or: vectors per shard
    # 4 GB: what one worker may hold for a shard being filled (autofaiss's default style).
    memory_budget: int = 4 * 1000**3
    train_sample: int | None = None  # None: enough for the factory (see choose_factory)
    nprobe: int | None = None  # default nprobe recorded for searches (None: chosen)
    metric: str = "ip"  # inner product: vectors are unit length, so cosine
    # PCA whitening (FAISS PCAW{D},L2norm) in front of the factory: rotates onto the
    # principal axes and scales each to unit variance, so the few directions every vector
    # shares (anisotropy) stop dominating the similarity. Trained with the index.
    whiten: bool = False
    # Shards one worker fills at once, each FAISS add single-threaded (None: the worker's
    # cores, as many as the memory budget holds). Does not change any output byte.
    threads: int | None = None
    # the channels built beside the dense shards (``--channels``); "dense" is implied
    channels: tuple[str, ...] = INDEX_CHANNELS
    # Exact re-ranking of the IVF candidates (one of REFINES; None: what choose_factory
    # measured the factory to need: PQ codes alone reach recall@10 0.54, docs/scale.md).
    refine: str | None = None
    # Stored dimension: an uncentred PCA to this many dimensions, fitted once on the
    # training sample, applied to every vector and query (None: the embeddings' D).
    reduce: int | None = None
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("ROOT is required")
        if self.refine is not None and self.refine not in REFINES:
            raise ConfigError(f"--refine takes {', '.join(REFINES)}, got {self.refine!r}")
        wanted = tuple(c for c in self.channels if c != "dense")
        for channel in wanted:
            if channel not in INDEX_CHANNELS:
                raise ConfigError(f"--channels takes {', '.join(CHANNELS)}, got {channel!r}")
        # one canonical order, so that the run record (and so --resume) ignores the order
        object.__setattr__(self, "channels", tuple(c for c in INDEX_CHANNELS if c in wanted))
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be positive, got {self.threads}")
        if self.shards is not None and self.shard_size is not None:
            raise ConfigError("give --shards or --shard-size, not both")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"--shards must be positive, got {self.shards}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ConfigError(f"--shard-size must be positive, got {self.shard_size}")
        if self.memory_budget < 1:
            raise ConfigError(f"--memory-budget must be positive, got {self.memory_budget}")
        if self.train_sample is not None and self.train_sample < 1:
            raise ConfigError(f"--train-sample must be positive, got {self.train_sample}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ConfigError(f"--nprobe must be positive, got {self.nprobe}")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.factory is not None and not self.factory.strip():
            raise ConfigError("--factory must not be empty")
        _check_ranges(
            {
                "--shards": self.shards,
                "--shard-size": self.shard_size,
                "--memory-budget": self.memory_budget,
                "--train-sample": self.train_sample,
                "--nprobe": self.nprobe,
                "--threads": self.threads,
                "--reduce": self.reduce,
            }
        )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")


# The builtin model's own concept set (``tda model train --concepts``; a YAML path otherwise).
DEFAULT_CONCEPTS = "default"


@dataclass(frozen=True)
class TrainConfig:
    """``tda model train`` settings (validated here and by the model's own config)."""

    inputs: tuple[str, ...]
    out: str
    concepts: str = DEFAULT_CONCEPTS
    read: ReadOptions = field(default_factory=ReadOptions)
    # Sized to train in minutes on 2 CPU cores (~0.6 s a step at these defaults): the
    # tied LM head (vocab x d_model) is as costly as the four transformer layers.
    # The BPE vocabulary learned on the inputs; with ``tokenizer`` (a tokenizer.json or a
    # directory holding one, e.g. another builtin model's) that tokenizer is used as it
    # is, and its own vocabulary size replaces this one.
    vocab_size: int = 4096
    tokenizer: str | None = None
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_seq: int = 256
    n_unknown: int = 512
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    concept_weight: float = 1.0
    # Training paths (docs/model.md): the share of sequences whose LM loss reads the known
    # concepts alone, and the known + unknown concepts alone (the rest read h), and the
    # weight of the residual's norm penalty, so the named concepts carry the prediction.
    # Off by default (the wave-1 recipe). `make demo` trains with --known-only 0.35
    # --known-topk 16 (docs/model.md): the known concepts then carry 35% of the logit at
    # +4.4% held-out LM loss on the demo corpus, but on small models the price is higher
    # (2 layers x 64 dims, 300 steps: +15% LM loss, concept AUROC 0.78 -> 0.64).
    known_only: float = 0.0
    bottleneck: float = 0.0
    residual_weight: float = 0.0
    # known concepts a token's features use (top-k of the head's weights); with
    # --known-only, 16 carry more of the logit than 8 at the same LM loss
    known_topk: int = 8
    # Tagger labels spread to this many tokens either side of a match: a concept is about
    # a passage, not only the word that names it.
    label_spread: int = 0
    # Causal labels: the known head is trained to fire where a tagger's match ends (the
    # token holding its last character), and a match's earlier tokens are left out of its
    # loss, since a causal model cannot know there that the match will complete (e.g.
    # "Zero" of "ZeroDivisionError"). Off: every token overlapping a match is a positive.
    # The held-out AUROC target is measured on causal labels either way (docs/model.md).
    causal_labels: bool = False
    # the known head also reads the input token's embedding (BuiltinConfig.token_head)
    token_head: bool = False
    # Width of an MLP in the known head over [h, input token embedding]
    # (BuiltinConfig.known_hidden; 0: the linear head alone). Opt-in: on the demo corpus
    # with the demo's recipe, 256 raised the held-out concept AUROC from mean 0.845 to
    # 0.893 and the LM loss fell (5.926 -> 5.815), but the known share of the logit fell
    # from 34.9% to 27.0%, under its 30% target (docs/model.md).
    known_hidden: int = 0
    # The concept phase after the LM phase (attribution/encoders/builtin/refit.py): the
    # concept heads refitted on the frozen model's features of head_batches training
    # batches, the known head for head_epochs passes (0: no phase), the concept vectors and
    # the unknown head for vector_epochs. Opt-in; `make demo` runs it (docs/model.md: on
    # the demo corpus, held-out AUROC mean 0.85 -> 0.96 with the LM loss unchanged).
    head_epochs: int = 0
    head_batches: int = 128
    vector_epochs: int = 4
    holdout: float = 0.05
    # Enough text for minutes of CPU training; bounds memory for the token labels.
    max_train_tokens: int = 8_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one INPUT path, URL or glob")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("--steps and --batch-size must be positive")
        if not 0 <= self.holdout < 0.5:
            raise ConfigError(f"--holdout must be in [0, 0.5), got {self.holdout}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.max_seq < 8:
            raise ConfigError(f"--max-seq must be at least 8, got {self.max_seq}")
        _check_ranges(
            {
                "--steps": self.steps,
                "--batch-size": self.batch_size,
                "--lr": self.lr,
                "--holdout": self.holdout,
                "--max-seq": self.max_seq,
                "--vocab-size": self.vocab_size,
                "--d-model": self.d_model,
                "--layers": self.n_layers,
                "--heads": self.n_heads,
                "--max-train-tokens": self.max_train_tokens,
                "--seed": self.seed,
                "--known-only": self.known_only,
                "--bottleneck": self.bottleneck,
                "--residual-weight": self.residual_weight,
                "--label-spread": self.label_spread,
                "--known-topk": self.known_topk,
                "--known-hidden": self.known_hidden,
                "--head-epochs": self.head_epochs,
                "--head-batches": self.head_batches,
                "--vector-epochs": self.vector_epochs,
            }
        )
        if self.known_only + self.bottleneck > 1:
            raise ConfigError(
                f"--known-only plus --bottleneck must be at most 1, got "
                f"{self.known_only} + {self.bottleneck}"
            )
