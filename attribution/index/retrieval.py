"""Retrieval over every channel of an index, fused: what the attributor, ``tda search``
and exemplar scans ask for one query text or output chunk.

A :class:`ChunkQuery` carries what each channel searches with: the pooled concept-space
vector (dense), the token ids of the chunk with the tokens before it (span: maximal
exact spans that overlap the chunk itself), and a short text (lexical: BM25 over words).
Each channel returns its ``candidates`` best chunks; :func:`~tda.attribution.index.fusion.fuse`
merges them by weighted reciprocal rank with the weights the index manifest records.

The dense channel is searched for all queries in one batched call; span and lexical per
query, each over all their shards in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tda.schemas import CHANNELS

from .fusion import Fused, default_fusion, fuse
from .reader import IndexReader, IndexReadError
from .spans import SpanHit

__all__ = ["SPAN_MIN_TOKENS", "ChunkQuery", "Retrieved", "Retriever"]

# A maximal exact span shorter than this many tokens is not evidence (a common phrase).
SPAN_MIN_TOKENS = 6
# A span found in more places than this is boilerplate (licence text, "of the United").
SPAN_MAX_COUNT = 1000


@dataclass(frozen=True)
class ChunkQuery:
    """One query: ``vector`` (D,) float32 for the dense channel; ``tokens`` (L,) int64 with
    ``region`` = [a, b) the chunk itself inside them (tokens before ``a`` are context a
    span may start in); ``text`` for the lexical channel."""

    vector: np.ndarray
    tokens: np.ndarray
    region: tuple[int, int]
    text: str


@dataclass(frozen=True)
class Retrieved:
    """One query's fused candidates (best first) and the span channel's evidence per
    chunk it found (for the hit's match and the confidence)."""

    fused: list[Fused]
    spans: dict[int, SpanHit]
    lexical_terms: dict[int, tuple[str, ...]]


class Retriever:
    """The channels of one opened index, searched and fused."""

    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        self.available = reader.channels.names
        fusion = reader.manifest.fusion or default_fusion(self.available)
        self.fusion = fusion

    def dense_score(self, fused: Fused, vector: np.ndarray) -> float:
        """A fused candidate's dense-channel score for the query ``vector`` (D,): the
        channel's own when it returned the chunk, else computed from the chunk's stored
        vector by the index's metric (inner product, or squared L2 as FAISS reports it),
        so every hit carries the concept-space measure whichever channel found it."""
        if "dense" in fused.channels:
            return fused.channels["dense"][1]
        stored = self.reader.vector(fused.chunk_id)
        if self.reader.manifest.metric == "l2":
            return float(np.sum((stored - vector) ** 2))
        return float(stored @ vector)

    def channels(self, requested: Sequence[str] | None) -> tuple[str, ...]:
        """The channels to search: ``requested`` (refused with one line if the index lacks
        one), else every channel the index has, in :data:`CHANNELS` order."""
        if requested is None:
            return self.available
        missing = [c for c in requested if c not in self.available]
        if missing:
            raise IndexReadError(
                f"the index in {self.reader.root} has no {missing[0]} channel (it has "
                f"{', '.join(self.available)}); rebuild it with `tda index build "
                f"{self.reader.root} --overwrite` to add the span and lexical channels"
            )
        return tuple(c for c in CHANNELS if c in requested)

    def retrieve(
        self, queries: Sequence[ChunkQuery], channels: Sequence[str], candidates: int,
        nprobe: int | None = None,
    ) -> list[Retrieved]:  # fmt: skip
        """Each query's ``candidates`` best chunks per channel, fused (see the module)."""
        lists: list[dict[str, list[tuple[int, float]]]] = [{} for _ in queries]
        spans: list[dict[int, SpanHit]] = [{} for _ in queries]
        terms: list[dict[int, tuple[str, ...]]] = [{} for _ in queries]
        if "dense" in channels and queries:
            vectors = np.stack([q.vector for q in queries]).astype(np.float32)
            scores, ids = self.reader.search(vectors, candidates, nprobe)
            for i in range(len(queries)):
                lists[i]["dense"] = [
                    (int(c), float(s)) for s, c in zip(scores[i], ids[i], strict=True) if c >= 0
                ]
        span_index = self.reader.channels.span
        if "span" in channels and span_index is not None:
            for i, q in enumerate(queries):
                hits = span_index.search(
                    q.tokens, q.region, candidates, min_len=SPAN_MIN_TOKENS,
                    max_count=SPAN_MAX_COUNT,
                )  # fmt: skip
                lists[i]["span"] = [(h.chunk_id, h.score) for h in hits]
                spans[i] = {h.chunk_id: h for h in hits}
        lexical = self.reader.channels.lexical
        if "lexical" in channels and lexical is not None:
            for i, found in enumerate(lexical.search_many([q.text for q in queries], candidates)):
                lists[i]["lexical"] = [(h.chunk_id, h.score) for h in found]
                terms[i] = {h.chunk_id: h.terms for h in found}
        weights = self.fusion.get("weights", {})
        k = int(self.fusion.get("k", 60))
        return [
            Retrieved(fuse(lists[i], weights, k), spans[i], terms[i]) for i in range(len(queries))
        ]
