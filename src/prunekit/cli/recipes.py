"""``prunekit run | list``: run a recipe (YAML, or a built-in one by name), and list what
there is to choose from (criteria, granularities, allocations, zoo models, recipes).

``run`` writes everything into a temporary folder beside ``--out`` and moves it into place
at the end (:func:`prunekit.cli.output.staged_folder`). This module imports neither torch
nor the rest of prunekit at import time.
"""

from __future__ import annotations

from pathlib import Path

import typer

from prunekit.cli import checks, output
from prunekit.cli.common import console, handles_errors, threads_option, typed_command
from prunekit.cli.format import pct
from prunekit.cli.llm import llm_setup, llm_summary


@handles_errors
def run(
    ctx: typer.Context,
    recipe: str = typer.Argument(..., help="A recipe YAML file or a built-in recipe name (see `prunekit list`)."),
    out: Path = typer.Option(Path("out/run"), help="Output folder: model/, metrics.json, recipe.yaml, report.html."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run at --out, or write beside the files of a non-empty folder (they are kept)."),
    threads: int | None = threads_option(),
) -> None:
    """Run a recipe: model, data and stages written down in YAML (see docs/recipes.md; language
    models, `task: llm`: docs/llm-cli.md). Everything is written to a temporary folder beside
    --out and moved into place at the end."""
    threads = checks.set_threads(threads)
    from prunekit.recipes import load_recipe, run_recipe

    r = load_recipe(recipe)
    if getattr(r, "task", None) == "llm":
        llm_setup()
        from prunekit.llm.recipe import check_supported

        check_supported(r)
    output.check_run_out("--out", out, overwrite)
    with output.staged_folder(out) as tmp:
        metrics = run_recipe(r, tmp, progress=True, command=typed_command(ctx))
    if metrics.get("task") == "llm":
        llm_summary(metrics, title=f"{r.name}: {r.model}")
        console.print(f"Wrote {out}/model, metrics.json, recipe.yaml", highlight=False, soft_wrap=True)
        return
    b, a = metrics.get("before_pruning", metrics["before"]), metrics["after"]
    console.print(f"{r.name}: accuracy {pct(b['accuracy'])} -> {pct(a['accuracy'])}, "
                  f"nonzero params {b['nonzero_params']:,} -> {a['nonzero_params']:,}, "
                  f"params {b['params']:,} -> {a['params']:,}", soft_wrap=True)
    console.print(f"Wrote {out}/model, metrics.json, recipe.yaml" + (", report.html" if metrics.get("report") else ""))


@handles_errors
def list_() -> None:
    """List the registered criteria, granularities, allocations and zoo models."""
    import prunekit as pk
    from prunekit import zoo

    for kind in ("criterion", "granularity", "allocation"):
        console.print(f"[bold]{kind}[/]: {', '.join(pk.available(kind))}")
    console.print("[bold]N:M[/]: any 'N:M' string with 1 <= N <= M, e.g. 2:4, 4:8")
    console.print(f"[bold]zoo[/]: {', '.join(zoo.available())}")
    from prunekit.recipes import builtin

    console.print(f"[bold]recipes[/] (`prunekit run NAME`): {', '.join(builtin())}")
    console.print("[bold]llm[/] (`prunekit llm prune`): methods wanda, sparsegpt, magnitude; allocation uniform, owl, depth; "
                  "structured heads/neurons (criterion wanda, magnitude); models smollm2, a save_pretrained folder, a .gguf file")
