"""The embed stage without Beam: plan a run, embed one chunks file, finish the run.

:class:`EmbedStage` is the stage on the shared runtime (:mod:`.base`); ``pipeline/embed.py``
runs its units (input files) through Beam's ``RunInference``, whose model handler loads
the encoder once per worker process (or once per host for a large model) and hands it
to an :class:`EmbedStage`.

1. :func:`plan_embed_run` (driver): read ``chunks/manifest.json``, load the encoder, check
   that the chunks were cut with the model's tokenizer and on its block grid, resolve the
   context policy, check the build root (``--resume`` must match the recorded settings),
   write ``embeddings/_run.json``.
2. :func:`process_file` (worker, once per input file): read ``chunks/part-N.parquet`` in
   row order, regroup the chunks into their documents (a document's text is its chunks'
   texts put back at their character offsets), re-tokenize each document and check that
   the tokens and offsets are the ones the chunk stage recorded, encode the documents
   (:func:`~tda.attribution.encoders.encode_documents`: windows, token-budget batches,
   one forward pass per batch, pooling), write ``embeddings/part-N.parquet`` (one row per
   chunk, same order) atomically, then ``embeddings/_completions/N.json``.
3. :func:`finish_embed_run` (driver): gather the markers into ``embeddings/manifest.json``,
   written last.

A chunks part is checked against its size and sha256 in the chunks manifest before it is
read; each embeddings part is hashed while it is written, and its sha256 and size travel
in the file's completion marker (:attr:`EmbedCounts.parts`) into the manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from tda import __version__
from tda.attribution.encoders import ConceptEncoder, DocumentTokens, encode_documents, load_encoder
from tda.attribution.io.fs import (
    atomic_write_text,
    bound_heap,
    build_root,
    open_parquet,
    read_json,
    sha256_file,
)
from tda.attribution.io.integrity import (
    check_file,
    fix_for,
    guarded,
    relative_to_root,
    stored_file,
)
from tda.attribution.io.parts import PartWriter, StageError, read_manifest
from tda.attribution.stages.base import Counter, Meter, StageRuntime, invalidate_later
from tda.schemas import (
    MAX_CONCEPT_ID,
    ConfigError,
    ContextPolicy,
    EmbedConfig,
    EmbedCounts,
    EmbedManifest,
    EncoderInfo,
    Manifest,
    embedding_schema,
    vectors_to_arrow,
)

__all__ = [
    "ChunkDocument",
    "EmbedPlan",
    "EmbedRunError",
    "EmbedStage",
    "concepts_json",
    "finish_embed_run",
    "iter_chunk_documents",
    "plan_embed_run",
    "process_file",
    "read_embed_completion",
]

log = logging.getLogger("tda")

_CHUNK_COLUMNS = ["chunk_id", "chunk_index", "token_start", "token_end", "char_start", "char_end"]


class EmbedRunError(StageError):
    """The build root cannot take this embed run (one line naming the fix)."""


@dataclass(frozen=True)
class EmbedPlan:
    """What an embed run will do, decided on the driver before any work starts."""

    config: EmbedConfig
    encoder: EncoderInfo
    context: ContextPolicy
    dim: int
    chunks: Manifest
    chunk_manifest_sha256: str

    def run_record(self) -> str:
        """The JSON written to embeddings/_run.json (compared on --resume)."""
        record = {
            "tda_version": __version__,
            "encoder": asdict(self.encoder),
            "pooling": asdict(self.config.pooling),
            "context": asdict(self.context),
            "batch_tokens": self.config.batch_tokens,
            "chunk_manifest_sha256": self.chunk_manifest_sha256,
        }
        return json.dumps(record, indent=2, sort_keys=True) + "\n"

    def table_metadata(self) -> dict[bytes, bytes]:
        def dump(obj) -> bytes:
            return json.dumps(obj, sort_keys=True).encode()

        return {
            b"tda.version": __version__.encode(),
            b"tda.encoder": dump(asdict(self.encoder)),
            b"tda.pooling": dump({**asdict(self.config.pooling), "name": self.config.pooling.name}),
            b"tda.context": dump(asdict(self.context)),
            b"tda.batch_tokens": str(self.config.batch_tokens).encode(),
            b"tda.chunk_manifest_sha256": self.chunk_manifest_sha256.encode(),
        }


def plan_embed_run(config: EmbedConfig, encoder: ConceptEncoder | None = None) -> EmbedPlan:
    """:meth:`EmbedStage.plan`: check chunks, encoder and build root; prepare
    ROOT/embeddings for the run."""
    return EmbedStage(encoder).plan(config)


def concepts_json(encoder: ConceptEncoder) -> str:
    """The known concepts' names (concept id = position) and which are harmful."""
    data = {
        "encoder": encoder.info.fingerprint,
        "known": list(encoder.concept_names),
        "harmful": sorted(encoder.harmful_concepts),
    }
    if encoder.concept_calibration:  # what scans use as scores and default thresholds
        data["calibration"] = {
            name: cal.to_dict() for name, cal in sorted(encoder.concept_calibration.items())
        }
    if encoder.unknown_labels:
        data["unknown_labels"] = list(encoder.unknown_labels)
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def read_embed_completion(config: EmbedConfig, file_index: int) -> EmbedCounts | None:
    fs, root = build_root(config.root)
    path = root.embed_completion(file_index)
    if not fs.exists(path):
        return None
    return EmbedCounts.from_dict(read_json(fs, path))


