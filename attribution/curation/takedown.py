"""``tda takedown ROOT``: honour a takedown request (copyright, personal data) at
document level, as a new generation of ROOT, rewriting only what holds the documents.

1. :func:`plan_takedown` (driver): the live generation (the parent); the documents
   asked for (``--doc-id``, ``--source`` or ``--list``) found by reading only the
   ``doc_id`` / ``source`` / ``record_index`` columns of the chunks parts (no scan of
   vectors or concepts); the input files that hold them. Ids ROOT does not hold are
   reported (an earlier takedown may have removed them); none found is an error.
2. :func:`run_takedown`: snapshot the parent's manifests and preserve the affected
   files' chunks, embeddings and dead-letter parts under ``ROOT/generations/<parent>/``
   (:mod:`.generations`); rewrite those parts in place without the documents' rows
   (:func:`~.prune.prune_file` at document level, reading the preserved copies; with
   ``--corpus-out``, the affected corpus files too); write the new chunks and
   embeddings manifests; preserve and refill only the index shards holding an affected
   file (with the trained quantizer; their span / lexical channels rebuilt), keeping
   every other shard (:mod:`.shards`); the index manifest last, its lineage naming the
   parent, the reason and the counts; seal the parent; append ``ROOT/audit.jsonl``:
   who, why, what (the document ids, per source), how many, both manifest ids.

Chunk ids do not change; the removed ids simply no longer exist in the new generation
(search, attribution and chunk lookup cannot return them: tested). Every step is
idempotent, so an interrupted takedown is finished by running it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tda.attribution.io.fs import build_root, open_parquet
from tda.schemas.changes import TakedownConfig

from .generations import (
    Current,
    GenerationError,
    append_audit,
    current,
    preserve,
    resolve,
    seal,
    snapshot,
    who,
    write_manifest,
)
from .shards import shard_files, write_generation_index

__all__ = ["TakedownError", "TakedownPlan", "plan_takedown", "run_takedown"]

log = logging.getLogger("tda")


class TakedownError(GenerationError):
    """A takedown that cannot be done as asked (one line naming the fix)."""


@dataclass(frozen=True)
class TakedownPlan:
    """What a takedown will remove: per input file, the record indices of its documents
    to take out; the document ids found (by source) and those ROOT does not hold."""

    config: TakedownConfig
    parent: Current
    documents: dict[int, frozenset[int]]  # file index -> record indices
    found: dict[str, tuple[str, ...]]  # source -> document ids taken down
    not_found: tuple[str, ...]
    request: dict  # what was asked, for the audit log


def _requested(config: TakedownConfig) -> tuple[set[str], set[str], dict]:
    """(document ids, sources, the request as the audit log records it)."""
    if config.doc_ids:
        return set(config.doc_ids), set(), {"doc_ids": sorted(config.doc_ids)}
    if config.sources:
        return set(), set(config.sources), {"sources": sorted(config.sources)}
    path = config.list_path
    if path.endswith((".parquet", ".csv")):
        from .prune_list import PruneError, read_prune_list

        try:
            table, level, digest = read_prune_list(path)
        except PruneError as exc:
            raise TakedownError(str(exc)) from None
        if level == "chunk":
            raise TakedownError(
                f"--list {path} is a chunk-level prune list; takedown removes whole documents "
                f"(use `tda prune apply` for chunks)"
            )
        column = "doc_id" if level == "document" else "source"
        values = {str(v) for v in table[column].to_pylist() if v is not None}
        request = {"list": path, "list_sha256": digest, "level": level}
        return (values, set(), request) if level == "document" else (set(), values, request)
    from tda.attribution.io.fs import filesystem

    fs = filesystem(path)[0]
    if not fs.exists(path):
        raise TakedownError(f"--list {path}: no such file")
    with fs.open(path, "rb") as f:
        data = f.read()
    import hashlib

    ids = {
        line.strip()
        for line in data.decode("utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    if not ids:
        raise TakedownError(f"--list {path} names no document id (one per line)")
    return ids, set(), {"list": path, "list_sha256": "sha256:" + hashlib.sha256(data).hexdigest()}


def plan_takedown(config: TakedownConfig) -> TakedownPlan:
    """Find the documents to take down in ROOT's live generation (see the module
    docstring, step 1). One-line errors before anything is written."""
    parent = current(config.root, TakedownError)
    if config.corpus:
        from tda.attribution.corpus.readers import resolve_inputs

        given = [f.url for f in resolve_inputs(list(config.corpus), parent.chunks.read.format)]
        if given != [f.url for f in parent.chunks.inputs]:
            raise TakedownError(
                f"--corpus must be the corpus {config.root} was built from "
                f"({len(parent.chunks.inputs)} files)"
            )
    doc_ids, sources, request = _requested(config)
    fs, _ = build_root(config.root)
    documents: dict[int, set[int]] = {}
    found: dict[str, set[str]] = {}
    for f in parent.chunks.files:
        if f.chunks == 0:
            continue
        path = resolve(config.root, parent.id, f"chunks/part-{f.file_index:06d}.parquet")
        with open_parquet(fs, path) as parquet:
            table = parquet.read(columns=["source", "doc_id", "record_index"])
        if doc_ids:
            hit = pc.is_in(table["doc_id"], pa.array(sorted(doc_ids), pa.string()))
        else:
            hit = pc.is_in(table["source"], pa.array(sorted(sources), pa.string()))
        rows = table.filter(hit)
        if rows.num_rows == 0:
            continue
        documents[f.file_index] = set(np.unique(rows["record_index"].to_numpy()).tolist())
        for source, doc in zip(rows["source"].to_pylist(), rows["doc_id"].to_pylist(), strict=True):
            found.setdefault(source, set()).add(doc)
    held = {d for docs in found.values() for d in docs}
    missing = sorted(doc_ids - held) if doc_ids else sorted(sources - set(found))
    if not documents:
        what = "document ids" if doc_ids else "sources"
        raise TakedownError(
            f"none of the {what} asked for is in {config.root} (first: {missing[0]}); an "
            f"earlier takedown may have removed them (see {config.root}/audit.jsonl)"
        )
    return TakedownPlan(
        config=config,
        parent=parent,
        documents={k: frozenset(v) for k, v in sorted(documents.items())},
        found={s: tuple(sorted(d)) for s, d in sorted(found.items())},
        not_found=tuple(missing),
        request=request,
    )


def _prune_plan(plan: TakedownPlan):
    """The document-level :class:`~.prune.PrunePlan` that rewrites the affected files:
    read from the parent's preserved copies, written into ROOT."""
    from .generations import GENERATIONS
    from .prune import PrunePlan

    config, parent = plan.config, plan.parent
    root = build_root(config.root)[1].root
    return PrunePlan(
        root=f"{root}/{GENERATIONS}/{parent.id}",
        out=root,
        corpus_out=(config.corpus_out or "").rstrip("/"),
        reason=config.reason.strip(),
        level="document",
        list_path=config.list_path or "",
        list_sha256="",
        sources=frozenset(),
        documents=dict(plan.documents),
        chunks={},
        files=tuple(sorted(plan.documents)),
        inputs={f.index: (f.url, f.format) for f in parent.chunks.inputs},
        text_field=parent.chunks.read.text_field,
        text_unit=parent.chunks.read.text_unit,
        parent_index_id=parent.id,
        parent_embed_sha256=parent.embed_sha,
        parent_chunk_sha256=parent.chunk_sha,
    )


