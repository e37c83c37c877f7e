"""The index stage without Beam: plan, train the shared quantizer, fill shards, finish.

1. :func:`plan_index_run` (driver): read ``embeddings/manifest.json``; choose the FAISS
   factory from the vector count, dimension and memory budget (:func:`choose_factory`,
   overridable); group the embedding files into shards; train one empty index on a
   deterministic sample (evenly spaced vectors) and write it as ``index/trained.faiss``;
   write ``index/concepts.json`` and ``index/_run.json``.
2. :func:`fill_shard` (worker, once per shard): start from the trained index, add every
   vector of the shard's files with its chunk id (ids are explicit: FAISS merge offsets
   are never relied on; an IVF files each vector under its exact nearest centroid,
   :func:`~tda.attribution.index.dense.exact_adder`), write ``index/shards/shard-N.faiss`` once,
   atomically, then the completion marker with its count, size and sha256. With an IVF
   level the shard file is the bare IVF without its coarse quantizer (stored once, in
   ``trained.faiss``: :mod:`tda.attribution.index.dense`), and ``--refine fp16|sq8``
   writes the re-rank codes and sorted ids beside it (``shard-N.refine.npy``,
   ``shard-N.ids.npy``; the encoder once, in ``index/refine.faiss``).
3. :func:`finish_index_run` (driver): ``index/manifest.json``, written last, with the
   sha256 and size of every file.

:class:`IndexStage` is the stage on the shared runtime (:mod:`.base`): its units are the
shard numbers, handed to workers in groups that fill at once, one thread each
(:meth:`IndexStage.elements`); a shard's result and marker is a :class:`ShardMarker`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tda import __version__
from tda.attribution.index.build import (
    IndexRunError,
    build_empty_index,
    bytes_per_vector,
    choose_factory,
    iter_embedding_file,
    refine_for,
    whitened,
)
from tda.attribution.index.build import (
    group_files as _group_files,
)
from tda.attribution.index.build import (
    sample_vectors as _sample,
)
from tda.attribution.index.build import (
    split_files as _split_files,
)
from tda.attribution.index.channels import (
    build_shard_channels,
    channel_settings,
    channel_tokenizer,
)
from tda.attribution.index.dense import (
    REFINE_FACTOR,
    REFINE_FILE,
    RefineWriter,
    apply_chain,
    exact_adder,
    refine_paths,
    split_trained,
    strip_quantizer,
    train_dense,
)
from tda.attribution.index.fusion import default_fusion
from tda.attribution.io.fs import (
    atomic_open,
    atomic_write_text,
    build_root,
    read_json,
    sha256_file,
    write_hashed,
)
from tda.attribution.io.parts import read_manifest
from tda.attribution.stages.base import Counter, Meter, StageRuntime, UnitRun, discard
from tda.schemas import (
    ChannelInfo,
    EmbedManifest,
    IndexConfig,
    IndexFile,
    IndexManifest,
    Manifest,
    ShardInfo,
)
from tda.schemas.wire import JsonRecord, record_from_dict

__all__ = [
    "IndexPlan",
    "IndexRunError",
    "IndexStage",
    "ShardMarker",
    "fill_shard",
    "fill_shards",
    "finish_index_run",
    "plan_index_run",
    "read_shard_completion",
]


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
    channels: tuple[str, ...] = ()  # the span / lexical channels built beside the shards
    refine: str = "none"  # the exact re-rank (REFINES): "fp16" / "sq8" write codes per shard
    refine_factor: int = 0  # candidates per hit before the re-rank (0: no re-rank)
    reduce: dict | None = None  # {"method": "pca", "dim": d, "sample": n} (None: none)

    @property
    def stored_codes(self) -> bool:
        """Whether each shard gets refine code files (fp16 / sq8)."""
        return self.refine in ("fp16", "sq8")

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
        if self.channels:  # (an index without channels keeps its run record as before)
            record["channels"] = list(self.channels)
        if self.refine != "none":
            record["refine"] = {"codes": self.refine, "factor": self.refine_factor}
        if self.reduce is not None:
            record["reduce"] = self.reduce
        return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _read_manifests(fs, root) -> tuple[EmbedManifest, Manifest, str]:
    embed, sha = read_manifest(
        fs, root.embed_manifest, EmbedManifest.from_json, "tda embed", IndexRunError
    )
    chunks, _ = read_manifest(
        fs, root.chunk_manifest, Manifest.from_json, "tda chunk", IndexRunError
    )
    return embed, chunks, sha


@dataclass(frozen=True)
class ShardMarker(JsonRecord):
    """A filled shard's completion marker (``index/_completions/N.json``): the shard as
    the manifest lists it, and its file's sha256 and size (hashed while it was written)."""

    shard: ShardInfo
    file: IndexFile
    # the span / lexical channels' files of this shard: channel -> role -> path
    channels: dict[str, dict[str, str]] = field(default_factory=dict)
    channel_files: tuple[IndexFile, ...] = ()
    # the shard's refine codes and sorted ids (``--refine fp16`` / ``sq8``)
    refine_files: tuple[IndexFile, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> ShardMarker:
        return record_from_dict(cls, data)


class IndexStage(StageRuntime[IndexPlan, int, ShardMarker]):
    """The index stage: one unit per shard (its number), its result a
    :class:`ShardMarker`; a worker gets a group of :meth:`IndexPlan.fill_threads`
    shards and fills them at once, one thread each (:meth:`fill`), and outputs their
    :class:`ShardInfo`."""

    name = "index"
    done = "shards"
    error = IndexRunError
    held = "an index"
    record = ShardMarker

    def plan(self, config: IndexConfig) -> IndexPlan:
        """Check the embeddings, choose factory and shards, train and write the
        quantizer. Raises one-line errors before any shard is filled."""

        fs, root = build_root(config.root)
        embed, chunks, embed_sha = _read_manifests(fs, root)
        if not fs.exists(root.embed_concepts):
            raise IndexRunError(f"{root.embed_concepts} is missing; re-run `tda embed --overwrite`")
        files = [(f.file_index, f.chunks) for f in embed.files]
        n = sum(c for _, c in files)
        if n == 0:
            raise IndexRunError(f"{config.root} has no embedded chunks to index")
        dim = embed.dim  # the dimension the factory works in (after any reduction)
        if config.reduce is not None:
            if config.reduce >= embed.dim:
                raise IndexRunError(
                    f"--reduce {config.reduce} must be below the embeddings' dimension {embed.dim}"
                )
            dim = config.reduce
        factory, nprobe, train, refine = choose_factory(n, dim, config.memory_budget)
        if config.factory is not None:
            factory = config.factory
            refine = refine_for(factory)
        if config.whiten:
            if n < 2 * dim:
                raise IndexRunError(
                    f"--whiten needs at least 2 x D = {2 * dim} vectors to train its PCA; "
                    f"{config.root} has {n} (use --no-whiten)"
                )
            factory = whitened(factory, dim)
        nprobe = config.nprobe or nprobe
        train = min(n, config.train_sample or train or 0)
        probe = build_empty_index(factory, dim, config.metric)
        if (not probe.is_trained or config.reduce is not None) and train == 0:
            train = min(n, 10_000)
        if config.reduce is not None and train < config.reduce:
            raise IndexRunError(
                f"--reduce {config.reduce} needs at least that many training vectors; "
                f"{config.root} gives {train} (raise --train-sample, or reduce less)"
            )
        refine = config.refine or refine
        if split_trained(probe) is None:
            refine = "none"  # an exact flat index has nothing to re-rank
        per_vector = bytes_per_vector(probe, dim)
        if config.shards is not None:
            shards = _split_files(files, config.shards)
        else:
            shards = _group_files(
                files, config.shard_size or max(1, config.memory_budget // per_vector)
            )
        if config.channels and not chunks.chunking.store_text:
            raise IndexRunError(
                f"the chunks in {config.root} were cut with --no-store-text; the span and "
                f"lexical channels need their text: pass --channels dense or rechunk"
            )
        if "span" in config.channels:
            channel_tokenizer(chunks.tokenizer)  # refuse another tokenizer before any shard
        counts = {i: c for i, c in files}
        plan = IndexPlan(
            config=config,
            embed=embed,
            chunks=chunks,
            embed_manifest_sha256=embed_sha,
            factory=factory,
            nprobe=nprobe,
            train_size=train if not probe.is_trained or config.reduce is not None else 0,
            shards=tuple(shards),
            shard_counts=tuple(sum(counts[i] for i in s) for s in shards),
            bytes_per_vector=per_vector,
            channels=config.channels,
            refine=refine,
            refine_factor=REFINE_FACTOR if refine != "none" else 0,
            reduce=(
                {"method": "pca", "dim": config.reduce, "sample": train}
                if config.reduce is not None
                else None
            ),
        )
        out = root.index_dir
        resumed = self.prepare_root(
            fs,
            config,
            (out,),
            root.index_run_record,
            plan.run_record(),
            (out, f"{out}/shards", root.index_completions_dir),
            no_record_fix="use --overwrite",
        )
        if resumed:  # the quantizer, concepts and run record are the recorded run's
            return plan
        fs.makedirs(f"{out}/shards", exist_ok=True)
        sample = _sample(fs, root, files, embed.dim, plan.train_size) if plan.train_size else None
        trained, encoder = train_dense(
            probe, sample, plan.reduce["dim"] if plan.reduce else None, plan.refine
        )
        with atomic_open(fs, root.index_trained) as f:
            f.write(trained)
        if encoder is not None:
            with atomic_open(fs, f"{out}/{REFINE_FILE}") as f:
                f.write(encoder)
        with fs.open(root.embed_concepts, "rb") as f:
            concepts = f.read()
        with atomic_open(fs, root.index_concepts) as f:
            f.write(concepts)
        atomic_write_text(fs, root.index_run_record, plan.run_record())
        return plan

    def units(self, plan: IndexPlan) -> list[int]:
        return list(range(len(plan.shards)))

    def elements(self, plan: IndexPlan) -> list[tuple[int, ...]]:
        """The shard numbers in groups of :meth:`IndexPlan.fill_threads` (this
        machine's): each group fills on one worker at once."""
        threads = plan.fill_threads()
        numbers = self.units(plan)
        return [tuple(numbers[i : i + threads]) for i in range(0, len(numbers), threads)]

    def run_element(
        self, plan: IndexPlan, element: tuple[int, ...], count=discard, timings=discard
    ) -> Iterator[ShardInfo]:
        """A group of shards -> their ShardInfo: finished ones (on ``--resume``) first,
        then the others, filled at once (the worker's :meth:`IndexPlan.fill_threads`)."""
        todo = []
        for shard in element:
            done = self.finished(plan, shard, count)
            if done is not None:
                yield done.shard
            else:
                todo.append(shard)
        for marker in self.fill(plan, todo, plan.fill_threads(), count, timings):
            yield marker.shard

    def markers(self, plan: IndexPlan):
        fs, root = build_root(plan.config.root)
        return fs, root.index_completions_dir

    def marker(self, plan: IndexPlan, unit: int) -> str:
        return build_root(plan.config.root)[1].index_completion(unit)

    def resuming(self, plan: IndexPlan) -> bool:
        return plan.config.resume

    def process(self, plan: IndexPlan, unit: int, meter: Meter) -> ShardMarker:
        """Fill shard ``unit`` from the trained index with its files' vectors (explicit
        ids) and write ``index/shards/shard-N.faiss`` once, atomically. Counts
        vectors_added."""
        return _fill(plan, unit, meter)

    def fill(
        self,
        plan: IndexPlan,
        shards: Sequence[int],
        threads: int,
        count: Counter = discard,
        timings: Counter = discard,
    ) -> Iterator[ShardMarker]:
        """Fill and commit ``shards``, ``threads`` at a time; yields their markers in the
        order given (see :func:`fill_shards`)."""
        if threads <= 1 or len(shards) <= 1:
            for shard in shards:
                yield self.commit(plan, shard, count, timings)
            return
        import faiss

        per_thread = max(1, (os.cpu_count() or 1) // threads)

        def run(shard: int) -> UnitRun[ShardMarker]:
            faiss.omp_set_num_threads(per_thread)  # this thread's OpenMP setting only
            return self.run_detached(plan, shard, skip_finished=False)

        with ThreadPoolExecutor(threads, thread_name_prefix="fill-shard") as pool:
            for done in pool.map(run, shards):
                # counts replayed in the caller's thread: Beam metrics are per thread
                yield done.replay(count, timings)

    def finish(self, plan: IndexPlan, lineage: dict | None = None) -> IndexManifest:
        """Gather the shard markers into ``index/manifest.json`` (the commit point,
        last); ``lineage`` records where a pruned index came from."""
        fs, root = build_root(plan.config.root)
        shards, files = (
            [],
            [_file_entry(fs, root, "trained.faiss"), _file_entry(fs, root, "concepts.json")],
        )
        if plan.stored_codes:
            files.append(_file_entry(fs, root, REFINE_FILE))
        channel_shards: dict[str, list[dict[str, str]]] = {c: [] for c in plan.channels}
        for shard in range(len(plan.shards)):
            path = root.index_completion(shard)
            if not fs.exists(path):
                raise IndexRunError(f"shard {shard} did not finish; rerun with --resume")
            marker = ShardMarker.from_dict(read_json(fs, path))
            shards.append(marker.shard)
            files.append(marker.file)
            for channel in plan.channels:
                if channel not in marker.channels:
                    raise IndexRunError(
                        f"shard {shard} has no {channel} channel; rebuild with --overwrite"
                    )
                channel_shards[channel].append(marker.channels[channel])
            files.extend(marker.channel_files)
            if plan.stored_codes and not marker.refine_files:
                raise IndexRunError(f"shard {shard} has no refine codes; rebuild with --overwrite")
            files.extend(marker.refine_files)
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
            channels=tuple(
                ChannelInfo(c, tuple(channel_shards[c]), channel_settings(c, chunks.tokenizer))
                for c in plan.channels
            ),
            fusion=default_fusion(("dense", *plan.channels)) if plan.channels else None,
            quantizer="trained.faiss" if _shares_quantizer(fs, root) else None,
            refine=(
                {"codes": plan.refine, "factor": plan.refine_factor}
                | ({"file": REFINE_FILE} if plan.stored_codes else {})
                if plan.refine != "none"
                else None
            ),
            reduce=plan.reduce,
        )
        atomic_write_text(fs, root.index_manifest, manifest.to_json())
        return manifest


def plan_index_run(config: IndexConfig) -> IndexPlan:
    """:meth:`IndexStage.plan`: check the embeddings, choose factory and shards, train
    and write the quantizer."""
    return IndexStage().plan(config)


def read_shard_completion(config: IndexConfig, shard: int) -> ShardInfo | None:
    fs, root = build_root(config.root)
    path = root.index_completion(shard)
    if not fs.exists(path):
        return None
    return ShardMarker.from_dict(read_json(fs, path)).shard


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
    for marker in IndexStage().fill(plan, shards, threads, count):
        yield marker.shard


def fill_shard(plan: IndexPlan, shard: int, count=lambda name, n: None) -> ShardInfo:
    """Fill shard ``shard`` from the trained index with its files' vectors (explicit ids)
    and write ``index/shards/shard-N.faiss`` once, atomically; then its marker."""
    return IndexStage().commit(plan, shard, count).shard


def _fill(plan: IndexPlan, shard: int, meter: Meter) -> ShardMarker:
    """The index stage's work on one shard (see :meth:`IndexStage.process`)."""
    import faiss

    fs, root = build_root(plan.config.root)
    with meter.phase("read"), fs.open(root.index_trained, "rb") as f:
        index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    # Shared layout (an IVF level): the pre-transforms run here once per batch, the bare
    # IVF takes the transformed vectors and is written without its coarse quantizer.
    shared = split_trained(index)
    chain, target = shared if shared is not None else ((), index)
    writer = None
    if plan.stored_codes and shared is not None:
        with fs.open(f"{root.index_dir}/{REFINE_FILE}", "rb") as f:
            encoder = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
        writer = RefineWriter(encoder, plan.shard_counts[shard])
    # the shared layout's IVF is filled with exact coarse assignments (see exact_adder)
    add = exact_adder(target) if shared is not None else target.add_with_ids
    added = 0
    batches = (
        batch
        for file_index in plan.shards[shard]
        for batch in iter_embedding_file(fs, root.embed_part(file_index), plan.embed.dim)
    )
    try:
        # Read in the same thread: a prefetching reader thread made FAISS's OpenMP adds
        # ~10% slower on 2 cores (its threads spin at barriers), more than the reads hid.
        for ids, vectors in meter.timed("read", batches):
            with meter.phase("compute"):
                if shared is not None:
                    vectors = apply_chain(chain, vectors)
                add(vectors, ids)
                if writer is not None and added + len(ids) <= plan.shard_counts[shard]:
                    writer.add(ids, vectors)
            added += len(ids)
            meter("vectors_added", len(ids))
        if added != plan.shard_counts[shard]:
            raise IndexRunError(
                f"shard {shard}: added {added} vectors, the embed manifest says "
                f"{plan.shard_counts[shard]}; re-run `tda embed --overwrite`"
            )
        path = root.index_shard(shard)

        def produce(write) -> None:
            def write_index(ivf) -> None:
                sink = faiss.PyCallbackIOWriter(write)
                faiss.write_index(ivf, sink)
                del sink  # drops faiss's reference to ``write``

            if shared is None:
                write_index(index)
            else:
                strip_quantizer(target, write_index)

        # Streamed and hashed in one pass, local or remote: no serialize_index buffer
        # (0.16 s per 37 MB shard) and no re-read for the checksum.
        with meter.phase("write"):
            digest, size = write_hashed(fs, path, produce)
            refine_files = ()
            if writer is not None:
                written = writer.commit(fs, *refine_paths(path))
                refine_files = tuple(
                    IndexFile(p.rsplit("/index/", 1)[1], sha, n) for p, sha, n in written
                )
    finally:
        if writer is not None:
            writer.close()
    info = ShardInfo(
        shard=shard,
        path=path.rsplit("/index/", 1)[1],
        vectors=added,
        embed_files=plan.shards[shard],
    )
    target.reset()  # the shard is written: free its codes before the channels' build
    channels, channel_files = {}, []
    if plan.channels:
        with meter.phase("compute"):  # chunk reads, tokenizing, suffix sort, postings
            tokenizer = (
                channel_tokenizer(plan.chunks.tokenizer) if "span" in plan.channels else None
            )
            channels, channel_files, built = build_shard_channels(
                fs, root, shard, plan.shards[shard], plan.channels, tokenizer
            )
        for name, n in built.items():
            meter(name, n)
    return ShardMarker(
        info, IndexFile(info.path, digest, size), channels, tuple(channel_files), refine_files
    )


def _shares_quantizer(fs, root) -> bool:
    """Whether the trained index has an IVF level, so shards were written without it."""
    import faiss

    with fs.open(root.index_trained, "rb") as f:
        index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    return split_trained(index) is not None


def _file_entry(fs, root, relative: str) -> IndexFile:
    return IndexFile(relative, *sha256_file(fs, f"{root.index_dir}/{relative}"))


def finish_index_run(plan: IndexPlan, lineage: dict | None = None) -> IndexManifest:
    """:meth:`IndexStage.finish`: the shard markers -> ``index/manifest.json`` (the
    commit point, last); ``lineage`` records where a pruned index came from."""
    return IndexStage().finish(plan, lineage)
