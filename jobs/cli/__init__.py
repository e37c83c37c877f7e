"""The ``tda`` command line, one module per user; parsing only.

* :mod:`.build`: the data engineer's ``chunk``, ``embed``, ``index build|info|verify|merge``
  and ``build``;
* :mod:`.query`: the researcher's ``search``, ``attribute``, ``serve`` and ``eval``;
* :mod:`.curate`: the data team's ``scan`` and ``prune list|apply``;
* :mod:`.model`: ``model train|info`` and ``tokenizer train``;
* :mod:`.options`: option helpers they share (sizes, corpus reading, Beam options).

Options become frozen config dataclasses (:mod:`tda.schemas.config`), which validate
themselves; the work is in ``pipeline/`` and ``attribution/``; what a command prints is
in :mod:`tda.jobs.render`. Every error that is the user's to fix derives from
:class:`~tda.schemas.errors.UserError` and becomes one line here, in :class:`TdaGroup`,
as do click's own usage errors (a bad or missing option value): ``Error: <message>`` on
stderr, or with ``--json`` the JSON object ``{"error": "<message>", "kind": "<kind>"}``
on stdout, where a program reading the command's JSON looks for it.
"""

from __future__ import annotations

import json
import logging

import click

from tda import __version__
from tda.schemas.errors import UserError

from . import build, curate, model, query

__all__ = ["OneLineError", "TdaGroup", "main", "run"]


class OneLineError(click.ClickException):
    """An error shown as one line: ``Error: <message>`` on stderr, or with ``as_json`` a
    single JSON object ``{"error": message, "kind": kind}`` on stdout. ``kind`` names the
    error's class: the :class:`UserError` subclass (``ConfigError``, ``EncoderError``,
    ``StageError``, ...), ``UsageError`` for a bad or missing option value, ``Error`` for
    anything else a command refuses."""

    def __init__(self, message: str, kind: str, as_json: bool, exit_code: int = 1) -> None:
        # a message is one line by contract; a stray newline must not break that
        super().__init__(" ".join(message.split()))
        self.kind, self.as_json, self.exit_code = kind, as_json, exit_code

    def show(self, file=None) -> None:
        if self.as_json:
            click.echo(json.dumps({"error": self.message, "kind": self.kind}))
        else:
            click.echo(f"Error: {self.message}", err=True)


class TdaGroup(click.Group):
    """The root command group; the one place where an error the user can fix becomes one
    line (:class:`OneLineError`, JSON with ``--json``): a :class:`UserError` raised
    anywhere in a command (exit status 1), a bad or missing option value or another usage
    error (click's, exit status 2; the message names the option and what it takes). Any
    other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        # Read --json from the words given, not the parsed options: a usage error is
        # raised before the command's options are parsed.
        args = (*getattr(ctx, "_protected_args", ()), *ctx.args)
        as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
        try:
            return super().invoke(ctx)
        except OneLineError:
            raise
        except UserError as exc:
            raise OneLineError(str(exc), type(exc).__name__, as_json) from None
        except click.UsageError as exc:
            raise OneLineError(exc.format_message(), "UsageError", as_json, exc.exit_code) from None
        except click.ClickException as exc:
            raise OneLineError(exc.format_message(), "Error", as_json, exc.exit_code) from None


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Beam logs every bundle at INFO; keep it quiet unless asked twice.
    logging.getLogger("apache_beam").setLevel(logging.WARNING if verbose < 2 else logging.INFO)


@click.group(
    cls=TdaGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="tda")
@click.option("-v", "--verbose", count=True, help="-v: progress per file; -vv: Beam's own logs.")
def main(verbose: int) -> None:
    """tda: a training-data attribution index.

    Stages write into one build root: chunk (ROOT/chunks, ROOT/deadletter), embed
    (ROOT/embeddings), index build (ROOT/index); `tda build` runs all three. `tda model
    train` makes the builtin concept-bottleneck model; attribute, search, scan, prune and
    serve read a finished root.
    """
    _setup_logging(verbose)


for _command in (*build.COMMANDS, *query.COMMANDS, *curate.COMMANDS, *model.COMMANDS):
    main.add_command(_command)
build.index.add_command(curate.retrain)  # `tda index retrain`: a change by generations


def run(argv: list[str] | None = None) -> int:
    """Entry point for tests: run the CLI with argv, return the exit status."""
    try:
        main.main(args=argv, prog_name="tda", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
