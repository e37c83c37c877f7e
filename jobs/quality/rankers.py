"""Step 4's methods: every way the harness ranks training chunks for an output, behind one
:class:`Ranker` protocol: ``rank_output(prompt, output, k) -> chunk ids``, best first (a
short output: one output chunk), and ``rank_chunks(prompt, output, spans, k)``, one such
list per output chunk of a long output (``spans``: each output chunk's characters).

* tda itself: :class:`TdaRanker` (``Attributor.attribute`` with ``--query-span``,
  ``--rerank`` and ``--channels``), :class:`Prefetch` (keeps a ranker's top ``fetch`` so
  its top 10 and a re-rank of the same candidates cost one search), :class:`BM25Rerank`
  (BM25 over tda's candidates, harness only: BM25 needs corpus-wide statistics);
* baselines: :class:`BM25Ranker` (``rank-bm25``), :class:`ExactSpanRanker`
  (OLMoTrace-style longest shared word run), :class:`RandomRanker`; the gradient baselines
  live in :mod:`~tda.jobs.quality.gradients`. A long output's chunk is asked as its text
  after the :data:`CONTEXT_WORDS` words before it (:func:`chunk_query`), as the product's
  lexical channel keeps a few tokens before each output chunk;
* :func:`rank_all` / :func:`rank_probes`: one ranker over every reproduced output / every
  passage output.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from tda.attribution.rerank import longest_shared_run, rerank_order
from tda.attribution.rerank import words as _words

from .chunks import ChunkTable
from .outputs import Outputs, Query
from .passages import Probe

if TYPE_CHECKING:
    from tda.attribution.attributor import Attributor

__all__ = [
    "CONTEXT_WORDS",
    "BM25Ranker",
    "BM25Rerank",
    "ChunkRankings",
    "ExactSpanRanker",
    "Prefetch",
    "QualityError",
    "RandomRanker",
    "Ranker",
    "Rankings",
    "Span",
    "TdaRanker",
    "TextRanker",
    "chunk_query",
    "rank_all",
    "rank_probes",
    "rerank",
]

# A long output's chunk is asked after this many words before it (about the 16 tokens
# the product's lexical channel keeps: tda.attribution.attributor.LEXICAL_CONTEXT).
CONTEXT_WORDS = 12
_WORD = re.compile(r"\w+")

# An output chunk's characters [start, end) in the output.
Span = tuple[int, int]


class QualityError(RuntimeError):
    """The harness's own inconsistency (the product cut an output otherwise than the
    harness did), in one line."""


class Ranker(Protocol):
    """A method the harness compares: given what the model said, training chunks ranked
    by how likely each is its source."""

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        """The ``k`` chunk ids that best explain ``output`` after ``prompt``, best first."""
        ...

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[Span], k: int
    ) -> list[list[int]]:
        """Per output chunk (``spans``: its characters in ``output``, as the product cuts
        the output), the ``k`` chunk ids that best explain it, best first."""
        ...


# One method's top chunk ids for every reproduced output / per chunk of every passage output.
Rankings = dict[Query, list[int]]
ChunkRankings = dict[Probe, list[list[int]]]


def rank_all(ranker: Ranker, outputs: Outputs, k: int = 10) -> Rankings:
    """``ranker``'s top ``k`` chunk ids for every reproduced output, asked in table order
    (condition by condition, facts in order: a seeded ranker draws in that order)."""
    return {q: ranker.rank_output(q.prompt, q.output, k) for q in outputs}


def rank_probes(ranker: Ranker, outputs: Outputs, k: int = 10) -> ChunkRankings:
    """``ranker``'s top ``k`` chunk ids per output chunk of every passage output, asked
    in table order (after :func:`rank_all`'s queries, for a seeded ranker)."""
    return {p: ranker.rank_chunks(p.prompt, p.output, p.spans, k) for p in outputs.all_probes()}


def chunk_query(prompt: str, output: str, span: Span, context: int = CONTEXT_WORDS):
    """A long output's chunk as a short query: (the text of the ``context`` words before
    it, in the prompt and the output, from the first of them; the chunk's text)."""
    a, b = span
    before = prompt + output[:a]
    starts = [m.start() for m in _WORD.finditer(before)]
    cut = starts[-context] if len(starts) >= context else 0
    return before[cut:], output[a:b]


def rerank(chunk_ids: list[int], scores: list[float], k: int = 10) -> list[int]:
    """Candidates (in tda's order) and a score each -> the ``k`` best chunk ids (higher
    score first; ties keep tda's order, as ``tda attribute --rerank`` does)."""
    return [chunk_ids[i] for i in rerank_order(scores)[:k]]


def _first_chunk_ids(report) -> list[int]:
    """An attribution report -> its first output chunk's hits, as chunk ids in rank order."""
    return [h.chunk_id for c in report.chunks[:1] for h in c.hits]


class TdaRanker:
    """tda as a user runs it: ``tda attribute`` (no input attribution) on one build root,
    with ``query_span``, ``rerank`` (``none``: the fused top ``k``; ``concepts`` /
    ``span``: the fused candidates re-ranked, ``k`` kept), ``candidates`` per channel and
    ``channels`` (None: every channel the index has). ``levels`` keeps each attributed
    output's confidence level per output chunk, keyed by (prompt, output).

    :meth:`rank_output` reads the output's first chunk. :meth:`rank_chunks` attributes a
    long output whole when the model's context holds it after a chunk of prompt; else in
    parts of whole output chunks, each after all the text before it (as token ids, so
    the parts cut the output where one attribution would: the product refuses an output
    longer than the model's context and says to attribute it in parts)."""

    def __init__(
        self, attributor: Attributor, query_span: str, rerank: str = "none",
        candidates: int = 100, channels: tuple[str, ...] | None = ("dense",),
    ) -> None:  # fmt: skip
        self.attributor, self.query_span = attributor, query_span
        self.rerank, self.candidates, self.channels = rerank, candidates, channels
        self.levels: dict[tuple[str, str], tuple[str, ...]] = {}

    def _attribute(self, prompt, output, k: int):
        return self.attributor.attribute(
            prompt, output, k=k, input_attribution="none", query_span=self.query_span,
            rerank=self.rerank, candidates=self.candidates, channels=self.channels,
        )  # fmt: skip

    def _keep_levels(self, key: tuple[str, str], chunks) -> None:
        self.levels[key] = tuple(
            c.confidence.level if c.confidence is not None else "none" for c in chunks
        )

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        report = self._attribute(prompt, output, k)
        self._keep_levels((prompt, output), report.chunks[:1])
        return _first_chunk_ids(report)

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[Span], k: int
    ) -> list[list[int]]:
        size = self.attributor.manifest.chunking.chunk_size
        per = max(1, (self.attributor.encoder.info.max_window - size) // size)
        if len(spans) <= per:
            chunks = list(self._attribute(prompt, output, k).chunks)
        else:
            tokenizer = self.attributor.tokenizer
            p, o = (e.ids.tolist() for e in tokenizer.encode_batch([prompt, output]))
            chunks = []
            for lo in range(0, len(o), per * size):
                part = o[lo : lo + per * size]
                chunks += self._attribute(p + o[:lo], part, k).chunks
        if len(chunks) != len(spans):
            raise QualityError(
                f"tda cut a {len(output)}-character output into {len(chunks)} chunks, the "
                f"harness into {len(spans)}: the spans must follow the index's chunk size"
            )
        self._keep_levels((prompt, output), chunks)
        return [[h.chunk_id for h in c.hits] for c in chunks]


class Prefetch:
    """``ranker``'s top ``fetch`` per output, asked once and kept: :meth:`rank_output`
    serves its first ``k``, :meth:`candidates` all of them (what a hybrid re-ranks)."""

    def __init__(self, ranker: Ranker, fetch: int) -> None:
        self.ranker, self.fetch = ranker, fetch
        self._kept: dict[tuple[str, str], list[int]] = {}
        self._kept_chunks: dict[tuple[str, str, tuple], list[list[int]]] = {}

    def candidates(self, prompt: str, output: str) -> list[int]:
        key = (prompt, output)
        if key not in self._kept:
            self._kept[key] = self.ranker.rank_output(prompt, output, self.fetch)
        return self._kept[key]

    def chunk_candidates(self, prompt: str, output: str, spans: Sequence[Span]):
        """Per output chunk, the ranker's top ``fetch`` (asked once)."""
        key = (prompt, output, tuple(spans))
        if key not in self._kept_chunks:
            self._kept_chunks[key] = self.ranker.rank_chunks(prompt, output, spans, self.fetch)
        return self._kept_chunks[key]

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self.candidates(prompt, output)[:k]

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[Span], k: int
    ) -> list[list[int]]:
        return [ids[:k] for ids in self.chunk_candidates(prompt, output, spans)]


