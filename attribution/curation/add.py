"""``tda add ROOT INPUT...``: grow a finished root by new input files, as a new
generation, without rebuilding what it holds.

1. :meth:`AddStage.plan` (driver): read ROOT's live generation; load its tokenizer and
   encoder and refuse others (another fingerprint); resolve the new files and number
   them after ROOT's last input file (so every chunk id stays unique and decodes to its
   file); refuse files ROOT already holds; snapshot the live manifests
   (:func:`~.generations.snapshot`); write ``ROOT/_add/_run.json``.
2. :meth:`AddStage.process` (a worker, once per new file): the chunk stage's and the
   embed stage's work on that file (:class:`~tda.attribution.stages.chunk.ChunkStage`,
   :class:`~tda.attribution.stages.embed.EmbedStage`, with ROOT's settings), writing
   ``chunks/part-N.parquet``, ``deadletter/part-N.parquet`` and
   ``embeddings/part-N.parquet`` under new names; its marker ``ROOT/_add/N.json``
   (an :class:`~tda.schemas.changes.AddedFile`).
3. :meth:`AddStage.finish` (driver): measure quantizer drift
   (:mod:`.drift`: the added vectors against a sample of ROOT's, through the parent
   index's coarse quantizer); write the new chunks and embeddings manifests (the
   parent's files plus the new ones); fill the new files into new shards with the
   parent's trained quantizer, with their span / lexical channels where the index has
   them, and keep every old shard as it is (:mod:`.shards`); write the index manifest
   last, its lineage naming the parent, the added inputs and counts; seal the parent
   generation and append ``ROOT/audit.jsonl``.

No file of the parent generation is written to: the new parts and shards have new
names, the parent's manifests are kept under ``ROOT/generations/<parent id>/``. A grown
root searches like a root built from scratch over all the files with the same quantizer
(tested: the same hits, the same IVF codes). ``--resume`` keeps the files an interrupted
add finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from tda.attribution.io.fs import atomic_write_text, build_root, filesystem
from tda.attribution.io.parts import check_resumable, nonempty, remove_temp_files
from tda.attribution.stages.base import Meter, StageRuntime
from tda.schemas import ChunkConfig, EmbedConfig, InputFile
from tda.schemas.changes import AddConfig, AddedFile

from .generations import (
    Current,
    GenerationError,
    append_audit,
    current,
    seal,
    snapshot,
    who,
    write_manifest,
)
from .shards import group_new_files, write_generation_index

__all__ = ["AddError", "AddPlan", "AddStage", "added_drift"]

log = logging.getLogger("tda")

# vectors on each side of the drift comparison (evenly spaced samples)
DRIFT_SAMPLE = 8192


class AddError(GenerationError):
    """ROOT cannot take these files (one line naming the fix)."""


@dataclass(frozen=True)
class AddPlan:
    """What an add will do, decided on the driver: ROOT's live generation (the parent),
    the new files with their new indices, the tokenizer and model SPECs the workers
    load."""

    config: AddConfig
    parent: Current
    inputs: tuple[InputFile, ...]
    tokenizer_spec: str
    model_spec: str

    def run_record(self) -> str:
        """``ROOT/_add/_run.json``: compared on ``--resume``."""
        import json
        from dataclasses import asdict

        record = {
            "parent_manifest_id": self.parent.id,
            "inputs": [asdict(f) for f in self.inputs],
            "tokenizer": self.parent.chunks.tokenizer.fingerprint,
            "encoder": self.parent.embed.encoder.fingerprint,
        }
        return json.dumps(record, indent=2, sort_keys=True) + "\n"

    def chunk_plan(self, f: InputFile, tokenizer_info):
        """The chunk stage's plan for one new file, with ROOT's settings."""
        from tda.attribution.stages.chunk import ChunkPlan

        c = self.parent.chunks
        config = ChunkConfig(
            inputs=(f.url,), out=self.config.root, tokenizer=self.tokenizer_spec, read=c.read,
            chunking=c.chunking, dataset_id=c.dataset_id, codec=c.id_codec,
        )  # fmt: skip
        return ChunkPlan(config=config, inputs=(f,), tokenizer=tokenizer_info)

    def embed_plan(self, f: InputFile, counts):
        """The embed stage's plan for one new file (its chunk counts ``counts``), with
        ROOT's encoder, pooling, context and batch size. Its parts record the parent's
        chunk manifest sha256 (the new one is written after every file)."""
        from tda.attribution.stages.embed import EmbedPlan

        e = self.parent.embed
        config = EmbedConfig(
            root=self.config.root, model=self.model_spec, pooling=e.pooling,
            batch_tokens=e.batch_tokens, device=self.config.device,
        )  # fmt: skip
        chunks = replace(self.parent.chunks, inputs=(f,), files=(counts,))
        return EmbedPlan(config, e.encoder, e.context, e.dim, chunks, self.parent.chunk_sha)


class AddStage(StageRuntime[AddPlan, int, AddedFile]):
    """``tda add``: one unit per new input file (its new index), its result an
    :class:`AddedFile` (marker ``ROOT/_add/N.json``, removed by :meth:`finish`).

    ``tokenizer`` / ``encoder``: loaded ones to use; None loads ROOT's (the driver in
    :meth:`plan`, a worker in :meth:`setup`, never pickled)."""

    name = "add"
    done = "files"
    error = AddError
    held = "an unfinished tda add"
    record = AddedFile

    def __init__(self, tokenizer=None, encoder=None) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder

    def __getstate__(self) -> dict:
        return {"tokenizer": None, "encoder": None}  # workers load their own

    def plan(self, config: AddConfig) -> AddPlan:
        """Check ROOT, the tokenizer, the encoder and the new files; snapshot the live
        manifests. One-line errors before any file is written."""
        from tda.attribution.corpus.readers import resolve_inputs

        parent = current(config.root, AddError)
        tokenizer_spec = config.tokenizer or parent.chunks.tokenizer.spec
        model_spec = config.model or parent.embed.encoder.spec
        self._load(parent, tokenizer_spec, model_spec, config.device)
        found = resolve_inputs(list(config.inputs), parent.chunks.read.format)
        held = {f.url for f in parent.chunks.inputs}
        again = [f.url for f in found if f.url in held]
        if again:
            raise AddError(
                f"{len(again)} of these files are already in {config.root} (first: "
                f"{again[0]}); a changed file is taken down and added under a new name"
            )
        inside = filesystem(config.root)[1].rstrip("/") + "/"
        for f in found:
            if filesystem(f.url)[1].startswith(inside):
                raise AddError(f"input {f.url} is inside the build root {config.root}")
        start = max((f.index for f in parent.chunks.inputs), default=-1) + 1
        inputs = tuple(replace(f, index=start + i) for i, f in enumerate(found))
        codec = parent.chunks.id_codec
        if inputs[-1].index > codec.max_file_index:
            raise AddError(
                f"{config.root} would hold {inputs[-1].index + 1} input files; its chunk-id "
                f"codec has {codec.file_bits} file bits (max {codec.max_file_index + 1}): "
                f"start a new root with more --file-bits"
            )
        plan = AddPlan(config, parent, inputs, tokenizer_spec, model_spec)
        fs, broot = build_root(config.root)
        folder = f"{broot.root}/_add"
        record = plan.run_record()
        if nonempty(fs, folder):
            if not config.resume:
                raise AddError(
                    f"{config.root} holds an unfinished tda add; pass --resume to continue "
                    f"it (the same INPUTs)"
                )
            import json

            from tda.attribution.io.fs import read_json

            check_resumable(json.loads(record), read_json(fs, f"{folder}/_run.json"),
                            folder, AddError)  # fmt: skip
            remove_temp_files(fs, (broot.chunks_dir, broot.deadletter_dir, broot.embeddings_dir))
        snapshot(config.root, parent)
        atomic_write_text(fs, f"{folder}/_run.json", record)
        return plan

    def _load(self, parent: Current, tokenizer_spec: str, model_spec: str, device: str) -> None:
        """Load ROOT's tokenizer and encoder (unless given); refuse others."""
        from tda.attribution.corpus.tokenizer import load_tokenizer
        from tda.attribution.encoders import load_encoder

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(tokenizer_spec)
        if self.tokenizer.info.fingerprint != parent.chunks.tokenizer.fingerprint:
            raise AddError(
                f"the tokenizer at {tokenizer_spec} is not the one ROOT's chunks were cut "
                f"with ({parent.chunks.tokenizer.fingerprint[:19]}); give --tokenizer the "
                f"root's tokenizer"
            )
        if self.encoder is None:
            self.encoder = load_encoder(model_spec, device)
        want = parent.embed.encoder
        if self.encoder.info.fingerprint != want.fingerprint:
            raise AddError(
                f"{model_spec} ({self.encoder.info.fingerprint[:19]}) is not the encoder ROOT "
                f"was embedded with ({want.spec}, {want.fingerprint[:19]}): its vectors would "
                f"not be comparable; give --model the root's encoder"
            )

    def units(self, plan: AddPlan) -> list[int]:
        return [f.index for f in plan.inputs]

    def markers(self, plan: AddPlan):
        fs, broot = build_root(plan.config.root)
        return fs, f"{broot.root}/_add"

    def marker(self, plan: AddPlan, unit: int) -> str:
        return f"{build_root(plan.config.root)[1].root}/_add/{unit:06d}.json"

    def resuming(self, plan: AddPlan) -> bool:
        return plan.config.resume

    def setup(self, plan: AddPlan) -> None:
        """Load ROOT's tokenizer and encoder on this worker (refusing others)."""
        self._load(plan.parent, plan.tokenizer_spec, plan.model_spec, plan.config.device)

    def process(self, plan: AddPlan, unit: int, meter: Meter) -> AddedFile:
        """Chunk and embed one new file into ROOT (``chunks/``, ``deadletter/``,
        ``embeddings/`` part-N under its new index). Counts what the chunk and embed
        stages count (chunks_written, chunks_embedded, ...)."""
        from tda.attribution.stages.chunk import ChunkStage
        from tda.attribution.stages.embed import EmbedStage

        if self.encoder is None:
            self.setup(plan)
        f = next(f for f in plan.inputs if f.index == unit)
        counts = ChunkStage(self.tokenizer).process(
            plan.chunk_plan(f, self.tokenizer.info), f, meter
        )
        embedded = EmbedStage(self.encoder).process(plan.embed_plan(f, counts), f.index, meter)
        return AddedFile(counts, embedded)

    def finish(self, plan: AddPlan) -> dict:
        """The new generation (see the module docstring, step 3); -> its audit entry,
        with ``drift`` (None for a flat index)."""
        root, parent = plan.config.root, plan.parent
        added = []
        for f in plan.inputs:
            done = self.read_marker(plan, f.index)
            if done is None:
                raise AddError(f"input file {f.index} ({f.url}) was not added; rerun with --resume")
            added.append(done)
        drift = added_drift(root, parent, [a.embed.file_index for a in added])
        chunks = replace(
            parent.chunks,
            inputs=parent.chunks.inputs + plan.inputs,
            files=parent.chunks.files + tuple(a.chunks for a in added),
        )
        chunk_sha = write_manifest(root, "chunks/manifest.json", chunks.to_json())
        embed = replace(
            parent.embed,
            chunk_manifest_sha256=chunk_sha,
            files=parent.embed.files + tuple(a.embed for a in added),
        )
        embed_sha = write_manifest(root, "embeddings/manifest.json", embed.to_json())
        old = [s.embed_files for s in parent.index.shards]
        target = max((s.vectors for s in parent.index.shards), default=1) or 1
        new = group_new_files([(a.embed.file_index, a.embed.chunks) for a in added], target)
        counts = {
            "files_added": len(added),
            "chunks_added": sum(a.chunks.chunks for a in added),
            "documents_added": sum(a.chunks.documents for a in added),
            "tokens_added": sum(a.chunks.tokens for a in added),
            "records_deadlettered": sum(a.chunks.deadlettered for a in added),
            "shards_added": len(new),
            "shards_kept": len(old),
        }
        lineage = {
            "kind": "add",
            "parent_manifest_id": parent.id,
            "added_inputs": [f.url for f in plan.inputs],
            "counts": counts,
            "drift": drift.to_dict() if drift is not None else None,
        }
        manifest = write_generation_index(
            root, parent.index, embed, chunks, embed_sha, [*old, *new],
            range(len(old), len(old) + len(new)), lineage, plan.config.threads,
        )  # fmt: skip
        child = _manifest_id(root)
        seal(root, parent.id, child, "add")
        entry = append_audit(
            root,
            {
                "change": "add",
                "by": who(plan.config.by),
                "parent_manifest_id": parent.id,
                "child_manifest_id": child,
                "added_inputs": [f.url for f in plan.inputs],
                "counts": counts,
                "drift": lineage["drift"],
                "vectors": manifest.vectors,
            },
        )
        fs, folder = self.markers(plan)
        fs.rm(folder, recursive=True)
        if drift is not None and drift.drifted:
            log.warning("quantizer drift: %s; consider `tda index retrain %s`", drift.line(), root)
        return entry


