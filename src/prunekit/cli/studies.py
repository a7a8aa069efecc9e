"""``prunekit compare | analyze | search``: the studies, each many pruned models trained or
evaluated and summed up in a table (``--report DIR``: also an HTML report, see
:mod:`prunekit.cli.reports`).

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from prunekit.cli import checks, output
from prunekit.cli.common import console, fail, handles_errors, threads_option, warn
from prunekit.cli.reports import check_search_report_out, write_compare, write_search, write_sensitivity

#: the shape of one input image of each --data, batch first (an MLP takes it flattened)
_DATA_SHAPES = {"mnist": [1, 1, 28, 28], "digits": [1, 1, 8, 8]}
SCHEDULES = ("oneshot", "gradual", "iterative")


@handles_errors
def compare(
    model: str = typer.Option("lenet300100", help="Zoo model, trained from scratch by every method."),
    sparsity: float = typer.Option(0.99, help="Target fraction of prunable weights removed."),
    epochs: int = typer.Option(7, help="Total epoch budget of every method (training + fine-tuning)."),
    train_epochs: Optional[int] = typer.Option(None, help="Epochs of the training phase (default round(4/7 * epochs)); the rest fine-tunes."),
    methods: str = typer.Option("dense,oneshot,iterative,gradual,l1,l2,combined", help="Comma-separated methods."),
    seeds: int = typer.Option(1, help="Number of seeds (0, 1, ...); the table shows mean ± std."),
    limit: Optional[int] = typer.Option(None, help="Use only this many MNIST training and test images (smoke runs)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of the training phase (default: the Recipe's)."),
    finetune_lr: Optional[float] = typer.Option(None, help="Initial fine-tuning learning rate (default: the Recipe's)."),
    allocation: Optional[str] = typer.Option(None, help="global, uniform, lamp, erk, row, owl, depth (default: the Recipe's)."),
    gradual_frequency: Optional[int] = typer.Option(None, help="Optimizer steps between two prunings of the gradual ramp (default: the Recipe's)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows and settings to this JSON file."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write report.html (accuracy per method, accuracy against parameters and MACs with the dense point, settings), report.md and compare.json into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file at --json or an earlier report at --report."),
    threads: int | None = threads_option(),
) -> None:
    """Compare pruning schedules (one-shot, iterative, gradual, L1/L2 + threshold, combined) on MNIST at one epoch budget.

    The dense row (no pruning, same budget and evaluation) is always shown. A schedule that the
    budget reduces to one-shot pruning is reported as a `warning:` line (on stderr) before training."""
    checks.check_fraction("--sparsity", sparsity, "the fraction of prunable weights to remove")
    checks.check_min("--epochs", epochs, 2, "7")
    checks.check_min("--train-epochs", train_epochs, 1, "4")
    if train_epochs is not None and train_epochs >= epochs:
        fail(f"--train-epochs: {train_epochs} leaves no fine-tuning in --epochs {epochs}; use 1 .. {epochs - 1}")
    checks.check_min("--seeds", seeds, 1, "3")
    checks.check_min("--limit", limit, 1, "2000")
    checks.check_positive("--lr", lr, "3e-3")
    checks.check_positive("--finetune-lr", finetune_lr, "1e-2")
    checks.check_min("--gradual-frequency", gradual_frequency, 1, "25")
    if json_out is not None:
        output.check_file_out("--json", json_out, overwrite)
    if report is not None:
        output.check_report_out("--report", report, overwrite)
    threads = checks.set_threads(threads)
    import prunekit as pk
    from prunekit import zoo
    from prunekit.compare import DENSE, METHODS, Recipe, compare as _compare, format_rows, planned_steps
    from prunekit.progress import StageProgress
    from prunekit.datasets import load_mnist, subset
    from prunekit.schedules import printed_warnings

    checks.check_name("--model", model, zoo.available(), kind="zoo model")
    names = checks.parse_names("--methods", methods, (DENSE, *METHODS), kind="method")
    checks.check_name("--allocation", allocation, pk.available("allocation"))
    overrides = {k: v for k, v in (("lr", lr), ("finetune_lr", finetune_lr), ("allocation", allocation),
                                   ("gradual_frequency", gradual_frequency)) if v is not None}
    recipe = Recipe(sparsity=sparsity, epochs=epochs, train_epochs=train_epochs, **overrides)
    start = time.perf_counter()
    warned: list[str] = []

    def record_warning(message: str) -> None:
        warned.append(message)
        warn(message)

    train, test = load_mnist("train"), load_mnist("test")
    if limit is not None:
        train, test = subset(train, min(limit, len(train)), seed=0), subset(test, min(limit, len(test)), seed=0)
    total = planned_steps(recipe, names, len(train), seeds)
    title = f"compare: {len(set(names) | {DENSE})} methods × {seeds} seed{'s' * (seeds != 1)}"
    with printed_warnings(record_warning), StageProgress(title=title, total=total, keep=False) as bars:
        rows = _compare(lambda: zoo.create(model), train, test, recipe, methods=names, seeds=range(seeds),
                        log=lambda line: console.print(line, highlight=False, markup=False), progress=bars)
    t, ft = recipe.phases
    console.print(f"\n{model} on MNIST ({len(train):,} train / {len(test):,} test images), target {sparsity:.2%}, "
                  f"{epochs} epochs each: {t} training + {ft} fine-tuning, {seeds} seed(s)", highlight=False)
    console.print(format_rows(rows), highlight=False)
    wall = time.perf_counter() - start
    console.print(f"wall {wall:.0f} s · threads {threads}", highlight=False)
    from dataclasses import asdict

    payload = {"model": model, "train_examples": len(train), "test_examples": len(test),
               "recipe": asdict(recipe), "phases": [t, ft], "seeds": list(range(seeds)),
               "rows": [r.as_dict() for r in rows], "warnings": warned, "wall_time_s": wall}
    if json_out is not None:
        output.write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False)
    if report is not None:
        write_compare(report, payload, threads)


def _dataset(name: str, flatten: bool):
    from prunekit import datasets

    if name == "mnist":
        return datasets.load_mnist("train", flatten=flatten), datasets.load_mnist("test", flatten=flatten)
    if name == "digits":
        return datasets.load_digits("train", flatten=flatten), datasets.load_digits("test", flatten=flatten)
    fail(f"--data {name!r} is not one of mnist, digits")


@handles_errors
def analyze(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by pk.save."),
    data: str = typer.Option("mnist", help="mnist or digits (the test split is the held-out data)."),
    sparsities: str = typer.Option("0.3,0.5,0.7,0.9", help="Comma-separated sparsities to try per layer, in (0, 1), any order."),
    granularity: str = typer.Option("unstructured", help="unstructured or channel."),
    samples: int = typer.Option(2000, help="Held-out images used to evaluate each trial."),
    out: Optional[Path] = typer.Option(None, help="Write the curves as JSON here."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write report.html (the sensitivity curves, their table, settings and machine), report.md and sensitivity.json into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file at --out or an earlier report at --report."),
    threads: int | None = threads_option(),
) -> None:
    """Sensitivity analysis: prune each layer alone at several sparsities and evaluate."""
    checks.check_name("--data", data, ("mnist", "digits"))
    levels = sorted(set(checks.parse_fractions("--sparsities", sparsities)))  # any order, repeats once
    if levels[0] == 0:
        fail(f"--sparsities {sparsities!r}: 0 prunes nothing (the dense accuracy is measured anyway); "
             "give sparsities in (0, 1), e.g. 0.3,0.5,0.9")
    checks.check_name("--granularity", granularity, ("unstructured", "channel"))
    checks.check_min("--samples", samples, 1, "2000")
    if out is not None:
        output.check_file_out("--out", out, overwrite)
    if report is not None:
        output.check_report_out("--report", report, overwrite)
    threads = checks.set_threads(threads)
    import torch

    from prunekit.datasets import subset
    from prunekit.sensitivity import sensitivity
    from prunekit.train import evaluate

    model = checks.load_source(source)
    flat = not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    _, test = _dataset(data, flat)
    test = subset(test, min(samples, len(test)), seed=0)
    checks.check_input_fits(model, [1, *test.tensors[0].shape[1:]], f"SOURCE {source!r} does not fit --data {data}", classes=10)
    rep = sensitivity(model, lambda m: evaluate(m, test), sparsities=levels, granularity=granularity,
                      example_inputs=test.tensors[0][:8])
    console.print(rep.summary(), markup=False)
    if out is not None:
        output.write_text_atomic(out, json.dumps(rep.to_dict(), indent=2))
        console.print(f"Wrote {out}")
    if report is not None:
        write_sensitivity(report, rep, {"source": source, "data": f"{data}, {len(test):,} held-out test images",
                                        "sparsities": sparsities, "granularity": granularity, "threads": threads})


def _check_results(path: Path) -> None:
    """``search --results``: a file to append runs to. An existing one must hold the runs of
    an earlier search (JSON lines with a ``key``; the last line may be cut short), so that
    no file of the user's is appended to."""
    if path.is_dir():
        fail(f"--results {str(path)!r} is a folder; give a file name such as {str(path / 'search.jsonl')!r}")
    output.check_writable("--results", path)
    if not path.exists():
        return
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        fail(f"--results {str(path)!r} cannot be read: {e}")
    for i, line in enumerate(lines):
        try:
            run = json.loads(line)
            ok = isinstance(run, dict) and "key" in run
        except ValueError:
            ok = i == len(lines) - 1  # a line cut short by an interruption
        if not ok:
            fail(f"--results {str(path)!r} is not a prunekit search results file (line {i + 1} is not a run); "
                 "choose another file (runs are appended to it)")