@dataclass
class ChunkDocument:
    """One document's chunks as read back from the chunks table."""

    chunk_ids: np.ndarray  # (m,) int64
    spans: np.ndarray  # (m, 2) token [start, end)
    char_starts: np.ndarray  # (m,) int64
    text: str


def iter_chunk_documents(fs, path: str) -> Iterator[ChunkDocument]:
    """A chunks part -> its documents, in row order (a document starts at chunk_index 0).

    The text is rebuilt from the chunk texts at their character offsets, which also works
    for overlapping chunks (--stride < --chunk-size)."""
    with open_parquet(fs, path) as parquet:
        rows: dict[str, list] = {c: [] for c in [*_CHUNK_COLUMNS, "text"]}

        def flush() -> ChunkDocument:
            text = ""
            for start, end, piece in zip(
                rows["char_start"], rows["char_end"], rows["text"], strict=True
            ):
                if end > len(text):
                    text += piece[len(text) - start :]
            doc = ChunkDocument(
                chunk_ids=np.asarray(rows["chunk_id"], dtype=np.int64),
                spans=np.stack(
                    [np.asarray(rows["token_start"]), np.asarray(rows["token_end"])], axis=1
                ).astype(np.int64),
                char_starts=np.asarray(rows["char_start"], dtype=np.int64),
                text=text,
            )
            for column in rows.values():
                column.clear()
            return doc

        for batch in parquet.iter_batches(columns=[*_CHUNK_COLUMNS, "text"], batch_size=8192):
            data = batch.to_pydict()
            for i, chunk_index in enumerate(data["chunk_index"]):
                if chunk_index == 0 and rows["chunk_id"]:
                    yield flush()
                for name, column in rows.items():
                    column.append(data[name][i])
        if rows["chunk_id"]:
            yield flush()


def _tokenize(tokenizer, docs: list[ChunkDocument], path: str) -> list[DocumentTokens]:
    """Re-tokenize documents and check the chunk stage's token spans and offsets."""
    out = []
    for doc, enc in zip(docs, tokenizer.encode_batch([d.text for d in docs]), strict=True):
        ok = enc.n_tokens == int(doc.spans[-1, 1]) and np.array_equal(
            np.asarray(enc.char_starts(doc.spans[:, 0].tolist()), dtype=np.int64),
            doc.char_starts,
        )
        if not ok:
            raise EmbedRunError(
                f"{path}: re-tokenizing chunk {int(doc.chunk_ids[0])}'s document does not "
                f"reproduce the chunk stage's tokens; the chunks or the tokenizer changed "
                f"(re-run `tda chunk --overwrite`)"
            )
        out.append(DocumentTokens(ids=enc.ids, spans=doc.spans))
    return out