def _manifest_id(root: str) -> str:
    import hashlib

    fs, broot = build_root(root)
    with fs.open(broot.index_manifest, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _even_sample(root: str, files: list[tuple[int, int]], dim: int, size: int) -> np.ndarray:
    """``size`` vectors evenly spaced over ``files`` ((file index, vectors), in file
    order) of ROOT's embeddings, as float32 (deterministic): the index stage's own
    training sample, over these files."""
    from tda.attribution.index.build import sample_vectors

    fs, broot = build_root(root)
    return sample_vectors(fs, broot, files, dim, size)


def added_drift(root: str, parent: Current, added: list[int]):
    """The drift of the added files' vectors (``added``: their indices, already embedded
    in ROOT) against an even sample of the parent's, through the parent index's coarse
    quantizer (:func:`~.drift.measure_drift`); None for an index without one (flat)."""
    from tda.attribution.index.reader import IndexReader

    from .drift import coarse_assigner, measure_drift

    reader = IndexReader.open(root, verify=False)  # the parent: its manifest is still live
    shard = reader.quantizer_shard
    found = None if shard is None else coarse_assigner(shard)
    if found is None:
        return None
    assign, nlist = found
    dim = parent.embed.dim
    counts = {e.file_index: e.chunks for e in parent.embed.files}
    reference = _even_sample(root, sorted(counts.items()), dim, DRIFT_SAMPLE)
    new = _even_sample(root, [(i, _embedded(root, i)) for i in added], dim, DRIFT_SAMPLE)
    if len(new) == 0 or len(reference) == 0:
        return None
    return measure_drift(assign, nlist, reference, new)


def _embedded(root: str, file_index: int) -> int:
    """Rows of an embeddings part (its Parquet footer)."""
    from tda.attribution.io.fs import open_parquet

    fs, broot = build_root(root)
    with open_parquet(fs, broot.embed_part(file_index)) as parquet:
        return parquet.metadata.num_rows
