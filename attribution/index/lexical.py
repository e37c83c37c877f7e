"""The lexical channel: BM25 over words, sharded like the dense shards, scored corpus-wide.

Each index shard's chunks are turned into term postings on the worker that fills the shard
(:func:`build_lexical_shard`); a query is scored against every shard in its own thread and
the per-shard top-k merged exactly (:class:`LexicalIndex`).

Why raw counts and not a BM25 library's index: libraries such as bm25s or tantivy bake
per-index statistics (IDF, average length) into what they store, so shards built alone
would score on different scales. A shard here stores only what does not depend on the other
shards (which chunks hold a term, how often, how long each chunk is); the global statistics
are put together at query time for the query's few terms: a term's document frequency is the
sum of its per-shard ones, ``N`` and the average length come from per-shard totals. Scores
are therefore exactly those of one BM25 index over every chunk, however the chunks were
sharded (the tests check them against bm25s, one shard and three).

Scoring is Lucene's BM25 (bm25s ``method="lucene"``)::

    score(q, d) = sum over query words t in d of
                  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with a word repeated in the query counted once per occurrence, as bm25s does.

Terms are :func:`words` (lower-cased ``\\w+`` runs, the same rule as
``tda.attribution.rerank.words`` and the quality harness's BM25 baseline), stored as
:func:`term_hash` (BLAKE2b with an 8-byte digest of the word's UTF-8, read as a
little-endian uint64). Two different words share a hash with probability about
``V**2 / 2**65`` in a vocabulary of ``V`` words (about 3e-6 for ten million words); a
query word is mistaken for another one of the corpus with probability about ``V / 2**64``
(5e-13). Words sharing a hash are one term (their postings merged), which is the only
consequence.

A shard is six memory-mappable ``.npy`` files, ``{stem}.{role}.npy`` (a CSC-style term ->
chunk matrix):

* ``terms`` (V,) uint64: the shard's distinct term hashes, ascending;
* ``offsets`` (V + 1,) int64: term ``j``'s postings are ``[offsets[j], offsets[j + 1])``;
* ``postings`` (P,) uint32: row positions (into ``ids``) of the chunks holding the term,
  ascending within a term;
* ``tf`` (P,) uint16, or uint32 in a shard where some count does not fit 16 bits: how many
  times the term occurs in that chunk (never saturated, so scores stay exact);
* ``lengths`` (m,) uint32: each chunk's word count (BM25's ``|d|``);
* ``ids`` (m,) int64: the chunk ids, ascending.

Same chunks, same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tda.attribution.io.parts import StageError

__all__ = [
    "ROLES",
    "TERM_RULE",
    "LexicalError",
    "LexicalHit",
    "LexicalIndex",
    "LexicalShard",
    "build_lexical_shard",
    "term_hash",
    "term_hashes",
    "words",
]

# the shard's files, in the order they are written; each is ``{stem}.{role}.npy``
ROLES = ("terms", "offsets", "postings", "tf", "lengths", "ids")
# what the manifest can record of how terms were made (a reader with another rule must not
# read these files)
TERM_RULE = "lower-cased \\w+ words; blake2b digest_size=8 of UTF-8, little-endian uint64"

_WORD = re.compile(r"\w+")
_BLOCK_WORDS = 1 << 20  # words numbered at once while building (bounds the strings held)
_U16 = np.iinfo(np.uint16).max
_U32 = np.iinfo(np.uint32).max
_DTYPES = {
    "terms": (np.dtype("<u8"),),
    "offsets": (np.dtype("<i8"),),
    "postings": (np.dtype("<u4"),),
    "tf": (np.dtype("<u2"), np.dtype("<u4")),
    "lengths": (np.dtype("<u4"),),
    "ids": (np.dtype("<i8"),),
}


class LexicalError(StageError):
    """A lexical shard that cannot be built or read (one line naming the fix)."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+`` runs) of ``text``: the lexical channel's terms.

    The same rule as ``tda.attribution.rerank.words`` (the test checks it); defined here
    because ``index/`` may not import a top-level module of ``attribution/``."""
    return _WORD.findall(text.lower())


def term_hash(word: str) -> int:
    """A word's stored term: BLAKE2b (8-byte digest) of its UTF-8, as a little-endian
    uint64 (a Python int in ``[0, 2**64)``)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def term_hashes(terms: Sequence[str]) -> np.ndarray:
    """:func:`term_hash` of each word -> (len(terms),) uint64."""
    digests = b"".join(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest() for w in terms)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


