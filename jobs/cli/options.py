"""Option helpers shared by the command modules: sizes, the corpus-reading options, the
``--device`` choice, and the Beam pipeline options a command was given."""

from __future__ import annotations

import click

from tda.attribution.io.sizes import parse_size
from tda.schemas import ReadOptions

from ..beam_args import quiet_beam_import

__all__ = [
    "SIZE",
    "device_option",
    "pipeline_options",
    "read_config",
    "read_options",
    "run_stage",
    "stack",
]


class _SizeType(click.ParamType):
    """A human size (``4096``, ``64KiB``, ``4GB``) -> bytes (int)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = _SizeType()


def stack(options, func):
    """Apply click option decorators so that they show in the order listed."""
    for option in reversed(options):
        func = option(func)
    return func


def device_option():
    """``--device auto|cpu|cuda`` (auto: cuda when torch sees a GPU)."""
    return click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
    )


def read_options(func):
    """Options for reading corpus files, shared by the commands that read a corpus."""
    options = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["auto", "jsonl", "parquet", "text"]),
            default="auto",
            show_default=True,
            help="Input format; auto decides by extension (.jsonl[.gz|.zst], .parquet, .txt).",
        ),
        click.option(
            "--text-field",
            default="text",
            show_default=True,
            help="JSONL key / Parquet column of the text (dotted for nested).",
        ),
        click.option(
            "--id-field",
            default="id",
            show_default=True,
            help="Document id field; missing ids become '<file name>#<record index>'.",
        ),
        click.option(
            "--source",
            default=None,
            help="Source name for every document [default: the file's stem].",
        ),
        click.option(
            "--source-field",
            default=None,
            help="Field holding each record's source name (records without it are dead-lettered).",
        ),
        click.option(
            "--text-unit",
            type=click.Choice(["file", "line"]),
            default="file",
            show_default=True,
            help="Plain text: one document per file or per line.",
        ),
        click.option(
            "--max-doc-bytes",
            type=SIZE,
            default="16MiB",
            show_default=True,
            help="Records larger than this are dead-lettered (bounds memory).",
        ),
    ]
    return stack(options, func)


def read_config(kw: dict) -> ReadOptions:
    """Pop the :func:`read_options` values out of a command's ``**kw`` -> ReadOptions."""
    return ReadOptions(
        format=kw.pop("fmt"),
        text_field=kw.pop("text_field"),
        id_field=kw.pop("id_field"),
        source=kw.pop("source"),
        source_field=kw.pop("source_field"),
        text_unit=kw.pop("text_unit"),
        max_doc_bytes=kw.pop("max_doc_bytes"),
    )


def beam_args(ctx: click.Context) -> list[str]:
    """The Beam options given (after a ``--config`` runner file's), plus quiet SDK-harness
    logs unless -vv or set explicitly."""
    from ..runners import runner_args

    args = runner_args(ctx.meta.get("beam_config"), list(ctx.meta["beam_args"]))
    verbose = ctx.find_root().params.get("verbose", 0)
    if verbose < 2 and not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")
    return args


def pipeline_options(ctx: click.Context):
    """A :class:`~tda.jobs.beam_args.BeamCommand`'s Beam options -> ``PipelineOptions``
    (Beam imported only now, and quietly)."""
    with quiet_beam_import():
        from apache_beam.options.pipeline_options import PipelineOptions
    return PipelineOptions(beam_args(ctx))


def run_stage(ctx: click.Context, stage: str, config):
    """Run ``tda.pipeline.<stage>.run_<stage>(config, Beam options from the command line)``
    (Beam imported only now, and quietly)."""
    import importlib

    with quiet_beam_import():
        from apache_beam.options.pipeline_options import PipelineOptions

        module = importlib.import_module(f"tda.pipeline.{stage}")
    return getattr(module, f"run_{stage}")(config, PipelineOptions(beam_args(ctx)))
