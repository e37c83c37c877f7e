"""The chunk stage without Beam: plan a run, chunk one input file, finish the run.

:class:`ChunkStage` is the stage on the shared runtime (:mod:`.base`); ``pipeline/chunk.py``
fans its units (the input files) out over workers. The module-level functions are the
same steps for callers that run them in a loop.

1. :func:`plan_chunk_run` (driver): resolve inputs, load the tokenizer, check the build
   root (refuse to mix runs; ``--resume`` must match the recorded settings), write
   ``chunks/_run.json``.
2. :func:`process_file` (worker, once per input file): stream documents, tokenize them in
   batches, cut chunks, write ``chunks/part-N.parquet`` and ``deadletter/part-N.parquet``
   atomically, then the completion marker ``chunks/_completions/N.json``.
3. :func:`finish_chunk_run` (driver): gather the markers into ``chunks/manifest.json``,
   written last.

Each part is hashed while it is written; its sha256 and size travel in the file's
completion marker (:attr:`FileCounts.parts`) into the manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import pyarrow as pa

from tda import __version__
from tda.attribution.corpus.chunking import chunk_documents
from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
from tda.attribution.corpus.tokenizer import (
    TextTokenizer,
    TokenizerError,
    load_tokenizer,
)
from tda.attribution.io.fs import atomic_write_text, build_root, filesystem, read_json
from tda.attribution.io.integrity import stored_file
from tda.attribution.io.parts import PartWriter, StageError
from tda.attribution.stages.base import Counter, Meter, StageRuntime, invalidate_later
from tda.schemas import (
    CHUNK_SCHEMA,
    DEADLETTER_SCHEMA,
    ChunkConfig,
    DeadLetter,
    DeadLetterReason,
    FileCounts,
    InputFile,
    Manifest,
    TokenizerInfo,
)
from tda.schemas.layout import BuildRoot

__all__ = [
    "ChunkPlan",
    "ChunkRunError",
    "ChunkStage",
    "finish_chunk_run",
    "plan_chunk_run",
    "process_file",
    "read_completion",
]

log = logging.getLogger("tda")

# Tokenize this many characters at once: big enough for the tokenizer's thread pool to
# spread over cores, small enough that a batch's encodings stay a few tens of MB.
BATCH_CHARS = 2_000_000
BATCH_DOCS = 2048


class ChunkRunError(StageError):
    """The build root cannot take this run (one line naming the fix)."""


@dataclass(frozen=True)
class ChunkPlan:
    """What a chunk run will do, decided on the driver before any work starts."""

    config: ChunkConfig
    inputs: tuple[InputFile, ...]
    tokenizer: TokenizerInfo

    def run_record(self) -> str:
        """The JSON written to chunks/_run.json (deterministic; compared on --resume)."""
        record = {
            "tda_version": __version__,
            "settings": self.config.settings(),
            "tokenizer": asdict(self.tokenizer),
            "inputs": [asdict(i) for i in self.inputs],
        }
        return json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class ChunkStage(StageRuntime[ChunkPlan, InputFile, FileCounts]):
    """The chunk stage: one unit per input file (an :class:`InputFile`), its result the
    file's :class:`FileCounts` (also its completion marker).

    ``tokenizer``: the loaded tokenizer to chunk with; None loads ``config.tokenizer``
    (the driver in :meth:`plan`, each worker in :meth:`setup`)."""

    name = "chunk"
    done = "files"
    error = ChunkRunError
    held = "a chunk run"
    record = FileCounts

    def __init__(self, tokenizer: TextTokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __getstate__(self) -> dict:
        return {"tokenizer": None}  # workers load their own (setup), never a pickled one

    def plan(self, config: ChunkConfig) -> ChunkPlan:
        """Check inputs, tokenizer and build root; prepare ROOT for the run. Raises
        one-line errors (InputError, TokenizerError, ChunkRunError) before any work."""
        inputs = tuple(resolve_inputs(config.inputs, config.read.format))
        if inputs[-1].index > config.codec.max_file_index:
            raise ChunkRunError(
                f"{len(inputs)} input files exceed the chunk-id codec's "
                f"{config.codec.file_bits} file bits (max {config.codec.max_file_index + 1} "
                f"files)"
            )
        fs, root = build_root(config.out)
        _check_root_outside_inputs(config, inputs, fs, root)
        tokenizer = self.tokenizer or load_tokenizer(config.tokenizer)
        plan = ChunkPlan(config=config, inputs=inputs, tokenizer=tokenizer.info)
        self.prepare_root(
            fs,
            config,
            (root.chunks_dir, root.deadletter_dir),
            root.chunk_run_record,
            plan.run_record(),
            (root.chunks_dir, root.deadletter_dir, root.completions_dir),
        )
        if config.overwrite:  # embeddings / index built from the old chunks are stale now
            invalidate_later(fs, root.root, "chunks")
        fs.makedirs(root.chunks_dir, exist_ok=True)
        atomic_write_text(fs, root.chunk_run_record, plan.run_record())
        return plan

    def units(self, plan: ChunkPlan) -> list[InputFile]:
        return list(plan.inputs)

    def markers(self, plan: ChunkPlan):
        fs, root = build_root(plan.config.out)
        return fs, root.completions_dir

    def marker(self, plan: ChunkPlan, unit: InputFile) -> str:
        return build_root(plan.config.out)[1].completion(unit.index)

    def resuming(self, plan: ChunkPlan) -> bool:
        return plan.config.resume

    def setup(self, plan: ChunkPlan) -> None:
        """Load the tokenizer from its SPEC; it must be the one the driver planned with."""
        if self.tokenizer is not None:
            return
        tokenizer = load_tokenizer(plan.config.tokenizer)
        if tokenizer.info.fingerprint != plan.tokenizer.fingerprint:
            raise TokenizerError(
                f"the tokenizer at {plan.config.tokenizer} on this worker differs from the "
                f"driver's ({tokenizer.info.fingerprint} != {plan.tokenizer.fingerprint}); "
                f"give a path every worker reads the same file from (e.g. gs://...)"
            )
        self.tokenizer = tokenizer

    def process(self, plan: ChunkPlan, unit: InputFile, meter: Meter) -> FileCounts:
        """Chunk one input file and commit its parts: ``chunks/part-N.parquet`` (rows in
        ordinal order) and ``deadletter/part-N.parquet`` (only if some record was
        unusable). Counts records_read, documents_chunked, chunks_written, tokens,
        batches, deadletter.<reason>."""
        return _chunk_file(unit, plan.config, self.tokenizer, meter)

    def finish(self, plan: ChunkPlan) -> Manifest:
        """Gather every file's completion marker into ``chunks/manifest.json`` (last)."""
        files = []
        for f in plan.inputs:
            counts = read_completion(plan.config, f.index)
            if counts is None:
                raise ChunkRunError(
                    f"input file {f.index} ({f.url}) did not finish; rerun with --resume"
                )
            if not counts.parts:  # a marker of an older tda: its parts were never hashed
                raise ChunkRunError(
                    f"input file {f.index}'s completion marker records no sha256 of its "
                    f"parts (an older tda wrote it); rerun with --overwrite"
                )
            files.append(counts)
        manifest = Manifest(
            tda_version=__version__,
            id_codec=plan.config.codec,
            dataset_id=plan.config.dataset_id,
            tokenizer=plan.tokenizer,
            read=plan.config.read,
            chunking=plan.config.chunking,
            inputs=plan.inputs,
            files=tuple(files),
        )
        fs, root = build_root(plan.config.out)
        atomic_write_text(fs, root.chunk_manifest, manifest.to_json())
        return manifest


