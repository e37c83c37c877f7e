"""What one attribution asks for: :class:`AttributionRequest`, frozen and self-validating,
with every default in one place. ``Attributor.attribute`` takes it (or builds it from
keyword arguments), and ``tda serve`` derives its request body from it.

Each field's metadata holds ``doc`` (one line describing it), ``flag`` (the option that
sets it on the command line, as errors name it) and, where the request checks them,
``choices``, ``min`` or ``max``.

:data:`REQUEST_RANGES` is the one table of what an attribution through a front end may
ask for: ``tda attribute`` / ``tda search`` build their option types from it and ``tda
serve``'s request body carries the same bounds (tests/jobs/test_cli_arguments.py holds
them equal). The request itself (any caller, the library too) refuses what cannot work:
values below those ranges, a non-finite temperature, more than MAX_OUTPUT_TOKENS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .config import CHANNELS, MAX_NPROBE, MAX_SEED, ConfigError, Range

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_QUERY_SPAN",
    "DEFAULT_RERANK",
    "IG_BASELINES",
    "INPUT_ATTRIBUTIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_OUTPUT_TOKENS",
    "MAX_SEED",
    "QUERY_SPANS",
    "REQUEST_RANGES",
    "RERANKS",
    "AttributionRequest",
    "parse_channels",
]

# Prompt-token scores: gradient x input, integrated gradients, or none.
INPUT_ATTRIBUTIONS = ("grad", "ig", "none")
# Integrated gradients' baseline prompt: the mask token's embedding, or zeros.
IG_BASELINES = ("mask", "zero")
# What each output chunk's search vector pools: "chunk" = the index's chunk size in tokens
# ending at the chunk's end (a short chunk borrows the tokens before it, prompt included,
# so query and training vectors pool as many tokens); "output" = the chunk's own tokens.
QUERY_SPANS = ("chunk", "output")
# Re-rank of the fused candidates: none, sparse concept overlap, longest shared word run,
# the model's own evidence (late interaction of the predicting hidden states).
RERANKS = ("none", "concepts", "span", "evidence")
# The defaults: with the default index, the best query span and re-rank measured in
# docs/quality.md (``make eval``).
DEFAULT_QUERY_SPAN = "output"
DEFAULT_RERANK = "none"
DEFAULT_CANDIDATES = 100  # ANN candidates per output chunk that a re-rank orders
# Refuse outputs longer than this before tokenizing huge strings (the window refuses the rest).
MAX_OUTPUT_CHARS = 200_000
MAX_OUTPUT_TOKENS = 8192

# What one attribution or search through a front end (the CLI, tda serve) may ask for, by
# request field. The upper bounds keep one request's time and output bounded (k rows per
# output chunk are printed or sent); they are tda serve's default limits.
REQUEST_RANGES: dict[str, Range] = {
    # generated tokens; the model's context also bounds them (checked before generating)
    "generate": Range(1, 256),
    "temperature": Range(0.0, 10.0, float),  # softmax(logits / t): 0 is greedy
    "top_p": Range(0.01, 1.0, float),  # nucleus: sample from the smallest set with this mass
    # logits of tokens already in the sequence are divided (positive) or multiplied
    # (negative) by this, as CTRL / Hugging Face do; 1 is off
    "repetition_penalty": Range(1.0, 10.0, float),
    "seed": Range(0, MAX_SEED),  # torch's generators take [0, 2**64)
    "k": Range(1, 100),
    "nprobe": Range(1, MAX_NPROBE),
    "ig_steps": Range(1, 128),
    "top_concepts": Range(1, 1000),
    "chunk_size": Range(1, 4096),  # output chunk tokens: Steerling's whole context
    "candidates": Range(1, 1000),
}


def _setting(default: Any, doc: str, flag: str | None = None, **checks: Any) -> Any:
    """A request field: its default, and metadata ``doc``, ``flag`` and its checks."""
    return field(default=default, metadata={"doc": doc, "flag": flag, **checks})


@dataclass(frozen=True)
class AttributionRequest:
    """One attribution: ``output`` (text or token ids) given ``prompt``, or the
    ``generate`` tokens the model writes after it, and how to attribute it. Validated on
    construction: a bad value raises :class:`ConfigError` with one line naming the
    option. Token-id sequences are kept as tuples of ints; ``chunk_size`` 0 means the
    index's, as None does."""

    prompt: str | tuple[int, ...] = field(
        metadata={"doc": "The prompt (may be empty).", "flag": "--prompt"}
    )
    output: str | tuple[int, ...] | None = _setting(None, "The output to attribute.", "--output")
    generate: int | None = _setting(
        None,
        "Instead of output: tokens for the model to write after the prompt.",
        min=REQUEST_RANGES["generate"].lo,
    )
    temperature: float = _setting(
        0.0,
        "For generate: 0 is greedy, above 0 samples.",
        min=REQUEST_RANGES["temperature"].lo,
    )
    top_p: float | None = _setting(
        None,
        "For sampled generate: nucleus sampling mass (default: the model's, 0.9 for builtin).",
        min=REQUEST_RANGES["top_p"].lo,
        max=REQUEST_RANGES["top_p"].hi,
    )
    repetition_penalty: float | None = _setting(
        None,
        "For generate: divide the logits of tokens already in the sequence by this "
        "(default: the model's, 1.3 for builtin; 1 is off).",
        min=REQUEST_RANGES["repetition_penalty"].lo,
        max=REQUEST_RANGES["repetition_penalty"].hi,
    )
    # torch's generators take a seed in [0, 2**64); a larger one used to fail deep inside
    # generation (HTTP 500 from tda serve)
    seed: int = _setting(
        0, "For sampled generate.", min=REQUEST_RANGES["seed"].lo, max=REQUEST_RANGES["seed"].hi
    )
    k: int = _setting(10, "Training chunks per output chunk.", "-k", min=REQUEST_RANGES["k"].lo)
    # FAISS takes nprobe as size_t: 0 failed inside the search and -1 overflowed. The lower
    # bound is checked in __post_init__ (tda serve states it on its own).
    nprobe: int | None = _setting(
        None, "Override the index's default nprobe.", max=REQUEST_RANGES["nprobe"].hi
    )
    input_attribution: str = _setting(
        "grad",
        "Prompt-token scores: gradient x input, integrated gradients, or none.",
        choices=INPUT_ATTRIBUTIONS,
    )
    ig_steps: int = _setting(
        32,
        "Integrated gradients: points between the baseline and the prompt.",
        min=REQUEST_RANGES["ig_steps"].lo,
    )
    ig_baseline: str = _setting(
        "mask",
        "Integrated gradients: the baseline prompt, the mask token's embedding or zeros.",
        choices=IG_BASELINES,
    )
    top_concepts: int = _setting(
        10, "Concepts listed per output chunk.", min=REQUEST_RANGES["top_concepts"].lo
    )
    chunk_size: int | None = _setting(
        None, "Output chunk tokens (default: the index's).", min=REQUEST_RANGES["chunk_size"].lo
    )
    query_span: str = _setting(
        DEFAULT_QUERY_SPAN,
        "What each output chunk's search vector pools: 'chunk' = the index's chunk size in "
        "tokens ending at the chunk's end, 'output' = the chunk's own tokens.",
        choices=QUERY_SPANS,
    )
    rerank: str = _setting(
        DEFAULT_RERANK,
        "Order the candidates nearest chunks by shared concepts or by the longest word run "
        "shared with the query text ('span') before keeping k.",
        choices=RERANKS,
    )
    candidates: int = _setting(
        DEFAULT_CANDIDATES, "Candidates per retrieval channel that fusion and a rerank order."
    )
    channels: tuple[str, ...] | None = _setting(
        None,
        "Retrieval channels searched and fused: dense (concept space), span (exact token "
        "spans), lexical (BM25). Default: every channel the index has.",
        "--channels",
    )

    def __post_init__(self) -> None:
        for name in ("prompt", "output"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, _token_ids(value))
        if self.chunk_size == 0:
            object.__setattr__(self, "chunk_size", None)
        object.__setattr__(self, "channels", parse_channels(self.channels))
        # One line for the first problem, in the order the options are documented.
        if (self.output is None) == (self.generate is None):
            raise ConfigError("give an output (--output) or --generate N, not both or neither")
        for name in ("k", "input_attribution", "ig_steps", "ig_baseline", "top_concepts", "seed"):
            self._check(name)
        if isinstance(self.output, str) and len(self.output) > MAX_OUTPUT_CHARS:
            raise ConfigError(
                f"the output is {len(self.output)} characters; the limit is {MAX_OUTPUT_CHARS}"
            )
        for name in ("query_span", "rerank"):
            self._check(name)
        if self.candidates < REQUEST_RANGES["candidates"].lo:
            raise ConfigError(f"--candidates must be at least 1, got {self.candidates}")
        if self.rerank != "none" and self.candidates < self.k:
            raise ConfigError(
                f"--candidates ({self.candidates}) must be at least -k ({self.k}) to re-rank"
            )
        self._check("chunk_size")
        self._check("nprobe")
        if self.nprobe is not None and self.nprobe < REQUEST_RANGES["nprobe"].lo:
            raise ConfigError(f"--nprobe must be at least 1, got {self.nprobe}")
        if self.generate is not None:
            self._check("generate")
            if self.generate > MAX_OUTPUT_TOKENS:
                raise ConfigError(
                    f"--generate is limited to {MAX_OUTPUT_TOKENS} tokens, got {self.generate}"
                )
            # NaN passes every comparison and reached torch.multinomial
            if not math.isfinite(self.temperature) or self.temperature < 0:
                raise ConfigError(
                    f"--temperature must be a finite number >= 0, got {self.temperature}"
                )
        for name in ("top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a finite number, got {value}"
                )
            self._check(name)

    def _check(self, name: str) -> None:
        """The field's ``choices`` or ``min`` (from its metadata), as one-line errors."""
        meta = _FIELDS[name].metadata
        value = getattr(self, name)
        flag = meta["flag"] or "--" + name.replace("_", "-")
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])}, got {value!r}")
        if "min" in meta and value is not None and value < meta["min"]:
            raise ConfigError(f"{flag} must be at least {meta['min']}, got {value}")
        if "max" in meta and value is not None and value > meta["max"]:
            raise ConfigError(f"{flag} must be at most {meta['max']}, got {value}")

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field with a default -> that default (``prompt`` has none)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def parse_channels(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--channels``: "span,lexical" or a sequence of names -> the names once each, in
    the order given; None stays None (every channel the index has). Unknown or no names
    raise :class:`ConfigError` with one line."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    names = tuple(dict.fromkeys(str(c).strip() for c in items if str(c).strip()))
    if not names:
        raise ConfigError(f"--channels needs at least one of {', '.join(CHANNELS)}")
    for name in names:
        if name not in CHANNELS:
            raise ConfigError(f"--channels takes {', '.join(CHANNELS)}, got {name!r}")
    return names


def _token_ids(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in values)


_FIELDS = {f.name: f for f in fields(AttributionRequest)}
