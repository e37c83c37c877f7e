"""The index stage without Beam: plan, train the shared quantizer, fill shards, finish.

1. :func:`plan_index_run` (driver): read ``embeddings/manifest.json``; choose the FAISS
   factory from the vector count, dimension and memory budget (:func:`choose_factory`,
   overridable); group the embedding files into shards; train one empty index on a
   deterministic sample (evenly spaced vectors) and write it as ``index/trained.faiss``;
   write ``index/concepts.json`` and ``index/_run.json``.
2. :func:`fill_shard` (worker, once per shard): start from the trained index, add every
   vector of the shard's files with ``add_with_ids(chunk ids)`` (ids are explicit: FAISS
   merge offsets are never relied on), write ``index/shards/shard-N.faiss`` once,
   atomically, then the completion marker with its count, size and sha256.
3. :func:`finish_index_run` (driver): ``index/manifest.json``, written last, with the
   sha256 and size of every file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from tda import __version__
from tda.attribution.io.fs import (
    atomic_open,
    atomic_write_text,
    open_parquet,
    read_json,
    sha256_file,
    write_hashed,
)
from tda.attribution.io.parts import (
    ROW_GROUP_ROWS,
    StageError,
    check_resumable,
    nonempty,
    read_manifest,
    remove_temp_files,
)
from tda.attribution.stages.chunk import build_root
from tda.schemas import (
    EmbedManifest,
    IndexConfig,
    IndexFile,
    IndexManifest,
    Manifest,
    ShardInfo,
    vectors_from_arrow,
)

__all__ = [
    "FLAT_MAX",
    "IndexPlan",
    "IndexRunError",
    "choose_factory",
    "fill_shard",
    "finish_index_run",
    "iter_embedding_file",
    "plan_index_run",
    "read_shard_completion",
    "whitened",
]

# Up to this many vectors an exact flat index is fast enough and needs no training.
FLAT_MAX = 20_000


class IndexRunError(StageError):
    """The build root cannot take this index run (one line naming the fix)."""


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


@dataclass(frozen=True)
class IndexPlan:
    config: IndexConfig
    embed: EmbedManifest
    chunks: Manifest
    embed_manifest_sha256: str
    factory: str
    nprobe: int
    train_size: int
    shards: tuple[tuple[int, ...], ...]  # input file indices per shard
    shard_counts: tuple[int, ...]
    bytes_per_vector: int = 0  # a filled shard's memory per vector (code + id)

    def fill_threads(self, cores: int | None = None) -> int:
        """Shards to fill at once on a worker with ``cores`` cores (default: this one's):
        ``--threads``, else the cores, capped by the memory budget (each holds one shard
        in memory) and by the number of shards."""
        wanted = self.config.threads or cores or os.cpu_count() or 1
        largest = max(self.shard_counts, default=0) * max(1, self.bytes_per_vector)
        fits = max(1, self.config.memory_budget // max(1, largest))
        return max(1, min(wanted, fits, len(self.shards)))

    def run_record(self) -> str:
        record = {
            "tda_version": __version__,
            "embed_manifest_sha256": self.embed_manifest_sha256,
            "factory": self.factory,
            "metric": self.config.metric,
            "nprobe": self.nprobe,
            "train_size": self.train_size,
            "shards": [list(s) for s in self.shards],
        }
        return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _metric(name: str) -> int:
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


def _read_manifests(fs, root) -> tuple[EmbedManifest, Manifest, str]:
    embed, sha = read_manifest(
        fs, root.embed_manifest, EmbedManifest.from_json, "tda embed", IndexRunError
    )
    chunks, _ = read_manifest(
        fs, root.chunk_manifest, Manifest.from_json, "tda chunk", IndexRunError
    )
    return embed, chunks, sha


def _group_files(counts: list[tuple[int, int]], target: int) -> list[tuple[int, ...]]:
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


def _split_files(counts: list[tuple[int, int]], shards: int) -> list[tuple[int, ...]]:
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


def _sample(fs, root, plan_files: list[tuple[int, int]], dim: int, size: int) -> np.ndarray:
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


def plan_index_run(config: IndexConfig) -> IndexPlan:
    """Check the embeddings, choose factory and shards, train and write the quantizer.
    Raises one-line errors before any shard is filled."""
    import faiss

    fs, root = build_root(config.root)
    embed, chunks, embed_sha = _read_manifests(fs, root)
    if not fs.exists(root.embed_concepts):
        raise IndexRunError(f"{root.embed_concepts} is missing; re-run `tda embed --overwrite`")
    files = [(f.file_index, f.chunks) for f in embed.files]
    n = sum(c for _, c in files)
    if n == 0:
        raise IndexRunError(f"{config.root} has no embedded chunks to index")
    factory, nprobe, train = choose_factory(n, embed.dim, config.memory_budget)
    if config.factory is not None:
        factory = config.factory
    if config.whiten:
        if n < 2 * embed.dim:
            raise IndexRunError(
                f"--whiten needs at least 2 x D = {2 * embed.dim} vectors to train its PCA; "
                f"{config.root} has {n} (use --no-whiten)"
            )
        factory = whitened(factory, embed.dim)
    nprobe = config.nprobe or nprobe
    train = min(n, config.train_sample or train or 0)
    probe = _build_empty(factory, embed.dim, config.metric)
    if not probe.is_trained and train == 0:
        train = min(n, 10_000)
    per_vector = _bytes_per_vector(probe, embed.dim)
    if config.shards is not None:
        shards = _split_files(files, config.shards)
    else:
        shards = _group_files(
            files, config.shard_size or max(1, config.memory_budget // per_vector)
        )
    counts = {i: c for i, c in files}
    plan = IndexPlan(
        config=config,
        embed=embed,
        chunks=chunks,
        embed_manifest_sha256=embed_sha,
        factory=factory,
        nprobe=nprobe,
        train_size=train if not probe.is_trained else 0,
        shards=tuple(shards),
        shard_counts=tuple(sum(counts[i] for i in s) for s in shards),
        bytes_per_vector=per_vector,
    )
    out = root.index_dir
    if nonempty(fs, out):
        if config.overwrite:
            fs.rm(out, recursive=True)
        elif config.resume:
            if not fs.exists(root.index_run_record):
                raise IndexRunError(f"{out} holds output without a run record; use --overwrite")
            check_resumable(
                json.loads(plan.run_record()),
                read_json(fs, root.index_run_record),
                out,
                IndexRunError,
            )
            remove_temp_files(fs, (out, f"{out}/shards", root.index_completions_dir))
            return plan
        else:
            raise IndexRunError(
                f"{out} already holds an index; pass --resume to continue it or --overwrite "
                f"to replace it"
            )
    fs.makedirs(f"{out}/shards", exist_ok=True)
    if not probe.is_trained:
        _train(probe, _sample(fs, root, files, embed.dim, plan.train_size))
    with atomic_open(fs, root.index_trained) as f:
        f.write(faiss.serialize_index(probe).tobytes())
    with fs.open(root.embed_concepts, "rb") as f:
        concepts = f.read()
    with atomic_open(fs, root.index_concepts) as f:
        f.write(concepts)
    atomic_write_text(fs, root.index_run_record, plan.run_record())
    return plan


def _train(index, sample: np.ndarray) -> None:
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


def _build_empty(factory: str, dim: int, metric: str):
    import faiss

    try:
        return faiss.index_factory(dim, factory, _metric(metric))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise IndexRunError(
            f"--factory {factory!r} is not a FAISS factory string: {first}"
        ) from None


def _bytes_per_vector(index, dim: int) -> int:
    """Bytes a vector takes in a filled index: its code (IVF) or raw floats, plus its id."""
    import faiss

    try:
        code = faiss.extract_index_ivf(index).code_size
    except RuntimeError:  # not an IVF index
        code = 4 * dim
    return int(code) + 8


def read_shard_completion(config: IndexConfig, shard: int) -> ShardInfo | None:
    fs, root = build_root(config.root)
    path = root.index_completion(shard)
    if not fs.exists(path):
        return None
    return _shard_info(read_json(fs, path))


def _shard_info(marker: dict) -> ShardInfo:
    """A shard's completion marker -> its ShardInfo."""
    data = marker["shard"]
    return ShardInfo(**{**data, "embed_files": tuple(data["embed_files"])})


def fill_shards(
    plan: IndexPlan, shards: Sequence[int], threads: int, count=lambda name, n: None
) -> Iterator[ShardInfo]:
    """Fill ``shards`` (:func:`fill_shard` each), ``threads`` at a time; yields their
    ShardInfo in the order given.

    With ``threads > 1`` each shard's FAISS calls run single-threaded in their own thread
    (FAISS releases the GIL) instead of one shard using every core through OpenMP:
    measured on 2 cores, 16 shards of 62,500 x 256-d, this fills at the speed of a bare
    ``add_with_ids`` from memory (ratio 0.99-1.05) where one shard at a time reached
    0.87-0.91, because one shard's reads, writes and hashing overlap another's adds and
    no OpenMP barriers wait on them. The files are the same bytes either way (tested).
    """
    if threads <= 1 or len(shards) <= 1:
        for shard in shards:
            yield fill_shard(plan, shard, count)
        return
    import faiss

    per_thread = max(1, (os.cpu_count() or 1) // threads)

    def run(shard: int) -> tuple[ShardInfo, list[tuple[str, int]]]:
        faiss.omp_set_num_threads(per_thread)  # this thread's OpenMP setting only
        counts: list[tuple[str, int]] = []
        info = fill_shard(plan, shard, lambda name, n: counts.append((name, n)))
        return info, counts

    with ThreadPoolExecutor(threads, thread_name_prefix="fill-shard") as pool:
        for info, counts in pool.map(run, shards):
            for name, n in counts:  # in the caller's thread: Beam metrics are per thread
                count(name, n)
            yield info


def fill_shard(plan: IndexPlan, shard: int, count=lambda name, n: None) -> ShardInfo:
    """Fill shard ``shard`` from the trained index with its files' vectors (explicit ids)
    and write ``index/shards/shard-N.faiss`` once, atomically; then its marker."""
    import faiss

    fs, root = build_root(plan.config.root)
    with fs.open(root.index_trained, "rb") as f:
        index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    added = 0
    batches = (
        batch
        for file_index in plan.shards[shard]
        for batch in iter_embedding_file(fs, root.embed_part(file_index), plan.embed.dim)
    )
    # Read in the same thread: a prefetching reader thread made FAISS's OpenMP adds ~10%
    # slower on 2 cores (its threads spin at barriers), more than the reads it hid.
    for ids, vectors in batches:
        index.add_with_ids(vectors, ids)
        added += len(ids)
        count("vectors_added", len(ids))
    if added != plan.shard_counts[shard]:
        raise IndexRunError(
            f"shard {shard}: added {added} vectors, the embed manifest says "
            f"{plan.shard_counts[shard]}; re-run `tda embed --overwrite`"
        )
    path = root.index_shard(shard)

    def produce(write) -> None:
        writer = faiss.PyCallbackIOWriter(write)
        faiss.write_index(index, writer)
        del writer  # drops faiss's reference to ``write``

    # Streamed and hashed in one pass, local or remote: no serialize_index buffer (0.16 s
    # per 37 MB shard) and no re-read for the checksum.
    digest, size = write_hashed(fs, path, produce)
    info = ShardInfo(
        shard=shard,
        path=path.rsplit("/index/", 1)[1],
        vectors=added,
        embed_files=plan.shards[shard],
    )
    marker = {
        "shard": asdict(info),
        "file": asdict(IndexFile(info.path, digest, size)),
    }
    atomic_write_text(fs, root.index_completion(shard), json.dumps(marker, sort_keys=True) + "\n")
    count("shards", 1)
    return info


def _file_entry(fs, root, relative: str) -> IndexFile:
    return IndexFile(relative, *sha256_file(fs, f"{root.index_dir}/{relative}"))


def finish_index_run(plan: IndexPlan, lineage: dict | None = None) -> IndexManifest:
    """Gather the shard markers into ``index/manifest.json`` (the commit point, last);
    ``lineage`` records where a pruned index came from."""
    fs, root = build_root(plan.config.root)
    shards, files = (
        [],
        [_file_entry(fs, root, "trained.faiss"), _file_entry(fs, root, "concepts.json")],
    )
    for shard in range(len(plan.shards)):
        path = root.index_completion(shard)
        if not fs.exists(path):
            raise IndexRunError(f"shard {shard} did not finish; rerun with --resume")
        data = read_json(fs, path)
        shards.append(_shard_info(data))
        files.append(IndexFile(**data["file"]))
    embed, chunks = plan.embed, plan.chunks
    manifest = IndexManifest(
        tda_version=__version__,
        encoder=embed.encoder,
        tokenizer=chunks.tokenizer,
        chunking=chunks.chunking,
        context=embed.context,
        pooling=embed.pooling,
        id_codec=chunks.id_codec,
        dataset_id=chunks.dataset_id,
        factory=plan.factory,
        metric=plan.config.metric,
        dim=embed.dim,
        nprobe=plan.nprobe,
        train_vectors=plan.train_size,
        vectors=sum(s.vectors for s in shards),
        shards=tuple(shards),
        files=tuple(files),
        inputs=chunks.inputs,
        chunk_manifest_sha256=embed.chunk_manifest_sha256,
        embed_manifest_sha256=plan.embed_manifest_sha256,
        lineage=lineage,
    )
    atomic_write_text(fs, root.index_manifest, manifest.to_json())
    return manifest
