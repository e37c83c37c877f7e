"""Step 4's methods: every way the harness ranks training chunks for an output, behind one
:class:`Ranker` protocol, ``rank_output(prompt, output, k) -> chunk ids``, best first.

* tda itself: :class:`TdaRanker` (``Attributor.attribute`` with ``--query-span`` and
  ``--rerank``), :class:`Prefetch` (keeps a ranker's top ``fetch`` so its top 10 and a
  re-rank of the same candidates cost one search), :class:`BM25Rerank` (BM25 over tda's
  candidates, harness only: BM25 needs corpus-wide statistics);
* baselines: :class:`BM25Ranker` (``rank-bm25``), :class:`ExactSpanRanker`
  (OLMoTrace-style longest shared word run), :class:`RandomRanker`; the gradient baselines
  live in :mod:`~tda.jobs.quality.gradients`;
* :func:`rank_all`: one ranker over every reproduced output.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

from tda.attribution.rerank import longest_shared_run, rerank_order
from tda.attribution.rerank import words as _words

from .chunks import ChunkTable
from .outputs import Outputs, Query

if TYPE_CHECKING:
    from tda.attribution.attributor import Attributor

__all__ = [
    "BM25Ranker",
    "BM25Rerank",
    "ExactSpanRanker",
    "Prefetch",
    "RandomRanker",
    "Ranker",
    "Rankings",
    "TdaRanker",
    "rank_all",
    "rerank",
]


class Ranker(Protocol):
    """A method the harness compares: given what the model said, training chunks ranked
    by how likely each is its source."""

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        """The ``k`` chunk ids that best explain ``output`` after ``prompt``, best first."""
        ...


# One method's top chunk ids for every reproduced output.
Rankings = dict[Query, list[int]]


def rank_all(ranker: Ranker, outputs: Outputs, k: int = 10) -> Rankings:
    """``ranker``'s top ``k`` chunk ids for every reproduced output, asked in table order
    (condition by condition, facts in order: a seeded ranker draws in that order)."""
    return {q: ranker.rank_output(q.prompt, q.output, k) for q in outputs}


def rerank(chunk_ids: list[int], scores: list[float], k: int = 10) -> list[int]:
    """Candidates (in tda's order) and a score each -> the ``k`` best chunk ids (higher
    score first; ties keep tda's order, as ``tda attribute --rerank`` does)."""
    return [chunk_ids[i] for i in rerank_order(scores)[:k]]


def _first_chunk_ids(report) -> list[int]:
    """An attribution report -> its first output chunk's hits, as chunk ids in rank order."""
    return [h.chunk_id for c in report.chunks[:1] for h in c.hits]


class TdaRanker:
    """tda as a user runs it: ``tda attribute`` (no input attribution) on one build root,
    with ``query_span`` and ``rerank`` (``none``: the dense top ``k``; ``concepts`` /
    ``span``: the top ``candidates`` re-ranked, ``k`` kept), hits of the output's first
    chunk."""

    def __init__(
        self, attributor: Attributor, query_span: str, rerank: str = "none", candidates: int = 100
    ) -> None:
        self.attributor, self.query_span = attributor, query_span
        self.rerank, self.candidates = rerank, candidates

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        options = {"input_attribution": "none", "query_span": self.query_span}
        if self.rerank != "none":
            options.update(rerank=self.rerank, candidates=self.candidates)
        return _first_chunk_ids(self.attributor.attribute(prompt, output, k=k, **options))


class Prefetch:
    """``ranker``'s top ``fetch`` per output, asked once and kept: :meth:`rank_output`
    serves its first ``k``, :meth:`candidates` all of them (what a hybrid re-ranks)."""

    def __init__(self, ranker: Ranker, fetch: int) -> None:
        self.ranker, self.fetch = ranker, fetch
        self._kept: dict[tuple[str, str], list[int]] = {}

    def candidates(self, prompt: str, output: str) -> list[int]:
        key = (prompt, output)
        if key not in self._kept:
            self._kept[key] = self.ranker.rank_output(prompt, output, self.fetch)
        return self._kept[key]

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self.candidates(prompt, output)[:k]


class BM25Ranker:
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

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self.rank(prompt + output, k)


class BM25Rerank:
    """A hybrid: ``candidates``' top ``fetch`` (tda's dense candidates) re-ranked by their
    BM25 score for prompt + output (ties keep tda's order)."""

    def __init__(self, candidates: Prefetch, bm25: BM25Ranker) -> None:
        self.source, self.bm25 = candidates, bm25

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        cands = self.source.candidates(prompt, output)
        every = self.bm25.scores(prompt + output)
        position = self.bm25.table.position
        return rerank(cands, [float(every[position[c]]) for c in cands], k)


class ExactSpanRanker:
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

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self.rank(prompt + output, k)


class RandomRanker:
    """``k`` distinct chunks drawn by a generator seeded once (each call draws on)."""

    def __init__(self, table: ChunkTable, seed: int) -> None:
        self.table, self.rng = table, random.Random(seed)

    def rank(self, query: str, k: int) -> list[int]:
        return self.rng.sample(self.table.ids, min(k, len(self.table.ids)))

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        return self.rank(prompt + output, k)
