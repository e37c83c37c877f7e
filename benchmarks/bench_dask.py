"""`tda build` on Beam's Dask runner (1 and 2 worker processes) against the DirectRunner's
multi-process mode, back to back in one run.

    .venv/bin/python benchmarks/bench_dask.py [--out build/bench-dask] [--files 8]
        [--copies 2] [--workers 2]

Corpus: Python's documentation topics (``pydoc_data``, ~0.5 MB) dealt round-robin into
``--files`` JSONL files, the whole set ``--copies`` times (document ids made unique).
Model: a builtin model of the default ``tda model train`` shape with random weights
(benchmarks/bench_embed.py's; the weights' values do not change the cost).

Runs, each a full build into its own root (chunk -> embed -> index, 2 shards):

* ``direct``: DirectRunner, ``--direct_running_mode multi_processing`` with ``--workers``
  processes (the ``--config direct`` path);
* ``dask-1`` / ``dask-N``: tda's Dask runner on a LocalCluster of 1 / ``--workers``
  single-threaded worker processes, started before the build (its start-up is reported
  apart: ``--config dask`` pays it once per command);
* ``dask-N-p128``: as ``dask-N`` with Beam's default partition size (128 elements),
  which puts every file in one partition, hence one task on one worker.

Reported per run: seconds per stage, embed tokens/s, the embed stage's read / compute /
write seconds summed over files (the stage runtime's timing counters, which the Dask
runner ships back), and whether the root equals the DirectRunner's byte for byte.
Ratio = dask-N build throughput / direct build throughput (target >= 0.9).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is sys.path[0])

REPO = Path(__file__).resolve().parents[1]


def _corpus(out: Path, files: int, copies: int) -> Path:
    from pydoc_data.topics import topics

    docs = [(f"{name}-{c}", text) for c in range(copies) for name, text in sorted(topics.items())]
    corpus = out / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    for k in range(files):
        lines = [json.dumps({"id": i, "text": t}) + "\n" for i, t in docs[k::files]]
        (corpus / f"part{k:02d}.jsonl").write_text("".join(lines))
    return corpus


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _build(corpus: Path, model: str, root: Path, args: list[str]) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions

    from tda.jobs.runners import runner_args
    from tda.pipeline.build import run_build
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig

    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    result = run_build(
        ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=model),
        EmbedConfig(root=str(root), model=model),
        IndexConfig(root=str(root), shards=2),
        PipelineOptions(runner_args(None, args)),
    )
    seconds = time.perf_counter() - started
    tokens = result.embed.counters.get("tokens", 0)
    return {
        "seconds": round(seconds, 2),
        "stages": {k: round(v, 2) for k, v in result.seconds.items()},
        "embed_tokens_per_s": round(tokens / result.seconds["embed"]) if tokens else None,
        "embed_phases_s": result.embed.timings,
        "embed_files": result.embed.counters.get("files"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "build" / "bench-dask"))
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_embed import _random_model
    from distributed import LocalCluster

    corpus = _corpus(out, opts.files, opts.copies)
    model_dir = out / "model"
    if not (model_dir / "tokenizer.json").exists():
        shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir()
        _random_model(model_dir, corpus, 4096)
    model = str(model_dir)
    n = opts.workers
    runs: dict[str, dict] = {}
    direct = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
              f"--direct_num_workers={n}"]  # fmt: skip
    runs["direct"] = _build(corpus, model, out / "direct", direct)
    reference = _digest(out / "direct")
    for workers, partition in ((1, None), (n, None), (n, 128)):
        name = f"dask-{workers}" + (f"-p{partition}" if partition else "")
        started = time.perf_counter()
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster:
            startup = time.perf_counter() - started
            args = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
            if partition:
                args.append(f"--dask_partition_size={partition}")
            runs[name] = _build(corpus, model, out / name, args)
        runs[name]["cluster_start_s"] = round(startup, 2)
        runs[name]["same_root_as_direct"] = _digest(out / name) == reference
    report = {
        "machine": machine(),
        "corpus": {"files": opts.files, "bytes": sum(p.stat().st_size for p in corpus.iterdir())},
        "runs": runs,
        f"ratio_dask{n}_vs_direct": round(
            runs["direct"]["seconds"] / runs[f"dask-{n}"]["seconds"], 3
        ),
    }
    print(json.dumps(report, indent=2))
    (out / "bench_dask.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
