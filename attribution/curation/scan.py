"""Concept and exemplar scans: where does a harmful concept fire, and how much of each
source does it touch?

Two ways in, one output:

* **concept scan** (:func:`scan_concept_file`, a Beam job per embeddings file): chunks
  whose score for one of the named known concepts reaches that concept's threshold. The
  score is the model's calibrated probability of the chunk's pooled weight and the
  threshold the one fitted on held-out text when the model was trained (see
  :mod:`tda.attribution.encoders.builtin.calibrate`; the embed stage copies both into
  ``embeddings/concepts.json``); ``min_weight`` overrides it with a cut on the raw
  weight, and a model without calibration gets the raw weight and 0.5.
  Weights come from each chunk's stored top-k known concepts (``concept_ids`` /
  ``concept_weights``); a concept outside a chunk's top-k counts as 0 there (its weight is
  below the chunk's k-th, which the embed manifest's ``top_k`` bounds).
* **exemplar scan** (:func:`scan_exemplars`): texts of known-bad outputs or documents,
  encoded with the index's own encoder and searched with a large k; every hit is scored by
  its similarity (``min_score`` keeps the close ones).

Both write to ``OUT/``:

* ``hits.parquet``: one row per chunk hit (provenance, score, what matched, text);
* ``by_document.parquet`` / ``by_source.parquet``: chunks hit, the share of the
  document's / source's chunks that is, max and mean score (sorted worst first);
* ``scan.json``: the settings, the index and embeddings it read, the totals;
* ``prevalence.png``: a bar chart of the share of each source's chunks hit.

Shares are against every chunk of the document / source in the index's chunk tables, so
"3% of arxiv" means 3% of arxiv's chunks. Sources are ranked by the 95% Wilson lower bound
of that share (``share_lower``), so a one-document source with one hit cannot outrank a
large source with hundreds.

:class:`ScanStage` is the concept scan on the shared stage runtime (one unit per
embeddings file); the tables' schemas, the settings and ``scan.json``
(:class:`~tda.schemas.curation.ScanSummary`) are in :mod:`tda.schemas.curation`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tda import __version__
from tda.attribution.encoders.builtin.calibrate import platt_probability
from tda.attribution.io.fs import (
    atomic_open,
    atomic_write_text,
    build_root,
    filesystem,
    open_parquet,
    read_json,
)
from tda.attribution.io.parts import StageError, nonempty, read_manifest
from tda.attribution.stages.base import Counter, Meter, StageRuntime
from tda.schemas import EmbedManifest, IndexManifest, float16_values
from tda.schemas.curation import (
    BY_DOCUMENT_SCHEMA,
    BY_SOURCE_SCHEMA,
    HITS_SCHEMA,
    SCAN_TOTALS_SCHEMA,
    ScanConfig,
    ScanSettings,
    ScanSummary,
    SourceHits,
)

__all__ = [
    "ScanError",
    "ScanPlan",
    "ScanStage",
    "finish_scan",
    "plan_scan",
    "read_exemplars",
    "scan_concept_file",
    "scan_exemplars",
]


class ScanError(StageError):
    """A scan that cannot run: unknown concept, empty exemplars, existing output."""


@dataclass(frozen=True)
class ScanPlan:
    """What a scan will do, decided on the driver: the config checked against ROOT
    (concept names resolved to ids, the files with embeddings, the manifests read)."""

    root: str
    out: str
    mode: str  # "concept" | "like"
    concepts: tuple[str, ...]  # names (concept mode)
    concept_ids: tuple[int, ...]
    min_weight: float | None
    like: str | None  # exemplar file (like mode)
    top: int
    min_score: float | None
    files: tuple[int, ...]  # input file indices with embeddings
    index_manifest_sha256: str | None
    embed_manifest_sha256: str
    thresholds: tuple[float, ...] = ()  # per concept (see ScanSettings)
    calibrated: tuple[bool, ...] = ()
    # per concept: the calibration's (a, b), or None (see ConceptCalibration)
    platt: tuple[tuple[float, float] | None, ...] = ()
    channels: tuple[str, ...] | None = None  # like mode: as asked (None: the index's)

    def settings(self, like_sha256: str | None = None) -> ScanSettings:
        """What ``scan.json`` records of this plan: every field but ``out``, and the
        exemplar file's sha256 (like mode)."""
        kept = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("out", "channels", "platt")
        }
        return ScanSettings(**kept, like_sha256=like_sha256, channels=self.channels or ())


