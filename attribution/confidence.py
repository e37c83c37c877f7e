"""How clearly an output chunk's first hit stands out: the report's ``confidence``.

Ten hits are always returned; whether they are *sources* or merely *neighbours* is what a
researcher needs to know before reading them. The measure, per output chunk, from the
evidence the channels already computed (no extra search):

* ``verbatim``: the first hit shares an exact token span with the chunk of at least
  :data:`VERBATIM_TOKENS` tokens, or half the chunk's tokens when the chunk is shorter
  than twice that (a copied passage). ``score`` = the span's share of the chunk's tokens
  (capped at 1).
* ``lexical``: the first hit is singled out by exact spans (shorter ones) or by shared
  words: a shared run of at least :data:`LEXICAL_WORDS` words, or the span channel found
  it; unless its exact span is a common phrase (found in more than
  :data:`LEXICAL_MAX_COUNT` places: ", and the United States"), which singles out nothing.
  ``score`` = the run's share of the chunk's words.
* ``weak``: only the concept space links them, and the first dense score stands out from
  the other candidates: its distance above their mean, in their standard deviations
  (a z-score), is at least :data:`WEAK_Z`. ``score`` = z / (2 x WEAK_Z), capped at 1.
* ``none``: nothing stands out: the dense candidates are near-ties (z below
  :data:`WEAK_Z`), as in a chunk whose top ten scores sit within 0.005 of each other.

The thresholds were set so that, on the quality harness, ``verbatim`` and ``lexical``
chunks have their true source first (``docs/quality.md`` reports the precision of each
level), and the tests pin each level on a real index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tda.schemas import Confidence, TrainingHit

__all__ = ["LEXICAL_MAX_COUNT", "LEXICAL_WORDS", "VERBATIM_TOKENS", "WEAK_Z", "confidence"]

VERBATIM_TOKENS = 32
LEXICAL_WORDS = 4
LEXICAL_MAX_COUNT = 20
WEAK_Z = 3.0


def confidence(
    hits: Sequence[TrainingHit], retrieved, chunk_tokens: int, channels: Sequence[str],
    output_words: int | None = None,
) -> Confidence:  # fmt: skip
    """The level, score and reason for one output chunk of ``chunk_tokens`` tokens, from
    its hits (best first) and its :class:`~tda.attribution.index.retrieval.Retrieved`
    candidates."""
    if not hits:
        return Confidence("none", 0.0, "no training chunk was found")
    first = hits[0]
    span = retrieved.spans.get(first.chunk_id)
    need = min(VERBATIM_TOKENS, max(1, math.ceil(chunk_tokens / 2)))
    if span is not None and span.length >= need:
        share = min(1.0, span.length / max(1, chunk_tokens))
        return Confidence(
            "verbatim",
            round(share, 4),
            f"the first hit shares a {span.length}-token exact span with this "
            f"{chunk_tokens}-token chunk (found in {span.count} place"
            f"{'' if span.count == 1 else 's'} of the index)",
        )
    run = first.match.words if first.match is not None else 0
    common = span is not None and span.count > LEXICAL_MAX_COUNT
    if not common and (span is not None or run >= LEXICAL_WORDS):
        words = output_words or max(run, 1)
        found = ", ".join(first.channels) or "dense"
        detail = (
            f"a {span.length}-token exact span (found in {span.count} place"
            f"{'' if span.count == 1 else 's'} of the index)"
            if span is not None
            else f"{run} words in a row"
        )
        return Confidence(
            "lexical",
            round(min(1.0, run / max(1, words)), 4),
            f"the first hit shares {detail} with this chunk (found by {found})",
        )
    phrase = (
        f"; its longest exact span is a common phrase (found in {span.count} places)"
        if common
        else ""
    )
    dense = [score for _, score in _dense(retrieved)]
    z = _z(dense)
    if z is None:
        return Confidence(
            "none", 0.0, f"too few dense candidates to tell whether the first stands out{phrase}"
        )
    if z >= WEAK_Z:
        return Confidence(
            "weak",
            round(min(1.0, z / (2 * WEAK_Z)), 4),
            f"only the concept space links them: the first score is {z:.1f} standard "
            f"deviations above the other {len(dense) - 1} candidates{phrase}",
        )
    spread = dense[0] - dense[min(9, len(dense) - 1)]
    lexical_note = "" if "lexical" in channels or "span" in channels else (
        " (this search used the dense channel only)"
    )  # fmt: skip
    return Confidence(
        "none",
        round(max(0.0, z) / (2 * WEAK_Z), 4),
        f"nothing stands out: the first dense score is {z:.1f} standard deviations above the "
        f"other candidates and the top ten lie within {spread:.4f}; read the hits as "
        f"neighbours in concept space, not as sources{lexical_note}{phrase}",
    )


def _dense(retrieved) -> list[tuple[int, float]]:
    """The dense channel's (chunk id, score) in its own order, from the fused list."""
    found = [(f.channels["dense"][0], f.chunk_id, f.channels["dense"][1])
             for f in retrieved.fused if "dense" in f.channels]  # fmt: skip
    return [(cid, score) for _, cid, score in sorted(found)]


def _z(scores: Sequence[float]) -> float | None:
    """How far the first score stands above the rest: (first - mean(rest)) / std(rest);
    None with fewer than 5 others (no meaningful spread)."""
    if len(scores) < 6:
        return None
    rest = np.asarray(scores[1:], dtype=np.float64)
    std = float(rest.std())
    # the first is the channel's best by construction: above the rest for inner product,
    # below them for L2 distances; either way its distance from them is the signal
    gap = abs(float(scores[0] - rest.mean()))
    if std <= 1e-12:
        return math.inf if gap > 0 else 0.0
    return gap / std
