"""The attribution report: what ``tda attribute`` and ``Attributor.attribute`` return.

One report per (prompt, output). It names the exact index (the sha256 of its
``manifest.json``) and the encoder fingerprint, so an auditor can reproduce it, records
every setting used, and carries per output chunk:

* ``hits``: the top-k training chunks (score, provenance, text) with the known concepts
  each shares with the output chunk, the retrieval channels that found each (dense concept
  space, exact span, lexical) with each channel's rank and score, their fused score, and
  the matching span's character offsets on both sides;
* ``confidence``: how clearly the first hit stands out (:class:`Confidence`);
* ``concepts``: the concepts with the largest contributions to the chunk's token logits.
  For a concept-bottleneck model the split is exact: per token, the target logit is
  ``sum_i sigmoid(l_i) * (v_i . W_y)`` over its top-k known and unknown concepts plus the
  residual's ``r . W_y``; summed over the chunk's tokens,
  ``known_total + unknown_total + residual == logit`` (see :class:`LogitTotals`);
* ``prompt_tokens``: an attribution score per prompt token (gradient x input or
  integrated gradients of the chunk's log-probability), or none;
* ``sources``: the hits' scores summed per source and normalised to 1;
* ``check`` (``tda attribute --check`` / ``tda check``, else absent): the counterfactual
  check of the hits (:class:`ChunkCheck`), with its settings in the report's ``check``
  (:class:`CheckSettings`).

The report also records ``output_token_ids``, the output's tokens as attributed: a
generated output's text need not tokenize back to the tokens the model wrote, and the
check (:mod:`tda.attribution.check`) reruns the model on the very tokens attributed.

Serialised with :meth:`AttributionReport.to_json`; :meth:`AttributionReport.from_json`
reads it back (schema version checked).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .config import MAX_SEED, ConfigError, Range
from .errors import UserError
from .records import ChunkRecord
from .request import (  # the request's choices, also importable from here as before
    DEFAULT_CANDIDATES,
    DEFAULT_QUERY_SPAN,
    DEFAULT_RERANK,
    QUERY_SPANS,
    RERANKS,
)
from .wire import JsonRecord, inline, omitted_if_none, record_from_dict

__all__ = [
    "CHECK_METHODS",
    "CHECK_RANGES",
    "CHECK_SCOPES",
    "DEFAULT_CANDIDATES",
    "DEFAULT_QUERY_SPAN",
    "DEFAULT_RERANK",
    "QUERY_SPANS",
    "REPORT_SCHEMA_VERSION",
    "RERANKS",
    "AttributionReport",
    "AttributionSettings",
    "ChannelScore",
    "CheckSettings",
    "ChunkCheck",
    "ConceptContribution",
    "Confidence",
    "LogitTotals",
    "MatchSpan",
    "OutputChunk",
    "ReportError",
    "SharedConcept",
    "Timings",
    "TokenScore",
    "TrainingHit",
]

# 2: query_span / rerank / candidates settings, per-hit rerank_score, per-chunk
# query_token_start (version 1 reports read with their defaults).
# 3: retrieval channels and fusion: per-hit channels / fused_score / match, per-chunk
# confidence, settings channels / fusion (older reports read with their defaults).
# 4: the counterfactual check (issue 24): per-chunk ``check``, the report's ``check``
# settings (both absent from an unchecked report) and ``output_token_ids``, the tokens the
# check reruns (added within 4, unreleased: a 4 report without them reads them empty, and
# the check falls back to tokenizing its text; older versions read without all three).
REPORT_SCHEMA_VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)


class ReportError(UserError):
    """A report file that cannot be read (wrong kind or version, missing fields)."""


@dataclass(frozen=True)
class SharedConcept:
    """A known concept in both the output chunk's and the training chunk's top-k."""

    concept_id: int
    name: str
    output_weight: float  # pooled weight in the output chunk, [0, 1]
    training_weight: float  # pooled weight in the training chunk, [0, 1]


@dataclass(frozen=True)
class ChannelScore:
    """What one retrieval channel said of a hit: its rank in that channel's own list of
    candidates (1 = best) and that channel's score (dense: inner product of unit vectors;
    span: tokens of the longest exact span the chunk shares with the query, plus a rarity
    term below 1; lexical: BM25 over words)."""

    rank: int
    score: float


@dataclass(frozen=True)
class MatchSpan:
    """The longest run of words the output chunk shares with the training chunk, as the
    viewer and the terminal highlight it: ``[output_start, output_end)`` in the output
    chunk's text, ``[chunk_start, chunk_end)`` in the training chunk's text (character
    offsets), ``words`` in the run. ``tokens`` is the exact-span channel's match inside the
    chunk in tokens (None when that channel did not find the chunk). Words are compared
    lower-cased without punctuation, so a near-verbatim copy (a hyphen for a dash) still
    shows its whole run."""

    output_start: int
    output_end: int
    chunk_start: int
    chunk_end: int
    words: int
    tokens: int | None = None


@dataclass(frozen=True)
class Confidence:
    """How clearly an output chunk's first hit stands out, and why.

    ``level``: ``verbatim`` (the first hit shares an exact span of at least half the
    chunk's tokens, or 32, with it), ``lexical`` (exact spans or BM25 single it out, but
    shorter), ``weak`` (only the dense channel, with a first score above the rest of its
    candidates), ``none`` (nothing stands out: the top scores are near-ties, so the hits
    are neighbours, not sources). ``score`` in [0, 1] is the measure behind the level;
    ``reason`` says it in one line."""

    level: str  # "verbatim" | "lexical" | "weak" | "none"
    score: float
    reason: str


class _FromChunk:
    """A read-only attribute of a hit that is its chunk record's field of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, hit: Any, owner: type | None = None) -> Any:
        return self if hit is None else getattr(hit.chunk, self.name)