def _parts_dir(out: str) -> str:
    return f"{out.rstrip('/')}/_parts"


def plan_scan(
    root: str,
    out: str,
    concepts: Sequence[str] = (),
    like: str | None = None,
    min_weight: float | None = None,
    top: int = 1000,
    min_score: float | None = None,
    overwrite: bool = False,
) -> ScanPlan:
    """:meth:`ScanStage.plan` of a :class:`ScanConfig` of these arguments."""
    config = ScanConfig(
        root=root, out=out, concepts=tuple(concepts), like=like, min_weight=min_weight,
        top=top, min_score=min_score, overwrite=overwrite,
    )  # fmt: skip
    return ScanStage().plan(config)


class ScanStage(StageRuntime[ScanPlan, int, int]):
    """The concept scan: one unit per embeddings file (its input file index), its result
    the file's number of hits (its parts under ``OUT/_parts`` are the only trace: a
    scan keeps no markers and is not resumed). An exemplar scan plans the same way and
    searches from the driver (:func:`scan_exemplars`) instead of running units."""

    name = "scan"
    done = "files"
    error = ScanError

    def plan(self, config: ScanConfig) -> ScanPlan:
        """Check the arguments against ROOT (concept names, embeddings present) and
        prepare ``out``. One-line errors before any work."""
        root, out, concepts, like = config.root, config.out, config.concepts, config.like
        min_weight, top, min_score = config.min_weight, config.top, config.min_score
        if bool(concepts) == bool(like):
            raise ScanError("give --concept NAME... or --like FILE (one of them)")
        if min_weight is not None and not 0.0 <= min_weight <= 1.0:
            raise ScanError(f"--min-weight must be in [0, 1], got {min_weight}")
        if top < 1:
            raise ScanError(f"--top must be at least 1, got {top}")
        fs, broot = build_root(root)
        embed, embed_sha = read_manifest(
            fs, broot.embed_manifest, EmbedManifest.from_json, "tda embed", ScanError
        )
        index_sha = None
        if fs.exists(broot.index_manifest):
            index_sha = read_manifest(
                fs, broot.index_manifest, IndexManifest.from_json, "tda index build", ScanError
            )[1]
        elif like:
            raise ScanError(f"{root} has no index; --like searches it (run `tda index build`)")
        ids: list[int] = []
        thresholds: list[float] = []
        calibrated: list[bool] = []
        platt: list[tuple[float, float] | None] = []
        if concepts:
            stored = read_json(fs, broot.embed_concepts)
            known = stored["known"]
            calibration = stored.get("calibration", {})
            lookup = {name: i for i, name in enumerate(known)}
            for name in concepts:
                if name not in lookup:
                    close = sorted(k for k in known if name.lower() in k.lower())[:5]
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    raise ScanError(
                        f"--concept {name!r} is not a known concept of this index's encoder "
                        f"({len(known)} concepts: `tda model info` lists them){hint}"
                    )
                ids.append(lookup[name])
                cal = calibration.get(name)
                # --min-weight overrides (on the raw weight); else the model's fitted cut
                # on its calibrated probability; a model without one keeps the old 0.5
                use = cal is not None and min_weight is None
                calibrated.append(use)
                platt.append((float(cal["a"]), float(cal["b"])) if use else None)
                thresholds.append(
                    float(cal["threshold"]) if use else (0.5 if min_weight is None else min_weight)
                )
        ofs, opath = filesystem(out)[0], out.rstrip("/")
        if nonempty(ofs, opath):
            if not config.overwrite:
                raise ScanError(f"{out} is not empty; pass --overwrite to replace it")
            ofs.rm(opath, recursive=True)
        ofs.makedirs(_parts_dir(opath), exist_ok=True)
        return ScanPlan(
            root=config.root,
            out=opath,
            mode="concept" if concepts else "like",
            concepts=tuple(concepts),
            concept_ids=tuple(ids),
            min_weight=None if min_weight is None else float(min_weight),
            like=like,
            top=int(top),
            min_score=None if min_score is None else float(min_score),
            files=tuple(f.file_index for f in embed.files),
            index_manifest_sha256=index_sha,
            embed_manifest_sha256=embed_sha,
            thresholds=tuple(thresholds),
            calibrated=tuple(calibrated),
            platt=tuple(platt),
            channels=config.channels if like else None,
        )

    def units(self, plan: ScanPlan) -> list[int]:
        return list(plan.files) if plan.mode == "concept" else []

    def process(self, plan: ScanPlan, unit: int, meter: Meter) -> int:
        """Scan one embeddings file for the plan's concepts; counts chunks_hit."""
        return _scan_file(plan, unit, meter)

    def finish(self, plan: ScanPlan) -> ScanSummary:
        return finish_scan(plan)