def plan_chunk_run(config: ChunkConfig, tokenizer: TextTokenizer | None = None) -> ChunkPlan:
    """:meth:`ChunkStage.plan`: check inputs, tokenizer and build root; prepare ROOT."""
    return ChunkStage(tokenizer).plan(config)


def _check_root_outside_inputs(config, inputs, fs, root: BuildRoot) -> None:
    """A build root inside an input folder would feed the run its own output."""
    inside = root.root.rstrip("/") + "/"
    for pattern in config.inputs:
        pfs, path = filesystem(pattern)
        folder = path.rstrip("/") + "/"
        if type(pfs) is type(fs) and inside.startswith(folder):
            raise ChunkRunError(
                f"the build root {config.out} is inside the input folder {pattern}; "
                f"choose a root outside the corpus"
            )
    for f in inputs:
        if filesystem(f.url)[1].startswith(inside):
            raise ChunkRunError(f"input {f.url} is inside the build root {config.out}")


def read_completion(config: ChunkConfig, file_index: int) -> FileCounts | None:
    """The completion marker of a finished input file, or None."""
    fs, root = build_root(config.out)
    path = root.completion(file_index)
    if not fs.exists(path):
        return None
    return FileCounts.from_dict(read_json(fs, path))


def _table_metadata(config: ChunkConfig, plan_tokenizer: TokenizerInfo, f: InputFile) -> dict:
    return {
        b"tda.version": __version__.encode(),
        b"tda.tokenizer": json.dumps(asdict(plan_tokenizer), sort_keys=True).encode(),
        b"tda.id_codec": json.dumps(config.codec.to_dict(), sort_keys=True).encode(),
        b"tda.dataset_id": str(config.dataset_id).encode(),
        b"tda.chunking": json.dumps(asdict(config.chunking), sort_keys=True).encode(),
        b"tda.input": json.dumps(asdict(f), sort_keys=True).encode(),
    }


