"""Fusing the retrieval channels' ranked lists into one: weighted reciprocal rank fusion.

Each channel scores on its own scale (cosine, matched tokens, BM25), so the lists are
fused by rank, as Cormack et al. (2009) did for search engines and hybrid retrievers do
today: a chunk's fused score is ``sum over the channels that found it of
weight[channel] / (k + rank)``, ``rank`` from 1 in that channel's list. ``k`` damps the
head of each list (60 in the paper and in most systems); the weights are chosen by
measurement on the quality harness and recorded in the index manifest, so a report says
what it fused with. A chunk found by several channels rises above one found by a single
channel at the same rank: agreement is the signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_WEIGHTS", "RRF_K", "Fused", "default_fusion", "fuse"]

RRF_K = 60
# Per channel weight in the fusion; docs/quality.md measures the choices.
DEFAULT_WEIGHTS = {"dense": 1.0, "span": 1.0, "lexical": 1.0}


def default_fusion(channels: Sequence[str]) -> dict:
    """The fusion a new index records for its ``channels`` (dense first)."""
    return {
        "method": "rrf",
        "k": RRF_K,
        "weights": {c: DEFAULT_WEIGHTS[c] for c in channels},
    }


@dataclass(frozen=True)
class Fused:
    """One chunk of the fused list: its fused score and, per channel that found it, its
    (rank from 1, channel score)."""

    chunk_id: int
    score: float
    channels: dict[str, tuple[int, float]] = field(default_factory=dict)


def fuse(
    lists: Mapping[str, Sequence[tuple[int, float]]],
    weights: Mapping[str, float],
    k: int = RRF_K,
) -> list[Fused]:
    """Per channel, its (chunk id, score) list best first -> every chunk found, fused,
    best first. Ties: the better best rank in any channel, then the smaller chunk id (so
    the order is deterministic). A channel missing from ``weights`` weighs 1."""
    found: dict[int, dict[str, tuple[int, float]]] = {}
    for channel, ranked in lists.items():
        for rank, (chunk_id, score) in enumerate(ranked, start=1):
            # a channel lists each chunk once; keep its best rank if it repeats one
            found.setdefault(int(chunk_id), {}).setdefault(channel, (rank, float(score)))
    fused = [
        Fused(
            chunk_id,
            sum(weights.get(c, 1.0) / (k + rank) for c, (rank, _) in by.items()),
            dict(sorted(by.items())),
        )
        for chunk_id, by in found.items()
    ]
    fused.sort(key=lambda f: (-f.score, min(r for r, _ in f.channels.values()), f.chunk_id))
    return fused
