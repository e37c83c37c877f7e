"""FAISS science of the index, free of stage bookkeeping: the factory chosen from the
vector count, dimension and memory budget (:func:`choose_factory`), optional whitening,
training an empty index on a sample, reading embedding parts as float32 vectors.
"""

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from tda.attribution.io.fs import (
    open_parquet,
)
from tda.attribution.io.parts import (
    ROW_GROUP_ROWS,
    StageError,
)
from tda.schemas import (
    vectors_from_arrow,
)

__all__ = [
    "DEFAULT_REFINE",
    "FLAT_MAX",
    "MEASURED_RECALL",
    "RECALL_TARGET",
    "FactoryChoice",
    "IndexRunError",
    "build_empty_index",
    "bytes_per_vector",
    "choose_factory",
    "faiss_metric",
    "group_files",
    "iter_embedding_file",
    "refine_for",
    "sample_vectors",
    "split_files",
    "train_index",
    "whitened",
    "widen",
]


class IndexRunError(StageError):
    """The build root cannot take this index run (one line naming the fix)."""


# Up to this many vectors an exact flat index is fast enough and needs no training.
FLAT_MAX = 20_000
# faiss's k-means warns (and clusters poorly) with fewer training points per centroid
_MIN_PER_LIST = 39


def _pow2(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(1.0, x))))


# recall@10 against exact search at the default nprobe, by the codes a factory stores,
# measured without a re-rank (docs/scale.md; 1M x 256-d clustered vectors):
# benchmarks/bench_index.py (SQfp16), benchmarks/bench_index_pq.py (PQ64: 0.54 at every
# nprobe 16-512; benchmarks/bench_index_scale.py: 0.53 at 10M x 256-d, nprobe 16-256).
MEASURED_RECALL = {"Flat": 1.0, "SQfp16": 0.978, "PQ": 0.544}
RECALL_TARGET = 0.95
# The re-rank a factory gets when its codes alone measured below the target: float16
# codes of the stored vectors, memory-mapped beside each shard (docs/scale.md: against
# sq8 and the embeddings table, by recall and latency at 10M vectors).
DEFAULT_REFINE = "fp16"


class FactoryChoice(NamedTuple):
    """What :func:`choose_factory` picks: FAISS factory string, default nprobe, training
    vectors, and the exact re-rank (``"none"`` or one of the stored codes)."""

    factory: str
    nprobe: int
    train: int
    refine: str


def refine_for(factory: str) -> str:
    """The re-rank ``factory`` needs: :data:`DEFAULT_REFINE` when the codes it stores (its
    last component: ``PQ64``, ``SQfp16``, ``Flat``) measured recall@10 below
    :data:`RECALL_TARGET` (or were never measured and are lossy: any PQ), else ``"none"``."""
    codes = factory.split(",")[-1].strip()
    family = "PQ" if "PQ" in codes else codes
    recall = MEASURED_RECALL.get(family, 0.0 if family == "PQ" else 1.0)
    return DEFAULT_REFINE if recall < RECALL_TARGET else "none"