# --------------------------------------------------------------------------------------
# Per-file work


def _chunk_rows(fs, broot, file_index: int, columns: Sequence[str]) -> pa.Table:
    with open_parquet(fs, broot.chunk_part(file_index)) as parquet:
        return parquet.read(columns=list(columns))


def _doc_totals(chunks: pa.Table, file_index: int) -> pa.Table:
    """Chunk counts per document of one file (source, file, record, doc id, chunks)."""
    grouped = chunks.group_by(["source", "record_index", "doc_id"], use_threads=False).aggregate(
        [("chunk_id", "count")]
    )
    return pa.table(
        {
            "source": grouped["source"],
            "file_index": pa.array(np.full(grouped.num_rows, file_index, dtype=np.int32)),
            "record_index": grouped["record_index"],
            "doc_id": grouped["doc_id"],
            "chunks": grouped["chunk_id_count"].cast(pa.int64()),
        },
        schema=SCAN_TOTALS_SCHEMA,
    )


def _write_parts(plan: ScanPlan, file_index: int, hits: pa.Table, totals: pa.Table) -> int:
    fs, _ = build_root(plan.out)
    base = _parts_dir(plan.out)
    with atomic_open(fs, f"{base}/hits-{file_index:06d}.parquet") as f:
        pq.write_table(hits, f, compression="zstd")
    with atomic_open(fs, f"{base}/totals-{file_index:06d}.parquet") as f:
        pq.write_table(totals, f, compression="zstd")
    return hits.num_rows


def _hits_table(chunks: pa.Table, rows: np.ndarray, file_index: int, scores, matched):
    picked = chunks.take(pa.array(rows, type=pa.int64()))
    return pa.table(
        {
            "chunk_id": picked["chunk_id"],
            "file_index": pa.array(np.full(len(rows), file_index, dtype=np.int32)),
            "source": picked["source"],
            "doc_id": picked["doc_id"],
            "record_index": picked["record_index"],
            "chunk_index": picked["chunk_index"].cast(pa.int32()),
            "char_start": picked["char_start"].cast(pa.int64()),
            "char_end": picked["char_end"].cast(pa.int64()),
            "score": pa.array(np.asarray(scores, dtype=np.float32)),
            "matched": pa.array(list(matched), type=pa.string()),
            "text": picked["text"],
        },
        schema=HITS_SCHEMA,
    )


_CHUNK_COLUMNS = (
    "chunk_id", "source", "doc_id", "record_index", "chunk_index", "char_start", "char_end",
    "text",
)  # fmt: skip


def scan_concept_file(
    plan: ScanPlan, file_index: int, count: Counter | Meter = lambda name, n: None
) -> int:
    """One embeddings file: chunks whose weight for a named concept >= ``min_weight``
    (score = the largest such weight; ``matched`` = that concept). Writes the file's hits
    and per-document totals under ``OUT/_parts``; returns the number of hits
    (:meth:`ScanStage.commit`; counts chunks_hit and files)."""
    return ScanStage().commit(plan, file_index, count)


def _scan_file(plan: ScanPlan, file_index: int, meter: Meter) -> int:
    """The concept scan of one input file (see :func:`scan_concept_file`)."""
    fs, broot = build_root(plan.root)
    with meter.phase("read"):
        with open_parquet(fs, broot.embed_part(file_index)) as parquet:
            table = parquet.read(columns=["chunk_id", "concept_ids", "concept_weights"])
        chunks = _chunk_rows(fs, broot, file_index, _CHUNK_COLUMNS)
    with meter.phase("compute"):
        hits = _concept_hits(plan, file_index, table, chunks)
        totals = _doc_totals(chunks, file_index)
    with meter.phase("write"):
        found = _write_parts(plan, file_index, hits, totals)
    meter("chunks_hit", found)
    return found