@dataclass(frozen=True)
class TrainingHit(JsonRecord):
    """A training chunk found for an output chunk: its rank and score, the chunk record
    (provenance and text) and the known concepts both share. Its JSON is one flat
    object, the chunk record's keys beside rank and score (the report's layout)."""

    rank: int  # 1 = best
    score: float  # similarity of the chunk vectors (inner product of unit vectors)
    chunk: ChunkRecord = field(metadata=inline())
    shared_concepts: tuple[SharedConcept, ...] = ()
    # the re-rank's signal (concept overlap, or shared word-run length); None without one
    rerank_score: float | None = None
    # channel name -> its rank and score, for every channel that found this chunk
    channels: dict[str, ChannelScore] = field(default_factory=dict)
    fused_score: float | None = None  # weighted reciprocal-rank fusion (None: dense only)
    match: MatchSpan | None = None  # the matching words on both sides (None: no shared run)

    # the chunk record's fields, read through the hit: hit.doc_id is hit.chunk.doc_id
    chunk_id = _FromChunk()
    source = _FromChunk()
    doc_id = _FromChunk()
    record_index = _FromChunk()
    chunk_index = _FromChunk()
    char_start = _FromChunk()
    char_end = _FromChunk()
    url = _FromChunk()
    text = _FromChunk()


@dataclass(frozen=True)
class ConceptContribution:
    kind: str  # "known" | "unknown"
    concept_id: int
    name: str  # the known concept's name; "unknown:<id>" for learned ones
    contribution: float  # summed over the chunk's tokens, in logit units
    tokens: int  # chunk tokens whose top-k held this concept
    # unknown concepts: the model's automatic label (the tokens where it fires most)
    label: str = ""


@dataclass(frozen=True)
class LogitTotals:
    """The chunk's target logits summed over its tokens, and how they split:
    ``known_total + unknown_total + residual == logit`` up to float rounding."""

    logit: float
    known_total: float
    unknown_total: float
    residual: float
    log_prob: float  # sum of log p(token | everything before it) over the chunk