@handles_errors(outputs=("results",))
def search(
    model: str = typer.Option("lenet300100", help="Zoo model, built fresh for every run."),
    data: str = typer.Option("digits", help="mnist or digits (the train split is cross-validated)."),
    criteria: str = typer.Option("magnitude,taylor", help="Comma-separated criteria (random and magnitude are always added)."),
    allocations: str = typer.Option("global", help="Comma-separated allocations."),
    sparsities: str = typer.Option("0.5,0.9", help="Comma-separated sparsities, in [0, 1)."),
    schedules: str = typer.Option("oneshot", help="Comma-separated schedules: oneshot, gradual, iterative."),
    folds: int = typer.Option(3, help="Cross-validation folds, >= 2."),
    seeds: str = typer.Option("0", help="Comma-separated seeds."),
    train_epochs: int = typer.Option(2, help="Dense training epochs on each fold before pruning."),
    finetune_epochs: int = typer.Option(1, help="Fine-tuning (or prune-while-training) epochs."),
    samples: int = typer.Option(3000, help="Training images used (the search trains many models)."),
    results: Path = typer.Option(Path("out/search.jsonl"), help="Runs are appended here; rerun to resume."),
    workers: int = typer.Option(1, help="Parallel processes."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write report.html (accuracy against nonzero parameters and sparsity of every setting, the dense point, the Pareto front; the table; settings), report.md and search.json into this folder; an earlier search report there is replaced."),
) -> None:
    """Grid search over pruning settings with k-fold cross-validation and baselines.

    The table starts with the dense (unpruned) model, measured the same way; settings not clearly
    above chance are never on the Pareto front (the footer gives the rule). A schedule that the
    fine-tuning budget reduces to one-shot pruning is reported as a `warning:` line (on stderr)."""
    checks.check_name("--data", data, tuple(_DATA_SHAPES))
    levels = checks.parse_fractions("--sparsities", sparsities)
    schedule_names = checks.parse_names("--schedules", schedules, SCHEDULES, kind="schedule")
    checks.check_min("--folds", folds, 2, "3")
    seed_values = checks.parse_ints("--seeds", seeds, 0, "0,1,2")
    checks.check_min("--train-epochs", train_epochs, 0, "2")
    checks.check_min("--finetune-epochs", finetune_epochs, 0, "1")
    checks.check_min("--samples", samples, 1, "3000")
    if folds > samples:
        fail(f"--folds {folds} needs at least as many --samples, got {samples}")
    checks.check_min("--workers", workers, 1, "2")
    _check_results(results)
    if report is not None:
        check_search_report_out("--report", report, results)
    start = time.perf_counter()
    import math

    import prunekit as pk
    from prunekit import zoo
    from prunekit.datasets import subset
    from prunekit.progress import StageProgress
    from prunekit.schedules import printed_warnings
    from prunekit.search import ZooModel, search as run_search

    checks.check_name("--model", model, zoo.available(), kind="zoo model")
    grid = {"criterion": checks.parse_names("--criteria", criteria, pk.available("criterion"), kind="criterion"),
            "allocation": checks.parse_names("--allocations", allocations, pk.available("allocation"), kind="allocation"),
            "sparsity": levels, "schedule": schedule_names}
    flat = model in ("lenet300100",)
    kwargs = {"in_features": 64} if (model == "lenet300100" and data == "digits") else {}
    shape = _DATA_SHAPES[data]
    checks.check_input_fits(ZooModel(model, kwargs)(0), [1, math.prod(shape[1:])] if flat else shape,
                            f"--model {model} does not fit --data {data}", classes=10)
    train, _ = _dataset(data, flat)
    train = subset(train, min(samples, len(train)), seed=0)
    if folds > len(train):
        fail(f"--folds {folds} needs at least as many images; --data {data} has {len(train)}")
    results.parent.mkdir(parents=True, exist_ok=True)
    with printed_warnings(warn), StageProgress() as bars:
        res = run_search(ZooModel(model, kwargs), train, grid, folds=folds, seeds=seed_values,
                         train_epochs=train_epochs, finetune_epochs=finetune_epochs, results=results,
                         workers=workers, progress=bars)
    console.print(res.summary(), markup=False, soft_wrap=True, highlight=False)
    console.print(f"Runs in {results} (rerun the same command to resume)", highlight=False)
    if report is not None:
        write_search(report, res, {
            "model": model, "data": f"{data}, {len(train):,} training images (--samples {samples})",
            **{f"{k} (grid)": ", ".join(map(str, v)) for k, v in grid.items()},
            "baselines": "random, magnitude (always added)",
            "folds": folds, "seeds": ", ".join(map(str, seed_values)), "train epochs": train_epochs,
            "fine-tune epochs": finetune_epochs, "results": str(results), "workers": workers,
            "wall time": f"{time.perf_counter() - start:.0f} s"}, title=f"prunekit search: {model} on {data}")
