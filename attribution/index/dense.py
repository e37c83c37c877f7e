"""The dense channel's shared-quantizer layout, exact re-ranking and dimension reduction.

Layout (``IndexManifest.quantizer`` set): ``index/trained.faiss`` is the one trained
index: its pre-transforms (a PCA reduction, OPQ rotation, whitening) and the IVF coarse
quantizer with its centroids. Each ``shards/shard-N.faiss`` is the bare ``IndexIVF`` of
that shard, its quantizer replaced by an empty placeholder: only the inverted lists (codes
and ids) and the codes' own small parameters (PQ codebooks). A search:

1. applies the pre-transforms to the queries once: (q, D) -> (q, d);
2. searches the shared coarse quantizer once: the nprobe nearest lists, (q, nprobe);
3. scans those lists in every shard (``search_preassigned``, in parallel), asking each
   for ``k * factor`` candidates when a re-rank follows, and merges them exactly;
4. re-ranks the candidates (``refine``): decodes their stored codes (float16 or 8-bit
   scalar-quantized vectors in the transformed space, ``shards/shard-N.refine.npy``,
   rows in the order of the sorted ``shards/shard-N.ids.npy``, both memory-mapped) or
   reads their float16 vectors from the embeddings table, scores them exactly and keeps
   the best ``k``. This is FAISS's ``IndexRefine`` with its codes on disk, found by
   chunk id, so it also serves the merged variant.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from tda.attribution.io.fs import write_hashed
from tda.attribution.io.parts import StageError

__all__ = [
    "REFINE_FACTOR",
    "REFINE_FILE",
    "DenseSearch",
    "IndexReadError",
    "RefineStore",
    "RefineWriter",
    "apply_chain",
    "attach_quantizer",
    "exact_adder",
    "fit_reduction",
    "merge_topk",
    "open_dense",
    "refine_encoder",
    "refine_paths",
    "shard_lookup",
    "split_trained",
    "strip_quantizer",
    "train_dense",
]


# Candidates scanned per requested hit before the exact re-rank (k * factor): recall@10
# with PQ64 candidates measured 0.95+ from 10 (docs/scale.md, bench_index_scale.py).
class IndexReadError(StageError):
    """An index that cannot be used as asked (missing, corrupt, other encoder)."""


REFINE_FACTOR = 10
REFINE_FILE = "refine.faiss"
# The HNSW coarse quantizer's search breadth when a query picks its lists (the fill
# does not ask it: exact_adder). FAISS's default (16) put 9.4% of 10M vectors into a
# list other than their nearest centroid's, which no query reached at any nprobe:
# recall@10 stopped at 0.80 even with an exact re-rank (docs/scale.md). 128 finds the
# nearest centroid for 100% of a sample.
HNSW_EF_SEARCH = 128
_QTYPES = {"fp16": "QT_fp16", "sq8": "QT_8bit"}


def split_trained(index):
    """A trained or filled index -> (pre-transforms (list of VectorTransform), IndexIVF),
    or None when it has no IVF level to share (flat, IDMap)."""
    import faiss

    index = faiss.downcast_index(index)
    chain = []
    while isinstance(index, faiss.IndexPreTransform):  # (a reduction nests one in front)
        chain += [index.chain.at(i) for i in range(index.chain.size())]
        index = faiss.downcast_index(index.index)
    if not isinstance(index, faiss.IndexIVF):
        return None
    return chain, index


def widen_coarse_search(quantizer) -> None:
    """Raise an HNSW coarse quantizer's efSearch to :data:`HNSW_EF_SEARCH` (serialized
    with it); other quantizers are exact and left alone."""
    import faiss

    hnsw = faiss.downcast_index(quantizer)
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efSearch = max(hnsw.hnsw.efSearch, HNSW_EF_SEARCH)


def apply_chain(chain: Sequence, x: np.ndarray) -> np.ndarray:
    """x (n, D) float32 -> (n, d) float32 through the pre-transforms, in order."""
    for transform in chain:
        x = transform.apply(np.ascontiguousarray(x, dtype=np.float32))
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_adder(ivf) -> Callable[[np.ndarray, np.ndarray], None]:
    """The bare IVF ``ivf`` -> ``add(vectors, ids)``: vectors (n, d) float32, already
    through the pre-transforms, with ids (n,) int64, each put in the list of its exact
    nearest centroid. An HNSW coarse quantizer is not asked: at 16,384 centroids of 256
    dims its efSearch 128 took 0.55 ms a vector on one core where a flat product with the
    centroids takes 0.11 ms (efSearch 16: 0.10 ms, 11% misplaced;
    benchmarks/bench_coarse_assign.py). A flat
    quantizer is exact already: its IVF adds as FAISS does."""
    import faiss

    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexHNSW):
        return ivf.add_with_ids
    exact = faiss.IndexFlat(ivf.d, quantizer.metric_type)
    exact.add(quantizer.storage.reconstruct_n(0, quantizer.ntotal))

    def add(vectors: np.ndarray, ids: np.ndarray) -> None:
        # FAISS blocks the product itself (queries x centroids), so memory stays bounded
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        _, lists = exact.search(x, 1)
        lists = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
        ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    return add


def strip_quantizer(ivf, write: Callable[[object], None]) -> None:
    """Call ``write(ivf)`` with the IVF's coarse quantizer swapped for an empty one, so
    the written shard holds no copy of the shared centroids (restored afterwards). The
    placeholder's metric is inner product, so that reading an L2 IVFPQ shard does not try
    to precompute tables from centroids it does not have."""
    import faiss

    real, placeholder = ivf.quantizer, faiss.IndexFlat(ivf.d, faiss.METRIC_INNER_PRODUCT)
    ivf.quantizer = placeholder
    try:
        write(ivf)
    finally:
        ivf.quantizer = real


def attach_quantizer(ivf, quantizer) -> None:
    """Give a shard read from disk the shared quantizer (kept alive by the caller; the
    shard does not own it, nor the placeholder it drops, a few bytes)."""
    ivf.own_fields = False
    ivf.quantizer = quantizer


def fit_reduction(sample: np.ndarray, dim: int):
    """An uncentred PCA: sample (n, D) float32 -> a FAISS ``LinearTransform`` (D -> dim)
    onto the top ``dim`` eigenvectors of the second-moment matrix X^T X / n. Uncentred,
    because inner products of unit vectors are what is ranked: a centred PCA would rank
    by (q - mu).(x - mu), which reorders neighbours whenever the mean is not zero (and
    embeddings share a large mean). Deterministic: float64 eigh, each vector's sign
    fixed so that its largest entry is positive."""
    import faiss

    x = np.asarray(sample, dtype=np.float64)
    _, vectors = np.linalg.eigh(x.T @ x / max(1, len(x)))  # ascending
    top = vectors[:, ::-1][:, :dim].T  # (dim, D)
    signs = np.sign(top[np.arange(dim), np.argmax(np.abs(top), axis=1)])
    top *= signs[:, None]
    transform = faiss.LinearTransform(x.shape[1], dim, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(top, dtype=np.float32).ravel(), transform.A)
    transform.is_trained = True
    return transform


def refine_encoder(codes: str, dim: int, metric: int):
    """The scalar quantizer of the refine codes ("fp16" | "sq8") for d-dim vectors, as an
    empty ``IndexScalarQuantizer`` (sq8 must then be trained: per-dimension ranges)."""
    import faiss

    return faiss.IndexScalarQuantizer(dim, getattr(faiss.ScalarQuantizer, _QTYPES[codes]), metric)


def refine_paths(shard_path: str) -> tuple[str, str]:
    """``shards/shard-00003.faiss`` -> (its codes file, its ids file)."""
    stem = shard_path[: -len(".faiss")] if shard_path.endswith(".faiss") else shard_path
    return f"{stem}.refine.npy", f"{stem}.ids.npy"


class RefineWriter:
    """One shard's refine codes, written as they are added (never all in memory): rows of
    ``encoder.sa_encode`` codes in a local temporary ``.npy``, with their chunk ids beside
    them; :meth:`commit` sorts by id (already sorted when the files arrive in order) and
    streams both files to their place, hashed."""

    def __init__(self, encoder, n: int) -> None:
        self._encoder = encoder
        self._dir = tempfile.mkdtemp(prefix="tda-refine-")
        size = encoder.sa_code_size()
        self._codes = np.lib.format.open_memmap(
            f"{self._dir}/codes.npy", mode="w+", dtype=np.uint8, shape=(n, size)
        )
        self._ids = np.lib.format.open_memmap(
            f"{self._dir}/ids.npy", mode="w+", dtype=np.int64, shape=(n,)
        )
        self._n, self._pos = n, 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids (m,) int64, vectors (m, d) float32 (transformed: what the IVF holds)."""
        stop = self._pos + len(ids)
        self._codes[self._pos : stop] = self._encoder.sa_encode(vectors)
        self._ids[self._pos : stop] = ids
        self._pos = stop

    def commit(self, fs, codes_path: str, ids_path: str) -> list[tuple[str, str, int]]:
        """Write both files to ``fs``; -> [(path, sha256, size)] for codes and ids."""
        try:
            if self._pos != self._n:
                raise ValueError(f"refine codes: {self._pos} rows added, {self._n} expected")
            if self._n > 1 and not bool(np.all(self._ids[1:] > self._ids[:-1])):
                order = np.argsort(self._ids, kind="stable")
                self._ids[:] = self._ids[order]
                self._codes[:] = self._codes[order]
            written = []
            for local, path in (("codes", codes_path), ("ids", ids_path)):
                getattr(self, f"_{local}").flush()
                written.append((path, *write_hashed(fs, path, _copier(f"{self._dir}/{local}.npy"))))
            return written
        finally:
            self.close()

    def close(self) -> None:
        self._codes = self._ids = None
        shutil.rmtree(self._dir, ignore_errors=True)


