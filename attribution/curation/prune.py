"""Prune lists and pruned roots: from a scan to a corpus, chunks, embeddings and index
without the pruned data, with an audit trail.

* :func:`~.prune_list.make_prune_list` (:mod:`.prune_list`): a scan directory ->
  ``prune.parquet`` (and CSV on request) at one level (``chunk`` | ``document`` |
  ``source``), each row with its reason; a file people can read, edit and pass on.
* :class:`PruneStage` (``tda prune apply``, a Beam job over input files on the shared
  stage runtime; :func:`plan_prune` / :func:`prune_file` / :func:`finish_prune` are its
  steps): for every input file of ROOT, the corpus file rewritten in
  its own format without the pruned documents (or, at chunk level, with the pruned
  chunks' character spans cut out of their documents), and NEW_ROOT's chunks and
  embeddings parts without the pruned rows; then NEW_ROOT's index: shards holding a
  pruned chunk are refilled from the kept embeddings with the parent's trained
  quantizer, the others copied byte for byte; the new manifest records its lineage
  (parent manifest id, prune list sha256, reason, counts), and ``NEW_ROOT/audit.jsonl``
  (the parent's lines, then this one) says when, why, what and how much per source.

ROOT is only read. Chunk ids do not change; NEW_ROOT's chunks keep their provenance in
the parent's corpus files (whose record numbers the pruned corpus no longer keeps when
documents are dropped); NEW_ROOT's parts simply lack the pruned rows (the reader finds
rows by chunk-id statistics when the ordinal row is gone).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pyarrow as pa

from tda import __version__
from tda.attribution.io.fs import (
    atomic_open,
    atomic_write_text,
    build_root,
    filesystem,
    open_parquet,
    write_hashed,
)
from tda.attribution.io.integrity import stored_file
from tda.attribution.io.parts import PartWriter, nonempty, read_manifest
from tda.attribution.io.verify import verify_root
from tda.attribution.stages.base import Meter, StageRuntime
from tda.schemas.curation import PRUNE_LEVELS, PRUNE_SCHEMA, FilePruned, PruneConfig

from .prune_corpus import relative_path, rewrite_corpus_file
from .prune_list import PruneError, make_prune_list, read_prune_list
from .prune_rows import corpus_edits, per_source, pruned_rows, tokens_removed

__all__ = [
    "LEVELS",
    "PRUNE_SCHEMA",
    "FilePruned",
    "PruneError",
    "PrunePlan",
    "PruneStage",
    "finish_prune",
    "make_prune_list",
    "plan_prune",
    "prune_file",
    "read_file_markers",
    "read_prune_list",
    "write_file_marker",
]

LEVELS = PRUNE_LEVELS  # the levels of a prune list (tda.schemas.curation.PRUNE_LEVELS)


@dataclass(frozen=True)
class PrunePlan:
    """What a prune apply will do, decided on the driver from ROOT's manifests and the
    prune list before any file is touched."""

    root: str
    out: str  # NEW_ROOT
    corpus_out: str
    reason: str
    level: str
    list_path: str
    list_sha256: str
    sources: frozenset[str]  # source level
    documents: dict[int, frozenset[int]]  # document level: file index -> record indices
    chunks: dict[int, frozenset[int]]  # chunk level: file index -> chunk ids
    files: tuple[int, ...]
    inputs: dict[int, tuple[str, str]]  # file index -> (url, format)
    text_field: str
    text_unit: str
    parent_index_id: str
    parent_embed_sha256: str
    parent_chunk_sha256: str
    resume: bool = False  # skip the files whose marker an interrupted run left


def _root_manifests(fs, broot) -> tuple[tuple, tuple, tuple]:
    """A build root's chunk, embed and index manifests, each as (manifest, sha256)."""
    from tda.schemas import EmbedManifest, IndexManifest, Manifest

    return (
        read_manifest(fs, broot.chunk_manifest, Manifest.from_json, "tda chunk", PruneError),
        read_manifest(fs, broot.embed_manifest, EmbedManifest.from_json, "tda embed", PruneError),
        read_manifest(
            fs, broot.index_manifest, IndexManifest.from_json, "tda index build", PruneError
        ),
    )


