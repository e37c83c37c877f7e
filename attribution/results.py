"""What the attributor reports per output chunk, built from what it computed: the hits
(:func:`training_hits`: provenance, every channel's rank and score, the matching words on
both sides, the shared concepts), the concepts behind the chunk's logits
(:func:`concept_contributions`), the logit totals (:func:`logit_totals`) and the spread
over sources (:func:`source_shares`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tda.attribution.encoders import ConceptActivations, LogitSplit
from tda.attribution.index.fusion import Fused
from tda.attribution.index.reader import IndexReader
from tda.attribution.index.retrieval import Retrieved, Retriever
from tda.attribution.rerank import shared_run, words
from tda.schemas import (
    ChannelScore,
    ConceptContribution,
    EncoderInfo,
    LogitTotals,
    MatchSpan,
    SharedConcept,
    TrainingHit,
)

__all__ = [
    "MIN_MATCH_WORDS",
    "concept_contributions",
    "concept_name",
    "logit_totals",
    "match_span",
    "source_shares",
    "training_hits",
]

# A shared run of fewer words than this is not marked as a match (see match_span).
MIN_MATCH_WORDS = 3


def training_hits(
    reader: IndexReader, retriever: Retriever, names: Sequence[str], kept: Sequence[Fused],
    vector: np.ndarray, out_concepts: dict[int, float], rerank_scores,
    retrieved: Retrieved, text: str, multi: bool, cuts: np.ndarray | None = None,
) -> tuple[TrainingHit, ...]:  # fmt: skip
    """The kept fused candidates, in order, as hits: the chunk record, its similarity
    to the chunk's search vector ``vector`` (D,) (read from its stored vector when the
    dense channel did not return it), each channel's rank and score, the words it
    shares with the output chunk's ``text`` on both sides, and the known concepts it
    shares with the output chunk (``out_concepts``: id -> pooled weight), strongest
    shared first. A concept is shared when it fires on both sides: its weight reaches
    its cut in ``cuts`` (C,) (the model's calibrated threshold as a raw weight; see
    :func:`~tda.attribution.encoders.builtin.calibrate.firing_cuts`), not merely when
    both chunks stored it among their top-k."""
    hits = []
    for rank, found in enumerate(kept, start=1):
        chunk_id = found.chunk_id
        record = reader.lookup.get(int(chunk_id))
        score = retriever.dense_score(found, vector)
        train_ids, train_weights = reader.concepts(int(chunk_id))
        shared = [
            SharedConcept(
                int(cid),
                concept_name(names, int(cid)),
                round(out_concepts[int(cid)], 4),
                round(float(w), 4),
            )
            for cid, w in zip(train_ids.tolist(), train_weights.tolist(), strict=True)
            if int(cid) in out_concepts
            and (cuts is None or min(out_concepts[int(cid)], w) >= cuts[int(cid)])
        ]
        shared.sort(key=lambda s: -min(s.output_weight, s.training_weight))
        span = retrieved.spans.get(int(chunk_id))
        hits.append(
            TrainingHit(
                rank=rank,
                score=round(float(score), 6),
                chunk=record,
                shared_concepts=tuple(shared),
                rerank_score=(None if rerank_scores is None else round(rerank_scores[rank - 1], 6)),
                channels={
                    name: ChannelScore(r, round(float(v), 6))
                    for name, (r, v) in found.channels.items()
                },
                fused_score=round(found.score, 8) if multi else None,
                match=match_span(text, record.text or "", span),
            )
        )
    return tuple(hits)


def concept_contributions(
    info: EncoderInfo, names: Sequence[str], split: LogitSplit, acts: ConceptActivations,
    s: int, e: int, top: int, unknown_labels: Sequence[str] = (),
) -> tuple[ConceptContribution, ...]:  # fmt: skip
    """Concept contributions to the logits of the chunk's tokens (positions s..e-1
    are predicted from s-1..e-2), summed per concept; the largest ``top``. Unknown
    concepts carry their label from ``unknown_labels`` (by id) when the model has one."""
    import torch

    lo, hi = max(s - 1, 0), e - 1
    rows = []
    for kind, ids, contrib, size in (
        ("known", acts.known_ids, split.known, info.n_known),
        ("unknown", acts.unknown_ids, split.unknown, info.n_unknown),
    ):
        if size == 0 or ids.shape[-1] == 0:
            continue
        flat_ids = ids[0, lo:hi].reshape(-1)
        total = torch.zeros(size, dtype=torch.float64, device=flat_ids.device)
        total.index_add_(0, flat_ids, contrib[0, lo:hi].reshape(-1).double())
        count = torch.zeros(size, dtype=torch.int64, device=flat_ids.device)
        count.index_add_(0, flat_ids, torch.ones_like(flat_ids))
        # the largest ``top`` among concepts present in the chunk (absent ones are 0)
        total = torch.where(count > 0, total, torch.full_like(total, -math.inf))
        values, order = torch.topk(total, min(top, size))
        for value, cid in zip(values.tolist(), order.tolist(), strict=True):
            if value != -math.inf:
                rows.append((kind, cid, value, int(count[cid])))
    rows.sort(key=lambda r: (-r[2], r[0], r[1]))
    return tuple(
        ConceptContribution(
            kind=kind,
            concept_id=cid,
            name=concept_name(names, cid) if kind == "known" else f"unknown:{cid}",
            contribution=round(value, 5),
            tokens=count,
            label=unknown_labels[cid] if kind == "unknown" and cid < len(unknown_labels) else "",
        )
        for kind, cid, value, count in rows[:top]
    )


def match_span(text: str, chunk_text: str, span) -> MatchSpan | None:
    """The longest word run the output chunk's ``text`` shares with a training chunk's
    text, as character offsets on both sides (None: no run of :data:`MIN_MATCH_WORDS`
    words, or of all the chunk's words when it has fewer); ``span``: the span channel's
    :class:`~tda.attribution.index.spans.SpanHit` for this chunk, or None."""
    run = shared_run(text, chunk_text)
    if run is None:
        return None
    n, a0, a1, b0, b1 = run
    # one or two common words ("and", "it is") are not a match worth marking, unless the
    # chunk itself is that short (a one-word answer)
    if n < min(MIN_MATCH_WORDS, len(words(text))):
        return None
    return MatchSpan(a0, a1, b0, b1, n, None if span is None else int(span.length))


def concept_name(names: Sequence[str], cid: int) -> str:
    return names[cid] if 0 <= cid < len(names) else f"known:{cid}"


def logit_totals(split, log_probs, s: int, e: int) -> LogitTotals:
    """Logit sums over the chunk's predicted tokens (positions s-1..e-2 predict s..e-1)."""
    lo, hi = max(s - 1, 0), e - 1
    return LogitTotals(
        logit=round(float(split.logit[0, lo:hi].double().sum()), 5),
        known_total=round(float(split.known[0, lo:hi].double().sum()), 5),
        unknown_total=round(float(split.unknown[0, lo:hi].double().sum()), 5),
        residual=round(float(split.residual[0, lo:hi].double().sum()), 5),
        log_prob=round(float(log_probs[0, s:e].double().sum()), 5),
    )


def source_shares(hits: Sequence[TrainingHit]) -> dict[str, float]:
    """Share of each source in the hits' scores: fused scores when channels were fused,
    else the dense scores (negative scores count as 0; equal shares per hit when no score
    is positive)."""
    weights: dict[str, float] = {}
    for hit in hits:
        score = hit.fused_score if hit.fused_score is not None else hit.score
        weights[hit.source] = weights.get(hit.source, 0.0) + max(score, 0.0)
    total = sum(weights.values())
    if total <= 0:
        weights = {}
        for hit in hits:
            weights[hit.source] = weights.get(hit.source, 0.0) + 1.0
        total = float(len(hits)) or 1.0
    return {src: round(w / total, 6) for src, w in sorted(weights.items(), key=lambda kv: -kv[1])}
