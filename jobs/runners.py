"""Runner configs: YAML files of Beam pipeline options, loaded with ``--config``.

One file per runner ships with the package (``jobs/configs/``): ``direct`` (DirectRunner,
one process per core), ``dask`` (a dask.distributed cluster: a LocalCluster with one worker
process per core, or ``--dask_client_address HOST:PORT``), ``dataflow`` (GPU workers),
``spark`` and ``flink`` (portable job servers). ``--config NAME`` picks a bundled one;
``--config FILE`` reads your own::

    description: one line
    beam_options:
      runner: DataflowRunner
      project: ${TDA_GCP_PROJECT}          # environment variable, required
      region: ${TDA_GCP_REGION:-us-central1} # with a default; an empty value omits the option
      experiments: [use_runner_v2]         # a list repeats the option

Every key must be a Beam option; Beam options on the command line win over the file's.

``--runner DaskRunner`` (or ``dask``, or Beam's own qualified name) runs tda's Dask runner,
:class:`tda.pipeline.dask_runner.DaskRunner` (Beam's, with the fixes its docstring lists);
:func:`dask_cluster` starts the LocalCluster a command runs on when no scheduler is named.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from tda.schemas import ConfigError

from .beam_args import beam_option_actions

__all__ = [
    "CONFIG_DIR",
    "DASK_RUNNER",
    "bundled_configs",
    "config_path",
    "dask_cluster",
    "resolve_runner",
    "runner_args",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DASK_RUNNER = "tda.pipeline.dask_runner.DaskRunner"
# --runner values that mean Dask (compared lower-case). Beam resolves none of the short
# ones, and its own runner drops what a DoFn emits in finish_bundle (RunInference's last
# batch), so every spelling runs tda's.
_DASK_NAMES = {"dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner"}


def bundled_configs() -> list[str]:
    """Names of the configs that ship with tda (``direct``, ``dataflow``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str) -> Path:
    """``--config`` value -> the YAML file: an existing path, else a bundled name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and bundled.is_file():
        return bundled
    raise ConfigError(
        f"--config {name_or_path}: no such file, and not a bundled config "
        f"({', '.join(bundled_configs())})"
    )


def _given(args: list[str]) -> set[str]:
    """Beam option names present in command-line tokens (``--x v`` or ``--x=v``)."""
    return {a.split("=", 1)[0][2:] for a in args if a.startswith("--")}


def _expand(value: str, where: str, environ: Mapping[str, str]) -> str:
    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where} needs ${name}: set it, or pass the option on the command line")

    return _VAR.sub(sub, value)


def runner_args(
    config: str | None, cli_args: list[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """A runner config + the command line's Beam tokens -> the Beam arguments to run with.

    The file's options come first and are left out where the command line sets the same
    option; ``${VAR}`` is expanded only for the options used.
    """
    if config is None:
        return resolve_runner(list(cli_args))
    environ = os.environ if environ is None else environ
    path = config_path(config)
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("beam_options"), dict):
        raise ConfigError(f"--config {path}: expected a mapping with a 'beam_options' mapping")
    unknown = set(doc) - {"description", "beam_options"}
    if unknown:
        raise ConfigError(f"--config {path}: unknown top-level keys {sorted(unknown)}")
    actions = beam_option_actions()
    given = _given(cli_args)
    out: list[str] = []
    for key, value in doc["beam_options"].items():
        takes_value = actions.get(f"--{key}")
        if takes_value is None:
            raise ConfigError(f"--config {path}: {key!r} is not a Beam pipeline option")
        if key in given:
            continue
        where = f"--config {path}: {key}"
        if not takes_value:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} is a flag: write true or false")
            out.extend([f"--{key}"] if value else [])
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None or isinstance(item, dict | list):
                raise ConfigError(f"{where}: expected a value or a list of values")
            raw = str(item).lower() if isinstance(item, bool) else str(item)
            text = _expand(raw, where, environ)
            if text != "":
                out.append(f"--{key}={text}")
    return resolve_runner(out + list(cli_args))


def resolve_runner(args: list[str]) -> list[str]:
    """Beam tokens with every Dask ``--runner`` spelling (``DaskRunner``, ``dask``, Beam's
    qualified name) replaced by :data:`DASK_RUNNER`; ConfigError when the dask extra is
    missing."""
    out, dask = list(args), False
    for i, token in enumerate(out):
        if token.startswith("--runner="):
            name, at = token.split("=", 1)[1], i
        elif token == "--runner" and i + 1 < len(out):
            name, at = out[i + 1], i + 1
        else:
            continue
        if name.lower() in _DASK_NAMES:
            out[at] = f"--runner={DASK_RUNNER}" if at == i else DASK_RUNNER
            dask = True
    if dask:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--runner DaskRunner needs dask.distributed: pip install 'tda[dask]'"
            ) from None
    return out


def _runner(args: list[str]) -> str | None:
    """The last ``--runner`` value in Beam tokens (argparse keeps the last), or None."""
    name = None
    for i, token in enumerate(args):
        if token.startswith("--runner="):
            name = token.split("=", 1)[1]
        elif token == "--runner" and i + 1 < len(args):
            name = args[i + 1]
    return name


def _cores() -> int:
    """The cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def dask_cluster(args: list[str]) -> Iterator[list[str]]:
    """Resolved Beam tokens -> the same tokens, plus ``--dask_client_address`` of a
    dask.distributed LocalCluster started here (one single-threaded worker process per
    core) when they pick the Dask runner without naming a scheduler
    (``--dask_client_address`` / ``--dask_scheduler_file``); the cluster is closed on
    exit. One cluster serves every pipeline of the command (a build's three stages)."""
    named = _given(args) & {"dask_client_address", "dask_scheduler_file"}
    if _runner(args) != DASK_RUNNER or named:
        yield list(args)
        return
    from distributed import LocalCluster

    # Workers run one task at a time: a task is a whole file, and the model inside it
    # uses the core (Dask's nanny also caps each worker's BLAS / OpenMP threads at 1).
    # The scheduler and nannies run in this process and log every worker's comings and
    # goings at INFO; a command shows only their errors.
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with LocalCluster(
            n_workers=_cores(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster:
            yield [*args, f"--dask_client_address={cluster.scheduler_address}"]
    finally:
        quiet.setLevel(level)
