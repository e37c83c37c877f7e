"""FAISS science of the index, free of stage bookkeeping: the factory chosen from the
vector count, dimension and memory budget (:func:`choose_factory`), optional whitening,
training an empty index on a sample, reading embedding parts as float32 vectors.
"""

import contextlib
import math
from collections.abc import Iterator

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
    "FLAT_MAX",
    "IndexRunError",
    "build_empty_index",
    "bytes_per_vector",
    "choose_factory",
    "faiss_metric",
    "iter_embedding_file",
    "train_index",
    "whitened",
    "widen",
]


class IndexRunError(StageError):
    """The build root cannot take this index run (one line naming the fix)."""


# Up to this many vectors an exact flat index is fast enough and needs no training.
FLAT_MAX = 20_000


def _pow2(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(1.0, x))))


def choose_factory(n: int, dim: int, memory_budget: int) -> tuple[str, int, int]:
    """(vector count, dimension, bytes one worker may hold) -> (factory, nprobe, train size).

    The autofaiss way: exact ``Flat`` when small; ``IVF{nlist},SQfp16`` while the vectors
    fit the budget (fp16 codes lose nothing: the embeddings are stored in fp16; nlist ~
    4 sqrt(n), a power of two; nprobe = nlist / 8, which keeps recall@10 >= 0.95 on
    clustered embeddings); beyond that an HNSW coarse quantizer with OPQ + PQ codes of 64
    bytes (or dim/4 when smaller), ``OPQ{m}_{d},IVF{nlist}_HNSW32,PQ{m}``.
    Training takes 64 vectors per list (at least 10,000, at most n).
    """
    if n <= FLAT_MAX:
        return "IDMap2,Flat", 1, 0
    nlist = min(65536, max(64, _pow2(4 * math.sqrt(n))))
    nprobe = max(16, nlist // 8)
    train = min(n, max(10_000, 64 * nlist))
    if n * (2 * dim + 8) <= memory_budget:
        return f"IVF{nlist},SQfp16", nprobe, train
    m = 64 if dim >= 256 else max(4, dim // 4)
    while dim % m:
        m -= 1
    return f"OPQ{m}_{dim},IVF{nlist}_HNSW32,PQ{m}", nprobe, train


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
