"""Prune lists and pruned roots: from a scan to a corpus, chunks, embeddings and index
without the pruned data, with an audit trail.

* :func:`make_prune_list`: a scan directory -> ``prune.parquet`` (and CSV on request) at
  one level (``chunk`` | ``document`` | ``source``), each row with its reason; a file
  people can read, edit and pass on.
* :func:`plan_prune` / :func:`prune_file` / :func:`finish_prune` (``tda prune apply``, a
  Beam job over input files): for every input file of ROOT, the corpus file rewritten in
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
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tda import __version__
from tda.attribution.corpus.readers import get_field, set_field
from tda.attribution.io.fs import (
    atomic_open,
    atomic_write_text,
    build_root,
    filesystem,
    open_parquet,
)
from tda.attribution.io.parts import PartWriter, StageError, nonempty, read_manifest

__all__ = [
    "LEVELS",
    "PRUNE_SCHEMA",
    "PruneError",
    "PrunePlan",
    "finish_prune",
    "make_prune_list",
    "plan_prune",
    "prune_file",
    "read_file_markers",
    "read_prune_list",
    "write_file_marker",
]

LEVELS = ("chunk", "document", "source")
PRUNE_SCHEMA = pa.schema(
    [
        pa.field("level", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("file_index", pa.int32()),  # document / chunk level
        pa.field("record_index", pa.int64()),
        pa.field("doc_id", pa.string()),
        pa.field("chunk_id", pa.int64()),  # chunk level
        pa.field("char_start", pa.int64()),
        pa.field("char_end", pa.int64()),
        pa.field("score", pa.float32()),
        pa.field("share", pa.float64()),
        pa.field("reason", pa.string(), nullable=False),
    ],
    metadata={b"tda.table": b"prune_list", b"tda.table_version": b"1"},
)


class PruneError(StageError):
    """A prune list or apply that cannot be used; one line naming the fix."""


# --------------------------------------------------------------------------------------
# Prune lists


def make_prune_list(
    scan_dir: str,
    out: str,
    level: str = "document",
    min_share: float = 0.0,
    min_score: float | None = None,
    csv: bool = False,
) -> pa.Table:
    """Scan results -> the prune list at ``level``: chunks with score >= ``min_score``;
    documents (or sources) whose share of chunks hit is >= ``min_share`` and whose max
    score is >= ``min_score``. Written to ``out`` (Parquet; ``csv``: a CSV beside it)."""
    if level not in LEVELS:
        raise PruneError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if not 0.0 <= min_share <= 1.0:
        raise PruneError(f"--min-share must be in [0, 1], got {min_share}")
    fs, base = filesystem(scan_dir)[0], scan_dir.rstrip("/")
    if not fs.exists(f"{base}/scan.json"):
        raise PruneError(f"{scan_dir} is not a finished scan (no scan.json); run `tda scan`")
    with fs.open(f"{base}/scan.json", "rb") as f:
        scan_bytes = f.read()
    scan = json.loads(scan_bytes)
    what = scan["settings"]["concepts"] or [f"exemplars {scan['settings']['like']}"]
    what = ", ".join(what)
    score_ok = (lambda s: True) if min_score is None else (lambda s: s >= min_score)
    rows = []
    if level == "chunk":
        with open_parquet(fs, f"{base}/hits.parquet") as parquet:
            hits = parquet.read().to_pylist()
        for h in hits:
            if score_ok(h["score"]):
                rows.append(
                    {
                        **{k: h[k] for k in ("source", "file_index", "record_index", "doc_id")},
                        "level": "chunk",
                        "chunk_id": h["chunk_id"],
                        "char_start": h["char_start"],
                        "char_end": h["char_end"],
                        "score": h["score"],
                        "share": None,
                        "reason": f"{h['matched']} scored {h['score']:.3f} ({what})",
                    }
                )
    elif level == "document":
        with open_parquet(fs, f"{base}/by_document.parquet") as parquet:
            docs = parquet.read().to_pylist()
        for d in docs:
            if d["share"] >= min_share and score_ok(d["max_score"]):
                rows.append(
                    {
                        **{k: d[k] for k in ("source", "file_index", "record_index", "doc_id")},
                        "level": "document",
                        "score": d["max_score"],
                        "share": d["share"],
                        "reason": (
                            f"{d['chunks_hit']}/{d['chunks']} chunks ({d['share']:.0%}) hit by "
                            f"{what}, max score {d['max_score']:.3f}"
                        ),
                    }
                )
    else:
        with open_parquet(fs, f"{base}/by_source.parquet") as parquet:
            sources = parquet.read().to_pylist()
        for s in sources:
            if s["chunks_hit"] and s["share"] >= min_share and score_ok(s["max_score"]):
                rows.append(
                    {
                        "source": s["source"],
                        "level": "source",
                        "score": s["max_score"],
                        "share": s["share"],
                        "reason": (
                            f"{s['chunks_hit']:,}/{s['chunks']:,} chunks ({s['share']:.1%}) of "
                            f"the source hit by {what}, max score {s['max_score']:.3f}"
                        ),
                    }
                )
    metadata = {
        **PRUNE_SCHEMA.metadata,
        b"tda.scan_sha256": ("sha256:" + hashlib.sha256(scan_bytes).hexdigest()).encode(),
        b"tda.criteria": json.dumps(
            {"level": level, "min_share": min_share, "min_score": min_score}, sort_keys=True
        ).encode(),
    }
    table = pa.Table.from_pylist(rows, schema=PRUNE_SCHEMA.with_metadata(metadata))
    ofs = filesystem(out)[0]
    with atomic_open(ofs, out) as f:
        pq.write_table(table, f, compression="zstd")
    if csv:
        import pyarrow.csv as pacsv

        csv_path = out[: -len(".parquet")] + ".csv" if out.endswith(".parquet") else out + ".csv"
        with atomic_open(ofs, csv_path) as f:
            pacsv.write_csv(table, f)
    return table


def read_prune_list(path: str) -> tuple[pa.Table, str, str]:
    """A prune list (Parquet, or CSV edited by hand) -> (table, level, sha256 of the file)."""
    fs = filesystem(path)[0]
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PruneError(f"--list {path}: no such file") from None
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        if path.endswith(".csv"):
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(
                pa.BufferReader(data),
                convert_options=pacsv.ConvertOptions(
                    column_types={f.name: f.type for f in PRUNE_SCHEMA}, strings_can_be_null=True
                ),
            )
        else:
            table = pq.read_table(pa.BufferReader(data))
        table = table.select(PRUNE_SCHEMA.names).cast(PRUNE_SCHEMA.remove_metadata())
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PruneError(f"--list {path} is not a prune list ({first})") from None
    levels = set(table["level"].to_pylist())
    if not levels:
        raise PruneError(f"--list {path} is empty: nothing to prune")
    if len(levels) > 1 or not levels <= set(LEVELS):
        raise PruneError(
            f"--list {path}: one level per list ({', '.join(LEVELS)}), got {sorted(levels)}"
        )
    level = levels.pop()
    need = {"chunk": "chunk_id", "document": "record_index", "source": "source"}[level]
    if table[need].null_count:
        raise PruneError(f"--list {path}: {level} rows need a {need} in every row")
    if level != "source" and table["file_index"].null_count:
        raise PruneError(f"--list {path}: {level} rows need a file_index in every row")
    return table, level, digest


# --------------------------------------------------------------------------------------
# Apply


@dataclass(frozen=True)
class PrunePlan:
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


@dataclass(frozen=True)
class FilePruned:
    """What pruning did to one input file."""

    file_index: int
    records_in: int
    records_out: int  # records written to the pruned corpus file
    documents_removed: int
    documents_edited: int  # chunk level: documents with spans cut out
    chunks_removed: int
    chunks_kept: int
    tokens_removed: int
    removed_ids: tuple[int, ...]
    per_source: dict[str, dict[str, int]]  # source -> {"chunks": n, "documents": m}
    corpus_file: str | None  # written file (None: every record pruned, text file dropped)


def _relative(url: str, inputs: Sequence[str]) -> str:
    """The path of ``url`` below the common folder of all inputs (kept in the pruned corpus)."""
    import os

    common = os.path.commonpath([u.split("://", 1)[-1] for u in inputs])
    path = url.split("://", 1)[-1]
    if len(inputs) == 1:
        common = os.path.dirname(path)
    return os.path.relpath(path, common)


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
    from tda.attribution.corpus.readers import resolve_inputs

    if not reason or not reason.strip():
        raise PruneError("--reason is required: the audit log records why data was removed")
    fs, broot = build_root(root)
    (chunks_m, chunk_sha), (_, embed_sha), (_, index_sha) = _root_manifests(fs, broot)
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
    for target in (out, corpus_out):
        tfs, tpath = filesystem(target)
        if tpath.rstrip("/") == filesystem(root)[1].rstrip("/"):
            raise PruneError(f"{target} is ROOT itself; the old root is never modified")
        if nonempty(tfs, tpath):
            if not overwrite:
                raise PruneError(f"{target} is not empty; pass --overwrite to replace it")
            tfs.rm(tpath, recursive=True)
    return PrunePlan(
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


def _cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the character spans (merged where they overlap)."""
    out, pos = [], 0
    for start, end in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos : max(pos, start)])
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def _rewrite_corpus(plan: PrunePlan, file_index: int, drop: set[int], cuts: dict[int, list]):
    """Write the pruned copy of one input file in its own format; -> (records in, records
    out, written path or None)."""
    import fsspec

    from tda.attribution.corpus.readers import compression_of

    url, fmt = plan.inputs[file_index]
    rel = _relative(url, [u for u, _ in plan.inputs.values()])
    target = f"{plan.corpus_out}/{rel}"
    compression = compression_of(url)
    ofs = filesystem(plan.corpus_out)[0]
    if fmt == "parquet":
        with fsspec.open(url, "rb") as f:
            table = pq.read_table(f)
        n_in = table.num_rows
        keep = np.ones(n_in, dtype=bool)
        keep[[r for r in drop if r < n_in]] = False
        if cuts:
            column = plan.text_field
            if "." in column:
                raise PruneError(
                    "chunk-level pruning of nested Parquet text fields is not supported"
                )
            texts = table[column].to_pylist()
            for record, spans in cuts.items():
                texts[record] = _cut_spans(texts[record], spans)
            table = table.set_column(
                table.schema.get_field_index(column),
                table.schema.field(column),
                pa.array(texts, table[column].type),
            )
        table = table.filter(pa.array(keep))
        with atomic_open(ofs, target) as f:
            pq.write_table(table, f, compression="zstd")
        return n_in, table.num_rows, target
    with fsspec.open(url, "rb", compression=compression) as f:
        data = f.read()
    if fmt == "text" and plan.text_unit == "file":
        if 0 in drop:
            return 1, 0, None
        text = data.decode("utf-8")
        if 0 in cuts:
            text = _cut_spans(text, cuts[0])
        payload, n_in, n_out = text.encode("utf-8"), 1, 1
    else:
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        kept = []
        for record, line in enumerate(lines):
            if record in drop:
                continue
            if record in cuts:
                if fmt == "text":
                    line = _cut_spans(line.decode("utf-8"), cuts[record]).encode("utf-8")
                else:
                    obj = json.loads(line)
                    set_field(
                        obj,
                        plan.text_field,
                        _cut_spans(get_field(obj, plan.text_field), cuts[record]),
                    )
                    line = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            kept.append(line)
        payload = b"".join(line + b"\n" for line in kept)
        n_in, n_out = len(lines), len(kept)
    with atomic_open(ofs, target) as f:
        f.write(_compress(payload, compression))
    return n_in, n_out, target