def _copier(local: str):
    def produce(write) -> None:
        with open(local, "rb") as f:
            while block := f.read(1 << 24):
                write(block)

    return produce


class RefineStore:
    """Exact re-ranking of candidates by chunk id.

    ``decoder``: the trained ``IndexScalarQuantizer`` of the codes (None: ``vectors`` is
    used instead). ``shards``: per shard (its codes file, its ids file), local paths,
    memory-mapped. ``shard_of``: chunk ids (m,) -> shard numbers (m,). ``vectors``:
    chunk id -> its stored (D,) vector (the embeddings-table re-rank), then transformed
    by ``chain``."""

    def __init__(self, metric: str, decoder=None, shards=(), shard_of=None, vectors=None,
                 chain=()) -> None:  # fmt: skip
        self.metric = metric
        self._decoder = decoder
        self._ids = [np.load(i, mmap_mode="r") for _, i in shards]
        self._codes = [np.load(c, mmap_mode="r") for c, _ in shards]
        self._shard_of = shard_of
        self._vectors = vectors
        self._chain = chain

    def _gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids (m,) -> (vectors (m, d) float32, found (m,) bool)."""
        if self._decoder is None:
            found = ids >= 0
            raw = [self._vectors(int(i)) for i in ids[found]]
            out = np.zeros((len(ids), 0), np.float32)
            if raw:
                got = apply_chain(self._chain, np.stack(raw))
                out = np.zeros((len(ids), got.shape[1]), np.float32)
                out[found] = got
            return out, found
        code_size = self._codes[0].shape[1] if self._codes else 0
        codes = np.zeros((len(ids), code_size), np.uint8)
        found = np.zeros(len(ids), bool)
        shard = self._shard_of(ids)
        for s in np.unique(shard[ids >= 0]):
            at = np.flatnonzero((shard == s) & (ids >= 0))
            stored = self._ids[s]
            rows = np.searchsorted(stored, ids[at])
            ok = rows < len(stored)
            ok[ok] = stored[rows[ok]] == ids[at][ok]
            codes[at[ok]] = self._codes[s][rows[ok]]  # reads only those rows' pages
            found[at[ok]] = True
        return self._decoder.sa_decode(codes), found

    def rerank(self, queries: np.ndarray, ids: np.ndarray, k: int):
        """queries (q, d) float32 (transformed), candidate ids (q, c) (-1 = none) ->
        (scores (q, k), ids (q, k)), best first by the exact metric on the stored
        vectors, ties by smaller id; empty slots are id -1."""
        q, c = ids.shape
        vectors, found = self._gather(ids.reshape(-1))
        vectors = vectors.reshape(q, c, -1)
        if self.metric == "l2":
            scores = np.sum((vectors - queries[:, None, :]) ** 2, axis=2)
            key = scores.copy()
        else:
            scores = np.einsum("qcd,qd->qc", vectors, queries)
            key = -scores
        found = found.reshape(q, c)
        key = np.where(found, key, np.inf)
        order = np.lexsort((ids, key), axis=-1)[:, :k]
        out_s = np.take_along_axis(scores, order, 1).astype(np.float32)
        out_i = np.take_along_axis(ids, order, 1)
        out_i = np.where(np.isinf(np.take_along_axis(key, order, 1)), -1, out_i)
        if out_i.shape[1] < k:  # fewer candidates than k
            pad = k - out_i.shape[1]
            out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
        return out_s, out_i


def train_dense(probe, sample, reduce: int | None, refine: str) -> tuple[bytes, bytes | None]:
    """The empty index ``probe`` trained on ``sample`` (n, D) float32 (None when nothing
    needs training) -> (the trained index, with an uncentred PCA to ``reduce`` dimensions
    in front when set; the trained encoder of the ``refine`` codes ("fp16" / "sq8") or
    None), serialized: the FAISS objects chained here live only in this call."""
    import faiss

    from .build import train_index

    index, reduction, encoder = probe, None, None
    if reduce is not None:
        reduction = fit_reduction(sample, reduce)
        sample = reduction.apply(np.ascontiguousarray(sample, dtype=np.float32))
    if not probe.is_trained:
        train_index(probe, sample)
    shared = split_trained(probe)
    if shared is not None:
        widen_coarse_search(shared[1].quantizer)
    if refine in _QTYPES and shared is not None:
        chain, ivf = shared
        encoder = refine_encoder(refine, ivf.d, ivf.metric_type)
        if not encoder.is_trained:  # sq8: per-dimension ranges, in the IVF's space
            encoder.train(apply_chain(chain, sample))
        encoder = faiss.serialize_index(encoder).tobytes()
    if reduction is not None:  # (nested in front of any pre-transform of the factory)
        index = faiss.IndexPreTransform(reduction, probe)
    return faiss.serialize_index(index).tobytes(), encoder


def shard_lookup(codec, shards) -> Callable[[np.ndarray], np.ndarray]:
    """chunk ids (m,) -> the shard (m,) holding each (-1: none), from the ids' input file
    index (``codec``'s bit fields) and each shard's embedding files."""
    last = max((f for s in shards for f in s.embed_files), default=0)
    table = np.full(last + 1, -1, np.int64)
    for number, shard in enumerate(shards):
        table[list(shard.embed_files)] = number
    mask = (1 << codec.file_bits) - 1

    def lookup(ids: np.ndarray) -> np.ndarray:
        files = (np.asarray(ids, np.int64) >> codec.ordinal_bits) & mask
        inside = (ids >= 0) & (files <= last)
        return np.where(inside, table[np.minimum(files, last)], -1)

    return lookup


class DenseSearch:
    """Search over IVF shards sharing one trained quantizer (see the module): ``chain``
    and ``quantizer`` from ``trained.faiss``; ``shards`` the IndexIVF of each shard (the
    shared quantizer attached); ``refine`` a :class:`RefineStore` or None; ``factor``
    candidates per hit; ``pool`` a thread pool for the shards."""

    def __init__(self, chain, quantizer, shards, metric: str, refine=None, factor: int = 1,
                 pool=None, keep=()) -> None:  # fmt: skip
        self.chain, self.quantizer, self.shards = chain, quantizer, shards
        self.metric, self.refine, self.factor = metric, refine, max(1, factor)
        self._pool = pool
        self._keep = keep  # FAISS objects the shards point into (the trained index)

    def search(self, queries: np.ndarray, k: int, nprobe: int):
        """queries (q, D) float32 -> (scores (q, k), ids (q, k)), best first."""
        import faiss

        x = apply_chain(self.chain, queries)  # (q, d)
        nprobe = min(int(nprobe), self.shards[0].nlist)
        wanted = k * self.factor if self.refine is not None else k
        coarse_d, coarse_i = self.quantizer.search(x, nprobe)
        params = faiss.SearchParametersIVF(nprobe=nprobe)

        def one(ivf):
            return _search_preassigned(ivf, x, wanted, coarse_i, coarse_d, params)

        if len(self.shards) == 1 or self._pool is None:
            results = [one(ivf) for ivf in self.shards]
        else:
            results = list(self._pool.map(one, self.shards))
        scores, ids = merge_topk(
            np.stack([r[0] for r in results]), np.stack([r[1] for r in results]), wanted,
            self.metric,
        )  # fmt: skip
        if self.refine is None:
            return scores, ids
        return self.refine.rerank(x, ids, k)


def open_dense(manifest, local, shards, merged: bool, vectors, pool) -> DenseSearch:
    """The :class:`DenseSearch` of an opened index. ``manifest``: its IndexManifest;
    ``local``: relative path -> checked local path; ``shards``: the shard indexes read
    (memory-mapped), or ``[merged index]`` with ``merged``; ``vectors``: chunk id -> its
    (D,) stored vector (the ``embeddings`` re-rank); ``pool``: threads for the shards."""
    import faiss

    keep: list = [shards]
    if merged:  # the merged variant is whole: quantizer and lists in one index
        split = split_trained(shards[0])
        if split is None:
            raise IndexReadError("the merged index has no IVF level to re-rank from")
        chain, ivf = split
        quantizer, ivfs = ivf.quantizer, [ivf]
    else:
        trained = faiss.read_index(local(manifest.quantizer))
        split = split_trained(trained)
        if split is None:
            raise IndexReadError(f"index/{manifest.quantizer} holds no IVF quantizer to share")
        chain, shared = split
        quantizer, ivfs = shared.quantizer, []
        widen_coarse_search(quantizer)  # (an index built before the wider search)
        keep.append(trained)
        for number, shard in enumerate(shards):
            found = split_trained(shard)
            if found is None or found[1].nlist != shared.nlist:
                raise IndexReadError(
                    f"index/{manifest.shards[number].path} is not an IVF shard of "
                    f"index/{manifest.quantizer}; rebuild with `tda index build --overwrite`"
                )
            attach_quantizer(found[1], quantizer)
            ivfs.append(found[1])
    refine = manifest.refine or {}
    store = None
    if refine.get("codes") in _QTYPES:
        decoder = faiss.read_index(local(refine["file"]))
        files = [tuple(local(p) for p in refine_paths(s.path)) for s in manifest.shards]
        lookup = shard_lookup(manifest.id_codec, manifest.shards)
        store = RefineStore(manifest.metric, decoder, files, lookup)
    elif refine.get("codes") == "embeddings":
        store = RefineStore(manifest.metric, vectors=vectors, chain=chain)
    factor = int(refine.get("factor", 1))
    return DenseSearch(chain, quantizer, ivfs, manifest.metric, store, factor, pool, keep)


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int, metric: str):
    """Exact merge of per-shard results.

    scores, ids: (S, q, k_s) per shard (ids -1 = empty slot). Returns (q, k) scores and ids,
    best first (largest inner product / smallest L2), ties broken by smaller id."""
    S, q, ks = scores.shape
    flat_s = scores.transpose(1, 0, 2).reshape(q, S * ks)
    flat_i = ids.transpose(1, 0, 2).reshape(q, S * ks)
    key = -flat_s if metric == "ip" else flat_s.copy()
    key = np.where(flat_i < 0, np.inf, key)
    order = np.lexsort((flat_i, key), axis=-1)[:, :k]
    out_s = np.take_along_axis(flat_s, order, 1)
    out_i = np.take_along_axis(flat_i, order, 1)
    out_i = np.where(np.take_along_axis(key, order, 1) == np.inf, -1, out_i)
    return out_s, out_i


def _search_preassigned(ivf, queries, k: int, coarse_i, coarse_d, params):
    """``ivf.search_preassigned`` with per-call parameters: FAISS's Python wrapper refuses
    ``params`` and checks the coarse width against the shared ``ivf.nprobe``, so call the
    C++ method, which reads nprobe from ``params``. queries (q, D) float32, coarse_i /
    coarse_d (q, nprobe) -> (scores (q, k), ids (q, k))."""
    import faiss

    n = queries.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    coarse_i = np.ascontiguousarray(coarse_i, dtype=np.int64)
    coarse_d = np.ascontiguousarray(coarse_d, dtype=np.float32)
    ivf.search_preassigned_c(
        n, faiss.swig_ptr(queries), k, faiss.swig_ptr(coarse_i), faiss.swig_ptr(coarse_d),
        faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, params,
    )  # fmt: skip
    return scores, ids
