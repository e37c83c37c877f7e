"""Runner configs (``--config``): every bundled config parses into Beam options of its
runner, and every stage's pipeline translates to the portable pipeline proto with those
options, the way the runner would submit it (nothing is submitted)."""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.portable_runner import PortableRunner
from apache_beam.transforms import environments

from tda.jobs.beam_args import split_beam_args
from tda.jobs.runners import DASK_RUNNER, bundled_configs, config_path, dask_cluster, runner_args
from tda.pipeline.build import run_build, stage_pipeline
from tda.schemas import ChunkConfig, ConfigError, EmbedConfig, IndexConfig

REPO = Path(__file__).resolve().parents[2]
IMAGE = "us-docker.pkg.dev/my-project/tda/worker:0.1.0"
ENV = {
    "TDA_GCP_PROJECT": "my-project",
    "TDA_BUCKET": "my-bucket",
    "TDA_WORKER_IMAGE": IMAGE,
    "TDA_SETUP_FILE": str(REPO / "setup.py"),
}


def options(name: str, cli: list[str] | None = None, env=ENV) -> PipelineOptions:
    return PipelineOptions(runner_args(name, cli or [], env))


def test_bundled_configs_are_the_five_runners():
    assert bundled_configs() == ["dask", "dataflow", "direct", "flink", "spark"]


def test_every_bundled_config_parses_without_unknown_options():
    for name in bundled_configs():
        opts = options(name)
        # retain_unknown_options keeps anything Beam does not know under its raw name
        known = opts.get_all_options(retain_unknown_options=True)
        assert known.keys() == opts.get_all_options().keys(), name


def test_direct_config_runs_one_process_per_core():
    direct = options("direct").view_as(DirectOptions)
    assert options("direct").view_as(StandardOptions).runner == "DirectRunner"
    assert direct.direct_num_workers == 0 and direct.direct_running_mode == "multi_processing"


def test_dask_config_runs_tdas_dask_runner_on_a_local_or_named_cluster():
    pytest.importorskip("distributed", reason="needs the dask extra")
    from apache_beam.runners.dask.dask_runner import DaskOptions

    local = options("dask", env={})
    assert local.view_as(StandardOptions).runner == DASK_RUNNER
    dask = local.get_all_options()
    assert dask["address"] is None and dask["partition_size"] == 1  # LocalCluster, a file a task
    named = options("dask", env={"TDA_DASK_SCHEDULER": "tcp://sched:8786"})
    assert named.view_as(DaskOptions).address == "tcp://sched:8786"
    # the command line wins, and the Dask options are Beam options like any other
    cli = ["--dask_client_address", "tcp://other:8786", "--dask_connection_timeout", "30"]
    args = runner_args("dask", cli, {"TDA_DASK_SCHEDULER": "tcp://sched:8786"})
    assert PipelineOptions(args).get_all_options()["address"] == "tcp://other:8786"
    beam, rest = split_beam_args(["root", *cli, "--out", "x"], {"--out"})
    assert (beam, rest) == (cli, ["root", "--out", "x"])


@pytest.mark.parametrize(
    "given",
    [["--runner", "DaskRunner"], ["--runner=dask"],
     ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"]],
)  # fmt: skip
def test_every_dask_runner_spelling_resolves_to_tdas(given):
    pytest.importorskip("distributed", reason="needs the dask extra")
    args = runner_args(None, given)
    assert PipelineOptions(args).view_as(StandardOptions).runner == DASK_RUNNER
    assert runner_args(None, ["--runner", "DirectRunner"]) == ["--runner", "DirectRunner"]


def test_dask_runner_without_the_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ConfigError, match=r"pip install 'tda\[dask\]'"):
        runner_args(None, ["--runner", "DaskRunner"])


def test_dask_cluster_starts_a_local_cluster_only_without_a_scheduler():
    pytest.importorskip("distributed", reason="needs the dask extra")
    named = runner_args(None, ["--runner=DaskRunner", "--dask_client_address=tcp://h:1"])
    with dask_cluster(named) as args:
        assert args == named  # an existing cluster: nothing started
    with dask_cluster(["--runner=DirectRunner"]) as args:
        assert args == ["--runner=DirectRunner"]