@dataclass(frozen=True)
class ChunkCheck:
    """The counterfactual check of one output chunk (:mod:`tda.attribution.check`): the
    drop in its log-probability (``log_prob`` before, in nats; a drop is before - after,
    positive when the chunk became less likely) after a copy of the model unlearns a set
    of training chunks by a few steps of gradient ascent: its hits (``attributed_drop``),
    ``chunks`` chosen by BM25 (``bm25_drop``; None when the index has no lexical channel),
    and ``draws`` sets of as many random chunks cut to the hits' lengths
    (``random_drops``). ``z`` = (attributed - mean of random) / their standard deviation
    (None when they do not vary); ``p_value`` = (1 + random draws with a drop at least the
    attributed one) / (1 + draws), the empirical p-value of "the hits matter no more than
    random chunks". ``verdict``: ``supported`` (above every random draw), ``weak`` (above
    their mean), ``not supported``, or ``no hits``."""

    chunks: int  # training chunks in each set (the chunk's hits)
    log_prob: float
    attributed_drop: float
    bm25_drop: float | None
    random_drops: tuple[float, ...]
    random_mean: float
    random_std: float
    z: float | None
    p_value: float
    verdict: str
    bm25_chunk_ids: tuple[int, ...] = ()


# What a check may ask for (tda check's options and tda serve's body take the same bounds).
CHECK_RANGES: dict[str, Range] = {
    "steps": Range(1, 50),  # gradient-ascent steps per unlearned set
    "lr": Range(0.0, 0.5, float, lo_open=True),  # each step's length / the weights' norm
    "draws": Range(2, 256),  # random sets: the p-value's resolution is 1 / (draws + 1)
    "control": Range(0, 256),  # random chunks a set's general damage is measured on
    "seed": Range(0, MAX_SEED),
}
# Weights the ascent moves: every parameter, or the last transformer block and the
# parameters outside the blocks (embeddings, concept heads, LM head): cheaper on a big model.
CHECK_SCOPES = ("all", "last")
# How a set is unlearned: normalised gradient ascent on it alone; or with the gradient of
# the evidence the index finds for the output (less the set) projected out of each step,
# so that what the chunks left in the corpus also teach is kept (as retraining keeps it);
# or until its loss reaches that of random training text (a memorised set takes more
# steps, a set the model never singled out none), --steps being the cap; or with the
# gradients of the set's own nearest chunks (BM25 on each chunk's text: its copies, its
# template) projected out, at the length of the share of the step that is the set's own.
CHECK_METHODS = ("ascent", "project", "forget", "unique")


@dataclass(frozen=True)
class CheckSettings:
    """How a report's hits were checked (validated on construction: a bad value raises
    :class:`ConfigError` with one line). ``seconds``: the check's wall time (0 in a
    request)."""

    steps: int = 3
    lr: float = 0.001
    draws: int = 8
    seed: int = 0
    scope: str = "all"
    method: str = "ascent"  # normalised gradient ascent on a copy of the model
    seconds: float = 0.0
    # random training chunks whose loss rise after an unlearning is taken off every drop
    # (times the output chunk's tokens): what a set does to all text, not to this output
    # (docs/quality.md: random sets' drops 3.7 -> 2.3, true sources separated 47% -> 59%)
    control: int = 8

    def __post_init__(self) -> None:
        for name, rng in CHECK_RANGES.items():
            rng.check(f"--{name}", getattr(self, name))
        if self.scope not in CHECK_SCOPES:
            choices = ", ".join(CHECK_SCOPES)
            raise ConfigError(f"--scope must be one of {choices}, got {self.scope!r}")
        if self.method not in CHECK_METHODS:
            choices = ", ".join(CHECK_METHODS)
            raise ConfigError(f"--method must be one of {choices}, got {self.method!r}")


@dataclass(frozen=True)
class TokenScore:
    position: int  # token position in the prompt (0-based, after any truncation)
    token: str
    char_start: int  # in the prompt text
    char_end: int
    score: float


