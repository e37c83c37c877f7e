"""Runner configs: YAML files of Beam pipeline options, loaded with ``--config``.

One file per runner ships with the package (``jobs/configs/``): ``direct`` (DirectRunner,
one process per core), ``dataflow`` (GPU workers), ``spark`` and ``flink`` (portable job
servers). ``--config NAME`` picks a bundled one; ``--config FILE`` reads your own::

    description: one line
    beam_options:
      runner: DataflowRunner
      project: ${TDA_GCP_PROJECT}          # environment variable, required
      region: ${TDA_GCP_REGION:-us-central1} # with a default; an empty value omits the option
      experiments: [use_runner_v2]         # a list repeats the option

Every key must be a Beam option; Beam options on the command line win over the file's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from tda.schemas import ConfigError

from .beam_args import beam_option_actions

__all__ = ["CONFIG_DIR", "bundled_configs", "config_path", "runner_args"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
        return list(cli_args)
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
    return out + list(cli_args)
