"""Forward-pass windows and token-budget batches: each chunk is pooled from the first
window that holds it whole (:class:`~tda.schemas.ContextPolicy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tda.attribution.encoders.base import EncoderError
from tda.schemas import ContextPolicy

if TYPE_CHECKING:
    pass


__all__ = ["DocumentTokens", "Window", "batch_windows", "plan_windows"]

# --------------------------------------------------------------------------------------
# Windows and batches


@dataclass(frozen=True)
class DocumentTokens:
    """One document as the encoder sees it.

    ``ids``: (n,) token ids of the whole document; ``spans``: (m, 2) token [start, end)
    of its chunks, in chunk order (starts non-decreasing).
    """

    ids: np.ndarray
    spans: np.ndarray


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of document ``doc``; pools chunks [first, last) of that doc."""

    doc: int
    start: int
    end: int
    first: int
    last: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_windows(spans: np.ndarray, n_tokens: int, policy: ContextPolicy, doc: int = 0):
    """(m, 2) chunk token spans of one document -> list of :class:`Window`.

    Every chunk lands in exactly one window, the first that holds it whole; windows start
    on multiples of ``policy.align``. Raises EncoderError for a chunk longer than the
    window or one that does not start on the alignment grid.
    """
    window, context, align = policy.window, policy.context, policy.align
    starts, ends = spans[:, 0], spans[:, 1]
    if len(spans) and int((ends - starts).max()) > window:
        raise EncoderError(
            f"a chunk of {int((ends - starts).max())} tokens does not fit the {window}-token "
            f"window; raise --window or re-chunk with a smaller --chunk-size"
        )
    if align > 1 and len(spans) and bool((starts % align).any()):
        bad = int(starts[(starts % align) != 0][0])
        raise EncoderError(
            f"a chunk starts at token {bad}, off the model's {align}-token blocks; re-chunk "
            f"with --chunk-size and --stride multiples of {align}"
        )
    out: list[Window] = []
    first, m = 0, len(spans)
    start = 0
    while first < m:
        end = min(start + window, n_tokens)
        last = first
        while last < m and ends[last] <= end:
            last += 1
        out.append(Window(doc, start, end, first, last))
        first = last
        if first < m:
            head, tail = int(starts[first]), int(ends[first])
            # as much left context as asked, but the chunk must fit and the window move on
            fit = -(-(tail - window) // align) * align
            start = max((head - context) // align * align, start + align, fit)
    return out


def batch_windows(lengths: Sequence[int], batch_tokens: int, equal_length: bool):
    """Window lengths -> batches (lists of window indices), longest first.

    A batch's cost is ``len(batch) * its longest window`` tokens (padding included) and
    stays within ``batch_tokens``; a window longer than the budget forms a batch alone.
    With ``equal_length``, a batch never mixes lengths (no padding at all). Deterministic:
    ties keep input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]]
            fits = (len(current) + 1) * longest <= batch_tokens
            if not fits or (equal_length and lengths[i] != longest):
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
