"""The embed stage without Beam: one embedding per chunk, in order, unit length, named
encoder; refusals that protect the contract (tokenizer, alignment, --no-text, reruns)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tda.attribution.encoders import load_encoder
from tda.attribution.stages.embed import (
    EmbedRunError,
    plan_embed_run,
)
from tda.attribution.stages.embed import process_file as embed_file
from tda.schemas import (
    ConfigError,
    EmbedConfig,
    EmbedManifest,
    vectors_from_arrow,
)
from tests.helpers import chunk_root, embed_root, rerecord


@pytest.fixture(scope="module")
def encoder(model_spec):
    return load_encoder(model_spec, device="cpu")


def _tokenizer_dir(spec: str) -> str:
    return spec.split(":", 1)[1]


def test_every_chunk_gets_one_unit_embedding(tmp_path, docs_jsonl, model_spec, encoder):
    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], _tokenizer_dir(model_spec))
    manifest = embed_root(EmbedConfig(root=str(root), model=model_spec, batch_tokens=2048), encoder)
    chunks = pq.read_table(root / "chunks" / "part-000000.parquet")
    table = pq.read_table(root / "embeddings" / "part-000000.parquet")
    assert table["chunk_id"].to_pylist() == chunks["chunk_id"].to_pylist()
    vectors = vectors_from_arrow(table["vector"], encoder.info.hidden_size).astype(np.float32)
    assert vectors.shape == (chunks.num_rows, encoder.info.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    field = table.schema.field("vector")  # D float16 per row, stored plain
    assert field.type.byte_width == 2 * encoder.info.hidden_size
    assert field.metadata[b"tda.dtype"] == b"float16-le"
    column = pq.ParquetFile(root / "embeddings" / "part-000000.parquet").metadata.row_group(0)
    vector_chunk = column.column(table.schema.get_field_index("vector"))
    assert vector_chunk.compression == "UNCOMPRESSED" and not vector_chunk.is_stats_set
    ids = table["concept_ids"].to_pylist()
    weights = table["concept_weights"].to_pylist()
    assert all(0 < len(i) <= 32 and len(i) == len(w) for i, w in zip(ids, weights, strict=True))
    assert all(w == sorted(w, reverse=True) and 0 < w[-1] <= w[0] <= 1 for w in weights)
    meta = table.schema.metadata
    named = json.loads(meta[b"tda.encoder"])
    assert named["fingerprint"] == encoder.info.fingerprint and named["name"] in model_spec
    assert json.loads(meta[b"tda.pooling"])["name"] == "mean:hidden"
    assert json.loads(meta[b"tda.context"])["window"] == manifest.context.window
    # the manifest, written last, reconciles with the chunk stage
    again = EmbedManifest.from_json((root / "embeddings" / "manifest.json").read_text())
    assert again == manifest
    assert manifest.totals.chunks == chunks.num_rows
    assert manifest.totals.tokens == sum(chunks["n_tokens"].to_pylist())
    assert manifest.totals.window_tokens >= manifest.totals.tokens


def test_overlapping_chunks_and_short_windows(tmp_path, docs_jsonl, builtin_dir):
    """--stride < --chunk-size: documents are rebuilt from overlapping chunk texts."""
    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], builtin_dir, chunk_size=48, stride=16)
    manifest = embed_root(EmbedConfig(root=str(root), model=builtin_dir, window=96, context=32))
    chunks = pq.read_table(root / "chunks" / "part-000000.parquet", columns=["chunk_id"])
    assert manifest.totals.chunks == chunks.num_rows
    assert manifest.context.window == 96 and manifest.context.context == 32


def test_refusals(tmp_path, docs_jsonl, builtin_dir, steerling_dir, tokenizer_dir):
    root = tmp_path / "root"
    with pytest.raises(EmbedRunError, match="run `tda chunk`"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir))
    # chunks cut with another tokenizer
    chunk_root(root, [docs_jsonl], tokenizer_dir)
    with pytest.raises(EmbedRunError, match="not the model's"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir))
    # chunks off Steerling's 64-token blocks
    chunk_root(root, [docs_jsonl], builtin_dir, chunk_size=50)
    with pytest.raises(EmbedRunError, match="multiples of 64"):
        plan_embed_run(EmbedConfig(root=str(root), model=f"steerling:{steerling_dir}"))
    # a window shorter than a chunk, or beyond the model's context
    chunk_root(root, [docs_jsonl], builtin_dir)
    with pytest.raises(ConfigError, match="shorter than the chunks"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir, window=32))
    with pytest.raises(ConfigError, match="context limit"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir, window=100_000))
    # no text stored
    chunk_root(root, [docs_jsonl], builtin_dir, store_text=False)
    with pytest.raises(EmbedRunError, match="--no-text"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir))


def test_rerun_needs_resume_or_overwrite_and_resume_checks_settings(
    tmp_path, docs_jsonl, builtin_dir
):
    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    first = embed_root(EmbedConfig(root=str(root), model=builtin_dir))
    part = (root / "embeddings" / "part-000000.parquet").read_bytes()
    with pytest.raises(EmbedRunError, match="--resume"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir))
    with pytest.raises(EmbedRunError, match="these differ: pooling"):
        plan_embed_run(EmbedConfig(root=str(root), model=builtin_dir, resume=True, pooling=_max()))
    # overwrite with the same settings: the same bytes (deterministic)
    again = embed_root(EmbedConfig(root=str(root), model=builtin_dir, overwrite=True))
    assert again == first
    assert (root / "embeddings" / "part-000000.parquet").read_bytes() == part


def test_changed_chunks_table_is_detected(tmp_path, docs_jsonl, builtin_dir):
    """A chunks part whose texts no longer re-tokenize to the recorded spans is refused."""
    import pyarrow as pa

    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    path = root / "chunks" / "part-000000.parquet"
    table = pq.read_table(path)
    texts = table["text"].to_pylist()
    texts[0] = "X" + texts[0][1:]  # no longer the text the chunk stage tokenized
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
    pq.write_table(table, path)
    # recorded as written: the re-tokenizing check refuses it, not the part's sha256
    rerecord(root, "chunks/part-000000.parquet")
    config = EmbedConfig(root=str(root), model=builtin_dir)
    encoder = load_encoder(builtin_dir, "cpu")
    plan = plan_embed_run(config, encoder)
    with pytest.raises(EmbedRunError, match="does not reproduce"):
        embed_file(0, plan, encoder)


def _max():
    from tda.schemas import Pooling

    return Pooling("max")