def run_takedown(config: TakedownConfig) -> dict:
    """Take the documents out of ROOT as a new generation (see the module docstring);
    -> the audit entry appended to ``ROOT/audit.jsonl``."""
    from .prune import prune_file, pruned_chunk_manifest, pruned_embed_manifest

    plan = plan_takedown(config)
    root, parent = config.root, plan.parent
    affected = sorted(plan.documents)
    written = snapshot(root, parent)
    parts = []
    for f in parent.chunks.files:
        if f.file_index in plan.documents:
            parts += [p.path for p in f.parts]
    for e in parent.embed.files:
        if e.file_index in plan.documents:
            parts += [p.path for p in e.parts]
    written += preserve(root, parent.id, parts)
    prune_plan = _prune_plan(plan)
    results = {i: prune_file(prune_plan, i) for i in affected}
    chunks = pruned_chunk_manifest(parent.chunks, results)
    chunk_sha = write_manifest(root, "chunks/manifest.json", chunks.to_json())
    embed = pruned_embed_manifest(parent.embed, results, chunk_sha)
    embed_sha = write_manifest(root, "embeddings/manifest.json", embed.to_json())
    shards = [s.embed_files for s in parent.index.shards]
    refill = [i for i, s in enumerate(shards) if set(s) & set(affected)]
    written += preserve(root, parent.id, [p for i in refill for p in shard_files(parent.index, i)])
    per_source: dict[str, dict[str, int]] = {}
    for r in results.values():
        for source, n in r.per_source.items():
            acc = per_source.setdefault(source, {"chunks": 0, "documents": 0})
            acc["chunks"] += n["chunks"]
            acc["documents"] += n["documents"]
    counts = {
        "documents_removed": sum(r.documents_removed for r in results.values()),
        "chunks_removed": sum(r.chunks_removed for r in results.values()),
        "tokens_removed": sum(r.tokens_removed for r in results.values()),
        "files_rewritten": len(affected),
        "shards_refilled": len(refill),
        "shards_kept": len(shards) - len(refill),
        "bytes_preserved": written,
    }
    by = who(config.by)
    lineage = {
        "kind": "takedown",
        "parent_manifest_id": parent.id,
        "reason": config.reason.strip(),
        "by": by,
        "request": plan.request,
        "counts": counts,
        "removed_per_source": dict(sorted(per_source.items())),
    }
    manifest = write_generation_index(
        root, parent.index, embed, chunks, embed_sha, shards, refill, lineage, config.threads
    )
    import hashlib

    fs, broot = build_root(root)
    with fs.open(broot.index_manifest, "rb") as f:
        child = hashlib.sha256(f.read()).hexdigest()
    seal(root, parent.id, child, "takedown")
    entry = {
        "change": "takedown",
        "by": by,
        "reason": config.reason.strip(),
        "request": plan.request,
        "documents": {s: list(d) for s, d in plan.found.items()},
        "not_found": list(plan.not_found),
        "files": [parent.chunks.inputs[_position(parent, i)].url for i in affected],
        "corpus_out": config.corpus_out,
        "parent_manifest_id": parent.id,
        "child_manifest_id": child,
        "counts": counts,
        "removed_per_source": dict(sorted(per_source.items())),
        "vectors": manifest.vectors,
    }
    return append_audit(root, entry)


def _position(parent: Current, file_index: int) -> int:
    for i, f in enumerate(parent.chunks.inputs):
        if f.index == file_index:
            return i
    raise TakedownError(f"input file {file_index} is not in the root")
