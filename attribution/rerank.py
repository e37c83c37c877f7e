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

from tda.schemas import RERANKS

__all__ = [
    "RERANKS",
    "concept_overlap",
    "longest_shared_run",
    "rerank_order",
    "words",
]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+`` runs) of ``text``."""
    return _WORD.findall(text.lower())


def concept_overlap(
    output: dict[int, float], train_ids: np.ndarray, train_weights: np.ndarray
) -> float:
    """Sparse overlap of an output chunk's known concepts ``{id: weight}`` with a training
    chunk's (ids (k,), weights (k,)): sum over shared ids of the smaller weight."""
    return float(
        sum(
            min(output[int(c)], float(w))
            for c, w in zip(train_ids.tolist(), train_weights.tolist(), strict=True)
            if int(c) in output
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


def rerank_order(scores: Sequence[float]) -> list[int]:
    """Positions of ``scores`` (one per candidate, in ANN order), best first; ties keep
    the ANN order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))