# ---------------------------------------------------------------------------------------
# build


def build_lexical_shard(
    chunk_ids: np.ndarray, texts: Sequence[str], directory: str, stem: str
) -> dict[str, str]:
    """Write one shard's term postings into the local folder ``directory``.

    chunk_ids: (m,) int64, distinct (sorted here if they are not, their texts with them);
    texts: the m chunk texts (an empty text is a chunk of length 0 that no query finds).
    Returns {role: path} for every role in :data:`ROLES`, files ``{stem}.{role}.npy``
    (the layout is in the module docstring). Same input, same bytes."""
    ids = np.asarray(chunk_ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise LexicalError(
            f"lexical shard {stem}: chunk ids must be a 1-D integer array, got "
            f"{ids.dtype} of shape {ids.shape}"
        )
    ids = ids.astype(np.int64)
    m = len(ids)
    if len(texts) != m:
        raise LexicalError(f"lexical shard {stem}: {m} chunk ids but {len(texts)} texts")
    if m > _U32:
        raise LexicalError(f"lexical shard {stem}: {m} chunks is over 2**32 - 1; use more shards")
    order = np.argsort(ids, kind="stable")
    if m and np.any(np.diff(ids[order]) == 0):
        dup = int(ids[order][np.flatnonzero(np.diff(ids[order]) == 0)[0]])
        raise LexicalError(f"lexical shard {stem}: chunk id {dup} appears twice")
    if np.any(order != np.arange(m)):
        ids = ids[order]
        texts = [texts[i] for i in order.tolist()]

    # words -> local term numbers in order of first appearance, a block of words at a time
    # (the word strings of a block are dropped once numbered; only distinct words go
    # through Python code, the rest through dict lookups in C)
    vocab: dict[str, int] = {}
    local: list[np.ndarray] = []
    lengths = np.zeros(m, dtype=np.int64)
    block: list[str] = []
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise LexicalError(
                f"lexical shard {stem}: chunk {int(ids[row])} has no text ({type(text).__name__})"
            )
        found = _WORD.findall(text.lower())
        lengths[row] = len(found)
        block += found
        if len(block) >= _BLOCK_WORDS:
            local.append(_number(block, vocab))
            block = []
    local.append(_number(block, vocab))
    if np.any(lengths > _U32):
        raise LexicalError(f"lexical shard {stem}: a chunk has over 2**32 - 1 words")

    # local term -> position among the shard's distinct hashes (words sharing a hash merge)
    terms, rank = np.unique(term_hashes(list(vocab)), return_inverse=True)
    n_terms = len(terms)
    tokens = np.concatenate(local) if local else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(m, dtype=np.int64), lengths)
    if n_terms and m and n_terms > (2**63 - 1) // m:
        raise LexicalError(f"lexical shard {stem}: {n_terms} terms x {m} chunks; use more shards")
    # one key per (term, row), so sorting orders postings by term then row and counting
    # equal keys gives term frequencies
    keys, counts = np.unique(rank.astype(np.int64)[tokens] * max(m, 1) + rows, return_counts=True)
    term_of = keys // max(m, 1)
    postings = (keys - term_of * max(m, 1)).astype("<u4")
    offsets = np.zeros(n_terms + 1, dtype="<i8")
    np.cumsum(np.bincount(term_of, minlength=n_terms), out=offsets[1:])
    tf = counts.astype("<u2" if counts.size == 0 or counts.max() <= _U16 else "<u4")

    arrays = {
        "terms": terms.astype("<u8"),
        "offsets": offsets,
        "postings": postings,
        "tf": tf,
        "lengths": lengths.astype("<u4"),
        "ids": ids.astype("<i8"),
    }
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for role in ROLES:
        path = os.path.join(directory, f"{stem}.{role}.npy")
        np.save(path, np.ascontiguousarray(arrays[role]), allow_pickle=False)
        paths[role] = path
    return paths


def _number(block: list[str], vocab: dict[str, int]) -> np.ndarray:
    """Each word of ``block`` -> its number in ``vocab`` (new words appended) -> (n,) int64."""
    for w in dict.fromkeys(block):
        if w not in vocab:
            vocab[w] = len(vocab)
    return np.fromiter(map(vocab.__getitem__, block), np.int64, len(block))