class TextRanker:
    """A baseline that ranks by a query text (:meth:`rank`): an output by prompt + output,
    each output chunk by its text after the words before it (:func:`chunk_query`)."""

    def rank(self, query: str, k: int) -> list[int]:
        raise NotImplementedError

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self.rank(prompt + output, k)

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[Span], k: int
    ) -> list[list[int]]:
        return [self.rank("".join(chunk_query(prompt, output, s)), k) for s in spans]


class BM25Ranker(TextRanker):
    """Okapi BM25 (``rank-bm25``) over the chunks' words; an output is ranked by the words
    of prompt + output."""

    def __init__(self, table: ChunkTable) -> None:
        from rank_bm25 import BM25Okapi

        self.table = table
        self.bm25 = BM25Okapi([_words(t) for t in table.texts])

    def scores(self, query: str):
        """(n_chunks,) BM25 scores of every chunk, in table order."""
        return self.bm25.get_scores(_words(query))

    def rank(self, query: str, k: int) -> list[int]:
        """The ``k`` best chunk ids for the text ``query`` (ties: earlier chunk)."""
        import numpy as np

        order = np.argsort(-self.scores(query), kind="stable")[:k]
        return [self.table.ids[i] for i in order]


class BM25Rerank:
    """A hybrid: ``candidates``' top ``fetch`` (tda's dense candidates) re-ranked by their
    BM25 score for prompt + output (ties keep tda's order)."""

    def __init__(self, candidates: Prefetch, bm25: BM25Ranker) -> None:
        self.source, self.bm25 = candidates, bm25

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self._rerank(self.source.candidates(prompt, output), prompt + output, k)

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[Span], k: int
    ) -> list[list[int]]:
        cands = self.source.chunk_candidates(prompt, output, spans)
        return [
            self._rerank(c, "".join(chunk_query(prompt, output, s)), k)
            for c, s in zip(cands, spans, strict=True)
        ]

    def _rerank(self, cands: list[int], query: str, k: int) -> list[int]:
        every = self.bm25.scores(query)
        position = self.bm25.table.position
        return rerank(cands, [float(every[position[c]]) for c in cands], k)


