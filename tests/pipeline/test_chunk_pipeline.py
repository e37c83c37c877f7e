"""The chunk stage on Beam: end to end over a mixed corpus, runner equivalence, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tda.attribution.stages.chunk import ChunkStage, plan_chunk_run
from tda.pipeline.chunk import run_chunk
from tda.pipeline.common import UnitFn
from tda.schemas import DEFAULT_CODEC
from tests.helpers import chunk_config

MULTI_PROCESS = [
    "--runner=DirectRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
]


def _files(root: Path) -> dict[str, bytes]:
    """Every output file under root (bookkeeping included), relative path -> bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_mixed_corpus_end_to_end(mixed_corpus, tmp_path, tokenizer_dir):
    root = tmp_path / "root"
    result = run_chunk(chunk_config(mixed_corpus, root, tokenizer_dir))
    manifest = result.manifest
    totals = manifest.totals

    # Counts reconcile: every record is a chunked document or a dead letter.
    assert totals.records == mixed_corpus.n_records
    assert totals.documents == sum(len(v) for v in mixed_corpus.documents.values())
    assert totals.deadlettered == sum(len(v) for v in mixed_corpus.deadletters.values())
    assert totals.reconciles() and all(f.reconciles() for f in manifest.files)
    assert result.counters["chunks_written"] == totals.chunks
    assert result.counters["records_read"] == totals.records
    assert result.counters["files"] == len(manifest.inputs)

    seen_ids = set()
    for f in manifest.inputs:
        docs = {r: text for r, _, text in mixed_corpus.documents[f.url]}
        part = root / "chunks" / f"part-{f.index:06d}.parquet"
        rows = pq.read_table(part).to_pylist()  # one part per input file, even if empty
        assert len(rows) == manifest.files[f.index].chunks
        pieces: dict[int, list[str]] = {}
        for ordinal, row in enumerate(rows):
            # Ids are unique and decode to this file and this row.
            assert row["chunk_id"] not in seen_ids
            seen_ids.add(row["chunk_id"])
            loc = DEFAULT_CODEC.decode(row["chunk_id"])
            assert (loc.dataset, loc.file_index, loc.ordinal) == (0, f.index, ordinal)
            # Offsets cut the exact text out of the source document.
            source_text = docs[row["record_index"]]
            assert source_text[row["char_start"] : row["char_end"]] == row["text"]
            assert row["n_tokens"] == row["token_end"] - row["token_start"] <= 64
            pieces.setdefault(row["record_index"], []).append(row["text"])
        # Every usable document is chunked, and its chunks tile it exactly.
        assert {r: "".join(p) for r, p in pieces.items()} == docs
        dead_part = root / "deadletter" / f"part-{f.index:06d}.parquet"
        dead = pq.read_table(dead_part).to_pylist() if dead_part.exists() else []
        assert [(d["record_index"], d["reason"]) for d in dead] == mixed_corpus.deadletters[f.url]
    assert len(seen_ids) == totals.chunks


@pytest.mark.slow
def test_in_process_and_multi_process_runs_write_identical_files(
    mixed_corpus, tmp_path, tokenizer_dir
):
    a, b = tmp_path / "in_process", tmp_path / "multi_process"
    run_chunk(chunk_config(mixed_corpus, a, tokenizer_dir))
    run_chunk(chunk_config(mixed_corpus, b, tokenizer_dir), PipelineOptions(MULTI_PROCESS))
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    assert "chunks/manifest.json" in files_a and len(files_a) > 10
    for name in files_a:
        assert files_a[name] == files_b[name], name


def test_dofn_yields_file_counts(mixed_corpus, tmp_path, tokenizer_dir):
    config = chunk_config(mixed_corpus, tmp_path / "root", tokenizer_dir)
    plan = plan_chunk_run(config)
    picked = [i for i in plan.inputs if i.url.endswith(("multi.jsonl.zst", "empty.txt"))]
    expected_docs = {i.index: len(mixed_corpus.documents[i.url]) for i in picked}
    with BeamTestPipeline() as p:
        counts = (
            p
            | beam.Create(picked)
            | beam.ParDo(UnitFn(ChunkStage(), plan))
            | beam.Map(lambda c: (c.file_index, c.documents, c.records))
        )
        assert_that(
            counts,
            equal_to([(i, n, max(n, 1)) for i, n in expected_docs.items()]),
        )


def test_dofn_refuses_a_different_tokenizer(mixed_corpus, tmp_path, tokenizer_dir):
    config = chunk_config(mixed_corpus, tmp_path / "root", tokenizer_dir)
    plan = plan_chunk_run(config)
    other = replace(plan.tokenizer, fingerprint="sha256:" + "0" * 64)
    fn = UnitFn(ChunkStage(), replace(plan, tokenizer=other))
    with pytest.raises(ValueError, match="differs from the driver's"):
        fn.setup()


def test_resume_after_simulated_interruption(mixed_corpus, tmp_path, tokenizer_dir):
    reference, root = tmp_path / "reference", tmp_path / "root"
    run_chunk(chunk_config(mixed_corpus, reference, tokenizer_dir))
    first = run_chunk(chunk_config(mixed_corpus, root, tokenizer_dir))
    n = len(first.manifest.inputs)
    # What a kill leaves behind: no manifest, two files without completion markers (one
    # of them without its part), and a half-written temp file.
    (root / "chunks" / "manifest.json").unlink()
    for index in (1, 3):
        (root / "chunks" / "_completions" / f"{index:06d}.json").unlink()
    (root / "chunks" / "part-000003.parquet").unlink()  # every file has a part, even empty
    (root / "chunks" / "_tmp-part-000001.parquet-deadbeef").write_bytes(b"PAR1 half")

    resumed = run_chunk(chunk_config(mixed_corpus, root, tokenizer_dir, resume=True))
    assert resumed.counters["files_skipped"] == n - 2
    assert resumed.counters["files"] == 2
    assert resumed.manifest == first.manifest
    assert _files(root) == _files(reference)


def _write_many_files(folder: Path, docs, n_files: int) -> None:
    folder.mkdir()
    for k in range(n_files):
        with open(folder / f"shard{k:03d}.jsonl", "w") as f:
            for doc_id, text in docs:
                f.write(json.dumps({"id": f"{k}-{doc_id}", "text": text}) + "\n")


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, real_docs, tokenizer_dir):
    corpus = tmp_path / "corpus"
    _write_many_files(corpus, real_docs[:40], n_files=40)
    tda = [sys.executable, "-m", "tda.jobs.cli", "chunk", str(corpus), "--tokenizer", tokenizer_dir]
    reference, root = tmp_path / "reference", tmp_path / "root"
    subprocess.run([*tda, "--out", str(reference)], check=True, capture_output=True)

    proc = subprocess.Popen(
        [*tda, "--out", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    markers = root / "chunks" / "_completions"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(markers.glob("*.json"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(markers.glob("*.json")))
    assert 3 <= done < 40, "the run must be killed midway"
    assert not (root / "chunks" / "manifest.json").exists()

    out = subprocess.run(
        [*tda, "--out", str(root), "--resume", "--json"], check=True, capture_output=True, text=True
    )
    summary = json.loads(out.stdout)
    assert summary["counters"]["files_skipped"] >= done
    assert summary["counters"]["files_skipped"] + summary["counters"].get("files", 0) == 40
    assert _files(root) == _files(reference)