@dataclass(frozen=True)
class OutputChunk:
    index: int
    token_start: int  # positions in the output's tokens, [start, end)
    token_end: int
    char_start: int  # in the output text
    char_end: int
    text: str
    totals: LogitTotals
    concepts: tuple[ConceptContribution, ...]
    hits: tuple[TrainingHit, ...]
    sources: dict[str, float]  # source -> share of the hits' summed scores (sums to 1)
    prompt_tokens: tuple[TokenScore, ...] = ()
    # (IG only) sum of the scores and the log-probability difference it should equal
    completeness: dict[str, float] | None = None
    # where the search vector's pooling starts, in output tokens (negative: in the prompt)
    query_token_start: int | None = None
    confidence: Confidence | None = None
    check: ChunkCheck | None = field(default=None, metadata=omitted_if_none())


@dataclass(frozen=True)
class AttributionSettings:
    k: int
    nprobe: int
    chunk_size: int
    input_attribution: str  # "grad" | "ig" | "none"
    ig_steps: int
    ig_baseline: str  # "mask" | "zero"
    top_concepts: int
    model: str  # the encoder spec used
    forced: bool  # --force: the encoder differs from the index's
    pooling: str
    # the index's window: each search vector is pooled from at most this many tokens
    # ending at its chunk's end (the forward pass itself spans the model's context)
    window: int
    generate: dict[str, Any] | None = None  # {"tokens", "temperature", "seed"} when generated
    query_span: str = "output"  # "chunk" | "output": what each search vector pools
    rerank: str = "none"  # "none" | "concepts" | "span"
    candidates: int | None = None  # ANN candidates re-ranked (None without a re-rank)
    channels: tuple[str, ...] = ("dense",)  # the retrieval channels searched
    # fusion of the channels' lists: {"method": "rrf", "k": 60, "weights": {...}}
    fusion: dict[str, Any] | None = None


@dataclass(frozen=True)
class Timings:
    """Milliseconds per step; ``total`` is wall time for the whole attribution."""

    generate: float
    forward: float
    backward: float
    search: float
    metadata: float
    total: float


@dataclass(frozen=True)
class AttributionReport(JsonRecord):
    tda_version: str
    index_root: str
    index_manifest_id: str  # sha256 of the index's manifest.json
    index_encoder_fingerprint: str
    encoder_fingerprint: str  # of the model used (differs only with --force)
    settings: AttributionSettings
    prompt: str
    output: str
    prompt_token_count: int
    output_token_count: int
    prompt_truncated: int  # prompt tokens dropped on the left to fit the model window
    chunks: tuple[OutputChunk, ...]
    timings: Timings
    warnings: tuple[str, ...] = ()
    kind: str = "tda.attribution"
    schema_version: int = REPORT_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    check: CheckSettings | None = field(default=None, metadata=omitted_if_none())
    # the output's tokens as attributed (output_token_count of them); a generated output's
    # text may tokenize to others. Empty in a report written before they were recorded.
    output_token_ids: tuple[int, ...] = ()

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionReport:
        if data.get("kind") != "tda.attribution":
            raise ReportError(f"not a tda attribution report (kind={data.get('kind')!r})")
        if data.get("schema_version") not in READ_VERSIONS:
            raise ReportError(
                f"attribution report schema version {data.get('schema_version')} is not one "
                f"of {', '.join(map(str, READ_VERSIONS))}"
            )
        # an older version's report reads with the newer fields' defaults
        data = {**data, "schema_version": REPORT_SCHEMA_VERSION}
        if isinstance(data.get("check"), dict) and "control" not in data["check"]:
            # checked before the control existed: nothing was taken off its drops
            data["check"] = {**data["check"], "control": 0}
        try:
            return record_from_dict(cls, data)
        except (KeyError, TypeError) as exc:
            raise ReportError(f"attribution report is missing or has bad fields: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> AttributionReport:
        return cls.from_dict(json.loads(text))