def _concept_hits(plan: ScanPlan, file_index: int, table: pa.Table, chunks: pa.Table):
    """One file's embeddings (chunk ids, stored top-k concepts) and chunk rows -> its
    hits table (:data:`HITS_SCHEMA`), one row per chunk hit, in chunk order."""
    if not table["chunk_id"].equals(chunks["chunk_id"]):
        raise ScanError(
            f"embeddings and chunks of input file {file_index} disagree; re-run `tda embed`"
        )
    ids_col = table["concept_ids"].combine_chunks()
    weights_col = table["concept_weights"].combine_chunks()
    flat_ids = ids_col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    flat_w = float16_values(weights_col.flatten()).astype(np.float32)
    lengths = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    # each stored (chunk, concept) pair's score: the calibrated probability of the scanned
    # concepts that have one, the raw weight otherwise; a hit reaches its concept's cut
    score = np.zeros(len(flat_ids), dtype=np.float32)
    cut = np.full(len(flat_ids), np.inf, dtype=np.float32)
    for cid, threshold, ab in zip(plan.concept_ids, plan.thresholds, plan.platt, strict=True):
        at = flat_ids == cid
        w = flat_w[at]
        score[at] = w if ab is None else platt_probability(w, *ab)
        cut[at] = threshold
    hit = score >= cut
    flat_w = score
    # per chunk, its strongest qualifying concept (ties: the stored top-k order)
    pos = np.flatnonzero(hit)
    order = np.lexsort((-flat_w[pos], row_of[pos]))
    pos = pos[order]
    first = np.ones(len(pos), dtype=bool)
    first[1:] = row_of[pos][1:] != row_of[pos][:-1]
    pos = pos[first]
    rows = row_of[pos]
    name_of = dict(zip(plan.concept_ids, plan.concepts, strict=True))
    return _hits_table(
        chunks, rows, file_index, flat_w[pos], [name_of[int(c)] for c in flat_ids[pos]]
    )