def plan_prune(
    root: str,
    list_path: str,
    corpus: Sequence[str],
    corpus_out: str,
    out: str,
    reason: str,
    overwrite: bool = False,
) -> PrunePlan:
    """:meth:`PruneStage.plan` of a :class:`PruneConfig` of these arguments."""
    config = PruneConfig(
        root=root, list_path=list_path, corpus=tuple(corpus), corpus_out=corpus_out,
        out=out, reason=reason, overwrite=overwrite,
    )  # fmt: skip
    return PruneStage().plan(config)


class PruneStage(StageRuntime[PrunePlan, int, FilePruned]):
    """``tda prune apply``: one unit per input file of ROOT (its index), its result a
    :class:`FilePruned` (its marker ``NEW_ROOT/_prune/N.json``, gathered and removed by
    :meth:`finish`). ``--resume`` keeps the files an interrupted run finished (their
    markers; the run record ``NEW_ROOT/_prune/_run.json`` must be this run's)."""

    name = "prune"
    done = "files"
    error = PruneError
    record = FilePruned

    def plan(self, config: PruneConfig) -> PrunePlan:
        """Check ROOT, the corpus it was built from and the prune list; empty NEW_ROOT
        and the corpus copy's folder (with ``overwrite``). One-line errors before any
        work."""
        from tda.attribution.corpus.readers import resolve_inputs

        root, list_path, corpus = config.root, config.list_path, config.corpus
        corpus_out, out, reason = config.corpus_out, config.out, config.reason
        if not reason or not reason.strip():
            raise PruneError("--reason is required: the audit log records why data was removed")
        fs, broot = build_root(root)
        (chunks_m, chunk_sha), (_, embed_sha), (_, index_sha) = _root_manifests(fs, broot)
        # a damaged file would be copied into NEW_ROOT under a fresh, matching sha256
        damaged = [p for p in verify_root(root) if p.severity == "error"]
        if damaged:
            raise PruneError(
                f"{root} fails verification ({len(damaged)} problem(s); first: "
                f"{damaged[0].line}); see `tda verify {root}`"
            )
        given = [f.url for f in resolve_inputs(list(corpus), chunks_m.read.format)]
        expected = [f.url for f in chunks_m.inputs]
        if given != expected:
            missing = sorted(set(expected) - set(given))[:3]
            extra = sorted(set(given) - set(expected))[:3]
            raise PruneError(
                f"--corpus must be the corpus ROOT was built from ({len(expected)} files); "
                f"missing {missing or 'none'}, not in ROOT {extra or 'none'}"
            )
        table, level, digest = read_prune_list(list_path)
        sources: set[str] = set()
        documents: dict[int, set[int]] = {}
        chunk_ids: dict[int, set[int]] = {}
        known_files = {f.index for f in chunks_m.inputs}
        for row in table.to_pylist():
            if level == "source":
                sources.add(row["source"])
            elif row["file_index"] not in known_files:
                raise PruneError(f"--list names input file {row['file_index']}, not in {root}")
            elif level == "document":
                documents.setdefault(row["file_index"], set()).add(int(row["record_index"]))
            else:
                loc = chunks_m.id_codec.decode(int(row["chunk_id"]))
                if loc.file_index != row["file_index"]:
                    raise PruneError(
                        f"--list: chunk id {row['chunk_id']} is not in file {row['file_index']}"
                    )
                chunk_ids.setdefault(row["file_index"], set()).add(int(row["chunk_id"]))
        plan = PrunePlan(
            root=root,
            out=out.rstrip("/"),
            corpus_out=corpus_out.rstrip("/"),
            reason=reason.strip(),
            level=level,
            list_path=list_path,
            list_sha256=digest,
            sources=frozenset(sources),
            documents={k: frozenset(v) for k, v in documents.items()},
            chunks={k: frozenset(v) for k, v in chunk_ids.items()},
            files=tuple(f.index for f in chunks_m.inputs),
            inputs={f.index: (f.url, f.format) for f in chunks_m.inputs},
            text_field=chunks_m.read.text_field,
            text_unit=chunks_m.read.text_unit,
            parent_index_id=index_sha,
            parent_embed_sha256=embed_sha,
            parent_chunk_sha256=chunk_sha,
        )
        return replace(plan, resume=_prepare_out(plan, config))

    def resuming(self, plan: PrunePlan) -> bool:
        return plan.resume

    def units(self, plan: PrunePlan) -> list[int]:
        return list(plan.files)

    def markers(self, plan: PrunePlan):
        nfs, nroot = build_root(plan.out)
        return nfs, f"{nroot.root}/_prune"

    def marker(self, plan: PrunePlan, unit: int) -> str:
        return f"{build_root(plan.out)[1].root}/_prune/{unit:06d}.json"

    def process(self, plan: PrunePlan, unit: int, meter: Meter) -> FilePruned:
        """Rewrite one input file's corpus file and write NEW_ROOT's chunks, embeddings
        and dead-letter parts without the pruned rows. Counts chunks_removed and
        documents_removed."""
        result = _prune_file(plan, unit, meter)
        meter("chunks_removed", result.chunks_removed)
        meter("documents_removed", result.documents_removed)
        return result

    def finish(self, plan: PrunePlan) -> dict:
        """NEW_ROOT's manifests, index and audit log from the files' markers; -> the
        audit entry (:func:`finish_prune`)."""
        return finish_prune(plan, read_file_markers(plan))


