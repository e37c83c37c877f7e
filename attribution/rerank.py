"""Re-ranking the index's candidates for one output chunk.

The attributor asks the ANN index for ``candidates`` (default 100) training chunks per
output chunk and, with a re-rank, orders them by a second signal before keeping ``k``:

* ``concepts``: sparse concept overlap, ``sum over shared known concepts of
  min(output weight, training weight)`` (both are the pooled top-k known-concept weights
  the embed stage stores, so it needs no extra index, only the candidates' rows);
* ``span``: OLMoTrace-style exact match, the longest run of consecutive words of the query
  text found in the candidate's text (a lexical signal: the hybrid option).

Ties keep the ANN order, so a candidate the second signal cannot tell apart from another
stays where the dense score put it. The harness (``tda eval``) measures each option;
``docs/quality.md`` has the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from tda.attribution.index.lexical import words  # one definition: BM25's terms
from tda.schemas import RERANKS

__all__ = [
    "RERANKS",
    "concept_overlap",
    "longest_shared_run",
    "rerank_order",
    "shared_run",
    "words",
]

_WORD = re.compile(r"\w+")  # the words of :func:`words`, with their offsets


def concept_overlap(
    output: dict[int, float],
    train_ids: np.ndarray,
    train_weights: np.ndarray,
    cuts: np.ndarray | None = None,
) -> float:
    """Sparse overlap of an output chunk's known concepts ``{id: weight}`` with a training
    chunk's (ids (k,), weights (k,)): sum over shared ids of the smaller weight, counting
    only concepts that fire on both sides (the smaller weight reaches the concept's cut
    in ``cuts`` (C,), as a hit's shared concepts do; None: every shared id)."""
    return float(
        sum(
            min(output[int(c)], float(w))
            for c, w in zip(train_ids.tolist(), train_weights.tolist(), strict=True)
            if int(c) in output and (cuts is None or min(output[int(c)], float(w)) >= cuts[int(c)])
        )
    )


def longest_shared_run(query: Sequence[str], text: Sequence[str]) -> int:
    """Length of the longest run of consecutive ``query`` words that occurs, as
    consecutive words, in ``text`` (both lists of words). O(len(query) * len(text))."""
    if not query or not text:
        return 0
    best = 0
    previous = [0] * (len(text) + 1)
    for q in query:
        current = [0] * (len(text) + 1)
        for j, t in enumerate(text, start=1):
            if q == t:
                current[j] = previous[j - 1] + 1
                if current[j] > best:
                    best = current[j]
        previous = current
    return best


def shared_run(a: str, b: str) -> tuple[int, int, int, int, int] | None:
    """The longest run of consecutive words (lower-cased ``\\w+`` runs) found in both texts,
    as character offsets: (words, a_start, a_end, b_start, b_end), the earliest such run
    in ``a`` (then in ``b``) on ties; None when they share no word. O(words(a) x words(b))."""
    wa = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(a)]
    wb = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(b)]
    best, at = 0, (0, 0)
    previous = [0] * (len(wb) + 1)
    for i, (_, _, x) in enumerate(wa, start=1):
        current = [0] * (len(wb) + 1)
        for j, (_, _, y) in enumerate(wb, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                if current[j] > best:
                    best, at = current[j], (i, j)
        previous = current
    if best == 0:
        return None
    i, j = at  # the run ends at word i of a and word j of b (1-based)
    return best, wa[i - best][0], wa[i - 1][1], wb[j - best][0], wb[j - 1][1]


def rerank_order(scores: Sequence[float]) -> list[int]:
    """Positions of ``scores`` (one per candidate, in ANN order), best first; ties keep
    the ANN order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))