# ---------------------------------------------------------------------------------------
# query


def _contribution(
    tf: np.ndarray, dl: np.ndarray, weight: float, avgdl: float, k1: float, b: float
) -> np.ndarray:
    """One term's BM25 terms (float64) for chunks with counts ``tf`` and lengths ``dl``;
    ``search`` and ``scores_for`` share it, so their scores are the same bits."""
    tf = tf.astype(np.float64)
    return weight * tf / (tf + k1 * (1.0 - b + b * dl.astype(np.float64) / avgdl))


class LexicalShard:
    """One shard's postings (see the module docstring for the arrays), memory-mapped by
    :meth:`open`. ``n_chunks``: m; ``total_length``: the sum of the chunks' word counts."""

    def __init__(self, arrays: dict[str, np.ndarray], name: str = "lexical shard") -> None:
        """arrays: {role: array} for every role in :data:`ROLES`, as the build wrote them;
        refused with a :class:`LexicalError` naming ``name`` when they do not fit."""
        self.name = name
        for role in ROLES:
            a = arrays.get(role)
            if a is None:
                raise LexicalError(f"{name} has no {role} array; rebuild the lexical channel")
            if a.ndim != 1 or a.dtype not in _DTYPES[role]:
                raise LexicalError(
                    f"{name}: {role} is {a.dtype} of shape {a.shape}, not a 1-D "
                    f"{' or '.join(str(d) for d in _DTYPES[role])} array; rebuild the "
                    f"lexical channel"
                )
        self.terms = arrays["terms"]
        self.offsets = arrays["offsets"]
        self.postings = arrays["postings"]
        self.tf = arrays["tf"]
        self.lengths = arrays["lengths"]
        self.ids = arrays["ids"]
        n_terms, n_post = len(self.terms), len(self.postings)
        if (
            len(self.offsets) != n_terms + 1
            or int(self.offsets[0]) != 0
            or int(self.offsets[-1]) != n_post
            or len(self.tf) != n_post
            or len(self.lengths) != len(self.ids)
        ):
            raise LexicalError(
                f"{name}: its arrays do not fit together ({n_terms} terms, "
                f"{len(self.offsets)} offsets ending at {int(self.offsets[-1])}, {n_post} "
                f"postings, {len(self.tf)} counts, {len(self.lengths)} lengths, "
                f"{len(self.ids)} ids); rebuild the lexical channel"
            )
        self.n_chunks = len(self.ids)
        self.total_length = int(self.lengths.sum(dtype=np.int64))

    @classmethod
    def open(cls, paths: dict[str, str]) -> LexicalShard:
        """Memory-map the files :func:`build_lexical_shard` wrote ({role: path})."""
        stems = {os.path.basename(p).split(".")[0] for p in paths.values()}
        name = f"lexical shard {'/'.join(sorted(stems)) or '?'}"
        arrays = {}
        for role in ROLES:
            path = paths.get(role)
            if path is None:
                raise LexicalError(f"{name} has no {role} file; rebuild the lexical channel")
            if not os.path.exists(path):
                raise LexicalError(f"{path} not found; the lexical channel is incomplete")
            try:
                # a plain ndarray view of the mapping: slicing an np.memmap builds a memmap
                # object per slice (measured: half of a query's time went there)
                arrays[role] = np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
            except (OSError, ValueError, EOFError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise LexicalError(
                    f"{path} is not a readable .npy array ({reason}); rebuild the lexical channel"
                ) from None
        return cls(arrays, name)

    def _locate(self, term_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q,) uint64 hashes -> (q,) positions in ``terms`` and (q,) bool: present."""
        h = np.asarray(term_hashes, dtype=np.uint64)
        pos = np.searchsorted(self.terms, h)
        found = pos < len(self.terms)
        found[found] = self.terms[pos[found]] == h[found]
        return pos, found

    def doc_freqs(self, term_hashes: np.ndarray) -> np.ndarray:
        """(q,) uint64 term hashes -> (q,) int64: how many of the shard's chunks hold each."""
        pos, found = self._locate(term_hashes)
        df = np.zeros(len(pos), dtype=np.int64)
        p = pos[found]
        df[found] = self.offsets[p + 1] - self.offsets[p]
        return df

    def score(
        self, term_hashes: np.ndarray, idf: np.ndarray, avgdl: float, k1: float, b: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 of every chunk holding at least one of the terms.

        term_hashes: (q,) uint64, distinct; idf: (q,) float64, each term's weight (its
        global IDF times how many times the query repeats it); avgdl, k1, b: BM25's
        (avgdl the corpus-wide average length). Returns chunk ids (n,) int64 ascending and
        their scores (n,) float32 (summed in float64 in term order, then rounded)."""
        pos, found = self._locate(term_hashes)
        rows_parts, score_parts = [], []
        for j in np.flatnonzero(found).tolist():
            s, e = int(self.offsets[pos[j]]), int(self.offsets[pos[j] + 1])
            rows = self.postings[s:e].astype(np.int64)
            rows_parts.append(rows)
            score_parts.append(
                _contribution(self.tf[s:e], self.lengths[rows], float(idf[j]), avgdl, k1, b)
            )
        if not rows_parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows = np.concatenate(rows_parts)
        weights = np.concatenate(score_parts)
        # bincount adds each row's contributions in array order, i.e. term order: the same
        # sum, bit for bit, as scores_for's term-by-term one. Many postings: sum into one
        # slot per chunk of the shard (O(m + P)); few: sort them first (O(P log P)).
        if 8 * len(rows) >= self.n_chunks:
            unique = np.flatnonzero(np.bincount(rows, minlength=self.n_chunks))
            sums = np.bincount(rows, weights=weights, minlength=self.n_chunks)[unique]
        else:
            unique, inverse = np.unique(rows, return_inverse=True)
            sums = np.bincount(inverse.ravel(), weights=weights)
        return np.asarray(self.ids[unique], dtype=np.int64), sums.astype(np.float32)

    def rows_of(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) int64 chunk ids -> (n,) int64 rows in this shard and (n,) bool: present."""
        cid = np.asarray(chunk_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, cid)
        present = pos < self.n_chunks
        present[present] = self.ids[pos[present]] == cid[present]
        return pos, present

    def term_counts(self, term_hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(q,) uint64 hashes, (n,) int64 rows of this shard -> (q, n) int64: how many times
        each term occurs in each of those chunks (0: absent)."""
        pos, found = self._locate(term_hashes)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(pos), len(rows)), dtype=np.int64)
        for j in np.flatnonzero(found).tolist():
            s, e = int(self.offsets[pos[j]]), int(self.offsets[pos[j] + 1])
            posting = self.postings[s:e]
            at = np.searchsorted(posting, rows)
            hit = at < len(posting)
            hit[hit] = posting[at[hit]] == rows[hit]
            out[j, hit] = self.tf[s + at[hit]]
        return out


@dataclass(frozen=True)
class LexicalHit:
    """A chunk the lexical channel found: its BM25 ``score`` and the query's words it holds
    (distinct, in the order the query first uses them)."""

    chunk_id: int
    score: float
    terms: tuple[str, ...]


@dataclass(frozen=True)
class _Query:
    """A query's distinct words present in the corpus, with their hashes (q,) uint64 and
    weights (q,) float64 (IDF times multiplicity), and BM25's avgdl."""

    terms: tuple[str, ...]
    hashes: np.ndarray
    weights: np.ndarray
    avgdl: float


class LexicalIndex:
    """Every shard of a lexical channel, searched as one corpus-wide BM25 index.

    shards: the opened shards (any chunk in at most one); k1, b: BM25's parameters;
    threads: how many shards are scored at once (None: one per shard up to the CPUs)."""

    def __init__(
        self, shards: Sequence[LexicalShard], k1: float = 1.2, b: float = 0.75,
        threads: int | None = None,
    ) -> None:  # fmt: skip
        if k1 < 0 or not 0 <= b <= 1:
            raise LexicalError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.shards = list(shards)
        self.k1 = float(k1)
        self.b = float(b)
        # default one thread: measured at 4 shards on 2 cores, threads were slower (15 vs
        # 11 ms a query); ``threads`` > 1 scores shards in parallel
        self.threads = threads or 1
        self.n_chunks = sum(s.n_chunks for s in self.shards)
        self.total_length = sum(s.total_length for s in self.shards)
        self.avgdl = self.total_length / self.n_chunks if self.n_chunks else 0.0

    def _query(self, text: str) -> _Query | None:
        """The query's scoring terms, or None when no chunk can match it."""
        if not self.total_length:
            return None
        counts: dict[str, int] = {}
        for w in words(text):
            counts[w] = counts.get(w, 0) + 1
        if not counts:
            return None
        hashes = term_hashes(list(counts))
        df = np.zeros(len(hashes), dtype=np.int64)
        for shard in self.shards:
            df += shard.doc_freqs(hashes)
        keep = df > 0
        if not keep.any():
            return None
        n = self.n_chunks
        idf = np.log(1.0 + (n - df[keep] + 0.5) / (df[keep] + 0.5))
        mult = np.array(list(counts.values()), dtype=np.float64)[keep]
        terms = tuple(w for w, k in zip(counts, keep.tolist(), strict=True) if k)
        return _Query(terms, hashes[keep], idf * mult, self.avgdl)

    def _shard_top(self, shard: LexicalShard, query: _Query, k: int):
        """The shard's best ``k`` (ids (n,) int64, scores (n,) float32), by score then id."""
        ids, scores = shard.score(query.hashes, query.weights, query.avgdl, self.k1, self.b)
        return _top(ids, scores, k)

    def _search(self, text: str, k: int, pool: Executor | None) -> list[LexicalHit]:
        if k < 0:
            raise LexicalError(f"k must be >= 0, got {k}")
        query = self._query(text) if k else None
        if query is None:
            return []
        if pool is None:
            per_shard = [self._shard_top(s, query, k) for s in self.shards]
        else:
            per_shard = list(pool.map(lambda s: self._shard_top(s, query, k), self.shards))
        ids = np.concatenate([p[0] for p in per_shard])
        scores = np.concatenate([p[1] for p in per_shard])
        where = np.concatenate(
            [np.full(len(p[0]), i, dtype=np.int64) for i, p in enumerate(per_shard)]
        )
        order = np.lexsort((ids, -scores))[:k]
        ids, scores, where = ids[order], scores[order], where[order]
        # which query words each hit holds, asked of its own shard
        held = np.zeros((len(order), len(query.terms)), dtype=bool)
        for i in np.unique(where).tolist():
            sel = np.flatnonzero(where == i)
            shard = self.shards[i]
            rows, _ = shard.rows_of(ids[sel])
            held[sel] = (shard.term_counts(query.hashes, rows) > 0).T
        return [
            LexicalHit(
                int(c), float(s), tuple(t for t, h in zip(query.terms, row, strict=True) if h)
            )
            for c, s, row in zip(ids.tolist(), scores.tolist(), held.tolist(), strict=True)
        ]

    def _pool(self) -> ThreadPoolExecutor | None:
        if self.threads <= 1 or len(self.shards) <= 1:
            return None
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tda-bm25")

    def search(self, text: str, k: int) -> list[LexicalHit]:
        """The ``k`` chunks with the highest corpus-wide BM25 for ``text``, best first, ties
        by smaller chunk id; only chunks holding at least one query word (so fewer than
        ``k`` when few do; none for a query without a corpus word)."""
        return self.search_many([text], k)[0]

    def search_many(self, texts: Sequence[str], k: int) -> list[list[LexicalHit]]:
        """:meth:`search` for each text (the shards' threads shared by all of them)."""
        pool = self._pool()
        try:
            return [self._search(t, k, pool) for t in texts]
        finally:
            if pool is not None:
                pool.shutdown()

    def scores_for(self, text: str, chunk_ids: Sequence[int]) -> np.ndarray:
        """BM25 of the given chunks for ``text`` -> (n,) float32 in their order (0 for a
        chunk holding no query word or in no shard); equal to :meth:`search`'s scores."""
        cid = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        total = np.zeros(len(cid), dtype=np.float64)
        query = self._query(text) if len(cid) else None
        if query is None:
            return total.astype(np.float32)
        for shard in self.shards:
            rows, present = shard.rows_of(cid)
            if not present.any():
                continue
            sel = np.flatnonzero(present)
            rows = rows[sel]
            counts = shard.term_counts(query.hashes, rows)
            dl = shard.lengths[rows]
            for j, weight in enumerate(query.weights.tolist()):
                has = counts[j] > 0
                total[sel[has]] += _contribution(
                    counts[j][has], dl[has], weight, query.avgdl, self.k1, self.b
                )
        return total.astype(np.float32)


def _top(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of (ids (n,), scores (n,)) by score then smaller id, in that order."""
    if len(ids) > k:
        # every chunk scoring at least the k-th best score (ties included) may be kept
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]