def _run_record(plan: PrunePlan) -> str:
    """``NEW_ROOT/_prune/_run.json``: what ``--resume`` must find unchanged."""
    record = {
        "tda_version": __version__,
        "parent_manifest_id": plan.parent_index_id,
        "prune_list_sha256": plan.list_sha256,
        "corpus_out": plan.corpus_out,
        "level": plan.level,
    }
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _prepare_out(plan: PrunePlan, config: PruneConfig) -> bool:
    """Make NEW_ROOT and the corpus copy's folder ready: empty is fine, ``overwrite``
    empties them, ``resume`` needs this run's record in NEW_ROOT (and removes what a
    killed run left half-written); else one line. Returns True when resuming."""
    from tda.attribution.io.fs import read_json
    from tda.attribution.io.parts import check_resumable, remove_temp_files

    nfs, nroot = build_root(plan.out)
    record_path = f"{nroot.root}/_prune/_run.json"
    resumed = False
    for target in (plan.out, plan.corpus_out):
        tfs, tpath = filesystem(target)
        if tpath.rstrip("/") == filesystem(plan.root)[1].rstrip("/"):
            raise PruneError(f"{target} is ROOT itself; the old root is never modified")
        if not nonempty(tfs, tpath):
            continue
        if config.overwrite:
            tfs.rm(tpath, recursive=True)
        elif config.resume and nfs.exists(record_path):
            resumed = True
        elif config.resume:
            raise PruneError(
                f"{target} holds output without a prune run record; use --overwrite to start over"
            )
        else:
            raise PruneError(
                f"{target} is not empty; pass --resume to continue an interrupted prune or "
                f"--overwrite to replace it"
            )
    if resumed:
        check_resumable(
            json.loads(_run_record(plan)), read_json(nfs, record_path), plan.out, PruneError
        )
        remove_temp_files(nfs, (nroot.chunks_dir, nroot.deadletter_dir, nroot.embeddings_dir))
    else:
        atomic_write_text(nfs, record_path, _run_record(plan))
    return resumed


def prune_file(plan: PrunePlan, file_index: int) -> FilePruned:
    """One input file: rewrite its corpus file and write NEW_ROOT's chunks, embeddings
    and dead-letter parts without the pruned rows (:meth:`PruneStage.process`; its
    marker is :func:`write_file_marker`'s)."""
    return _prune_file(plan, file_index, Meter())


