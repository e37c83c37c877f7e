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
:class:`~tda.schemas.errors.UserError` and becomes one line here, in :class:`TdaGroup`.
"""

from __future__ import annotations

import logging

import click

from tda import __version__
from tda.schemas.errors import UserError

from . import build, curate, model, query

__all__ = ["TdaGroup", "main", "run"]


class TdaGroup(click.Group):
    """The root command group; the one place a :class:`UserError` raised anywhere in a
    command becomes ``Error: <message>`` on stderr with exit status 1 (any other
    exception is a bug and keeps its traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None


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
