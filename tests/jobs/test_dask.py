"""tda on a real distributed engine: Beam's Dask runner (tda's subclass) on a
dask.distributed LocalCluster of two single-threaded worker processes.

Every job here writes the same bytes as the DirectRunner's: a build, a build during which
one worker process is SIGKILLed in the middle of the embed stage (Dask reruns its work),
a build whose driver is killed and then resumed, a concept scan and a prune. Kills are
triggered by the embed stage's completion markers (a file committed, others not yet),
never by a timer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.helpers import MULTILINGUAL, doc_topics, write_jsonl

distributed = pytest.importorskip("distributed", reason="needs the dask extra")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tda.jobs.cli import main  # noqa: E402
from tda.jobs.runners import runner_args  # noqa: E402
from tda.pipeline.build import BuildProgress, run_build  # noqa: E402
from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig  # noqa: E402

N_FILES = 6
DEADLINE = 120  # seconds any wait below may take before the test fails


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster: scheduler in this process, two single-threaded worker processes
    (each started by a nanny, which restarts it when it dies)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        yield cluster, client


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Six JSONL files (the documentation topics and multilingual lines dealt round-robin):
    enough files that the embed stage is still running when its first file commits."""
    docs = doc_topics() + [(f"multi-{i}", t) for i, t in enumerate(MULTILINGUAL)]
    root = tmp_path_factory.mktemp("dask-corpus")
    for k in range(N_FILES):
        write_jsonl(root / f"part{k}.jsonl", docs[k::N_FILES])
    return root


def configs(corpus: Path, root: Path, model: str, **kw):
    return (
        ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=model, **kw),
        EmbedConfig(root=str(root), model=model, batch_tokens=2048, **kw),
        IndexConfig(root=str(root), shards=2, **kw),
    )


def dask_options(cluster) -> PipelineOptions:
    """Beam options for the test cluster, as the command line gives them."""
    address = cluster[0].scheduler_address
    return PipelineOptions(
        runner_args(None, ["--runner", "DaskRunner", "--dask_client_address", address])
    )


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under ``root`` -> its sha256 (paths relative to root)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def assert_same_root(got: Path, want: Path) -> None:
    a, b = tree(got), tree(want)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    assert [k for k in a if a[k] != b[k]] == []


def chunk_ids(root: Path, stage: str) -> list[int]:
    ids = []
    for part in sorted((root / stage).glob("part-*.parquet")):
        ids += pq.read_table(part, columns=["chunk_id"]).column("chunk_id").to_pylist()
    return ids


