"""Beam pipeline options on tda's command lines, passed through unchanged.

``tda chunk data/ --out ROOT --runner DirectRunner --direct_num_workers 2`` mixes tda's
options with Beam's. Beam's own argument parser knows every registered option (DirectRunner,
Dataflow, Spark, Flink, portable, and Dask's once its runner module is imported, which
:func:`beam_option_actions` does when dask is installed) and whether it takes a value, so
the split is exact: a token is Beam's if Beam registers it and the command does not define
it itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import click

__all__ = ["BeamCommand", "beam_option_actions", "quiet_beam_import", "split_beam_args"]


@contextlib.contextmanager
def quiet_beam_import() -> Iterator[None]:
    """Import Beam without its warning about optional GCP client libraries (apitools),
    which only Dataflow runs need (``pip install 'apache-beam[gcp]'``)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@functools.cache
def beam_option_actions() -> dict[str, bool]:
    """Every Beam option string -> whether it takes a value (``--runner X`` vs ``--streaming``)."""
    with quiet_beam_import():
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

        # Beam registers DaskOptions (--dask_client_address, ...) only in the Dask runner's
        # module; without it those options would be refused as unknown.
        with contextlib.suppress(ImportError):  # the dask extra is not installed
            import apache_beam.runners.dask.dask_runner  # noqa: F401

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in dict.fromkeys(subclasses(PipelineOptions)):
        cls._add_argparse_args(parser)
    return {
        option: action.nargs != 0
        for option, action in parser._option_string_actions.items()
        if option.startswith("--") and option != "--help"
    }


def split_beam_args(args: list[str], own: set[str]) -> tuple[list[str], list[str]]:
    """Command-line tokens -> (Beam's tokens, the rest), order kept within each.

    own: the command's own option strings; they are never taken for Beam's.
    """
    actions = beam_option_actions()
    beam, rest = [], []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":  # everything after "--" is positional
            rest.extend(args[i:])
            break
        name, has_value = (token.split("=", 1)[0], "=" in token)
        if token.startswith("--") and name in actions and name not in own:
            beam.append(token)
            if actions[name] and not has_value and i + 1 < len(args):
                beam.append(args[i + 1])
                i += 1
        else:
            rest.append(token)
        i += 1
    return beam, rest


def _store_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["beam_config"] = value


class BeamCommand(click.Command):
    """A click command that also accepts Beam pipeline options (in ``ctx.meta['beam_args']``)
    and ``--config`` (a runner config, in ``ctx.meta['beam_config']``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--config"],
                metavar="NAME|FILE",
                expose_value=False,
                callback=_store_config,
                help="Runner config: YAML of Beam options, or a bundled one (direct, "
                "dask, dataflow, spark, flink). Beam options on the command line win.",
            )
        )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = {
            opt for param in self.get_params(ctx) for opt in (*param.opts, *param.secondary_opts)
        }
        beam, rest = split_beam_args(list(args), own)
        ctx.meta["beam_args"] = beam
        return super().parse_args(ctx, rest)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text(
            "Beam pipeline options are passed to Beam unchanged, e.g. --runner DirectRunner "
            "--direct_num_workers 2 --direct_running_mode multi_processing, or Dataflow / "
            "Spark / Flink / Dask options (--project, --region, --temp_location, --job_endpoint, "
            "--dask_client_address, ...)."
        )
