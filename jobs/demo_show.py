"""``make demo``'s step 4 (:mod:`tda.jobs.demo`): what came out of ``tda build``, printed.

:func:`show`: chunks per source, dead letters by reason, sample chunks with their
provenance, a check that every chunk's offsets cut its exact text out of the source
documents, the chunk rows' hash, then the embeddings (one unit vector per chunk, the
concepts that fire most per source, each sample chunk's nearest neighbours) and the index
(self-search of sampled chunks through it).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

__all__ = ["show"]


def show(root: Path, corpus: Path) -> None:
    """Print what the chunk stage wrote (chunks per source, dead letters, sample chunks),
    verify provenance against the sources, print the chunk rows' hash, then the
    embeddings and the index when the root has them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.console import Console

    from tda.schemas import Manifest

    console = Console(width=None if sys.stdout.isatty() else 110)
    manifest = Manifest.from_json((root / "chunks" / "manifest.json").read_text())
    chunks = pa.concat_tables(
        pq.read_table(root / "chunks" / f"part-{f.index:06d}.parquet") for f in manifest.inputs
    )
    show_chunks_per_source(chunks, console)
    show_dead_letters(root, console)
    show_sample_chunks(chunks, console)
    check_provenance(root, manifest, console)
    show_rows_digest(chunks, console)
    if (root / "embeddings" / "manifest.json").exists():
        show_embeddings(root, chunks, console)


def show_chunks_per_source(chunks, console) -> None:
    """Documents, chunks and tokens per source of the chunk table ``chunks``."""
    from rich.table import Table

    per_source = Table(title="Chunks per source", header_style="bold")
    for col in ("source", "documents", "chunks", "tokens", "mean tokens/chunk"):
        per_source.add_column(col, justify="left" if col == "source" else "right")
    grouped = (
        chunks.group_by("source")
        .aggregate([("doc_id", "count_distinct"), ("chunk_id", "count"), ("n_tokens", "sum")])
        .sort_by("source")
    )
    for row in grouped.to_pylist():
        per_source.add_row(
            row["source"],
            f"{row['doc_id_count_distinct']:,}",
            f"{row['chunk_id_count']:,}",
            f"{row['n_tokens_sum']:,}",
            f"{row['n_tokens_sum'] / row['chunk_id_count']:.1f}",
        )
    console.print(per_source)


def show_dead_letters(root: Path, console) -> None:
    """Every dead-lettered record of the root: file, record, reason, detail, raw copy."""
    import pyarrow.parquet as pq
    from rich.table import Table

    dead_files = sorted((root / "deadletter").glob("part-*.parquet"))
    dead = Table(title="Dead letters (every unusable record, with its reason)", header_style="bold")
    for col in ("file", "record", "reason", "detail", "copy"):
        dead.add_column(col, overflow="fold")
    for path in dead_files:
        for row in pq.read_table(path).to_pylist():
            dead.add_row(
                row["url"].rsplit("/", 1)[-1],
                str(row["record_index"]),
                row["reason"],
                row["detail"][:60],
                row["raw"][:40],
            )
    console.print(dead)


