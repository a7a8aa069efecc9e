"""The command a run report records is the one the user typed: the options given on the
command line, in their own spelling, and no option the user did not give."""

from __future__ import annotations

import shlex

import typer
from typer.testing import CliRunner

from prunekit.cli.common import typed_command

app = typer.Typer()
seen: list[str] = []


@app.command()
def run(
    ctx: typer.Context,
    recipe: str = typer.Argument(...),
    out: str = typer.Option("out/run"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    threads: int = typer.Option(2, "--threads"),
    tag: list[str] = typer.Option([], "--tag"),
) -> None:
    seen.append(typed_command(ctx))


@app.command()
def other() -> None:  # a second command, so that `run` is a subcommand as in prunekit
    pass


def _typed(*args: str) -> str:
    seen.clear()
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return seen[0]


def test_only_what_was_typed_is_recorded():
    assert _typed("run", "digits-quick") == "prunekit run digits-quick"  # no default added
    assert _typed("run", "r.yaml", "--threads", "2") == "prunekit run r.yaml --threads 2"  # given = default: kept


def test_flags_repeated_options_and_quoting():
    got = _typed("run", "my recipe.yaml", "--out", "a b", "--overwrite", "--tag", "x", "--tag", "y")
    assert shlex.split(got) == ["prunekit", "run", "my recipe.yaml", "--out", "a b", "--overwrite",
                                "--tag", "x", "--tag", "y"]