def test_dataflow_config_asks_for_gpu_workers_and_the_worker_image():
    opts = options("dataflow")
    gcp = opts.view_as(GoogleCloudOptions)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    assert (gcp.project, gcp.region) == ("my-project", "us-central1")
    assert gcp.temp_location == "gs://my-bucket/tmp"
    assert gcp.dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    worker = opts.view_as(WorkerOptions)
    assert worker.machine_type == "g2-standard-8" and worker.sdk_container_image == IMAGE
    assert worker.max_num_workers == 32
    assert opts.view_as(SetupOptions).setup_file == str(REPO / "setup.py")
    experiments = opts.view_as(DebugOptions).experiments
    assert "use_runner_v2" in experiments and "no_use_multiple_sdk_containers" in experiments


@pytest.mark.parametrize("name", ["spark", "flink"])
def test_portable_configs_point_at_a_job_server_with_the_worker_image(name):
    opts = options(name, env={**ENV, "TDA_JOB_ENDPOINT": "spark-master:8099"})
    portable = opts.view_as(PortableOptions)
    assert opts.view_as(StandardOptions).runner == "PortableRunner"
    assert portable.job_endpoint == "spark-master:8099"
    assert (portable.environment_type, portable.environment_config) == ("DOCKER", IMAGE)


def test_command_line_wins_and_variables_are_checked():
    # a missing variable is a one-line error naming it and the way out
    with pytest.raises(ConfigError, match=r"project needs \$TDA_GCP_PROJECT"):
        runner_args("dataflow", [], {"TDA_BUCKET": "b", "TDA_WORKER_IMAGE": IMAGE})
    # ... unless the command line gives that option, which then replaces the file's
    args = runner_args(
        "dataflow", ["--project", "cli-project"], {"TDA_BUCKET": "b", "TDA_WORKER_IMAGE": IMAGE}
    )
    assert not any(a.startswith("--project=") for a in args)
    assert PipelineOptions(args).view_as(GoogleCloudOptions).project == "cli-project"
    # empty default: the option is left out (no setup_file without TDA_SETUP_FILE)
    args = runner_args("dataflow", [], {k: v for k, v in ENV.items() if k != "TDA_SETUP_FILE"})
    assert not any(a.startswith("--setup_file") for a in args)


def test_bad_config_files_get_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a bundled config"):
        config_path("nonesuch")
    cases = {
        "not-beam.yaml": ("beam_options: {runner: DirectRunner, windoww: 3}", "not a Beam"),
        "flag.yaml": ("beam_options: {streaming: 'yes'}", "is a flag"),
        "shape.yaml": ("- runner", "expected a mapping"),
        "nested.yaml": ("beam_options: {experiments: [{a: 1}]}", "expected a value"),
        "extra.yaml": ("beam_options: {}\nrunners: {}", "unknown top-level"),
        "broken.yaml": ("beam_options: {runner: [", "not valid YAML"),
    }
    for file, (text, message) in cases.items():
        (tmp_path / file).write_text(text)
        with pytest.raises(ConfigError, match=message):
            runner_args(str(tmp_path / file), [])
    (tmp_path / "ok.yaml").write_text("beam_options: {streaming: false, experiments: [a, b]}")
    assert runner_args(str(tmp_path / "ok.yaml"), []) == ["--experiments=a", "--experiments=b"]


# --------------------------------------------------------------------------------------
# Translation to the portable pipeline proto


@pytest.fixture(scope="module")
def built_root(tmp_path_factory, docs_jsonl, builtin_dir) -> Path:
    root = tmp_path_factory.mktemp("runner-root") / "root"
    run_build(
        ChunkConfig(inputs=(str(docs_jsonl),), out=str(root), tokenizer=builtin_dir),
        EmbedConfig(root=str(root), model=builtin_dir, batch_tokens=2048),
        IndexConfig(root=str(root), shards=2),
    )
    return root