def _compress(payload: bytes, compression: str | None) -> bytes:
    """The input's own compression; deterministic bytes (gzip without a timestamp)."""
    if compression == "gzip":
        return gzip.compress(payload, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(payload)
    if compression == "bz2":
        import bz2

        return bz2.compress(payload)
    if compression == "xz":
        import lzma

        return lzma.compress(payload)
    return payload


def prune_file(plan: PrunePlan, file_index: int) -> FilePruned:
    """One input file: rewrite its corpus file and write NEW_ROOT's chunks, embeddings
    and dead-letter parts without the pruned rows."""
    fs, broot = build_root(plan.root)
    nfs, nroot = build_root(plan.out)
    with open_parquet(fs, broot.chunk_part(file_index)) as parquet:
        chunks = parquet.read()
    with open_parquet(fs, broot.embed_part(file_index)) as parquet:
        embeds = parquet.read()
    if not chunks["chunk_id"].equals(embeds["chunk_id"]):
        raise PruneError(
            f"chunks and embeddings of input file {file_index} disagree in {plan.root}"
        )
    records = chunks["record_index"].to_numpy()
    if plan.level == "source":
        remove = pc.is_in(chunks["source"], pa.array(sorted(plan.sources))).to_numpy(
            zero_copy_only=False
        )
    elif plan.level == "document":
        wanted = np.fromiter(plan.documents.get(file_index, ()), dtype=np.int64)
        remove = np.isin(records, wanted)
    else:
        wanted = np.fromiter(plan.chunks.get(file_index, ()), dtype=np.int64)
        remove = np.isin(chunks["chunk_id"].to_numpy(), wanted)
    remove = np.asarray(remove, dtype=bool)
    removed = chunks.filter(pa.array(remove))
    per_source: dict[str, dict[str, int]] = {}
    for row in (
        removed.group_by("source", use_threads=False)
        .aggregate([("chunk_id", "count"), ("record_index", "count_distinct")])
        .to_pylist()
    ):
        per_source[row["source"]] = {
            "chunks": int(row["chunk_id_count"]),
            "documents": int(row["record_index_count_distinct"]) if plan.level != "chunk" else 0,
        }
    drop: set[int] = set()
    cuts: dict[int, list[tuple[int, int]]] = {}
    if plan.level == "chunk":
        for row in removed.select(["record_index", "char_start", "char_end"]).to_pylist():
            cuts.setdefault(int(row["record_index"]), []).append(
                (row["char_start"], row["char_end"])
            )
    else:
        drop = {int(r) for r in np.unique(removed["record_index"].to_numpy())}
    n_in, n_out, written = _rewrite_corpus(plan, file_index, drop, cuts)

    keep = pa.array(~remove)
    for path, table in (
        (nroot.chunk_part(file_index), chunks.filter(keep)),
        (nroot.embed_part(file_index), embeds.filter(keep)),
    ):
        raw = ("vector",) if "vector" in table.schema.names else ()
        writer = PartWriter(nfs, path, table.schema, keep_empty=True, raw_columns=raw)
        for batch in table.to_batches():
            writer.write(batch)
        writer.commit()
    if fs.exists(broot.deadletter_part(file_index)):  # bad records stay as they were
        with (
            fs.open(broot.deadletter_part(file_index), "rb") as src,
            atomic_open(nfs, nroot.deadletter_part(file_index)) as dst,
        ):
            dst.write(src.read())
    tokens = 0
    if plan.level == "chunk":
        for spans in _token_spans(removed).values():
            tokens += sum(e - s for s, e in _merge(spans))
    else:
        tokens = int(
            sum(
                r["token_end_max"]
                for r in removed.group_by("record_index", use_threads=False)
                .aggregate([("token_end", "max")])
                .to_pylist()
            )
        )
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
        per_source=per_source,
        corpus_file=written,
    )