def choose_factory(n: int, dim: int, memory_budget: int) -> FactoryChoice:
    """(vector count, dimension, bytes one worker may hold) -> :class:`FactoryChoice`.

    The autofaiss way: exact ``Flat`` when small; ``IVF{nlist},SQfp16`` while the vectors
    fit the budget (fp16 codes lose nothing: the embeddings are stored in fp16; nlist ~
    4 sqrt(n), a power of two; nprobe = nlist / 8, which keeps recall@10 >= 0.95 on
    clustered embeddings); beyond that an HNSW coarse quantizer with OPQ + PQ codes of 64
    bytes (or dim/4 when smaller), ``OPQ{m}_{d},IVF{nlist}_HNSW32,PQ{m}``, whose codes
    alone measured recall@10 0.54, so it always comes with an exact re-rank of
    k x 10 candidates (:func:`refine_for`); its nprobe is nlist / 256 (at least 16): at
    10M vectors (16,384 lists) the fp16 re-rank's recall@10 was 0.983 at every nprobe
    from 16 to 256 while p50 grew from 4.0 ms at 64 to 11.0 ms at 256 on 2 cores, so
    the re-rank needs the right lists, not more of them (docs/scale.md). Training takes
    64 vectors per list (at least 10,000, at most n); nlist is lowered to a power of two
    that n can train with at least 39 vectors per list.
    """
    if n <= FLAT_MAX:
        return FactoryChoice("IDMap2,Flat", 1, 0, "none")
    nlist = min(65536, max(64, _pow2(4 * math.sqrt(n))))
    # k-means wants >= 39 points per centroid (faiss warns below): a smaller power of two
    # when n cannot train the list count above (n just past a power of 4)
    nlist = max(64, min(nlist, 2 ** int(math.log2(n / _MIN_PER_LIST))))
    train = min(n, max(10_000, 64 * nlist))
    if n * (2 * dim + 8) <= memory_budget:
        factory = f"IVF{nlist},SQfp16"
        return FactoryChoice(factory, max(16, nlist // 8), train, refine_for(factory))
    m = 64 if dim >= 256 else max(4, dim // 4)
    while dim % m:
        m -= 1
    factory = f"OPQ{m}_{dim},IVF{nlist}_HNSW32,PQ{m}"
    return FactoryChoice(factory, max(16, nlist // 256), train, refine_for(factory))


def whitened(factory: str, dim: int) -> str:
    """``factory`` with ``PCAW{dim},L2norm`` in front (after an ``IDMap``/``IDMap2``, which
    must stay outermost): ``"IDMap2,Flat"`` -> ``"IDMap2,PCAW128,L2norm,Flat"``."""
    parts = factory.split(",")
    at = 1 if parts[0].startswith("IDMap") else 0
    return ",".join([*parts[:at], f"PCAW{dim}", "L2norm", *parts[at:]])


def faiss_metric(name: str) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if name == "ip" else faiss.METRIC_L2


def widen(vectors: np.ndarray) -> np.ndarray:
    """float16 (n, D) -> float32 (n, D), exactly (subnormals and infinities included).

    FAISS's fp16 scalar quantizer decodes with F16C in its own threads: 2.5x faster than
    numpy's ``astype`` (1.2 vs 3 ms per 8,192 x 256 batch), and no second thread pool
    competing with FAISS's (torch's cast is faster alone but its spinning OpenMP workers
    slowed the adds)."""
    import faiss

    n, dim = vectors.shape
    quantizer = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
    codes = np.ascontiguousarray(vectors, dtype=np.float16).view(np.uint8)
    return quantizer.decode(codes.reshape(n, 2 * dim))


def iter_embedding_file(fs, path: str, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An embeddings part -> (ids (n,) int64, vectors (n, D) float32) per row group."""
    with open_parquet(fs, path) as parquet:
        # One thread: FAISS keeps the cores busy, and the two columns decode in ~ms.
        for batch in parquet.iter_batches(
            columns=["chunk_id", "vector"], batch_size=ROW_GROUP_ROWS, use_threads=False
        ):
            ids = batch.column(0).to_numpy().astype(np.int64)
            yield ids, widen(vectors_from_arrow(batch.column(1), dim))


def train_index(index, sample: np.ndarray) -> None:
    """Train ``index`` on ``sample`` (n, D). With faiss-gpu and a visible GPU, the IVF
    coarse k-means runs on the GPUs (faiss's clustering_index recipe); the trained index
    is the same kind of CPU index either way."""
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        with contextlib.suppress(RuntimeError):  # not an IVF index: train on CPU
            ivf = faiss.extract_index_ivf(index)
            flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)
    index.train(sample)


def build_empty_index(factory: str, dim: int, metric: str):
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise IndexRunError(
            f"--factory {factory!r} is not a FAISS factory string: {first}"
        ) from None


def bytes_per_vector(index, dim: int) -> int:
    """Bytes a vector takes in a filled index: its code (IVF) or raw floats, plus its id."""
    import faiss

    try:
        code = faiss.extract_index_ivf(index).code_size
    except RuntimeError:  # not an IVF index
        code = 4 * dim
    return int(code) + 8


def group_files(counts: list[tuple[int, int]], target: int) -> list[tuple[int, ...]]:
    """(file index, vectors) in file order -> groups of consecutive files of at most
    ``target`` vectors each (a single larger file forms its own group)."""
    groups: list[list[int]] = [[]]
    size = 0
    for index, n in counts:
        if groups[-1] and size + n > target:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += n
    return [tuple(g) for g in groups]


def split_files(counts: list[tuple[int, int]], shards: int) -> list[tuple[int, ...]]:
    """(file index, vectors) in file order -> ``shards`` groups of consecutive files with
    balanced vector counts (fewer when there are fewer files): a file goes to the group
    its middle vector falls in."""
    total = max(1, sum(n for _, n in counts))
    groups: dict[int, list[int]] = {}
    cum = 0
    for index, n in counts:
        g = min(shards - 1, int((cum + n / 2) * shards // total))
        groups.setdefault(g, []).append(index)
        cum += n
    return [tuple(groups[g]) for g in sorted(groups)]


def sample_vectors(fs, root, plan_files: list[tuple[int, int]], dim: int, size: int) -> np.ndarray:
    """``size`` vectors evenly spaced over all vectors in file order (deterministic)."""
    total = sum(n for _, n in plan_files)
    wanted = np.unique((np.arange(size, dtype=np.int64) * total) // max(1, size))
    out, offset, pos = [], 0, 0
    for index, n in plan_files:
        if n == 0:
            continue
        for _, vectors in iter_embedding_file(fs, root.embed_part(index), dim):
            lo, hi = offset, offset + len(vectors)
            stop = int(np.searchsorted(wanted, hi))
            if stop > pos:
                out.append(vectors[wanted[pos:stop] - lo])
                pos = stop
            offset = hi
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