def stage_configs(tmp_path: Path, built_root: Path, docs_jsonl, builtin_dir) -> dict:
    """A config per stage, each on its own copy of a root that stage can be planned on
    (planning writes the stage's run record, as a real driver does)."""
    for name in ("embed", "index"):
        shutil.copytree(built_root, tmp_path / name)
    return {
        "chunk": ChunkConfig(
            inputs=(str(docs_jsonl),), out=str(tmp_path / "chunk"), tokenizer=builtin_dir
        ),
        "embed": EmbedConfig(root=str(tmp_path / "embed"), model=builtin_dir, overwrite=True),
        "index": IndexConfig(root=str(tmp_path / "index"), shards=2, overwrite=True),
    }


STAGE_TRANSFORMS = {
    "chunk": "ChunkCorpus/ChunkFiles",
    "embed": "EmbedCorpus/EmbedFiles",
    "index": "BuildIndex/FillShards",
}


def translate(stage: str, config, name: str) -> beam_runner_api_pb2.Pipeline:
    """The proto the runner of config ``name`` would submit for this stage."""
    opts = options(name, env={**ENV, "TDA_JOB_ENDPOINT": "localhost:8099"})
    if name == "dataflow":
        # Constructing a DataflowRunner pipeline validates against Google Cloud: build
        # with the DirectRunner, then translate as the Dataflow runner does (its default
        # environment is the worker image plus the staged --setup_file sdist).
        pipeline = stage_pipeline(stage, config, opts, runner="DirectRunner")
        image = opts.view_as(WorkerOptions).sdk_container_image
        env = environments.DockerEnvironment.from_container_image(
            image, artifacts=environments.python_sdk_dependencies(opts)
        )
        return pipeline.to_runner_api(default_environment=env)
    pipeline = stage_pipeline(stage, config, opts)
    return PortableRunner.get_proto_pipeline(pipeline, opts)


def _leaves(proto: beam_runner_api_pb2.Pipeline, transform) -> list:
    """The primitive transforms under ``transform`` in ``proto`` (itself when it is one)."""
    if not transform.subtransforms:
        return [transform]
    subs = proto.components.transforms
    return [leaf for sub in transform.subtransforms for leaf in _leaves(proto, subs[sub])]


@pytest.mark.parametrize("name", ["direct", "spark", "flink", "dataflow"])
def test_every_stage_translates_to_the_portable_pipeline_proto(
    tmp_path, built_root, docs_jsonl, builtin_dir, name
):
    for stage, config in stage_configs(tmp_path, built_root, docs_jsonl, builtin_dir).items():
        proto = translate(stage, config, name)
        labels = {t.unique_name: t for t in proto.components.transforms.values()}
        work = labels[STAGE_TRANSFORMS[stage]]
        # the work runs as ParDos: the step itself, or the ParDos inside a composite (the
        # embed stage's RunInference batches, then runs the model in a ParDo)
        leaves = _leaves(proto, work)
        assert {leaf.spec.urn for leaf in leaves} == {"beam:transform:pardo:v1"}, (name, stage)
        # the proto round-trips into a pipeline (what a job server does with it)
        assert beam.Pipeline.from_runner_api(proto, "DirectRunner", PipelineOptions([]))
        env = proto.components.environments[work.environment_id]
        if name == "direct":
            continue
        for leaf in leaves:  # every ParDo of the work runs in the worker image
            assert leaf.environment_id == work.environment_id, (name, stage)
        docker = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
        assert env.urn == "beam:env:docker:v1" and docker.container_image == IMAGE
        if name == "dataflow":
            staged = [
                beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload)
                for d in env.dependencies
            ]
            assert "workflow.tar.gz" in {s.staged_name for s in staged}, stage


def test_dataflow_setup_file_stages_an_sdist_with_the_whole_package(tmp_path):
    """--setup_file: Beam builds an sdist of this checkout and workers pip-install it."""
    opts = options("dataflow")
    deps = environments.python_sdk_dependencies(opts)
    files = {}
    for dep in deps:
        role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload)
        path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
        files[role.staged_name] = path
    with tarfile.open(files["workflow.tar.gz"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"pipeline/build.py", "jobs/configs/dataflow.yaml", "jobs/static/index.html",
              "attribution/encoders/builtin/data/concepts_default.yaml", "setup.cfg"}  # fmt: skip
    assert needed <= names, needed - names
