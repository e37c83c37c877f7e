"""The exact-span channel: the maximal spans of a query found verbatim in training data
(OLMoTrace's "maximal matching spans") and the training chunks they fall in.

Each index shard gets one suffix table over its training tokens (``tokengrams``, MIT, Rust
suffix tables over memory-mapped files), so the question "does this n-gram occur, where, how
often" costs a binary search over the shard instead of a scan. Three files per shard,
written by :func:`build_span_shard` on the worker that fills the shard:

* ``{stem}.tokens``: every segment's token ids (little-endian u16 when ``vocab_size + 1 <=
  2**16``, else u32, which is how tokengrams picks its width from the ``vocab`` it is
  given: we pass ``vocab_size + 1``), each segment followed by one separator id
  ``vocab_size``. No query token equals the separator, so no match crosses a document or
  the gap a pruned run of chunks left;
* ``{stem}.table``: the suffix table (u64 per token, tokengrams' format);
* ``{stem}.chunks.npy``: (3, m) int64 ``[chunk_id, start, end]`` of every chunk as token
  positions in the tokens file, sorted by (start, end, chunk id).

So a shard costs 10 bytes per token with u16 ids (2 tokens + 8 table), 12 with u32, plus
24 bytes per chunk. :class:`SpanShard` memory-maps them; :class:`SpanIndex` searches all
shards of an index: :meth:`SpanIndex.maximal_spans` finds the spans, and
:meth:`SpanIndex.search` turns them into the chunks they support (see :class:`SpanHit` for
the score).

Library facts this module relies on (tokengrams 0.3.3, checked in the tests or measured):

* its calls hold the GIL (its pyo3 bindings never call ``allow_threads``): a table build
  stops every other Python thread of the process for its duration, and query threads do
  not run in parallel. Measured on 2 shared cores, 4 shards of 0.75M tokens: 3.2 ms per
  :meth:`SpanIndex.maximal_spans` in one thread, 4.1 ms with 4, so :class:`SpanIndex`
  searches shards in the calling thread unless given ``threads``;
* its build prints ``Sorting indices...`` to stdout whatever ``verbose`` says (Rust
  ``println!``): the build runs with stdout sent to /dev/null
  (:func:`~.span_tables.redirected`);
* its build sorts suffixes by comparison (parallel quicksort, not SA-IS): 4-12M tokens/s
  on random ids (2 shared cores), but a long passage repeated many times in one shard is
  slow (a 20k-token document 10 times in 3M tokens: 11 s instead of 0.2 s), so exact
  duplicate documents are best removed before indexing;
* opening a table checks that it is sorted (``assert!(table.is_sorted())`` in
  ``MemmapIndex::new``): a full pass over the table and its tokens, GIL held (0.02-0.2 s
  for a 3M-token shard on 2 shared cores, so minutes for billions of tokens); a table that
  fails it is a Rust panic, reported here as :class:`SpanError`;
* a query id that does not fit the token width is silently dropped from the query (which
  would join the ids around it), so ids outside [0, vocab_size) never reach it;
* concurrent readers are safe: a ``MemmapIndex`` is ``Send + Sync`` and every query method
  takes ``&self``; :class:`SpanShard` and :class:`SpanIndex` hold no mutable state after
  they are built (the optional thread pool is created once, under a lock).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .span_tables import (
    TABLE_BYTES,
    Segment,
    SpanError,
    build_span_shard,
    check_vocab,
    first_line,
    library_failure,
    redirected,
    token_width,
    tokengrams_module,
)

__all__ = [
    "DEFAULT_MAX_COUNT",
    "DEFAULT_MAX_LEN",
    "DEFAULT_MIN_LEN",
    "Segment",
    "SpanError",
    "SpanHit",
    "SpanIndex",
    "SpanMatch",
    "SpanShard",
    "build_span_shard",
    "rarity",
]

# A maximal span shorter than this is a common phrase, not evidence of a source.
DEFAULT_MIN_LEN = 6
# A span found in more places than this is boilerplate (licence text, navigation).
DEFAULT_MAX_COUNT = 1000
# Longest span searched for, in tokens: above the usual query (64 tokens of context plus a
# 64-token chunk), so it never cuts a span there, and a bound on the search's cost when
# a long query is copied verbatim from training data.
DEFAULT_MAX_LEN = 256

# --------------------------------------------------------------------------------------
# One shard


class SpanShard:
    """One shard's span files, memory-mapped (tokengrams MemmapIndex + the chunks array via
    np.load(mmap_mode='r')). Read-only after :meth:`open`: safe for concurrent readers."""

    def __init__(
        self, index: Any, chunks: np.ndarray, n_tokens: int, vocab_size: int, name: str
    ) -> None:
        self._index = index
        self._chunk_ids = chunks[0]
        self._starts = chunks[1]
        self._ends = chunks[2]
        self.n_tokens = n_tokens
        self.vocab_size = vocab_size
        self.name = name
        # Chunks are sorted by start but their ends need not be (a short last chunk of a
        # document before a long chunk): the longest chunk bounds how far before a match a
        # chunk overlapping it can start.
        self._longest_chunk = int((self._ends - self._starts).max()) if len(self._starts) else 0

    @classmethod
    def open(
        cls, tokens_path: str, table_path: str, chunks_path: str, vocab_size: int
    ) -> SpanShard:
        """Memory-map one shard's files (as :func:`build_span_shard` wrote them with the same
        ``vocab_size``); a missing file, one whose size, separator or chunk table does not
        fit, or a suffix table that is not sorted raises :class:`SpanError`. Costs a pass
        over the table (tokengrams checks it is sorted, see the module)."""
        vocab_size = check_vocab(vocab_size)
        width = token_width(vocab_size)
        for path in (tokens_path, table_path, chunks_path):
            if not os.path.isfile(path):
                raise SpanError(f"span file {path} not found: rebuild the index's span channel")
        size = os.path.getsize(tokens_path)
        if size == 0 or size % width.itemsize:
            raise SpanError(
                f"span tokens {tokens_path} has {size} bytes, not a positive multiple of "
                f"{width.itemsize} ({width.itemsize * 8}-bit ids for vocab_size {vocab_size}): "
                f"a truncated file or another vocab_size"
            )
        n_tokens = size // width.itemsize
        with open(tokens_path, "rb") as f:
            f.seek(size - width.itemsize)
            last = int(np.frombuffer(f.read(width.itemsize), dtype=width)[0])
        if last != vocab_size:
            raise SpanError(
                f"span tokens {tokens_path} does not end with the separator {vocab_size} "
                f"(found {last}): a truncated file or another vocab_size"
            )
        table_size = os.path.getsize(table_path)
        if table_size != n_tokens * TABLE_BYTES:
            raise SpanError(
                f"span table {table_path} has {table_size} bytes, expected "
                f"{n_tokens * TABLE_BYTES} for {n_tokens} tokens: rebuild the span channel"
            )
        chunks = _load_chunks(chunks_path, n_tokens)
        try:
            with redirected(2, None):
                index = tokengrams_module().MemmapIndex(tokens_path, table_path, vocab_size + 1)
        except BaseException as e:
            if not library_failure(e):
                raise
            raise SpanError(
                f"span table {table_path} cannot be opened ({first_line(e)}): a corrupted "
                f"file, rebuild the span channel"
            ) from None
        return cls(index, chunks, n_tokens, vocab_size, os.path.basename(tokens_path))

    def __repr__(self) -> str:
        return f"SpanShard({self.name!r}, tokens={self.n_tokens}, chunks={len(self._starts)})"

    def longest(self, query: Sequence[int], max_len: int) -> np.ndarray:
        """(L,) int64: for each start i of ``query`` (L token ids), the longest n <=
        ``max_len`` with ``query[i:i+n]`` in this shard (0 if ``query[i]`` never occurs;
        ids outside [0, vocab_size) never occur)."""
        tokens, reach = _prepare(query, self.vocab_size)
        return self._longest(tokens, reach, _positive(max_len, "max_len"), 0, len(tokens))

    def _longest(
        self, tokens: list[int], reach: np.ndarray, max_len: int, first: int, stop: int
    ) -> np.ndarray:
        """:meth:`longest` for starts [first, stop) (0 elsewhere). A prefix of a present
        n-gram is present, so each start is a search for the last "present" on a
        monotone line: from longest(i-1) - 1 (``query[i:i-1+longest(i-1)]`` is part of a
        present n-gram), one step up, then doubling steps, then bisection; one
        ``contains`` per start when the match just ends, O(log n) when it grows."""
        contains = self._index.contains
        out = np.zeros(len(tokens), dtype=np.int64)
        previous = 0
        for i in range(first, stop):
            cap = min(max_len, int(reach[i]) - i)
            known = min(max(previous - 1, 0), cap)  # query[i:i+known] is present
            absent = cap + 1  # query[i:i+absent] is not (or is past the cap)
            step = 1
            while known + step < absent:
                if contains(tokens[i : i + known + step]):
                    known += step
                    step *= 2
                else:
                    absent = known + step
            while absent - known > 1:
                middle = (known + absent) // 2
                if contains(tokens[i : i + middle]):
                    known = middle
                else:
                    absent = middle
            out[i] = known
            previous = known
        return out

    def count(self, span: Sequence[int]) -> int:
        """How many times ``span`` (token ids) occurs in this shard (0 for an empty span or
        one with an id outside [0, vocab_size))."""
        tokens, reach = _prepare(span, self.vocab_size)
        if not tokens or reach[0] < len(tokens):
            return 0
        return int(self._index.count(tokens))

    def occurrences(self, span: Sequence[int], limit: int) -> list[tuple[int, int, int]]:
        """Up to ``limit`` (chunk_id, start, end) for every chunk a match of ``span`` overlaps:
        [start, end) is the match's part inside the chunk, as token offsets within the chunk
        (clipped to it). Ordered by match position, then chunk start, end, id."""
        limit = int(limit)
        return [(c, s, e) for c, s, e, _ in self._overlaps(span, limit)]

    def _overlaps(self, span: Sequence[int], limit: int | None) -> list[tuple[int, int, int, int]]:
        """:meth:`occurrences` with a 4th field: the offset in ``span`` of the part inside
        the chunk (how a hit's query offsets are found)."""
        if limit is not None and limit <= 0:
            return []
        tokens, reach = _prepare(span, self.vocab_size)
        n = len(tokens)
        if not n or reach[0] < n or not len(self._starts):
            return []
        positions = np.sort(np.asarray(self._index.positions(tokens), dtype=np.int64))
        if not len(positions):
            return []
        # A chunk overlaps [p, p+n) when start < p+n and end > p; end <= start + longest
        # chunk, so only chunks starting in (p - longest chunk, p + n) can.
        lows = np.searchsorted(self._starts, positions - self._longest_chunk, side="right")
        highs = np.searchsorted(self._starts, positions + n, side="left")
        found: list[tuple[int, int, int, int]] = []
        for p, lo, hi in zip(positions.tolist(), lows.tolist(), highs.tolist(), strict=True):
            if lo == hi:
                continue
            starts = self._starts[lo:hi].tolist()
            ends = self._ends[lo:hi].tolist()
            ids = self._chunk_ids[lo:hi].tolist()
            for chunk, start, end in zip(ids, starts, ends, strict=True):
                if end <= p:
                    continue
                inside = max(p, start)
                found.append((chunk, inside - start, min(p + n, end) - start, inside - p))
                if limit is not None and len(found) >= limit:
                    return found
        return found


def _load_chunks(path: str, n_tokens: int) -> np.ndarray:
    try:
        chunks = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SpanError(f"span chunks {path} is not a .npy array: {first_line(e)}") from None
    if chunks.dtype != np.int64 or chunks.ndim != 2 or chunks.shape[0] != 3:
        raise SpanError(
            f"span chunks {path} holds {chunks.dtype} {chunks.shape}, expected int64 (3, m)"
        )
    starts, ends = chunks[1], chunks[2]
    if len(starts) and (
        np.any(np.diff(starts) < 0)
        or starts[0] < 0
        or np.any(ends < starts)
        or ends.max() > n_tokens
    ):
        raise SpanError(
            f"span chunks {path} are not sorted ranges inside the shard's {n_tokens} tokens: "
            f"rebuild the span channel"
        )
    return chunks


def _prepare(query: Sequence[int], vocab_size: int) -> tuple[list[int], np.ndarray]:
    """``query`` as a list of Python ints (what tokengrams takes) and ``reach`` (L,) int64:
    for each i, the first j >= i whose id is outside [0, vocab_size) (L if none): no
    match can include such an id, and none may reach tokengrams (a negative id is an
    OverflowError there, ``vocab_size`` would match a separator, and an id too wide for
    the file is dropped from the query, joining its neighbours)."""
    array = np.asarray(query)
    if array.size == 0:
        return [], np.zeros(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise SpanError(f"a span query must be a 1-D sequence of token ids, got {array.dtype}")
    array = array.astype(np.int64, copy=False)
    bad = np.flatnonzero((array < 0) | (array >= vocab_size))
    reach = np.full(len(array), len(array), dtype=np.int64)
    if len(bad):
        # reach[i] = the smallest bad index >= i
        reach = np.append(bad, len(array))[np.searchsorted(bad, np.arange(len(array)))]
    return array.tolist(), reach


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise SpanError(f"{what} must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# All shards


@dataclass(frozen=True)
class SpanMatch:
    """A maximal span of the query found in training data."""

    start: int  # query token offset (inclusive)
    end: int  # exclusive
    count: int  # occurrences over all shards


@dataclass(frozen=True)
class SpanHit:
    """One training chunk supported by the query's maximal spans, with its best evidence.

    ``score`` = ``length + rarity(count)`` with ``rarity(c) = 1 / (2 + ln c)`` in (0, 0.5]:
    the integer part is always the overlap length (a longer overlap always wins), and
    among equal lengths the rarer span wins (count 1 -> +0.5, 10 -> +0.23, 1000 -> +0.11).
    Nothing else enters it."""

    chunk_id: int
    score: float
    length: int  # tokens of the longest span overlap inside this chunk
    query_start: int  # that span's part inside the chunk, as query offsets [start, end)
    query_end: int
    chunk_start: int  # and as token offsets within the training chunk [start, end)
    chunk_end: int
    count: int  # occurrences of the span in the index


def rarity(count: int) -> float:
    """The tie-breaking term of :attr:`SpanHit.score`: 1 / (2 + ln count), in (0, 0.5]."""
    return 1.0 / (2.0 + math.log(max(int(count), 1)))


class SpanIndex:
    """The span shards of one index, searched together. ``threads``: search that many
    shards at once (default 1, the calling thread: tokengrams holds the GIL, so threads
    only pay off once it releases it; see the module). Safe for concurrent callers."""

    def __init__(self, shards: Sequence[SpanShard], threads: int | None = None) -> None:
        self.shards = tuple(shards)
        vocabs = {s.vocab_size for s in self.shards}
        if len(vocabs) > 1:
            raise SpanError(f"span shards disagree on vocab_size ({sorted(vocabs)})")
        self.vocab_size = vocabs.pop() if vocabs else 0
        self.threads = 1 if threads is None else _positive(threads, "threads")
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpanIndex({len(self.shards)} shards, threads={self.threads})"

    def _each(self, work: Callable[[SpanShard], Any]) -> list[Any]:
        """``work`` on every shard, in shard order (on the pool when threads > 1)."""
        if self.threads == 1 or len(self.shards) < 2:
            return [work(s) for s in self.shards]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(self.threads, len(self.shards)),
                    thread_name_prefix="tda-spans",
                )
        return list(self._pool.map(work, self.shards))

    def count(self, span: Sequence[int]) -> int:
        """Occurrences of ``span`` over all shards."""
        return sum(self._each(lambda s: s.count(span)))

    def longest(self, query: Sequence[int], max_len: int = DEFAULT_MAX_LEN) -> np.ndarray:
        """(L,) int64: for each start, the longest match over all shards (see
        :meth:`SpanShard.longest`)."""
        tokens, reach = _prepare(query, self.vocab_size)
        max_len = _positive(max_len, "max_len")
        return self._longest(tokens, reach, max_len, 0, len(tokens))

    def _longest(self, tokens, reach, max_len: int, first: int, stop: int) -> np.ndarray:
        found = self._each(lambda s: s._longest(tokens, reach, max_len, first, stop))
        return np.max(found, axis=0) if found else np.zeros(len(tokens), np.int64)

    def maximal_spans(
        self, query: Sequence[int], region: tuple[int, int], min_len: int,
        max_len: int = DEFAULT_MAX_LEN,
    ) -> list[SpanMatch]:  # fmt: skip
        """OLMoTrace's maximal matching spans of ``query`` (L token ids) that overlap
        ``region`` = [a, b) (the part of the query being attributed; tokens before ``a``
        are context a span may start in), sorted by start.

        The span at start i is [i, i + longest(i)) with longest over all shards; it is kept
        when it is not inside the span at i - 1 (longest(i-1) <= longest(i)), has at least
        ``min_len`` tokens, and overlaps the region. A match longer than ``max_len`` shows
        as a run of consecutive starts capped at ``max_len``, none inside another; of such a
        run only its first and last starts and those that are multiples of ``max_len`` are
        kept: windows that still tile the long match (a 10k-token verbatim passage costs
        ~40 spans, not 10k)."""
        tokens, reach = _prepare(query, self.vocab_size)
        a, b = _region(region, len(tokens))
        min_len = max(int(min_len), 1)
        max_len = _positive(max_len, "max_len")
        if a == b or not self.shards:
            return []
        # Starts before a - max_len + 1 cannot reach the region, starts from b cannot
        # overlap it; the start on either side of that range is searched too, for the
        # rules that look at a start's neighbours.
        first = max(0, a - max_len + 1)
        longest = self._longest(tokens, reach, max_len, max(0, first - 1), min(len(tokens), b + 1))
        kept: list[tuple[int, int]] = []
        for i in range(first, b):
            n = int(longest[i])
            before = int(longest[i - 1]) if i else 0
            if n == max_len:
                after = int(longest[i + 1]) if i + 1 < len(tokens) else 0
                if before == max_len and after == max_len and i % max_len:
                    continue
            elif before > n:
                continue
            if n >= min_len and i + n > a:
                kept.append((i, i + n))
        counts = [self.count(tokens[s:e]) for s, e in kept]
        return [SpanMatch(s, e, c) for (s, e), c in zip(kept, counts, strict=True)]

    def search(
        self, query: Sequence[int], region: tuple[int, int], k: int,
        min_len: int = DEFAULT_MIN_LEN, max_count: int = DEFAULT_MAX_COUNT,
        max_len: int = DEFAULT_MAX_LEN,
    ) -> list[SpanHit]:  # fmt: skip
        """The ``k`` training chunks best supported by the maximal spans of ``query`` that
        overlap ``region`` (see :meth:`maximal_spans`), best first.

        A span found more than ``max_count`` times is skipped (boilerplate); every
        occurrence of the others credits each chunk it overlaps with the part of the
        overlap that falls in ``region`` (a span across a chunk boundary credits both; a
        chunk that holds only the span's context part, e.g. the prompt before an output
        chunk, is not credited). A chunk keeps its longest overlap (then the rarer span,
        then the earlier one in the query): its :class:`SpanHit` and score (see there);
        ties between chunks go to the smaller chunk id."""
        k = int(k)
        if k <= 0:
            return []
        tokens, _ = _prepare(query, self.vocab_size)
        a, b = _region(region, len(tokens))
        best: dict[int, tuple[tuple[int, int, int, int], SpanHit]] = {}
        for match in self.maximal_spans(tokens, region, min_len, max_len):
            if match.count > max_count or match.count == 0:
                continue
            span = tokens[match.start : match.end]
            bonus = rarity(match.count)
            for overlaps in self._each(lambda s, span=span: s._overlaps(span, None)):
                for chunk, c0, c1, offset in overlaps:
                    q0 = match.start + offset
                    lo, hi = max(q0, a), min(q0 + (c1 - c0), b)  # the part in the region
                    if hi <= lo:
                        continue
                    c0, c1, q0 = c0 + (lo - q0), c0 + (hi - q0), lo
                    length = c1 - c0
                    key = (length, -match.count, -q0, -c0)
                    held = best.get(chunk)
                    if held is None or key > held[0]:
                        hit = SpanHit(
                            chunk, length + bonus, length, q0, q0 + length, c0, c1, match.count
                        )
                        best[chunk] = (key, hit)
        hits = sorted((h for _, h in best.values()), key=lambda h: (-h.score, h.chunk_id))
        return hits[:k]


def _region(region: tuple[int, int], length: int) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in region)
    except (TypeError, ValueError):
        raise SpanError(f"region must be a pair (start, end), got {region!r}") from None
    if not 0 <= a <= b <= length:
        raise SpanError(f"region [{a}, {b}) is not inside the query's {length} tokens")
    return a, b