class EmbedStage(StageRuntime[EmbedPlan, int, EmbedCounts]):
    """The embed stage: one unit per input file (its index), its result the file's
    :class:`EmbedCounts` (also its completion marker).

    ``encoder``: the loaded encoder to embed with; None loads ``config.model`` (the
    driver in :meth:`plan`, a worker in :meth:`setup`; on Beam the model handler loads
    it and builds the stage around it)."""

    name = "embed"
    done = "files"
    error = EmbedRunError
    held = "an embed run"
    record = EmbedCounts

    def __init__(self, encoder: ConceptEncoder | None = None) -> None:
        self.encoder = encoder

    def __getstate__(self) -> dict:
        return {"encoder": None}  # workers load their own model, never a pickled one

    def plan(self, config: EmbedConfig) -> EmbedPlan:
        """Check chunks, encoder and build root; prepare ROOT/embeddings for the run.
        Raises one-line errors (EmbedRunError, EncoderError, ConfigError) before any
        work starts."""
        fs, root = build_root(config.root)
        chunks, chunk_sha = read_manifest(
            fs, root.chunk_manifest, Manifest.from_json, "tda chunk", EmbedRunError
        )
        encoder = self.encoder or load_encoder(
            config.model, config.device, config.trust_remote_code
        )
        info = encoder.info
        if chunks.tokenizer.fingerprint != info.tokenizer_fingerprint:
            raise EmbedRunError(
                f"the chunks in {config.root} were cut with tokenizer {chunks.tokenizer.spec} "
                f"({chunks.tokenizer.fingerprint[:19]}), not the model's "
                f"({info.tokenizer_fingerprint[:19]}); re-run `tda chunk --tokenizer` with "
                f"the model's tokenizer (a builtin model directory is a tokenizer SPEC)"
            )
        if not chunks.chunking.store_text:
            raise EmbedRunError(
                "the chunks were written with --no-text; the embed stage rebuilds documents "
                "from the chunk texts: re-run `tda chunk` without --no-text"
            )
        if info.n_known > MAX_CONCEPT_ID + 1:
            raise EmbedRunError(
                f"the model has {info.n_known} known concepts; the embeddings table stores "
                f"concept ids as uint16 (at most {MAX_CONCEPT_ID + 1})"
            )
        policy = chunks.chunking
        context = encoder.context_policy(config.window, config.context, policy.chunk_size)
        if policy.chunk_size > context.window:
            raise ConfigError(
                f"--window {context.window} is shorter than the chunks ({policy.chunk_size} tokens)"
            )
        if policy.chunk_size % context.align or policy.step % context.align:
            raise EmbedRunError(
                f"the model attends in {context.align}-token blocks; re-chunk with "
                f"--chunk-size and --stride multiples of {context.align} "
                f"(now {policy.chunk_size} / {policy.step})"
            )
        plan = EmbedPlan(
            config=config,
            encoder=info,
            context=context,
            dim=encoder.feature_dim(config.pooling),
            chunks=chunks,
            chunk_manifest_sha256=chunk_sha,
        )
        out_dir = root.embeddings_dir
        self.prepare_root(
            fs,
            config,
            (out_dir,),
            root.embed_run_record,
            plan.run_record(),
            (out_dir, root.embed_completions_dir),
        )
        if config.overwrite:  # an index built from the old embeddings is stale now
            invalidate_later(fs, root.root, "embeddings")
        fs.makedirs(out_dir, exist_ok=True)
        atomic_write_text(fs, root.embed_concepts, concepts_json(encoder))
        atomic_write_text(fs, root.embed_run_record, plan.run_record())
        return plan

    def units(self, plan: EmbedPlan) -> list[int]:
        return [f.file_index for f in plan.chunks.files]

    def markers(self, plan: EmbedPlan):
        fs, root = build_root(plan.config.root)
        return fs, root.embed_completions_dir

    def marker(self, plan: EmbedPlan, unit: int) -> str:
        return build_root(plan.config.root)[1].embed_completion(unit)

    def resuming(self, plan: EmbedPlan) -> bool:
        return plan.config.resume

    def setup(self, plan: EmbedPlan) -> None:
        """Load the encoder from its SPEC (once per worker) unless one was given."""
        if self.encoder is None:
            config = plan.config
            self.encoder = load_encoder(config.model, config.device, config.trust_remote_code)

    def process(self, plan: EmbedPlan, unit: int, meter: Meter) -> EmbedCounts:
        """Embed one input file's chunks into ``embeddings/part-N.parquet`` (one row per
        chunk, in the chunks table's order). Counts chunks_embedded, tokens,
        window_tokens, padded_tokens, windows, batches, zero_vectors."""
        return _embed_file(unit, plan, self.encoder, meter)

    def finish(self, plan: EmbedPlan) -> EmbedManifest:
        """Gather every file's completion marker into ``embeddings/manifest.json``
        (written last)."""
        fs, root = build_root(plan.config.root)
        files = []
        for f in plan.chunks.files:
            counts = read_embed_completion(plan.config, f.file_index)
            if counts is None:
                raise EmbedRunError(
                    f"input file {f.file_index} was not embedded; rerun with --resume"
                )
            if not counts.parts:  # a marker of an older tda: its part was never hashed
                raise EmbedRunError(
                    f"input file {f.file_index}'s completion marker records no sha256 of its "
                    f"part (an older tda wrote it); rerun with --overwrite"
                )
            files.append(counts)
        manifest = EmbedManifest(
            tda_version=__version__,
            encoder=plan.encoder,
            pooling=plan.config.pooling,
            context=plan.context,
            dim=plan.dim,
            batch_tokens=plan.config.batch_tokens,
            chunk_manifest_sha256=plan.chunk_manifest_sha256,
            files=tuple(files),
            concepts=stored_file(root, root.embed_concepts, sha256_file(fs, root.embed_concepts)),
        )
        atomic_write_text(fs, root.embed_manifest, manifest.to_json())
        return manifest


