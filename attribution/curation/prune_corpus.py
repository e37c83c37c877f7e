"""The pruned copy of a corpus file: the input rewritten in its own format and
compression, without the pruned records, or with the pruned chunks' character spans cut
out of their documents (``tda prune apply``, :mod:`.prune`).

Deterministic bytes: same input and prune list, same file (gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tda.attribution.corpus.readers import get_field, set_field
from tda.attribution.io.fs import atomic_open, filesystem

from .prune_list import PruneError

__all__ = ["cut_spans", "relative_path", "rewrite_corpus_file"]


def relative_path(url: str, inputs: Sequence[str]) -> str:
    """The path of ``url`` below the common folder of all inputs (kept in the pruned corpus)."""
    import os

    common = os.path.commonpath([u.split("://", 1)[-1] for u in inputs])
    path = url.split("://", 1)[-1]
    if len(inputs) == 1:
        common = os.path.dirname(path)
    return os.path.relpath(path, common)


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the character spans (merged where they overlap)."""
    out, pos = [], 0
    for start, end in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos : max(pos, start)])
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def rewrite_corpus_file(
    url: str,
    fmt: str,
    target: str,
    drop: set[int],
    cuts: dict[int, list[tuple[int, int]]],
    text_field: str,
    text_unit: str,
) -> tuple[int, int, str | None]:
    """Write the pruned copy of the input file ``url`` (format ``fmt``, its text in
    ``text_field`` / one record per ``text_unit``) to ``target`` in its own format and
    compression, without the records ``drop`` and with the character spans ``cuts``
    (record -> [(start, end)]) cut out; -> (records in, records out, written path, or
    None when a whole-file text record was dropped)."""
    import fsspec

    from tda.attribution.corpus.readers import compression_of

    compression = compression_of(url)
    ofs = filesystem(target)[0]
    if fmt == "parquet":
        with fsspec.open(url, "rb") as f:
            table = pq.read_table(f)
        n_in = table.num_rows
        keep = np.ones(n_in, dtype=bool)
        keep[[r for r in drop if r < n_in]] = False
        if cuts:
            column = text_field
            if "." in column:
                raise PruneError(
                    "chunk-level pruning of nested Parquet text fields is not supported"
                )
            texts = table[column].to_pylist()
            for record, spans in cuts.items():
                texts[record] = cut_spans(texts[record], spans)
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
    if fmt == "text" and text_unit == "file":
        if 0 in drop:
            return 1, 0, None
        text = data.decode("utf-8")
        if 0 in cuts:
            text = cut_spans(text, cuts[0])
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
                    line = cut_spans(line.decode("utf-8"), cuts[record]).encode("utf-8")
                else:
                    obj = json.loads(line)
                    set_field(
                        obj,
                        text_field,
                        cut_spans(get_field(obj, text_field), cuts[record]),
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
