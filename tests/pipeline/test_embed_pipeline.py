"""The embed stage on Beam: pipeline output equals the encoder called directly, runner
equivalence (multi-process DirectRunner writes the same bytes), resume, shared model."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tda.attribution.corpus.tokenizer import load_tokenizer
from tda.attribution.encoders import load_encoder
from tda.attribution.stages.embed import plan_embed_run, read_embed_completion
from tda.pipeline.embed import EmbedCorpus, run_embed
from tda.schemas import EmbedConfig, EmbedCounts, vectors_from_arrow
from tests.helpers import MULTI_PROCESS, chunk_root, write_jsonl


@pytest.fixture(scope="module")
def two_file_root(tmp_path_factory, real_docs, builtin_dir):
    """Chunks of real_docs over two input files, cut with the builtin tokenizer: a.jsonl
    holds short documents (each fits one window), b.jsonl whole topics (many windows)."""
    base = tmp_path_factory.mktemp("embed")
    half = len(real_docs) // 2
    short = [(i, t[: 150 + (k * 37) % 350]) for k, (i, t) in enumerate(real_docs[:half])]
    a = write_jsonl(base / "corpus" / "a.jsonl", short)
    b = write_jsonl(base / "corpus" / "b.jsonl", real_docs[half:])
    root = base / "root"
    chunk_root(root, [a, b], builtin_dir)
    return root


def _copy_chunks(src, dst):
    import shutil

    shutil.copytree(src / "chunks", dst / "chunks")
    return dst


def _files(root):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "embeddings").rglob("*"))
        if p.is_file()
    }


def test_pipeline_vectors_equal_the_encoder_called_directly(tmp_path, two_file_root, model_spec):
    """Every stored vector of the short-document file equals a direct forward pass over its
    document (one window each), pooled by the default (mean of the final hidden states):
    float16 storage, tolerance 2e-3."""
    root = _copy_chunks(two_file_root, tmp_path)
    result = run_embed(EmbedConfig(root=str(root), model=model_spec, window=256))
    encoder = load_encoder(model_spec, "cpu")
    tokenizer = load_tokenizer(model_spec.split(":", 1)[1])
    chunks = pq.read_table(root / "chunks" / "part-000000.parquet").to_pylist()
    table = pq.read_table(root / "embeddings" / "part-000000.parquet")
    vectors = vectors_from_arrow(table["vector"], result.manifest.dim).astype(np.float32)
    docs: dict[str, list[int]] = {}
    for row, c in enumerate(chunks):
        docs.setdefault(c["doc_id"], []).append(row)
    checked = 0
    for rows in docs.values():
        text = "".join(chunks[r]["text"] for r in rows)
        (enc,) = tokenizer.encode_batch([text])
        assert enc.n_tokens <= 256
        with torch.inference_mode():
            acts = encoder.forward(torch.from_numpy(enc.ids)[None])
        feats = acts.hidden[0].numpy()  # the default pooling's features (mean:hidden)
        if acts.pool_mean is not None:  # standardised by the model's pooling statistics
            feats = (feats - acts.pool_mean.numpy()) / acts.pool_scale.numpy()
        for r in rows:
            c = chunks[r]
            want = feats[c["token_start"] : c["token_end"]].mean(0)
            np.testing.assert_allclose(vectors[r], want / np.linalg.norm(want), atol=2e-3)
        checked += 1
    assert checked == len(docs) > 30
    assert (
        result.counters["chunks_embedded"]
        == result.manifest.totals.chunks
        == len(pq.read_table(root / "chunks" / "part-000001.parquet")) + len(chunks)
    )
    assert result.counters["files"] == 2 and result.counters["batches"] >= 2


@pytest.mark.slow
def test_multi_process_equals_in_process(tmp_path, two_file_root, builtin_dir):
    a = _copy_chunks(two_file_root, tmp_path / "a")
    b = _copy_chunks(two_file_root, tmp_path / "b")
    run_embed(EmbedConfig(root=str(a), model=builtin_dir))
    run_embed(EmbedConfig(root=str(b), model=builtin_dir), PipelineOptions(MULTI_PROCESS))
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys() and "embeddings/manifest.json" in files_a
    assert files_a == files_b


def test_embed_corpus_transform_and_resume(tmp_path, two_file_root, builtin_dir):
    root = _copy_chunks(two_file_root, tmp_path)
    config = EmbedConfig(root=str(root), model=builtin_dir)
    plan = plan_embed_run(config)
    with BeamTestPipeline() as p:
        counts = p | EmbedCorpus(plan)
        assert_that(
            counts | "Files" >> __import__("apache_beam").Map(lambda c: c.file_index),
            equal_to([0, 1]),
        )
    done = [read_embed_completion(config, i) for i in (0, 1)]
    assert all(isinstance(c, EmbedCounts) and c.chunks > 0 for c in done)
    # lose file 1's outputs (as if killed), resume: only file 1 is embedded again
    before = (root / "embeddings" / "part-000000.parquet").read_bytes()
    (root / "embeddings" / "_completions" / "000001.json").unlink()
    (root / "embeddings" / "part-000001.parquet").unlink()
    result = run_embed(EmbedConfig(root=str(root), model=builtin_dir, resume=True))
    assert result.counters["files_skipped"] == 1 and result.counters["files"] == 1
    assert (root / "embeddings" / "part-000000.parquet").read_bytes() == before
    assert result.manifest.totals.chunks == sum(c.chunks for c in done)