def _prune_file(plan: PrunePlan, file_index: int, meter: Meter) -> FilePruned:
    """The prune of one input file (see :meth:`PruneStage.process`)."""
    fs, broot = build_root(plan.root)
    nfs, nroot = build_root(plan.out)
    with meter.phase("read"):
        with open_parquet(fs, broot.chunk_part(file_index)) as parquet:
            chunks = parquet.read()
        with open_parquet(fs, broot.embed_part(file_index)) as parquet:
            embeds = parquet.read()
    if not chunks["chunk_id"].equals(embeds["chunk_id"]):
        raise PruneError(
            f"chunks and embeddings of input file {file_index} disagree in {plan.root}"
        )
    with meter.phase("compute"):
        remove = pruned_rows(plan, file_index, chunks)
        removed = chunks.filter(pa.array(remove))
        sources = per_source(plan, removed)
        drop, cuts = corpus_edits(plan, removed)
        tokens = tokens_removed(plan, removed)
    with meter.phase("write"):
        url, fmt = plan.inputs[file_index]
        rel = relative_path(url, [u for u, _ in plan.inputs.values()])
        if plan.corpus_out:
            n_in, n_out, written = rewrite_corpus_file(
                url, fmt, f"{plan.corpus_out}/{rel}", drop, cuts, plan.text_field, plan.text_unit
            )
        else:  # no corpus copy asked for (tda takedown without --corpus-out)
            n_in, n_out, written = 0, 0, None
        keep = pa.array(~remove)
        parts = []  # hashed as written, for NEW_ROOT's manifests
        for path, table in (
            (nroot.chunk_part(file_index), chunks.filter(keep)),
            (nroot.embed_part(file_index), embeds.filter(keep)),
        ):
            raw = ("vector",) if "vector" in table.schema.names else ()
            writer = PartWriter(nfs, path, table.schema, keep_empty=True, raw_columns=raw)
            for batch in table.to_batches():
                writer.write(batch)
            writer.commit()
            parts.append(stored_file(nroot, path, writer.written))
        if fs.exists(broot.deadletter_part(file_index)):  # bad records stay as they were
            with fs.open(broot.deadletter_part(file_index), "rb") as src:
                path = nroot.deadletter_part(file_index)
                parts.append(stored_file(nroot, path, write_hashed(nfs, path, _copy(src))))
    return FilePruned(
        file_index=file_index,
        records_in=n_in,
        records_out=n_out,
        documents_removed=len(drop),
        documents_edited=len(cuts),
        chunks_removed=int(remove.sum()),
        chunks_kept=int((~remove).sum()),
        tokens_removed=tokens,
        removed_ids=tuple(int(i) for i in removed["chunk_id"].to_numpy()),
        per_source=sources,
        corpus_file=written,
        parts=tuple(parts),
    )


def _copy(src):
    """``write_hashed``'s producer of ``src``'s bytes, in 4 MiB blocks."""

    def produce(write) -> None:
        for block in iter(lambda: src.read(1 << 22), b""):
            write(block)

    return produce


def _parts_in(result: FilePruned, *folders: str) -> tuple:
    """The parts of ``result`` under ``folders`` (``chunks``, ``deadletter``, ...)."""
    return tuple(p for p in result.parts if p.path.split("/", 1)[0] in folders)


def write_file_marker(plan: PrunePlan, result: FilePruned) -> None:
    """One input file's marker ``NEW_ROOT/_prune/N.json``."""
    PruneStage().write_marker(plan, result.file_index, result)


def read_file_markers(plan: PrunePlan) -> list[FilePruned]:
    """Every input file's marker, in file order; removes the markers' folder (they are
    not part of NEW_ROOT)."""
    stage = PruneStage()
    out = []
    for file_index in plan.files:
        result = stage.read_marker(plan, file_index)
        if result is None:
            raise PruneError(f"input file {file_index} was not pruned; run `tda prune apply` again")
        out.append(result)
    nfs, folder = stage.markers(plan)
    nfs.rm(folder, recursive=True)
    return out


def pruned_chunk_manifest(chunks_m, by_file: dict[int, FilePruned]):
    """The chunks manifest after pruning: each file in ``by_file`` (file index -> what
    pruning did to it) with its counts less the removed and its new parts; the other
    files as they were."""
    files = []
    for c in chunks_m.files:
        r = by_file.get(c.file_index)
        files.append(
            c
            if r is None
            else replace(
                c,
                records=c.records - r.documents_removed,
                documents=c.documents - r.documents_removed,
                chunks=r.chunks_kept,
                tokens=c.tokens - r.tokens_removed,
                parts=_parts_in(r, "chunks", "deadletter"),
            )
        )
    return replace(chunks_m, files=tuple(files))


def pruned_embed_manifest(embed_m, by_file: dict[int, FilePruned], chunk_sha: str):
    """The embeddings manifest after pruning (see :func:`pruned_chunk_manifest`),
    recording the new chunks manifest's sha256 ``chunk_sha``."""
    files = []
    for e in embed_m.files:
        r = by_file.get(e.file_index)
        files.append(
            e
            if r is None
            else replace(
                e,
                chunks=r.chunks_kept,
                tokens=max(0, e.tokens - r.tokens_removed),
                parts=_parts_in(r, "embeddings"),
            )
        )
    return replace(embed_m, chunk_manifest_sha256=chunk_sha, files=tuple(files))


