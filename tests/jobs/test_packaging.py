"""Worker packaging: the sdist built from setup.py installs into a fresh virtualenv and the
pipelines import and translate from there, as on a Dataflow worker; the worker image's
Dockerfile stays in step with the installed Beam, Python, torch and steerling."""

from __future__ import annotations

import json
import re
import site
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import apache_beam
import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs inside the fresh venv: where tda comes from, whether its declared requirements are
# met, the packaged runner configs, and one stage's pipeline translated to the proto.
CHILD = r"""
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
import tda, tda.pipeline.build, tda.jobs.cli
from tda.jobs.runners import bundled_configs, runner_args
from tda.pipeline.build import stage_pipeline
from tda.schemas import ChunkConfig
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.portable_runner import PortableRunner

unmet = []
for line in md.requires("tda") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra
    try:
        if md.version(req.name) not in req.specifier:
            unmet.append(line)
    except md.PackageNotFoundError:
        unmet.append(line)
opts = PipelineOptions(runner_args("spark", [], {"TDA_WORKER_IMAGE": "img:1"}))
config = ChunkConfig(inputs=(sys.argv[1],), out=sys.argv[2], tokenizer=sys.argv[3])
proto = PortableRunner.get_proto_pipeline(stage_pipeline("chunk", config, opts), opts)
print(json.dumps({
    "file": tda.__file__,
    "version": md.version("tda"),
    "unmet": unmet,
    "configs": bundled_configs(),
    "transforms": sorted(t.unique_name for t in proto.components.transforms.values()),
}))
"""


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv_and_the_pipeline_imports(
    tmp_path, docs_jsonl, builtin_dir
):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    (sdist,) = dist.glob("tda-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"jobs/configs/dataflow.yaml", "jobs/static/viewer.js", "pipeline/build.py"} <= names
    assert not any(n.startswith((".venv/", "build/", "tests/attribution")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        # build isolation fetches setuptools + wheel, as pip does on a worker
        [python, "-m", "pip", "install", "-q", "--no-deps", str(sdist)],
        check=True, capture_output=True,
    )  # fmt: skip
    # Third-party packages come from this environment (a worker image has them
    # preinstalled); the path is appended, so the venv's own tda comes first.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    out = subprocess.run(
        [python, "-c", CHILD, str(docs_jsonl), str(tmp_path / "root"), builtin_dir],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(env_dir)), found["file"]
    assert found["version"] == "0.1.0"
    assert found["unmet"] == []
    assert found["configs"] == ["dask", "dataflow", "direct", "flink", "spark"]
    assert "ChunkCorpus/ChunkFiles" in found["transforms"]


def _dockerfile() -> str:
    return (REPO / "docker" / "worker.Dockerfile").read_text()


def test_worker_image_matches_the_installed_beam_python_and_pins():
    text = _dockerfile()
    beam_version = re.search(r"^ARG BEAM_VERSION=(\S+)$", text, re.M).group(1)
    assert beam_version == apache_beam.__version__, "rebuild the worker image on Beam upgrades"
    py = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:\$\{BEAM_VERSION\}$", text, re.M)
    assert py.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    makefile = (REPO / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH\s*:=\s*(\S+)$", makefile, re.M).group(1)
    steerling_pin = re.search(r"^STEERLING\s*:=\s*(\S+)$", makefile, re.M).group(1)
    assert f"pip install {torch_pin}\n" in text
    assert f"--no-deps --ignore-requires-python {steerling_pin}" in text
    extras = re.search(r'"tda\[([a-z0-9,]+)\] @ file:///tmp/tda.tar.gz"', text).group(1)
    assert "gpu" in extras.split(",") and "cpu" not in extras.split(",")
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    # the sdist name the image copies is the one setup.cfg makes
    version = re.search(r"^version = (\S+)$", (REPO / "setup.cfg").read_text(), re.M).group(1)
    assert f"ARG TDA_SDIST=dist/tda-{version}.tar.gz" in text


def _docker_works() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.skipif(not _docker_works(), reason="needs a running Docker daemon and a registry")
def test_worker_image_builds(tmp_path):
    subprocess.run(["make", "sdist"], cwd=REPO, check=True, capture_output=True)
    subprocess.run(
        ["docker", "build", "-f", "docker/worker.Dockerfile", "-t", "tda-worker:test", "."],
        cwd=REPO, check=True,
    )  # fmt: skip
