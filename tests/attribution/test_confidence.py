"""The confidence measure's levels on hand-made evidence: a long exact span is
``verbatim``; a short rare span or a run of shared words is ``lexical``; a common phrase
is not; a dense first score far above the rest is ``weak``; near-ties are ``none``."""

from __future__ import annotations

from tda.attribution.confidence import LEXICAL_MAX_COUNT, confidence
from tda.attribution.index.fusion import Fused
from tda.attribution.index.retrieval import Retrieved
from tda.attribution.index.spans import SpanHit
from tda.schemas import ChunkRecord, MatchSpan, TrainingHit


def _hit(chunk_id: int, words: int = 0) -> TrainingHit:
    record = ChunkRecord(chunk_id, "src", "doc", 0, 0, 0, 10, "text", "file")
    match = MatchSpan(0, 5, 0, 5, words) if words else None
    return TrainingHit(rank=1, score=0.9, chunk=record, match=match)


def _retrieved(dense: list[float], span: SpanHit | None = None) -> Retrieved:
    fused = [Fused(i, 1.0 / (61 + i), {"dense": (i + 1, s)}) for i, s in enumerate(dense)]
    return Retrieved(fused, {} if span is None else {span.chunk_id: span}, {})


def _span(chunk_id: int, length: int, count: int) -> SpanHit:
    return SpanHit(chunk_id, length + 0.1, length, 0, length, 0, length, count)


def test_levels():
    near_ties = [0.990, 0.989, 0.989, 0.988, 0.988, 0.988, 0.987, 0.987, 0.987, 0.987] * 3
    first = _hit(0)
    # a 40-token span of a 64-token chunk: verbatim, its share the score
    c = confidence([first], _retrieved(near_ties, _span(0, 40, 1)), 64, ("dense", "span"))
    assert (c.level, c.score) == ("verbatim", 0.625) and "40-token exact span" in c.reason
    # a short rare span: lexical
    c = confidence([_hit(0, 6)], _retrieved(near_ties, _span(0, 8, 3)), 64, ("dense", "span"), 20)
    assert c.level == "lexical" and "found in 3 places" in c.reason
    # the same span as a common phrase singles out nothing: the dense near-ties decide
    common = _span(0, 8, LEXICAL_MAX_COUNT + 1)
    c = confidence([_hit(0, 6)], _retrieved(near_ties, common), 64, ("dense", "span"), 20)
    assert c.level == "none" and "common phrase" in c.reason
    # shared words without a span: lexical from 4 words
    assert confidence([_hit(0, 4)], _retrieved(near_ties), 64, ("dense",), 20).level == "lexical"
    assert confidence([_hit(0, 3)], _retrieved(near_ties), 64, ("dense",), 20).level == "none"
    # a dense first score far above the rest: weak; near-ties: none, said as such
    apart = [0.99] + [0.5 + 0.001 * i for i in range(30)]
    assert confidence([first], _retrieved(apart), 64, ("dense",)).level == "weak"
    c = confidence([first], _retrieved(near_ties), 64, ("dense",))
    assert c.level == "none" and "neighbours in concept space, not as sources" in c.reason
    assert confidence([], _retrieved(near_ties), 64, ("dense",)).level == "none"