def read_exemplars(path: str) -> list[str]:
    """Exemplar texts: one per line, or JSONL with a ``text`` field (blank lines skipped)."""
    fs = filesystem(path)[0]
    try:
        with fs.open(path, "rb") as f:
            raw = f.read().decode("utf-8")
    except FileNotFoundError:
        raise ScanError(f"--like {path}: no such file") from None
    except UnicodeDecodeError:
        raise ScanError(f"--like {path} is not UTF-8 text") from None
    texts = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise ScanError(f"--like {path}: line {n} is not valid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ScanError(f"--like {path}: line {n} has no string 'text' field")
            texts.append(obj["text"])
        else:
            texts.append(line)
    if not texts:
        raise ScanError(f"--like {path} holds no exemplar texts")
    return texts


def scan_exemplars(plan: ScanPlan, device: str = "auto") -> int:
    """Encode every exemplar with the index's encoder, search it on the index's channels
    (fused; ``channels`` to choose), keep each one's first ``top`` with concept-space
    similarity >= ``min_score``; a chunk hit by several exemplars keeps its best score.
    Writes the parts of every input file; returns the number of chunks hit."""
    from tda.attribution.encoders import DocumentTokens, encode_documents, load_encoder
    from tda.attribution.index.reader import IndexReader
    from tda.attribution.index.retrieval import ChunkQuery, Retriever

    texts = read_exemplars(plan.like)
    reader = IndexReader.open(plan.root)
    m = reader.manifest
    encoder = load_encoder(m.encoder.spec, device)
    if encoder.info.fingerprint != m.encoder.fingerprint:
        raise ScanError(
            f"the model at {m.encoder.spec} is not the one the index was built with; "
            f"restore it to scan with exemplars"
        )
    docs = []
    for enc in encoder.load_tokenizer().encode_batch(texts):
        n = min(enc.n_tokens, m.context.window)  # a longer exemplar counts by its start
        if n == 0:
            raise ScanError("an exemplar has no tokens")
        docs.append(DocumentTokens(ids=enc.ids[:n], spans=np.array([[0, n]])))
    pooled, _ = encode_documents(encoder, docs, m.pooling, m.context, m.context.window)
    # every channel of the index, fused, as an attribution searches: an exemplar's
    # words and verbatim spans find its source's chunks beside its concept-space
    # neighbours; each exemplar keeps the first `top` of the fused list
    retriever = Retriever(reader)
    channels = retriever.channels(plan.channels)
    queries = [
        ChunkQuery(pooled.vectors[e], d.ids, (0, len(d.ids)), texts[e]) for e, d in enumerate(docs)
    ]
    found = retriever.retrieve(queries, channels, min(plan.top, m.vectors))
    best: dict[int, tuple[float, int]] = {}
    for e, retrieved in enumerate(found):
        for fused in retrieved.fused[: plan.top]:
            chunk_id = fused.chunk_id
            # the score a hit keeps is its concept-space similarity (what --min-score
            # thresholds), read from the stored vector when dense did not return it
            score = retriever.dense_score(fused, pooled.vectors[e])
            if plan.min_score is not None and score < plan.min_score:
                continue
            if chunk_id not in best or score > best[chunk_id][0]:
                best[chunk_id] = (float(score), e)
    by_file: dict[int, list[int]] = {}
    for chunk_id in best:
        by_file.setdefault(m.id_codec.decode(chunk_id).file_index, []).append(chunk_id)
    fs, broot = build_root(plan.root)
    for file_index in plan.files:
        chunks = _chunk_rows(fs, broot, file_index, _CHUNK_COLUMNS)
        wanted = sorted(by_file.get(file_index, []))
        rows = [m.id_codec.decode(c).ordinal for c in wanted]
        got = chunks["chunk_id"].take(pa.array(rows, type=pa.int64())).to_pylist() if rows else []
        if got != wanted:
            raise ScanError(f"chunks table of input file {file_index} does not match the index")
        hits = _hits_table(
            chunks, np.asarray(rows, dtype=np.int64), file_index,
            [best[c][0] for c in wanted], [f"exemplar {best[c][1]}" for c in wanted],
        )  # fmt: skip
        _write_parts(plan, file_index, hits, _doc_totals(chunks, file_index))
    return len(best)


# --------------------------------------------------------------------------------------
# Aggregation (driver)


def _read_parts(plan: ScanPlan, prefix: str, schema: pa.Schema) -> pa.Table:
    fs, _ = build_root(plan.out)
    base = _parts_dir(plan.out)
    tables = []
    for file_index in plan.files:
        path = f"{base}/{prefix}-{file_index:06d}.parquet"
        if not fs.exists(path):
            raise ScanError(f"scan of input file {file_index} did not finish ({path})")
        with open_parquet(fs, path) as parquet:
            tables.append(parquet.read())
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


def finish_scan(plan: ScanPlan) -> ScanSummary:
    """Gather the parts into hits / by_document / by_source Parquet, scan.json and the
    chart; returns the scan summary (scan.json's content)."""
    fs, _ = build_root(plan.out)
    hits = _read_parts(plan, "hits", HITS_SCHEMA)
    totals = _read_parts(plan, "totals", SCAN_TOTALS_SCHEMA)
    # deterministic order: worst first, then by id
    order = np.lexsort((hits["chunk_id"].to_numpy(), -hits["score"].to_numpy()))
    hits = hits.take(pa.array(order, type=pa.int64()))

    keys = ["source", "file_index", "record_index", "doc_id"]
    doc_hits = hits.group_by(keys, use_threads=False).aggregate(
        [("chunk_id", "count"), ("score", "max"), ("score", "mean")]
    )
    docs = doc_hits.join(totals, keys=keys, join_type="inner", use_threads=False)
    share = pc.divide(
        pc.cast(docs["chunk_id_count"], pa.float64()), pc.cast(docs["chunks"], pa.float64())
    )
    by_document = pa.table(
        {
            "source": docs["source"],
            "file_index": docs["file_index"],
            "record_index": docs["record_index"],
            "doc_id": docs["doc_id"],
            "chunks": docs["chunks"],
            "chunks_hit": docs["chunk_id_count"].cast(pa.int64()),
            "share": share,
            "max_score": docs["score_max"].cast(pa.float32()),
            "mean_score": docs["score_mean"].cast(pa.float32()),
        },
        schema=BY_DOCUMENT_SCHEMA,
    )
    order = np.lexsort(
        (
            by_document["record_index"].to_numpy(),
            by_document["file_index"].to_numpy(),
            -by_document["max_score"].to_numpy(),
            -by_document["share"].to_numpy(),
        )
    )
    by_document = by_document.take(pa.array(order, type=pa.int64()))

    src_totals = totals.group_by("source", use_threads=False).aggregate(
        [("chunks", "sum"), ("doc_id", "count")]
    )
    src_hits = {
        row["source"]: row
        for row in hits.group_by("source", use_threads=False)
        .aggregate([("chunk_id", "count"), ("score", "max"), ("score", "mean")])
        .to_pylist()
    }
    src_docs = {
        row["source"]: row["doc_id_count"]
        for row in by_document.group_by("source", use_threads=False)
        .aggregate([("doc_id", "count")])
        .to_pylist()
    }
    rows = []
    for row in src_totals.to_pylist():
        h = src_hits.get(row["source"], {})
        chunks_hit = int(h.get("chunk_id_count", 0))
        rows.append(
            SourceHits(
                source=row["source"],
                chunks=int(row["chunks_sum"]),
                documents=int(row["doc_id_count"]),
                chunks_hit=chunks_hit,
                documents_hit=int(src_docs.get(row["source"], 0)),
                share=chunks_hit / row["chunks_sum"] if row["chunks_sum"] else 0.0,
                share_lower=wilson_lower(chunks_hit, int(row["chunks_sum"])),
                max_score=float(h.get("score_max") or 0.0),
                mean_score=float(h.get("score_mean") or 0.0),
            )
        )
    rows.sort(key=lambda r: (-r.share_lower, -r.share, -r.chunks_hit, r.source))
    by_source = pa.Table.from_pylist([r.to_dict() for r in rows], schema=BY_SOURCE_SCHEMA)

    for name, table in (("hits", hits), ("by_document", by_document), ("by_source", by_source)):
        with atomic_open(fs, f"{plan.out}/{name}.parquet") as f:
            pq.write_table(table, f, compression="zstd")
    _chart(plan, rows)
    like_sha = None
    if plan.like:
        with filesystem(plan.like)[0].open(plan.like, "rb") as f:
            like_sha = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    summary = ScanSummary(
        tda_version=__version__,
        settings=plan.settings(like_sha),
        chunks=int(sum(r.chunks for r in rows)),
        chunks_hit=int(hits.num_rows),
        documents_hit=int(by_document.num_rows),
        sources_hit=int(sum(1 for r in rows if r.chunks_hit)),
        by_source=tuple(rows),
    )
    atomic_write_text(fs, f"{plan.out}/scan.json", summary.to_json())
    fs.rm(_parts_dir(plan.out), recursive=True)
    return summary


def wilson_lower(hits: int, n: int, z: float = 1.96) -> float:
    """The lower end of the 95% Wilson score interval of a share ``hits / n`` (0 when n
    is 0): a small source's share counts for what it can show."""
    if n <= 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    margin = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return max(0.0, (centre - margin) / (1 + z * z / n))


def _chart(plan: ScanPlan, rows: list[SourceHits]) -> None:
    """prevalence.png: share of each source's chunks hit (the 30 highest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:30]
    what = (
        ", ".join(plan.concepts)
        if plan.mode == "concept"
        else f"exemplars in {os.path.basename(plan.like or '')}"
    )
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(3, len(shown)) + 1.2), dpi=100)
    names = [r.source for r in shown][::-1]
    shares = [100 * r.share for r in shown][::-1]
    bars = ax.barh(names, shares, color="#b5403a")
    for bar, r in zip(bars, shown[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {r.chunks_hit:,} / {r.chunks:,}", va="center", fontsize=8)  # fmt: skip
    ax.set_xlabel("% of the source's chunks hit")
    ax.set_title(f"tda scan: {what}", fontsize=10)
    ax.set_xlim(0, max([*shares, 1.0]) * 1.25)
    fig.tight_layout()
    fs, _ = build_root(plan.out)
    with atomic_open(fs, f"{plan.out}/prevalence.png") as f:
        fig.savefig(f, format="png", metadata={"Software": None})
    plt.close(fig)