def wait_for(condition, what: str):
    """Poll ``condition()`` until it returns something truthy; fail after DEADLINE."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def embed_markers(root: Path) -> int:
    folder = root / "embeddings" / "_completions"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


@pytest.fixture(scope="module")
def direct_root(tmp_path_factory, corpus, builtin_dir) -> Path:
    """The reference: the same build on the DirectRunner (in process)."""
    root = tmp_path_factory.mktemp("dask-direct") / "root"
    run_build(*configs(corpus, root, builtin_dir))
    return root


class KillAWorker(BuildProgress):
    """When the embed stage is planned, watch its completion markers; at the first one
    (a file committed, the stage still running), SIGKILL a worker process that has embed
    work assigned (running or holding a finished file's result, which Dask must rerun)."""

    def __init__(self, client) -> None:
        self.client = client
        self.killed: dict = {}
        self.thread: threading.Thread | None = None

    def start(self, stage, units, fs, markers) -> None:
        if stage == "embed":
            root = Path(markers).parents[1]  # markers: ROOT/embeddings/_completions
            self.thread = threading.Thread(target=self._kill, args=(units, root))
            self.thread.start()

    def _kill(self, units: int, root: Path) -> None:
        wait_for(lambda: embed_markers(root), "the first embed marker")
        pids = self.client.run(os.getpid)
        busy = wait_for(
            lambda: (
                [a for a, keys in self.client.processing().items() if keys]
                + [a for a, keys in self.client.has_what().items() if keys]
            ),
            "a worker with embed work",
        )
        self.killed = {
            "address": busy[0],
            "markers": embed_markers(root),
            "units": units,
        }
        os.kill(pids[busy[0]], signal.SIGKILL)


@pytest.mark.slow
def test_build_with_a_worker_killed_mid_embed_equals_direct(
    cluster, corpus, builtin_dir, direct_root, tmp_path
):
    """The issue's "done when": a full build on a Dask LocalCluster, one worker process
    killed during the embed stage, writes the DirectRunner's root byte for byte."""
    _, client = cluster
    root = tmp_path / "root"
    killer = KillAWorker(client)
    result = run_build(*configs(corpus, root, builtin_dir), dask_options(cluster), killer)
    killer.thread.join()
    # the kill landed inside the embed stage: some files were committed, not all
    assert 0 < killer.killed["markers"] < killer.killed["units"] == N_FILES, killer.killed
    assert killer.killed["address"] not in client.scheduler_info()["workers"]
    assert_same_root(root, direct_root)
    # no chunk embedded twice or missed, and the counters came back from the workers
    ids = chunk_ids(root, "embeddings")
    assert ids == chunk_ids(root, "chunks") and len(set(ids)) == len(ids)
    # attempted counters: a file rerun after the kill counts again
    assert result.embed.counters["files"] >= N_FILES
    assert result.embed.counters["chunks_embedded"] >= len(ids)
    client.wait_for_workers(2, timeout=DEADLINE)  # the nanny restarted the killed one


def count_model_loads() -> None:
    """On a worker: count load_encoder calls of the embed stage (tda.attribution...LOADS)."""
    import tda.attribution.stages.embed as stage

    load = getattr(stage.load_encoder, "__wrapped__", stage.load_encoder)

    def counted(*args, **kwargs):
        stage.LOADS += 1
        return load(*args, **kwargs)

    counted.__wrapped__ = load
    stage.LOADS = 0
    stage.load_encoder = counted


def model_loads() -> int:
    import tda.attribution.stages.embed as stage

    return stage.LOADS


@pytest.mark.slow
def test_dask_workers_load_the_model_once_each(cluster, corpus, builtin_dir, direct_root, tmp_path):
    """Six files on two workers: each worker process loads the model once, not per file."""
    _, client = cluster
    root = tmp_path / "root"
    shutil.copytree(direct_root, root)
    client.run(count_model_loads)
    from tda.pipeline.embed import run_embed

    embed = configs(corpus, root, builtin_dir, overwrite=True)[1]
    result = run_embed(embed, dask_options(cluster))
    assert result.counters["files"] == N_FILES
    assert sorted(client.run(model_loads).values()) == [1, 1]
    for part in sorted((direct_root / "embeddings").glob("part-*")):
        assert (root / "embeddings" / part.name).read_bytes() == part.read_bytes()


@pytest.mark.slow
def test_build_driver_killed_then_resumed_equals_direct(
    cluster, corpus, builtin_dir, direct_root, tmp_path
):
    """``tda build`` on the cluster is SIGKILLed (the whole job: its driver) once the
    embed stage has committed a file; ``tda build --resume`` finishes the same root."""
    scheduler, client = cluster
    root = tmp_path / "root"
    args = ["build", str(corpus), "--model", builtin_dir, "--out", str(root), "--shards", "2",
            "--batch-tokens", "2048", "--runner", "DaskRunner",
            "--dask_client_address", scheduler.scheduler_address]  # fmt: skip
    driver = subprocess.Popen(
        [sys.executable, "-m", "tda.jobs.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: embed_markers(root) or driver.poll() is not None, "an embed marker")
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        driver.kill()
    finally:
        driver.wait()
    assert 0 < embed_markers(root) < N_FILES
    # the cluster drops a dead client's tasks; let the ones already running end
    wait_for(lambda: not any(client.processing().values()), "the cluster to go idle")
    result = CliRunner().invoke(main, [*args, "--resume", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["embed"]["chunks"] == len(chunk_ids(direct_root, "chunks"))
    assert_same_root(root, direct_root)


@pytest.mark.slow
def test_scan_and_prune_on_dask_equal_direct(cluster, planted_root, planted_corpus, tmp_path):
    """``tda scan --concept`` and ``tda prune apply`` on the Dask runner write what the
    DirectRunner writes."""
    address = cluster[0].scheduler_address
    runs = {"direct": [], "dask": ["--runner", "DaskRunner", "--dask_client_address", address]}
    for name, beam in runs.items():
        scan = ["scan", str(planted_root), "--concept", "violence", "--out",
                str(tmp_path / name / "scan")]  # fmt: skip
        result = CliRunner().invoke(main, [*scan, *beam])
        assert result.exit_code == 0, result.output
    assert tree(tmp_path / "dask" / "scan") == tree(tmp_path / "direct" / "scan")
    # one prune list for both (the manifests record its path)
    listed = tmp_path / "prune.parquet"
    result = CliRunner().invoke(
        main, ["prune", "list", str(tmp_path / "direct" / "scan"), "--level", "document",
               "--min-share", "0.3", "--out", str(listed)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name, beam in runs.items():
        result = CliRunner().invoke(
            main, ["prune", "apply", str(planted_root), "--list", str(listed),
                   "--corpus", str(planted_corpus), "--corpus-out", str(tmp_path / name / "pruned"),
                   "--out", str(tmp_path / name / "new"), "--reason", "violent fiction", *beam],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    out = {name: tmp_path / name for name in runs}
    for folder in ("pruned", "new"):
        got = tree(out["dask"] / folder, skip=("audit.jsonl",))
        assert got == tree(out["direct"] / folder, skip=("audit.jsonl",)), folder
    # the audit lines differ only in their time and the two runs' output paths
    own = ("time", "corpus_out", "child_root")
    audits = [
        json.loads((out[name] / "new" / "audit.jsonl").read_text().splitlines()[-1])
        for name in runs
    ]
    kept = [{k: v for k, v in a.items() if k not in own} for a in audits]
    assert kept[0] == kept[1]
    assert audits[0]["reason"] == "violent fiction"
    assert [a["child_root"] for a in audits] == [str(out[name] / "new") for name in runs]


@pytest.mark.slow
def test_config_dask_starts_a_local_cluster_per_command(corpus, builtin_dir, direct_root, tmp_path):
    """``--config dask`` with no scheduler: the command starts a LocalCluster (one worker
    per core), runs on it and closes it; the chunks equal the DirectRunner's."""
    root = tmp_path / "root"
    result = CliRunner().invoke(
        main, ["chunk", str(corpus), "--out", str(root), "--tokenizer", builtin_dir,
               "--config", "dask"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for part in sorted((direct_root / "chunks").glob("part-*")):
        assert (root / "chunks" / part.name).read_bytes() == part.read_bytes()
    assert (root / "chunks" / "manifest.json").read_bytes() == (
        direct_root / "chunks" / "manifest.json"
    ).read_bytes()