def write_file_marker(plan: PrunePlan, result: FilePruned) -> None:
    nfs, nroot = build_root(plan.out)
    atomic_write_text(
        nfs, f"{nroot.root}/_prune/{result.file_index:06d}.json",
        json.dumps(asdict(result), sort_keys=True) + "\n",
    )  # fmt: skip


def read_file_markers(plan: PrunePlan) -> list[FilePruned]:
    nfs, nroot = build_root(plan.out)
    out = []
    for file_index in plan.files:
        path = f"{nroot.root}/_prune/{file_index:06d}.json"
        if not nfs.exists(path):
            raise PruneError(f"input file {file_index} was not pruned; run `tda prune apply` again")
        with nfs.open(path, "rb") as f:
            data = json.loads(f.read())
        out.append(FilePruned(**{**data, "removed_ids": tuple(data["removed_ids"])}))
    nfs.rm(f"{nroot.root}/_prune", recursive=True)
    return out


def _token_spans(removed: pa.Table) -> dict[int, list[tuple[int, int]]]:
    spans: dict[int, list[tuple[int, int]]] = {}
    for row in removed.select(["record_index", "token_start", "token_end"]).to_pylist():
        spans.setdefault(row["record_index"], []).append((row["token_start"], row["token_end"]))
    return spans


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def finish_prune(
    plan: PrunePlan, results: Sequence[FilePruned], threads: int | None = None
) -> dict:
    """NEW_ROOT's manifests, index (affected shards refilled, others copied) and audit
    log; -> the audit entry."""
    from tda.attribution.stages.index import IndexPlan, fill_shards, finish_index_run
    from tda.schemas import IndexConfig

    fs, broot = build_root(plan.root)
    nfs, nroot = build_root(plan.out)
    by_file = {r.file_index: r for r in results}
    if sorted(by_file) != sorted(plan.files):
        raise PruneError("not every input file was pruned; run `tda prune apply` again")
    (chunks_m, _), (embed_m, _), (index_m, _) = _root_manifests(fs, broot)
    new_counts = []
    for c in chunks_m.files:
        r = by_file[c.file_index]
        new_counts.append(
            replace(
                c,
                records=c.records - r.documents_removed,
                documents=c.documents - r.documents_removed,
                chunks=r.chunks_kept,
                tokens=c.tokens - r.tokens_removed,
            )
        )
    new_chunks = replace(chunks_m, files=tuple(new_counts))
    atomic_write_text(nfs, nroot.chunk_manifest, new_chunks.to_json())
    with nfs.open(nroot.chunk_manifest, "rb") as f:
        chunk_sha = hashlib.sha256(f.read()).hexdigest()  # as read_manifest gives it
    new_embed = replace(
        embed_m,
        chunk_manifest_sha256=chunk_sha,
        files=tuple(
            replace(
                e,
                chunks=by_file[e.file_index].chunks_kept,
                tokens=max(0, e.tokens - by_file[e.file_index].tokens_removed),
            )
            for e in embed_m.files
        ),
    )
    with fs.open(broot.embed_concepts, "rb") as src, atomic_open(nfs, nroot.embed_concepts) as dst:
        dst.write(src.read())
    atomic_write_text(nfs, nroot.embed_manifest, new_embed.to_json())
    with nfs.open(nroot.embed_manifest, "rb") as f:
        embed_sha = hashlib.sha256(f.read()).hexdigest()

    # index: the parent's quantizer; shards with a pruned chunk refilled, the rest copied
    nfs.makedirs(f"{nroot.index_dir}/shards", exist_ok=True)
    for name in ("trained.faiss", "concepts.json"):
        with (
            fs.open(f"{broot.index_dir}/{name}", "rb") as src,
            atomic_open(nfs, f"{nroot.index_dir}/{name}") as dst,
        ):
            dst.write(src.read())
    removed_files = {r.file_index for r in results if r.chunks_removed}
    counts = {e.file_index: e.chunks for e in new_embed.files}
    shards = tuple(s.embed_files for s in index_m.shards)
    config = IndexConfig(
        root=plan.out, factory=index_m.factory, shards=len(shards), nprobe=index_m.nprobe,
        metric=index_m.metric, threads=threads,
    )  # fmt: skip
    iplan = IndexPlan(
        config=config,
        embed=new_embed,
        chunks=new_chunks,
        embed_manifest_sha256=embed_sha,
        factory=index_m.factory,
        nprobe=index_m.nprobe,
        train_size=index_m.train_vectors,
        shards=shards,
        shard_counts=tuple(sum(counts[f] for f in s) for s in shards),
    )
    refill = [i for i, s in enumerate(shards) if set(s) & removed_files]
    files = {f.path: f for f in index_m.files}
    for i, shard in enumerate(index_m.shards):
        if i in refill:
            continue
        with (
            fs.open(f"{broot.index_dir}/{shard.path}", "rb") as src,
            atomic_open(nfs, f"{nroot.index_dir}/{shard.path}") as dst,
        ):
            dst.write(src.read())
        marker = {"shard": asdict(shard), "file": asdict(files[shard.path])}
        atomic_write_text(nfs, nroot.index_completion(i), json.dumps(marker, sort_keys=True) + "\n")
    for _ in fill_shards(iplan, refill, iplan.fill_threads()):
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
    manifest = finish_index_run(iplan, lineage=lineage)
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
