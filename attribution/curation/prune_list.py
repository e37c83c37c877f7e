"""Prune lists: a scan directory -> the list of what to prune, at one level, each row
with its reason; a file people can read, edit (as CSV) and pass on.

* :func:`make_prune_list`: ``scan.json`` / ``hits`` / ``by_document`` / ``by_source`` of
  a scan -> ``prune.parquet`` (:data:`~tda.schemas.curation.PRUNE_SCHEMA`) at level
  ``chunk`` | ``document`` | ``source`` (and a CSV beside it on request);
* :func:`read_prune_list`: a prune list (Parquet, or its CSV edited by hand) -> the
  table, its level and the file's sha256, checked (one level, the ids that level needs).

``tda prune apply`` (:mod:`.prune`) applies a list to a build root.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq

from tda.attribution.io.fs import atomic_open, filesystem, open_parquet
from tda.attribution.io.parts import StageError
from tda.schemas.curation import PRUNE_LEVELS, PRUNE_SCHEMA, ScanSummary

__all__ = ["PruneError", "make_prune_list", "read_prune_list"]


class PruneError(StageError):
    """A prune list or apply that cannot be used; one line naming the fix."""


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
    if level not in PRUNE_LEVELS:
        raise PruneError(f"--level must be one of {', '.join(PRUNE_LEVELS)}, got {level!r}")
    if not 0.0 <= min_share <= 1.0:
        raise PruneError(f"--min-share must be in [0, 1], got {min_share}")
    fs, base = filesystem(scan_dir)[0], scan_dir.rstrip("/")
    if not fs.exists(f"{base}/scan.json"):
        raise PruneError(f"{scan_dir} is not a finished scan (no scan.json); run `tda scan`")
    with fs.open(f"{base}/scan.json", "rb") as f:
        scan_bytes = f.read()
    settings = ScanSummary.from_dict(json.loads(scan_bytes)).settings
    what = ", ".join(settings.concepts or [f"exemplars {settings.like}"])
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
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PruneError(f"--list {path} is not a prune list ({first})") from None
    levels = set(table["level"].to_pylist())
    if not levels:
        raise PruneError(f"--list {path} is empty: nothing to prune")
    if len(levels) > 1 or not levels <= set(PRUNE_LEVELS):
        raise PruneError(
            f"--list {path}: one level per list ({', '.join(PRUNE_LEVELS)}), got {sorted(levels)}"
        )
    level = levels.pop()
    need = {"chunk": "chunk_id", "document": "record_index", "source": "source"}[level]
    if table[need].null_count:
        raise PruneError(f"--list {path}: {level} rows need a {need} in every row")
    if level != "source" and table["file_index"].null_count:
        raise PruneError(f"--list {path}: {level} rows need a file_index in every row")
    return table, level, digest