def process_file(
    file_index: int,
    plan: EmbedPlan,
    encoder: ConceptEncoder,
    count: Counter | Meter = lambda name, n: None,
) -> EmbedCounts:
    """Embed one input file's chunks and commit ``embeddings/part-N.parquet`` (one row per
    chunk, in the chunks table's order), then ``embeddings/_completions/N.json``
    (:meth:`EmbedStage.commit`).

    ``count(name, n)`` receives progress counters (chunks_embedded, tokens, window_tokens,
    padded_tokens, windows, batches, zero_vectors, files).
    """
    return EmbedStage(encoder).commit(plan, file_index, count)


def _embed_file(
    file_index: int, plan: EmbedPlan, encoder: ConceptEncoder, meter: Meter
) -> EmbedCounts:
    """The embed stage's work on one input file (see :meth:`EmbedStage.process`)."""
    config = plan.config
    if encoder.info.fingerprint != plan.encoder.fingerprint:
        raise EmbedRunError(
            f"the model on this worker ({encoder.info.fingerprint[:19]}) is not the one the "
            f"driver planned with ({plan.encoder.fingerprint[:19]}); give a model path every "
            f"worker reads the same files from"
        )
    fs, root = build_root(config.root)
    tokenizer = encoder.load_tokenizer()
    schema = embedding_schema(plan.dim)
    schema = schema.with_metadata({**schema.metadata, **plan.table_metadata()})
    # Vectors stored plain: the index stage decodes every one of them.
    writer = PartWriter(
        fs, root.embed_part(file_index), schema, keep_empty=True, raw_columns=("vector",)
    )
    totals = dict.fromkeys(
        ("chunks", "tokens", "window_tokens", "padded_tokens", "windows", "batches"), 0
    )
    zero_vectors = 0
    # Enough windows per group for length-sorted batches to pack tightly.
    group_tokens = max(16 * config.batch_tokens, 1 << 18)

    def flush(group: list[ChunkDocument]) -> None:
        nonlocal zero_vectors
        with meter.phase("compute"):
            docs = _tokenize(tokenizer, group, root.chunk_part(file_index))
            pooled, stats = encode_documents(
                encoder, docs, config.pooling, plan.context, config.batch_tokens
            )
            ids = np.concatenate([d.chunk_ids for d in group])
            tokens = int(sum(int((d.spans[:, 1] - d.spans[:, 0]).sum()) for d in docs))
            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array(ids, type=pa.int64()),
                    vectors_to_arrow(pooled.vectors),
                    pa.array(pooled.concept_ids, type=pa.list_(pa.uint16())),
                    pa.array(
                        [w.astype(np.float16) for w in pooled.concept_weights],
                        type=pa.list_(pa.float16()),
                    ),
                ],
                schema=schema,
            )
        with meter.phase("write"):
            writer.write(batch)
        for name, value in (
            ("chunks", len(ids)),
            ("tokens", tokens),
            ("window_tokens", stats.window_tokens),
            ("padded_tokens", stats.padded_tokens),
            ("windows", stats.windows),
            ("batches", stats.batches),
        ):
            totals[name] += value
            meter("chunks_embedded" if name == "chunks" else name, value)
        zero_vectors += pooled.zero_vectors
        meter("zero_vectors", pooled.zero_vectors)

    if getattr(encoder.device, "type", None) == "cuda":
        # Host memory then holds only I/O buffers, so fixed malloc thresholds should cost
        # little (not yet measured on a GPU); on CPU they cost 20-25% of embed throughput
        # (tensors of 4-32 MiB mapped afresh per op; benchmarks/bench_heap.py,
        # docs/scale.md), so CPU runs keep glibc's defaults.
        bound_heap()
    group: list[ChunkDocument] = []
    group_size = 0
    source = root.chunk_part(file_index)
    relative = relative_to_root(root, source)
    fix = fix_for(relative, config.root)
    with meter.phase("read"):  # a damaged chunks part is refused, never embedded
        check_file(fs, source, plan.chunks.stored_files().get(relative), root.chunk_manifest, fix)
    try:
        documents = guarded(iter_chunk_documents(fs, source), source, fix)
        for doc in meter.timed("read", documents):
            group.append(doc)
            group_size += int(doc.spans[-1, 1])
            if group_size >= group_tokens:
                flush(group)
                group, group_size = [], 0
        if group:
            flush(group)
        with meter.phase("write"):
            writer.commit()
    except BaseException:
        writer.abort()
        raise
    counts = EmbedCounts(
        file_index=file_index,
        zero_vectors=zero_vectors,
        **totals,
        parts=(stored_file(root, writer.path, writer.written),),
    )
    expected = plan.chunks.files[_file_position(plan, file_index)].chunks
    if counts.chunks != expected:  # a bug or a changed chunks table: fail loudly
        raise EmbedRunError(
            f"file {file_index}: embedded {counts.chunks} chunks, the chunk manifest says "
            f"{expected}; re-run `tda chunk --overwrite` and then `tda embed --overwrite`"
        )
    log.info("embedded file %d: %d chunks", file_index, counts.chunks)
    return counts


def _file_position(plan: EmbedPlan, file_index: int) -> int:
    for i, f in enumerate(plan.chunks.files):
        if f.file_index == file_index:
            return i
    raise EmbedRunError(f"file {file_index} is not in the chunk manifest")


def finish_embed_run(plan: EmbedPlan) -> EmbedManifest:
    """:meth:`EmbedStage.finish`: the markers -> ``embeddings/manifest.json`` (last)."""
    return EmbedStage().finish(plan)
