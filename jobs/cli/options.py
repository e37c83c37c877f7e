"""Option helpers shared by the command modules: numeric option types built from the one
table of limits (:data:`~tda.schemas.config.STAGE_RANGES`,
:data:`~tda.schemas.request.REQUEST_RANGES`), sizes, the corpus-reading options, the
``--device`` choice, and the Beam pipeline options a command was given."""

from __future__ import annotations

import math

import click

from tda.attribution.io.sizes import parse_size
from tda.schemas import ReadOptions
from tda.schemas.config import STAGE_RANGES, Range
from tda.schemas.request import REQUEST_RANGES

from ..beam_args import quiet_beam_import

__all__ = [
    "SIZE",
    "OptionError",
    "RangedFloat",
    "RangedInt",
    "device_option",
    "pipeline_options",
    "read_config",
    "read_options",
    "request_type",
    "run_stage",
    "size_type",
    "stack",
    "stage_type",
]


class OptionError(click.BadParameter):
    """A bad option value whose message already names the option and what it takes
    (``-k must be in 1..100, got 0``); the root group prints it as that one line."""

    def format_message(self) -> str:
        return self.message


def _flag(param: click.Parameter | None) -> str:
    """The option's longest name (``--nprobe``, ``-k``), as the messages name it."""
    if param is None or not getattr(param, "opts", None):
        return "the value"
    return max(param.opts, key=len)


def _fail(rng: Range, number, value, param, ctx) -> None:
    """Raise :class:`OptionError` unless ``number`` (None: not a number) is in ``rng``."""
    problem = rng.problem(value if number is None else number)
    if problem is not None:
        raise OptionError(f"{_flag(param)} {problem}", ctx, param)


class RangedInt(click.IntRange):
    """An integer option limited to a :class:`~tda.schemas.config.Range`: click's IntRange
    (``--help`` shows the range) with the one-line message the settings use."""

    def __init__(self, rng: Range) -> None:
        super().__init__(rng.lo, rng.hi, rng.lo_open, rng.hi_open)
        self.range = rng

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                number = None
        _fail(self.range, number, value, param, ctx)
        return number

    def _describe_range(self) -> str:
        return self.range.describe()


class RangedFloat(click.FloatRange):
    """A float option limited to a :class:`~tda.schemas.config.Range`; NaN and infinity
    are refused (click's FloatRange lets NaN through: it fails no comparison)."""

    def __init__(self, rng: Range) -> None:
        super().__init__(rng.lo, rng.hi, rng.lo_open, rng.hi_open)
        self.range = rng

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        _fail(self.range, number if number is None or math.isfinite(number) else None,
              value, param, ctx)  # fmt: skip
        return number

    def _describe_range(self) -> str:
        return self.range.describe()


def ranged(rng: Range) -> click.ParamType:
    """A :class:`Range` -> the click type that parses and checks it."""
    return RangedInt(rng) if rng.kind is int else RangedFloat(rng)


def stage_type(flag: str) -> click.ParamType:
    """The click type of a stage option, from :data:`~tda.schemas.config.STAGE_RANGES`."""
    return ranged(STAGE_RANGES[flag])


def request_type(name: str) -> click.ParamType:
    """The click type of an attribution request field, from
    :data:`~tda.schemas.request.REQUEST_RANGES` (tda serve has the same bounds)."""
    return ranged(REQUEST_RANGES[name])


class _SizeType(click.IntRange):
    """A human size (``4096``, ``64KiB``, ``4GB``) -> bytes (int), within ``rng`` when
    given (``--help`` then states it)."""

    name = "SIZE"

    def __init__(self, rng: Range | None = None) -> None:
        super().__init__(*((rng.lo, rng.hi) if rng is not None else ()))
        self.range = rng

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = parse_size(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if self.range is not None:
            _fail(self.range, number, value, param, ctx)
        return number

    def _describe_range(self) -> str:
        return "" if self.range is None else self.range.describe()


SIZE = _SizeType()


def size_type(flag: str) -> click.ParamType:
    """A SIZE option limited to its :data:`~tda.schemas.config.STAGE_RANGES` range."""
    return _SizeType(STAGE_RANGES[flag])


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
            type=size_type("--max-doc-bytes"),
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
    logs unless -vv or set explicitly. The Dask runner without a scheduler address gets a
    LocalCluster that lives as long as the command (:func:`~tda.jobs.runners.dask_cluster`)."""
    from ..runners import dask_cluster, runner_args

    args = runner_args(ctx.meta.get("beam_config"), list(ctx.meta["beam_args"]))
    args = ctx.with_resource(dask_cluster(args))
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


def limits_table(main: click.Group) -> str:
    """Every numeric option of every command of ``main`` (the ``tda`` group) and the
    values it takes, as the Markdown table of docs/limits.md (one row per command and
    option, sorted)."""
    rows = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                walk(command, (*path, name))
                continue
            for param in command.params:
                rng = getattr(param.type, "range", None)
                if isinstance(param, click.Option) and rng is not None:
                    default = "" if param.default is None else f"`{param.default}`"
                    flag = max(param.opts, key=len)
                    rows.append(f"| `tda {' '.join((*path, name))}` | `{flag}` | "
                                f"{rng.describe()} | {default} |")  # fmt: skip

    walk(main, ())
    return "\n".join(["| command | option | takes | default |", "|---|---|---|---|", *rows])