def process_file(
    input_file: InputFile,
    config: ChunkConfig,
    tokenizer: TextTokenizer,
    count: Counter | Meter = lambda name, n: None,
) -> FileCounts:
    """Chunk one input file end to end and commit its outputs (:meth:`ChunkStage.commit`).

    Writes ``chunks/part-N.parquet`` (rows in ordinal order), ``deadletter/part-N.parquet``
    (only if some record was unusable) and, last, ``chunks/_completions/N.json``.
    ``count(name, n)`` receives progress counters (records_read, documents_chunked,
    chunks_written, tokens, batches, deadletter.<reason>, files).
    """
    plan = ChunkPlan(config=config, inputs=(input_file,), tokenizer=tokenizer.info)
    return ChunkStage(tokenizer).commit(plan, input_file, count)


def _chunk_file(
    input_file: InputFile, config: ChunkConfig, tokenizer: TextTokenizer, meter: Meter
) -> FileCounts:
    """The chunk stage's work on one input file (see :meth:`ChunkStage.process`)."""
    fs, root = build_root(config.out)
    meta = _table_metadata(config, tokenizer.info, input_file)
    chunks = PartWriter(
        fs,
        root.chunk_part(input_file.index),
        CHUNK_SCHEMA.with_metadata({**CHUNK_SCHEMA.metadata, **meta}),
        keep_empty=True,
    )
    dead = PartWriter(
        fs,
        root.deadletter_part(input_file.index),
        DEADLETTER_SCHEMA.with_metadata({**DEADLETTER_SCHEMA.metadata, **meta}),
        keep_empty=False,
    )
    records = documents = n_chunks = n_tokens = 0
    reasons: dict[str, int] = {}
    batch: list[Document] = []
    batch_chars = 0

    def dead_letter(letters: list[DeadLetter]) -> None:
        if not letters:
            return
        for letter in letters:
            reasons[letter.reason.value] = reasons.get(letter.reason.value, 0) + 1
            meter(f"deadletter.{letter.reason.value}", 1)
        rows = [letter.to_row() for letter in letters]
        with meter.phase("write"):
            dead.write(pa.RecordBatch.from_pylist(rows, schema=DEADLETTER_SCHEMA))

    def flush() -> None:
        nonlocal documents, n_chunks, n_tokens, batch, batch_chars
        if not batch:
            return
        with meter.phase("compute"):
            encodings = tokenizer.encode_batch([d.text for d in batch])
            out = chunk_documents(
                batch,
                encodings,
                config.chunking,
                config.codec,
                config.dataset_id,
                input_file.index,
                n_chunks,
            )
        if out.batch is not None:
            with meter.phase("write"):
                chunks.write(out.batch)
        dead_letter([_no_tokens_letter(input_file, d) for d in out.no_tokens])
        done = len(batch) - len(out.no_tokens)
        documents += done
        n_chunks += out.n_chunks
        n_tokens += out.n_tokens
        meter("documents_chunked", done)
        meter("chunks_written", out.n_chunks)
        meter("tokens", out.n_tokens)
        meter("batches", 1)
        batch, batch_chars = [], 0

    pending_dead: list[DeadLetter] = []
    try:
        for item in meter.timed("read", iter_documents(input_file, config.read)):
            records += 1
            if isinstance(item, DeadLetter):
                pending_dead.append(item)
                if len(pending_dead) >= 1024:
                    dead_letter(pending_dead)
                    pending_dead = []
                continue
            batch.append(item)
            batch_chars += len(item.text)
            if batch_chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
                flush()
        flush()
        dead_letter(pending_dead)
        meter("records_read", records)
        with meter.phase("write"):
            chunks.commit()
            dead.commit()
    except BaseException:
        chunks.abort()
        dead.abort()
        raise
    counts = FileCounts(
        file_index=input_file.index,
        records=records,
        documents=documents,
        chunks=n_chunks,
        tokens=n_tokens,
        deadletters={r.value: reasons[r.value] for r in DeadLetterReason if r.value in reasons},
        parts=tuple(
            stored_file(root, writer.path, writer.written)
            for writer in (chunks, dead)
            if writer.written is not None
        ),
    )
    if not counts.reconciles():  # a bug, never bad input: fail loudly
        raise AssertionError(f"file {input_file.index}: counts do not reconcile: {counts}")
    log.info(
        "chunked %s: %d chunks, %d dead letters", input_file.url, n_chunks, sum(reasons.values())
    )
    return counts


def _no_tokens_letter(f: InputFile, doc: Document) -> DeadLetter:
    return DeadLetter(
        file_index=f.index,
        url=f.url,
        record_index=doc.record_index,
        reason=DeadLetterReason.NO_TOKENS,
        detail="the tokenizer produced no tokens for this text",
        raw=doc.text[:1000],
        raw_bytes=len(doc.text.encode("utf-8")),
    )


def finish_chunk_run(plan: ChunkPlan) -> Manifest:
    """:meth:`ChunkStage.finish`: the markers -> ``chunks/manifest.json`` (written last)."""
    return ChunkStage().finish(plan)