def finish_prune(
    plan: PrunePlan, results: Sequence[FilePruned], threads: int | None = None
) -> dict:
    """NEW_ROOT's manifests, index (affected shards refilled, others copied) and audit
    log; -> the audit entry."""
    from tda.attribution.stages.index import IndexStage
    from tda.attribution.stages.index_reuse import copy_index_files, copy_shard, plan_from_index
    from tda.schemas import IndexConfig

    index_stage = IndexStage()

    fs, broot = build_root(plan.root)
    nfs, nroot = build_root(plan.out)
    by_file = {r.file_index: r for r in results}
    if sorted(by_file) != sorted(plan.files):
        raise PruneError("not every input file was pruned; run `tda prune apply` again")
    (chunks_m, _), (embed_m, _), (index_m, _) = _root_manifests(fs, broot)
    new_chunks = pruned_chunk_manifest(chunks_m, by_file)
    atomic_write_text(nfs, nroot.chunk_manifest, new_chunks.to_json())
    with nfs.open(nroot.chunk_manifest, "rb") as f:
        chunk_sha = hashlib.sha256(f.read()).hexdigest()  # as read_manifest gives it
    new_embed = pruned_embed_manifest(embed_m, by_file, chunk_sha)
    with fs.open(broot.embed_concepts, "rb") as src, atomic_open(nfs, nroot.embed_concepts) as dst:
        dst.write(src.read())
    atomic_write_text(nfs, nroot.embed_manifest, new_embed.to_json())
    with nfs.open(nroot.embed_manifest, "rb") as f:
        embed_sha = hashlib.sha256(f.read()).hexdigest()

    # index: the parent's quantizer; shards with a pruned chunk refilled, the rest copied
    copy_index_files(fs, broot.index_dir, nfs, nroot.index_dir, index_m)
    removed_files = {r.file_index for r in results if r.chunks_removed}
    shards = tuple(s.embed_files for s in index_m.shards)
    config = IndexConfig(
        root=plan.out, factory=index_m.factory, shards=len(shards), nprobe=index_m.nprobe,
        metric=index_m.metric, threads=threads,
    )  # fmt: skip
    iplan = plan_from_index(index_m, config, new_embed, new_chunks, embed_sha, shards)
    refill = [i for i, s in enumerate(shards) if set(s) & removed_files]
    for i in range(len(index_m.shards)):
        if i not in refill:  # copied unchanged, with its re-rank codes
            copy_shard(iplan, i, index_m, fs, broot.index_dir)
    for _ in index_stage.fill(iplan, refill, iplan.fill_threads()):
        pass

    per_source: dict[str, dict[str, int]] = {}
    for r in results:
        for src, n in r.per_source.items():
            acc = per_source.setdefault(src, {"chunks": 0, "documents": 0})
            acc["chunks"] += n["chunks"]
            acc["documents"] += n["documents"]
    totals = {
        "chunks_removed": sum(r.chunks_removed for r in results),
        "documents_removed": sum(r.documents_removed for r in results),
        "documents_edited": sum(r.documents_edited for r in results),
        "chunks_kept": sum(r.chunks_kept for r in results),
        "records_in": sum(r.records_in for r in results),
        "records_out": sum(r.records_out for r in results),
        "shards_refilled": len(refill),
        "shards_copied": len(shards) - len(refill),
    }
    lineage = {
        "parent_root": plan.root,
        "parent_manifest_id": plan.parent_index_id,
        "prune_list": plan.list_path,
        "prune_list_sha256": plan.list_sha256,
        "level": plan.level,
        "reason": plan.reason,
        "counts": totals,
        "removed_per_source": dict(sorted(per_source.items())),
    }
    manifest = index_stage.finish(iplan, lineage=lineage)
    with nfs.open(nroot.index_manifest, "rb") as f:
        child_id = hashlib.sha256(f.read()).hexdigest()  # the manifest id IndexReader reports
    entry = {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tda_version": __version__,
        "reason": plan.reason,
        "level": plan.level,
        "prune_list": plan.list_path,
        "prune_list_sha256": plan.list_sha256,
        "parent_root": plan.root,
        "parent_manifest_id": plan.parent_index_id,
        "child_root": plan.out,
        "child_manifest_id": child_id,
        "corpus_out": plan.corpus_out,
        "counts": totals,
        "removed_per_source": dict(sorted(per_source.items())),
        "vectors": manifest.vectors,
    }
    previous = b""
    if fs.exists(f"{broot.root}/audit.jsonl"):
        with fs.open(f"{broot.root}/audit.jsonl", "rb") as f:
            previous = f.read()
    with atomic_open(nfs, f"{nroot.root}/audit.jsonl") as f:
        f.write(previous + (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
    return entry