def show_sample_chunks(chunks, console) -> None:
    """The middle chunk of each text source with its id decoded and its provenance."""
    import pyarrow.compute as pc
    from rich.table import Table

    from tda.schemas import DEFAULT_CODEC

    sample = Table(title="Sample chunks with provenance", header_style="bold", show_lines=True)
    for col in (
        "chunk id -> (dataset, file, ordinal)",
        "source / doc / record",
        "tokens",
        "chars",
        "text",
    ):
        sample.add_column(col, overflow="fold")
    for source in ("moby_dick", "sotu", "python_docs"):
        picked = chunks.filter(pc.equal(chunks["source"], source))
        row = picked.slice(picked.num_rows // 2, 1).to_pylist()[0]
        loc = DEFAULT_CODEC.decode(row["chunk_id"])
        sample.add_row(
            f"{row['chunk_id']}\n-> ({loc.dataset}, {loc.file_index}, {loc.ordinal})",
            f"{row['source']}\n{row['doc_id']}\nrecord {row['record_index']}",
            f"{row['token_start']}..{row['token_end']}",
            f"{row['char_start']}..{row['char_end']}",
            repr(row["text"][:160]),
        )
    console.print(sample)


def check_provenance(root: Path, manifest, console) -> None:
    """Re-read every source document and cut each chunk out of it: every chunk must equal
    ``doc_text[char_start:char_end]`` (an AssertionError otherwise); print the count and
    the manifest's record totals."""
    import pyarrow.parquet as pq
    from rich.markup import escape

    from tda.attribution.corpus.readers import Document, iter_documents

    checked = 0
    for f in manifest.inputs:
        part = pq.read_table(root / "chunks" / f"part-{f.index:06d}.parquet").to_pylist()
        texts = {
            d.record_index: d.text
            for d in iter_documents(f, manifest.read)
            if isinstance(d, Document)
        }
        for row in part:
            assert texts[row["record_index"]][row["char_start"] : row["char_end"]] == row["text"]
            checked += 1
    totals = manifest.totals
    console.print(
        "[green]provenance check:[/green] all "
        + escape(f"{checked:,} chunks equal doc_text[char_start:char_end] of their source ")
        + f"record; records {totals.records:,} = "
        f"documents {totals.documents:,} + dead letters {totals.deadlettered:,}"
    )


def show_rows_digest(chunks, console) -> None:
    """The sha256 of the chunk rows (Arrow IPC stream, schema metadata dropped): the same
    on every run, on any machine."""
    import pyarrow as pa

    # Hash the rows, not the files: file metadata names the (machine-specific) input paths.
    sink = pa.BufferOutputStream()
    rows = chunks.replace_schema_metadata(None)
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    digest = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    console.print(f"chunk rows sha256 {digest[:16]} (the same on every run, on any machine)")


def _chunk_size(root: Path) -> int:
    from tda.schemas import Manifest

    return Manifest.from_json((root / "chunks" / "manifest.json").read_text()).chunking.chunk_size


def show_embeddings(root: Path, chunks, console) -> None:
    """Embeddings: unit length, concepts per source, nearest neighbours of sample chunks."""
    from collections import Counter

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.markup import escape
    from rich.table import Table

    from tda.schemas import EmbedManifest, vectors_from_arrow

    manifest = EmbedManifest.from_json((root / "embeddings" / "manifest.json").read_text())
    table = pa.concat_tables(
        pq.read_table(root / "embeddings" / f"part-{f.file_index:06d}.parquet")
        for f in manifest.files
    )
    assert table["chunk_id"].to_pylist() == chunks["chunk_id"].to_pylist()
    vectors = vectors_from_arrow(table["vector"], manifest.dim).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    config = json.loads((Path(manifest.encoder.spec.split(":", 1)[-1]) / "config.json").read_text())
    names = [c["name"] for c in config["concepts"]]
    policy = manifest.context
    windows = (
        f"each chunk encoded alone ({policy.window}-token windows)"
        if policy.context == 0 and policy.window == _chunk_size(root)
        else f"windows of {policy.window} tokens with {policy.context} of context"
    )
    console.print(
        f"[green]embeddings:[/green] {table.num_rows:,} chunks, one {manifest.pooling.name} "
        f"vector each (D={manifest.dim}, norms {norms.min():.3f}..{norms.max():.3f}); encoder "
        f"{manifest.encoder.name} {manifest.encoder.fingerprint[:19]}; {windows}"
    )

    sources = chunks["source"].to_pylist()
    tops: dict[str, Counter] = {}
    for source, ids in zip(sources, table["concept_ids"].to_pylist(), strict=True):
        tops.setdefault(source, Counter()).update(names[i] for i in ids[:3])
    top = Table(
        title="Known concepts most often among a chunk's top 3, per source (share of chunks)",
        header_style="bold",
    )
    top.add_column("source")
    top.add_column("chunks", justify="right")
    top.add_column("concepts")
    for source in sorted(tops):
        n = sources.count(source)
        shown = ", ".join(f"{name} {k / n:.0%}" for name, k in tops[source].most_common(5))
        top.add_row(source, f"{n:,}", shown)
    console.print(top)

    near = Table(
        title="Nearest neighbours in concept space (cosine)", header_style="bold", show_lines=True
    )
    near.add_column("query chunk")
    near.add_column("3 nearest other chunks: score, source, text", overflow="fold")
    texts = chunks["text"].to_pylist()
    for source in ("moby_dick", "sotu", "python_docs"):
        rows = [i for i, s in enumerate(sources) if s == source]
        q = rows[len(rows) // 2]
        scores = vectors @ vectors[q]
        scores[q] = -np.inf
        best = np.argsort(-scores, kind="stable")[:3]
        near.add_row(
            escape(f"{source}: {texts[q][:90]!r}"),
            "\n".join(escape(f"{scores[i]:.3f} {sources[i]}: {texts[i][:80]!r}") for i in best),
        )
    console.print(near)
    show_neighbour_sources(vectors, sources, console)
    if (root / "index" / "manifest.json").exists():
        show_index(root, chunks, console)


def show_neighbour_sources(vectors, sources: list[str], console, n: int = 500, k: int = 10):
    """How often a chunk's ``k`` nearest neighbours (exact cosine over every chunk) come
    from its own source, for ``n`` sampled chunks, against what random neighbours give."""
    from collections import Counter

    import numpy as np

    picked = np.random.default_rng(0).choice(len(sources), min(n, len(sources)), replace=False)
    same = 0
    for start in range(0, len(picked), 100):
        rows = picked[start : start + 100]
        scores = vectors[rows] @ vectors.T  # (100, N)
        scores[np.arange(len(rows)), rows] = -np.inf
        nearest = np.argpartition(-scores, k, axis=1)[:, :k]
        same += sum(
            sources[j] == sources[q] for q, near in zip(rows, nearest, strict=True) for j in near
        )
    share = same / (len(picked) * k)
    counts = Counter(sources)
    chance = sum((c / len(sources)) ** 2 for c in counts.values())
    console.print(
        f"[green]nearest neighbours:[/green] {share:.0%} of the {k} nearest chunks of "
        f"{len(picked)} sampled chunks share the query chunk's source (random chunks would: "
        f"{chance:.0%})"
    )


def show_index(root: Path, chunks, console) -> None:
    """Self-search through the index for sampled chunks, and one search shown in full."""
    import numpy as np
    from rich.markup import escape
    from rich.table import Table

    from tda.attribution.index.reader import IndexReader

    reader = IndexReader.open(str(root))
    m = reader.manifest
    ids = chunks["chunk_id"].to_pylist()
    texts = dict(zip(ids, chunks["text"].to_pylist(), strict=True))
    picked = [ids[i] for i in np.random.default_rng(0).choice(len(ids), 200, replace=False)]
    queries = np.stack([reader.vector(c) for c in picked])
    _, found = reader.search(queries, k=1)
    first = sum(
        int(f[0]) == c or texts[int(f[0])] == texts[c] for f, c in zip(found, picked, strict=True)
    )
    console.print(
        f"[green]index:[/green] {m.vectors:,} vectors, {m.factory}, nprobe {m.nprobe}, "
        f"{len(m.shards)} shard(s), {sum(f.size for f in m.files) / m.vectors:.0f} bytes per "
        f"chunk; self-search of 200 sampled chunks returns the chunk itself (or an "
        f"identical-text twin) first for {first}/200"
    )
    query = texts[picked[0]]
    hits = reader.hits(reader.vector(picked[0])[None], k=4)[0]
    table = Table(title=f"tda search --chunk-id {picked[0]} (top 4)", header_style="bold")
    for col in ("score", "source / document", "text"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row(
            f"{h.score:.4f}",
            f"{h.chunk.source} / {h.chunk.doc_id}",
            escape(repr(h.chunk.text[:100])),
        )
    console.print(escape(f"query: {query[:100]!r}"))
    console.print(table)