class ExactSpanRanker(TextRanker):
    """OLMoTrace-style: chunks ranked by the longest run of consecutive query words they
    contain (ties: earlier chunk), through an index of every word 3-gram."""

    N = 3

    def __init__(self, table: ChunkTable) -> None:
        self.table = table
        self.words = [_words(t) for t in table.texts]
        self.grams: dict[tuple, set[int]] = {}
        for i, ws in enumerate(self.words):
            for j in range(len(ws) - self.N + 1):
                self.grams.setdefault(tuple(ws[j : j + self.N]), set()).add(i)

    def longest(self, query: str, i: int) -> int:
        """Longest run of consecutive words of ``query`` found in chunk ``i`` (table order);
        the same measure as ``tda attribute --rerank span``."""
        return longest_shared_run(_words(query), self.words[i])

    def rank(self, query: str, k: int) -> list[int]:
        """The ``k`` chunk ids sharing the longest word runs with the text ``query`` (only
        chunks sharing a 3-gram with it are candidates)."""
        q = _words(query)
        candidates = set()
        for j in range(len(q) - self.N + 1):
            candidates |= self.grams.get(tuple(q[j : j + self.N]), set())
        # the query's words once, not once per candidate
        scored = sorted(candidates, key=lambda i: (-longest_shared_run(q, self.words[i]), i))[:k]
        return [self.table.ids[i] for i in scored]


class RandomRanker(TextRanker):
    """``k`` distinct chunks drawn by a generator seeded once (each call draws on)."""

    def __init__(self, table: ChunkTable, seed: int) -> None:
        self.table, self.rng = table, random.Random(seed)

    def rank(self, query: str, k: int) -> list[int]:
        return self.rng.sample(self.table.ids, min(k, len(self.table.ids)))

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[Span], k: int
    ) -> list[list[int]]:
        return [self.rank(output[a:b], k) for a, b in spans]
