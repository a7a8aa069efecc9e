"""The ``prunekit`` command line: demo | run | prune | inspect | analyze | search | train | evaluate | measure |
compare | export | list, and ``prunekit llm prune | eval`` for language models.

Every command has ``--help``. Every failure prints one ``error:`` line on stderr naming the
option and the value, writes nothing, and exits 2 (Ctrl-C: 130); every command wears
:func:`prunekit.cli.common.handles_errors`, which holds these rules. Importing this package
does not import torch, so :func:`main` can set ``OMP_WAIT_POLICY`` before torch starts its
threads.

The modules, one concern each:

* :mod:`~prunekit.cli.common`: the failure rules (the command group, :func:`~prunekit.cli.common.fail`,
  :func:`~prunekit.cli.common.handles_errors`), warnings, the common options;
* :mod:`~prunekit.cli.checks`: option, source and input-shape checks run before any work;
* :mod:`~prunekit.cli.output`: where outputs go, checked first, built aside, renamed into place;
* :mod:`~prunekit.cli.format`: how numbers and tables are printed;
* the commands: :mod:`~prunekit.cli.train` (demo, train, evaluate), :mod:`~prunekit.cli.prune`,
  :mod:`~prunekit.cli.deploy` (measure, inspect, export), :mod:`~prunekit.cli.studies`
  (compare, analyze, search), :mod:`~prunekit.cli.recipes` (run, list), :mod:`~prunekit.cli.llm`;
* their helpers: :mod:`~prunekit.cli.packed` (the packed format), :mod:`~prunekit.cli.reports`
  (``--report DIR``), :mod:`~prunekit.cli.data` (``--data MODULE:FUNCTION``).
"""

from __future__ import annotations

import os
from typing import Optional

import typer

# not `from prunekit import`: that would load the package (and torch)
from prunekit.cli import deploy, llm, llm_shrink, prune, recipes, studies, train
from prunekit.cli.common import Group

app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    help="Prune neural networks and measure what was really gained.",
)

llm_app = typer.Typer(add_completion=False, no_args_is_help=True, help=llm.LLM_HELP)
llm_app.command("prune")(llm.llm_prune)
llm_app.command("eval")(llm.llm_eval)
llm_app.command("shrink")(llm_shrink.llm_shrink)
app.add_typer(llm_app, name="llm")  # prunekit llm prune | eval | shrink

for _command in (train.demo, deploy.measure, prune.prune, train.train, train.evaluate, studies.compare,
                 deploy.inspect, deploy.export, recipes.run, studies.analyze, studies.search):
    app.command()(_command)
del _command
app.command("list")(recipes.list_)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("prunekit")
        except PackageNotFoundError:  # running from a source tree that is not installed
            v = "unknown (not installed)"
        typer.echo(f"prunekit {v}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                      is_eager=True),
) -> None:
    """Prune neural networks and measure what was really gained."""


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``prunekit`` script; returns the exit status (0, 2, or 130 after Ctrl-C).

    ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) is set here, before any command
    imports torch: idle OpenMP threads then sleep instead of spinning, which keeps latency
    figures honest on a shared machine.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return app(args=argv, prog_name="prunekit", standalone_mode=False)
