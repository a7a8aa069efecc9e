"""The ``prunekit`` command line: demo | run | prune | inspect | analyze | search | train | evaluate | measure |
compare | export | list, and ``prunekit llm prune | eval`` for language models.

Every command has ``--help``. Every failure prints one ``error:`` line on stderr naming the
option and the value, writes nothing, and exits 2 (Ctrl-C: 130); see :mod:`prunekit.cli_util`.
Importing this module does not import torch, so :func:`main` can set ``OMP_WAIT_POLICY``
before torch starts its threads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

import prunekit.cli_util as cu  # not `from prunekit import`: that would load the package (and torch)
import prunekit.cli_output as co
from prunekit.cli_util import MNIST_INPUT, fail as _fail, load_source as _load_source, parse_shape as _parse_shape

app = typer.Typer(
    cls=cu.Group,
    add_completion=False,
    no_args_is_help=True,
    help="Prune neural networks and measure what was really gained.",
)
console = Console()


def _threads(threads: int) -> None:
    """Check --threads and give torch that many intra-op threads."""
    cu.check_min("--threads", threads, 1, "2")
    import torch

    torch.set_num_threads(threads)


@app.command()
def demo(
    model: str = typer.Option("mnistnet", help="Zoo model: mnistnet (trained, 99.05 %) or lenet300100 (trained here, 2 epochs)."),
    sparsity: float = typer.Option(0.95, help="Fraction of prunable weights to remove."),
    criterion: str = typer.Option("magnitude", help="Importance criterion (see `prunekit list`)."),
    allocation: str = typer.Option("lamp", help="How the target is split over layers."),
    epochs: int = typer.Option(1, help="Fine-tuning epochs after pruning."),
    lr: Optional[float] = typer.Option(None, help="Fine-tuning Adam learning rate (default 1e-3)."),
    train_samples: int = typer.Option(50000, help="MNIST training images used for fine-tuning."),
    out: Path = typer.Option(Path("out/demo"), help="Folder for the saved pruned model (an earlier demo save there is replaced)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prunekit save at --out that the demo did not write."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Prune a trained model on real MNIST, fine-tune briefly, and print a before/after table."""
    if model not in ("mnistnet", "lenet300100"):
        _fail(f"--model {model!r} is not available for the demo; use 'mnistnet' or 'lenet300100'")
    cu.check_prune_options(sparsity, criterion, "unstructured", allocation)
    cu.check_min("--epochs", epochs, 0, "1")
    cu.check_positive("--lr", lr, "1e-3")
    cu.check_min("--train-samples", train_samples, 1, "50000")
    co.check_save_out("--out", out, overwrite, own_demo=True)
    _threads(threads)
    import torch
    import torch.nn.functional as F

    import prunekit as pk
    from prunekit import zoo
    from prunekit.datasets import load_mnist, subset
    from prunekit.metrics import compare_table, measure
    from prunekit.train import evaluate, fit, set_seed

    start = time.perf_counter()
    set_seed(0)
    try:
        train = subset(load_mnist("train"), min(train_samples, 50000), seed=0)
        test = load_mnist("test")
        if model == "mnistnet":
            net = zoo.create("mnistnet", pretrained=True)
            console.print("Loaded the trained MNISTNet (ccexam weights).")
        else:
            net = zoo.create("lenet300100")
            console.print("Training LeNet-300-100 for 2 epochs on MNIST...")
            fit(net, load_mnist("train"), epochs=2, lr=1e-3, seed=0, progress=True)
        x = test.tensors[0][:64]
        acc0 = evaluate(net, test)
        before = measure(net, x, batch_size=64)
        console.print(f"Dense test accuracy: {acc0:.2%}")

        calib = torch.utils.data.DataLoader(train, batch_size=128, shuffle=False)
        result = pk.prune(
            net, sparsity, criterion=criterion, allocation=allocation,
            data=calib, loss_fn=F.cross_entropy, example_inputs=x, max_batches=8,
        )
        acc1 = evaluate(net, test)
        console.print(f"Pruned {result.sparsity:.1%} of prunable weights ({criterion}, {allocation}): "
                      f"{acc1:.2%} before fine-tuning")
        console.print(result.summary())
        if epochs > 0:
            ft_lr = lr if lr is not None else 1e-3
            fit(net, train, epochs=epochs, lr=ft_lr, seed=0, progress=True)
        acc2 = evaluate(net, test)
        console.print(f"After {epochs} fine-tuning epoch(s): {acc2:.2%}; sparsity still {pk.sparsity(net):.2%}")
        pk.commit(net)
        after = measure(net, x, batch_size=64)
        with co.new_parents_removed_on_failure(out):
            saved = pk.save(net, out, metadata={"input_shape": MNIST_INPUT, "test_accuracy": acc2, "demo": model})
    except pk.PruneError as e:
        _fail(str(e))
    console.print(compare_table(before, after, before_acc=acc0, after_acc=acc2,
                                title=f"{model} on MNIST test (10,000 images): dense → {sparsity:.0%} pruned"))
    console.print(
        "Notes: the pruned model is still stored and run densely, so latency and raw size do not change; "
        "zeros show in nonzero params, effective FLOPs and the compressed size. Energy is an estimate "
        f"(Horowitz, ISSCC 2014); with sparse storage it would be {after.compute_uj + after.memory_uj_sparse_storage:.1f} µJ."
    )
    console.print(f"Saved to {saved} · total {time.perf_counter() - start:.0f} s · threads {threads}")


@app.command()
def measure(
    path: Path = typer.Argument(..., help="A folder written by `pk.save` / `prunekit prune`."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch dim, e.g. 1,1,28,28 (default: from the saved spec)."),
    batch_size: int = typer.Option(64, help="Batch size for the second latency figure."),
    threads: int = typer.Option(2, help="torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and nothing else) on stdout instead of a table."),
    advise: bool = typer.Option(False, "--advise", help="Also measure the deployable forms (compacted, CSR, packed) and name the fastest and smallest."),
) -> None:
    """Measure a saved model: parameters, nonzeros, zeros among all parameters, FLOPs,
    latency, size, energy estimate. Warns when the machine is too busy for honest latency."""
    shape = _parse_shape(input_shape) if input_shape else None
    cu.check_min("--batch-size", batch_size, 1, "64")
    _threads(threads)
    import torch

    import prunekit as pk

    try:
        model = pk.load(path)
    except pk.PruneError as e:
        _fail(f"PATH {str(path)!r}: {e}")
    if shape is None:
        shape = cu.spec_input_shape(path)
        if shape is None:
            _fail(f"PATH {str(path)!r} does not record an input shape; pass --input-shape, e.g. 1,1,28,28")
        where = f"PATH {str(path)!r}: the input shape {shape} recorded in its spec"
    else:
        where = f"--input-shape {input_shape!r}"
    cu.check_input_fits(model, shape, where)
    m = pk.measure(model, torch.randn(*shape), batch_size=batch_size)
    adv = None
    if advise:
        from prunekit.deploy import advise as _advise

        adv = _advise(model, torch.randn(*shape), batch_size=batch_size)
    if as_json:
        cu.print_json({**m.as_dict(), **({"advise": adv.to_dict()} if adv is not None else {})})
        return
    if adv is not None:
        console.print(adv.summary(), markup=False)
    from rich.table import Table

    t = Table(title=f"{path}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for label, value in m.rows():
        if label != "speed note":  # printed as a warning: line already
            t.add_row(label, value)
    console.print(t)


@app.command()
def prune(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by `pk.save`."),
    out: Path = typer.Option(..., help="Folder to write the pruned model to."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of prunable weights to remove, in [0, 1) (not for N:M)."),
    criterion: str = typer.Option("magnitude", help="Importance criterion."),
    granularity: str = typer.Option("unstructured", help="unstructured, channel, head, block, or N:M such as 2:4."),
    allocation: str = typer.Option("global", help="global, uniform, lamp, erk."),
    calibration: int = typer.Option(8, help="MNIST batches of 128 for data-driven criteria."),
    compact: bool = typer.Option(False, "--compact", help="With channel/head granularity: save the physically smaller model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prunekit save at --out."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Prune a model (one shot, masks committed) and save it. Calibration data is MNIST."""
    cu.check_prune_options(sparsity, criterion, granularity, allocation)
    cu.check_min("--calibration", calibration, 1, "8")
    if compact and granularity not in ("channel", "head"):
        _fail(f"--compact needs --granularity channel or head, got {granularity!r}")
    co.check_save_out("--out", out, overwrite)
    _threads(threads)
    import torch
    import torch.nn.functional as F

    import prunekit as pk

    model = _load_source(source)
    cu.check_mnist_fits(model, source, classes=None)
    try:
        from prunekit.datasets import load_mnist, subset

        calib = subset(load_mnist("train"), 128 * calibration, seed=0)
        loader = torch.utils.data.DataLoader(calib, batch_size=128)
        x = calib.tensors[0][:8]
        res = pk.prune(model, sparsity, criterion=criterion, granularity=granularity, allocation=allocation,
                       data=loader, loss_fn=F.cross_entropy, example_inputs=x)
        if compact:
            model = pk.compact(model, x)
        pk.commit(model)
        with co.new_parents_removed_on_failure(out):
            pk.save(model, out, metadata={"input_shape": MNIST_INPUT, "pruned": res.config})
    except pk.PruneError as e:
        _fail(str(e))
    console.print(res.summary())
    console.print(f"Saved to {out}")


@app.command()
def train(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save` (its zeros stay zero)."),
    out: Path = typer.Option(..., help="Folder to write the trained model to."),
    epochs: int = typer.Option(1, help="Epochs over the MNIST training split (50,000 images)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(128, help="Batch size."),
    seed: int = typer.Option(0, help="Seed for initialization order and shuffling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prunekit save at --out."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Train or fine-tune a model on MNIST; a pruned model keeps its zeros. Prints test accuracy."""
    cu.check_min("--epochs", epochs, 0, "1")
    cu.check_positive("--lr", lr, "1e-3")
    cu.check_min("--batch-size", batch_size, 1, "128")
    cu.check_min("--seed", seed, 0, "0")
    co.check_save_out("--out", out, overwrite)
    _threads(threads)
    import prunekit as pk
    from prunekit.datasets import load_mnist
    from prunekit.masking import mask_zeros
    from prunekit.train import evaluate, fit

    model = _load_source(source)
    cu.check_mnist_fits(model, source)
    try:
        mask_zeros(model)  # a sparse model keeps its zeros while it trains
        fit(model, load_mnist("train"), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=True)
        acc = evaluate(model, load_mnist("test"))
        sp = pk.sparsity(model)
        pk.commit(model)
        with co.new_parents_removed_on_failure(out):
            pk.save(model, out, metadata={"input_shape": MNIST_INPUT, "test_accuracy": acc})
    except pk.PruneError as e:
        _fail(str(e))
    console.print(f"test accuracy {acc:.2%} · sparsity {sp:.2%} · saved to {out}")


@app.command()
def evaluate(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save`."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Accuracy on the MNIST test split (10,000 images) and sparsity of a model."""
    _threads(threads)
    import prunekit as pk
    from prunekit.datasets import load_mnist
    from prunekit.train import evaluate as _evaluate

    model = _load_source(source)
    cu.check_mnist_fits(model, source)
    try:
        acc = _evaluate(model, load_mnist("test"))
    except pk.PruneError as e:
        _fail(str(e))
    console.print(f"test accuracy {acc:.2%} · sparsity {pk.sparsity(model):.2%}")


@app.command()
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
    allocation: Optional[str] = typer.Option(None, help="global, uniform, lamp, erk (default: the Recipe's)."),
    gradual_frequency: Optional[int] = typer.Option(None, help="Optimizer steps between two prunings of the gradual ramp (default: the Recipe's)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows and settings to this JSON file."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Compare pruning schedules (one-shot, iterative, gradual, L1/L2 + threshold, combined) on MNIST at one epoch budget.

    The dense row (no pruning, same budget and evaluation) is always shown. A schedule that the
    budget reduces to one-shot pruning is reported as a `warning:` line before training."""
    import prunekit as pk
    from prunekit import zoo
    from prunekit.compare import Recipe, compare as _compare, format_rows
    from prunekit.datasets import load_mnist, subset
    from prunekit.schedules import printed_warnings
    from rich.markup import escape

    _threads(threads)
    if seeds < 1:
        _fail(f"--seeds must be an int >= 1, got {seeds}")
    if limit is not None and limit < 1:
        _fail(f"--limit must be an int >= 1, got {limit}")
    if model not in zoo.available():
        _fail(f"--model {model!r} is not a zoo model; available: {', '.join(zoo.available())}")
    overrides = {k: v for k, v in (("lr", lr), ("finetune_lr", finetune_lr), ("allocation", allocation),
                                   ("gradual_frequency", gradual_frequency)) if v is not None}
    names = [m.strip() for m in methods.split(",") if m.strip()]
    start = time.perf_counter()
    warned: list[str] = []

    def warn(message: str) -> None:
        warned.append(message)
        console.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)

    try:
        recipe = Recipe(sparsity=sparsity, epochs=epochs, train_epochs=train_epochs, **overrides)
        train, test = load_mnist("train"), load_mnist("test")
        if limit is not None:
            train, test = subset(train, min(limit, len(train)), seed=0), subset(test, min(limit, len(test)), seed=0)
        with printed_warnings(warn):
            rows = _compare(lambda: zoo.create(model), train, test, recipe, methods=names,
                            seeds=range(seeds), log=lambda line: console.print(line, highlight=False, markup=False))
    except pk.PruneError as e:
        _fail(str(e))
    t, ft = recipe.phases
    console.print(f"\n{model} on MNIST ({len(train):,} train / {len(test):,} test images), target {sparsity:.2%}, "
                  f"{epochs} epochs each: {t} training + {ft} fine-tuning, {seeds} seed(s)", highlight=False)
    console.print(format_rows(rows), highlight=False)
    wall = time.perf_counter() - start
    console.print(f"wall {wall:.0f} s · threads {threads}", highlight=False)
    if json_out is not None:
        from dataclasses import asdict

        payload = {"model": model, "train_examples": len(train), "test_examples": len(test),
                   "recipe": asdict(recipe), "phases": [t, ft], "seeds": list(range(seeds)),
                   "rows": [r.as_dict() for r in rows], "warnings": warned, "wall_time_s": wall}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False)


@app.command()
def inspect(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save`."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch dim (default: 1,1,28,28 or the saved spec's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and nothing else) on stdout instead of text."),
) -> None:
    """Dry run: list the prunable channel groups, their coupling and sizes, the head
    constraints, and every op that keeps channels (and why). Changes nothing."""
    shape = _parse_shape(input_shape) if input_shape else None
    import torch

    import prunekit as pk

    model = _load_source(source)
    if shape is None and os.path.isdir(source):
        shape = cu.spec_input_shape(Path(source))
    try:
        report = pk.inspect(model, torch.randn(*(shape or MNIST_INPUT)))
    except pk.PruneError as e:
        _fail(f"--input-shape {input_shape!r}: {e}" if input_shape else str(e))
    if as_json:
        cu.print_json(report.to_dict())
    else:
        console.print(report.summary(), soft_wrap=True, markup=False)


@app.command()
def export(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by `pk.save`."),
    out: Path = typer.Option(..., help="The .onnx file to write."),
    input_shape: Optional[str] = typer.Option(None, help="Example input shape with batch dim (default: the saved spec's, else 1,1,28,28)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset, 18 or higher (default: the exporter's)."),
    int8: bool = typer.Option(False, "--int8", help="int8 weights and dynamically quantized activations (about 4x smaller)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file at --out."),
) -> None:
    """Export a model to ONNX (masks folded in) and check it against PyTorch in onnxruntime.
    The batch dimension stays dynamic. Needs the export extra (onnx, onnxscript, onnxruntime)."""
    shape = _parse_shape(input_shape) if input_shape else None
    co.check_file_out("--out", out, overwrite)
    import torch

    import prunekit as pk

    try:
        from prunekit.deploy.onnx import _export
    except ImportError as e:
        _fail(f"prunekit export needs the export extra: pip install prunekit[export] ({e})")
    model = _load_source(source)
    if shape is None and os.path.isdir(source):
        shape = cu.spec_input_shape(Path(source))
    try:
        torch.manual_seed(0)
        with co.new_parents_removed_on_failure(out):
            path, result = _export(model, torch.randn(*(shape or MNIST_INPUT)), out, opset=opset,
                                   quantize="int8" if int8 else None)
    except pk.PruneError as e:
        _fail(str(e))
    console.print(f"wrote {path} ({path.stat().st_size:,} bytes)", highlight=False, soft_wrap=True)
    console.print(
        f"parity check (onnxruntime vs PyTorch, input {list(shape or MNIST_INPUT)}): passed, "
        f"max abs difference {result.max_abs_diff:.3g} (rtol {result.rtol:g}, atol {result.atol:g})",
        highlight=False, soft_wrap=True,
    )


@app.command()
def run(
    recipe: str = typer.Argument(..., help="A recipe YAML file or a built-in recipe name (see `prunekit list`)."),
    out: Path = typer.Option(Path("out/run"), help="Output folder: model/, metrics.json, recipe.yaml, report.html."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run at --out, or write beside the files of a non-empty folder (they are kept)."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Run a recipe: model, data and stages written down in YAML (see docs/recipes.md; language
    models, `task: llm`: docs/llm-cli.md). Everything is written to a temporary folder beside
    --out and moved into place at the end."""
    _threads(threads)
    from prunekit import PruneError
    from prunekit.recipes import load_recipe, run_recipe

    try:
        r = load_recipe(recipe)
        if getattr(r, "task", None) == "llm":
            _llm_setup()
            from prunekit.llm.recipe import check_supported

            check_supported(r)
    except PruneError as e:
        _fail(str(e))
    co.check_run_out("--out", out, overwrite)
    try:
        with co.staged_folder(out) as tmp:
            metrics = run_recipe(r, tmp, progress=True)
    except PruneError as e:
        _fail(str(e))
    if metrics.get("task") == "llm":
        _llm_summary(metrics, title=f"{r.name}: {r.model}")
        console.print(f"Wrote {out}/model, metrics.json, recipe.yaml", highlight=False, soft_wrap=True)
        return
    b, a = metrics.get("before_pruning", metrics["before"]), metrics["after"]
    console.print(f"{r.name}: accuracy {b['accuracy']:.2%} -> {a['accuracy']:.2%}, "
                  f"nonzero params {b['nonzero_params']:,} -> {a['nonzero_params']:,}, "
                  f"params {b['params']:,} -> {a['params']:,}")
    console.print(f"Wrote {out}/model, metrics.json, recipe.yaml" + (", report.html" if metrics.get("report") else ""))


def _dataset(name: str, flatten: bool):
    from prunekit import datasets

    if name == "mnist":
        return datasets.load_mnist("train", flatten=flatten), datasets.load_mnist("test", flatten=flatten)
    if name == "digits":
        return datasets.load_digits("train", flatten=flatten), datasets.load_digits("test", flatten=flatten)
    _fail(f"--data {name!r} is not one of mnist, digits")


@app.command()
def analyze(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by pk.save."),
    data: str = typer.Option("mnist", help="mnist or digits (the test split is the held-out data)."),
    sparsities: str = typer.Option("0.3,0.5,0.7,0.9", help="Comma-separated sparsities to try per layer, in [0, 1)."),
    granularity: str = typer.Option("unstructured", help="unstructured or channel."),
    samples: int = typer.Option(2000, help="Held-out images used to evaluate each trial."),
    out: Optional[Path] = typer.Option(None, help="Write the curves as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file at --out."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Sensitivity analysis: prune each layer alone at several sparsities and evaluate."""
    cu.check_name("--data", data, ("mnist", "digits"))
    levels = cu.parse_fractions("--sparsities", sparsities)
    cu.check_name("--granularity", granularity, ("unstructured", "channel"))
    cu.check_min("--samples", samples, 1, "2000")
    if out is not None:
        co.check_file_out("--out", out, overwrite)
    _threads(threads)
    import torch

    import prunekit as pk
    from prunekit.datasets import subset
    from prunekit.sensitivity import sensitivity
    from prunekit.train import evaluate

    model = _load_source(source)
    flat = not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    _, test = _dataset(data, flat)
    test = subset(test, min(samples, len(test)), seed=0)
    cu.check_input_fits(model, [1, *test.tensors[0].shape[1:]], f"SOURCE {source!r} does not fit --data {data}", classes=10)
    try:
        rep = sensitivity(model, lambda m: evaluate(m, test), sparsities=levels, granularity=granularity,
                          example_inputs=test.tensors[0][:8])
    except pk.PruneError as e:
        _fail(str(e))
    console.print(rep.summary(), markup=False)
    if out is not None:
        co.write_text_atomic(out, json.dumps(rep.to_dict(), indent=2))
        console.print(f"Wrote {out}")


@app.command()
def search(
    model: str = typer.Option("lenet300100", help="Zoo model, built fresh for every run."),
    data: str = typer.Option("digits", help="mnist or digits (the train split is cross-validated)."),
    criteria: str = typer.Option("magnitude,taylor", help="Comma-separated criteria (random and magnitude are always added)."),
    allocations: str = typer.Option("global", help="Comma-separated allocations."),
    sparsities: str = typer.Option("0.5,0.9", help="Comma-separated sparsities."),
    schedules: str = typer.Option("oneshot", help="Comma-separated schedules: oneshot, gradual, iterative."),
    folds: int = typer.Option(3, help="Cross-validation folds."),
    seeds: str = typer.Option("0", help="Comma-separated seeds."),
    train_epochs: int = typer.Option(2, help="Dense training epochs on each fold before pruning."),
    finetune_epochs: int = typer.Option(1, help="Fine-tuning (or prune-while-training) epochs."),
    samples: int = typer.Option(3000, help="Training images used (the search trains many models)."),
    results: Path = typer.Option(Path("out/search.jsonl"), help="Runs are appended here; rerun to resume."),
    workers: int = typer.Option(1, help="Parallel processes."),
) -> None:
    """Grid search over pruning settings with k-fold cross-validation and baselines.

    The table starts with the dense (unpruned) model, measured the same way; settings not clearly
    above chance are never on the Pareto front (the footer gives the rule). A schedule that the
    fine-tuning budget reduces to one-shot pruning is reported as a `warning:` line."""
    import prunekit as pk
    from prunekit.datasets import subset
    from prunekit.schedules import printed_warnings
    from prunekit.search import ZooModel, search as run_search
    from rich.markup import escape

    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    try:
        flat = model in ("lenet300100",)
        train, _ = _dataset(data, flat)
        train = subset(train, min(samples, len(train)), seed=0)
        kwargs = {"in_features": 64} if (model == "lenet300100" and data == "digits") else {}
        grid = {"criterion": split(criteria), "allocation": split(allocations),
                "sparsity": [float(v) for v in split(sparsities)], "schedule": split(schedules)}
        results.parent.mkdir(parents=True, exist_ok=True)
        warn = lambda m: console.print(f"[bold yellow]warning:[/] {escape(m)}", soft_wrap=True, highlight=False)  # noqa: E731
        with printed_warnings(warn):
            res = run_search(ZooModel(model, kwargs), train, grid, folds=folds, seeds=[int(v) for v in split(seeds)],
                             train_epochs=train_epochs, finetune_epochs=finetune_epochs, results=results,
                             workers=workers)
    except (pk.PruneError, ValueError) as e:
        _fail(str(e))
    console.print(res.summary(), markup=False, soft_wrap=True, highlight=False)
    console.print(f"Runs in {results} (rerun the same command to resume)")


@app.command("list")
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


LLM_HELP = "Language models: one-shot (Wanda, SparseGPT, magnitude; N:M) and structured (heads, MLP neurons) pruning, perplexity."
llm_app = typer.Typer(add_completion=False, no_args_is_help=True, help=LLM_HELP)
app.add_typer(llm_app, name="llm")


def _llm_setup() -> None:
    try:
        import transformers
    except ImportError:
        _fail("prunekit llm needs transformers; install it with `pip install prunekit[llm]`")
    transformers.utils.logging.disable_progress_bar()


def _llm_text(option: str, value: str) -> str:
    from prunekit import PruneError
    from prunekit.llm.recipe import check_text

    try:
        return check_text(value)
    except PruneError:
        _fail(f"{option} {value!r} is neither 'kjv' (the King James Bible) nor an existing text file")


def _llm_model(value: str) -> str:
    from prunekit import PruneError
    from prunekit.llm.recipe import check_model

    try:
        return check_model(value)
    except PruneError as e:
        _fail(f"SOURCE: {e}")


def _check_range(option: str, value: Optional[float], lo: float, hi: Optional[float], accepted: str) -> None:
    if value is not None and not (value >= lo and (hi is None or value < hi)):
        _fail(f"{option} {value!r} is outside {accepted}")


def _check_int(option: str, value: int, lo: int) -> None:
    if value < lo:
        _fail(f"{option} {value!r} must be an integer >= {lo}")


def _check_choice(option: str, value: Optional[str], accepted: tuple[str, ...]) -> None:
    if value is not None and value not in accepted:
        _fail(f"{option} {value!r} is not supported; use one of {', '.join(accepted)}")


def _fmt_ppl(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.3f}"


def _llm_summary(m: dict, title: str) -> None:
    """A short before/after table of an llm run's metrics."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    t.add_row("parameters", f"{m['params']['before']:,}", f"{m['params']['after']:,}")
    lw = m["linear_weights"]
    t.add_row("block linear weights, nonzero", f"{lw['nonzero_before']:,}", f"{lw['nonzero_after']:,}")
    t.add_row("sparsity of block linears", f"{1 - lw['nonzero_before'] / max(1, lw['before']):.2%}",
              f"{m['sparsity']['linear']:.2%}")
    if m.get("perplexity"):
        ev = m["evaluation"]
        t.add_row(f"perplexity ({ev['windows']}x{ev['seqlen']} tokens)", _fmt_ppl(m["perplexity"]["dense"]),
                  _fmt_ppl(m["perplexity"]["pruned"]))
    console.print(t)
    parts = []
    for st in m["stages"]:
        if st["stage"] == "structured":
            parts.append(f"structured {st['criterion']} heads -{st['heads_removed']:.0%} neurons -{st['neurons_removed']:.0%}")
        else:
            pat = f" {st['pattern']}" if st.get("pattern") else ""
            alloc = st["settings"].get("allocation")
            parts.append(f"{st['method']}{pat} {st['overall_sparsity']:.1%}" + (f" ({alloc})" if alloc else ""))
    console.print(f"stages: {'; '.join(parts) or 'none (dense copy)'} · total {m['timings']['total_s']:.1f} s · "
                  f"threads {m.get('torch_threads')}", highlight=False, soft_wrap=True)


@llm_app.command("prune")
def llm_prune(
    source: str = typer.Argument(..., help="'smollm2' (the installed SmolLM2-135M package), a save_pretrained folder, or a .gguf file."),
    out: Path = typer.Option(..., help="Folder to write: the pruned model (save_pretrained), its tokenizer and prunekit-llm.json."),
    method: str = typer.Option("wanda", help="One-shot method: wanda, sparsegpt or magnitude."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of the block linears' weights removed, in [0, 1) (default 0.5; 0 skips the one-shot stage)."),
    pattern: Optional[str] = typer.Option(None, help="N:M sparsity, e.g. 2:4 or 4:8 (N kept of every M); fixes the sparsity to 1 - N/M."),
    allocation: Optional[str] = typer.Option(None, help="Sparsity per block: uniform (default), owl (outlier-weighted layer-wise sparsity) or depth (ramped from first to last block)."),
    owl_lambda: Optional[float] = typer.Option(None, help="With --allocation owl: largest deviation from --sparsity, in [0, 1) (default 0.08)."),
    owl_m: Optional[float] = typer.Option(None, help="With --allocation owl: outlier threshold in multiples of the mean score (default 5)."),
    depth_lambda: Optional[float] = typer.Option(None, help="With --allocation depth: half-span of the ramp, in [0, 1) (default 0.05)."),
    sequential: bool = typer.Option(False, "--sequential", help="Prune a block's linears in input order (q/k/v, o, gate/up, down), re-running the block between groups."),
    reconstruct: Optional[int] = typer.Option(None, help="Epochs of block-wise reconstruction after pruning each block (refits the kept weights to the dense block's outputs; default 0)."),
    reconstruct_lr: Optional[float] = typer.Option(None, help="With --reconstruct: Adam's learning rate, in (0, 1) (default 3e-4)."),
    comparison: str = typer.Option("row", help="Wanda and magnitude: remove the lowest scores per output row or per layer."),
    blocksize: int = typer.Option(128, help="SparseGPT: columns per block."),
    percdamp: float = typer.Option(0.01, help="SparseGPT: dampening, a fraction of the Hessian's mean diagonal."),
    heads: Optional[float] = typer.Option(None, help="Structured: fraction of every block's attention heads to remove, in [0, 1)."),
    neurons: Optional[float] = typer.Option(None, help="Structured: fraction of every block's MLP neurons to remove, in [0, 1)."),
    criterion: str = typer.Option("wanda", help="Structured criterion: wanda or magnitude."),
    gqa: str = typer.Option("groups", help="Structured heads: remove whole KV groups (groups) or query heads within every group (queries)."),
    calib: str = typer.Option("kjv", help="Calibration text: kjv (the King James Bible's calibration half) or a UTF-8 text file."),
    calib_windows: int = typer.Option(64, help="Calibration windows, drawn at random offsets of the text."),
    seqlen: int = typer.Option(512, help="Tokens per calibration and evaluation window."),
    seed: int = typer.Option(0, help="Seed of the window positions."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    eval_text: Optional[str] = typer.Option(None, "--eval", help="Perplexity before and after on kjv (the evaluation half) or a text file (not the calibration file)."),
    eval_windows: int = typer.Option(32, help="Evaluation windows (distinct, non-overlapping)."),
    force: bool = typer.Option(False, "--overwrite", "--force", help="Replace an existing non-empty --out folder (all of it)."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Prune a causal language model and save it with save_pretrained.

    Structured removal (--heads, --neurons) runs first, then one-shot masks (--method, --sparsity or --pattern) on the smaller model; the masks are committed before saving.
    """
    from prunekit import PruneError
    from prunekit.llm.oneshot import METHODS, _check_pattern
    from prunekit.llm.recipe import (ALLOCATIONS, COMPARISONS, GQA_MODES, STRUCTURED_CRITERIA, LLMRecipe,
                                     check_supported, execute, is_empty_dir, same_file, save_model)

    # Every option is checked before anything is loaded or written.
    _check_choice("--method", method, METHODS)
    _check_range("--sparsity", sparsity, 0.0, 1.0, "[0, 1)")
    nm = None
    if pattern is not None:
        try:
            nm = _check_pattern(pattern)
        except PruneError:
            _fail(f"--pattern {pattern!r} is not N:M with integers 1 <= N <= M; use e.g. 2:4 or 4:8")
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            _fail(f"--sparsity {sparsity!r} conflicts with --pattern {pattern!r}, which removes {implied:.2%}; leave --sparsity out")
    _check_choice("--allocation", allocation, ALLOCATIONS)
    _check_range("--owl-lambda", owl_lambda, 0.0, 1.0, "[0, 1)")
    if owl_m is not None and not owl_m > 0:
        _fail(f"--owl-m {owl_m!r} must be a positive number (typically 5)")
    if (owl_lambda is not None or owl_m is not None) and allocation != "owl":
        _fail("--owl-lambda and --owl-m need --allocation owl")
    _check_range("--depth-lambda", depth_lambda, 0.0, 1.0, "[0, 1)")
    if depth_lambda is not None and allocation != "depth":
        _fail("--depth-lambda needs --allocation depth")
    if nm is not None and allocation in ("owl", "depth"):
        _fail(f"--allocation {allocation} needs unstructured sparsity; --pattern {pattern!r} fixes every layer")
    if reconstruct is not None:
        _check_int("--reconstruct", reconstruct, 0)
    if reconstruct_lr is not None and not (0 < reconstruct_lr < 1):
        _fail(f"--reconstruct-lr {reconstruct_lr!r} must be in (0, 1) (e.g. 3e-4)")
    if reconstruct_lr is not None and not reconstruct:
        _fail("--reconstruct-lr needs --reconstruct N (epochs, N >= 1)")
    _check_choice("--comparison", comparison, COMPARISONS)
    _check_int("--blocksize", blocksize, 1)
    if not percdamp >= 0:
        _fail(f"--percdamp {percdamp!r} must be >= 0 (typically 0.01)")
    _check_range("--heads", heads, 0.0, 1.0, "[0, 1)")
    _check_range("--neurons", neurons, 0.0, 1.0, "[0, 1)")
    _check_choice("--criterion", criterion, STRUCTURED_CRITERIA)
    _check_choice("--gqa", gqa, GQA_MODES)
    _check_int("--calib-windows", calib_windows, 1)
    _check_int("--seqlen", seqlen, 2)
    _check_int("--seed", seed, 0)
    _check_int("--batch-size", batch_size, 1)
    _check_int("--eval-windows", eval_windows, 1)
    calib_path = _llm_text("--calib", calib)
    eval_path = _llm_text("--eval", eval_text) if eval_text is not None else None
    if eval_path is not None and same_file(calib_path, eval_path):
        _fail(f"--eval {eval_text!r} is the calibration text too; evaluate on other text (or kjv, whose halves are disjoint)")
    model_source = _llm_model(source)
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and not is_empty_dir(out) and not force:
        _fail(f"--out {str(out)!r} exists and is not empty; pass --overwrite (or --force) to replace it")
    co.check_writable("--out", out)

    stages: list[dict] = []
    if heads or neurons:
        stages.append({"structured": {"heads": heads or 0.0, "neurons": neurons or 0.0, "criterion": criterion,
                                      "gqa": gqa, "batch_size": batch_size}})
    sp = 0.5 if sparsity is None else sparsity
    if nm is not None or sp > 0:
        one: dict = {"method": method, "sparsity": 1.0 - nm[0] / nm[1] if nm else sp, "pattern": pattern,
                     "comparison": comparison, "blocksize": blocksize, "percdamp": percdamp, "batch_size": batch_size}
        # Optional prune_llm arguments are passed only when given.
        one.update({k: v for k, v in (("allocation", allocation), ("owl_lambda", owl_lambda), ("owl_m", owl_m),
                                      ("depth_lambda", depth_lambda), ("sequential", sequential or None),
                                      ("reconstruct", reconstruct), ("reconstruct_lr", reconstruct_lr)) if v is not None})
        stages.append({"oneshot": one})
    raw = {"task": "llm", "name": "prunekit llm prune", "model": model_source,
           "calibration": {"text": calib_path, "windows": calib_windows, "seqlen": seqlen, "seed": seed},
           "evaluation": ({"text": eval_path, "windows": eval_windows, "seqlen": seqlen, "seed": seed}
                          if eval_path is not None else None),
           "stages": stages}
    _llm_setup()
    _threads(threads)
    try:
        recipe = LLMRecipe.validate_dict(raw, source="options")
        check_supported(recipe)
    except PruneError as e:
        _fail(" ".join(str(e).removeprefix("invalid recipe:").split()))
    try:
        model, tok, metrics = execute(recipe, log=lambda line: console.print(line, highlight=False, soft_wrap=True))
        settings = {"source": source, "out": str(out), "method": method, "sparsity": sparsity, "pattern": pattern,
                    "allocation": allocation, "owl_lambda": owl_lambda, "owl_m": owl_m, "depth_lambda": depth_lambda,
                    "sequential": sequential, "reconstruct": reconstruct, "reconstruct_lr": reconstruct_lr,
                    "comparison": comparison, "blocksize": blocksize, "percdamp": percdamp, "heads": heads,
                    "neurons": neurons, "criterion": criterion, "gqa": gqa, "calib": calib,
                    "calib_windows": calib_windows, "seqlen": seqlen, "seed": seed, "batch_size": batch_size,
                    "eval": eval_text, "eval_windows": eval_windows, "threads": threads}
        payload = {"command": "prunekit llm prune", "settings": settings,
                   **{k: v for k, v in metrics.items() if k != "recipe"}}
        with co.new_parents_removed_on_failure(out):
            save_model(model, tok, out, files={"prunekit-llm.json": payload}, force=force)
    except (ValueError, OSError) as e:  # PruneError, and what transformers raises for an unreadable model
        _fail(str(e))
    _llm_summary(metrics, title=f"{source} -> {out}")
    console.print(f"Saved to {out} (save_pretrained + tokenizer + prunekit-llm.json)", highlight=False, soft_wrap=True)


@llm_app.command("eval")
def llm_eval(
    source: str = typer.Argument(..., help="'smollm2', a save_pretrained folder (e.g. written by `prunekit llm prune`), or a .gguf file."),
    text: str = typer.Option("kjv", help="kjv (the King James Bible's evaluation half) or a UTF-8 text file."),
    windows: int = typer.Option(32, help="Evaluation windows (distinct, non-overlapping)."),
    seqlen: int = typer.Option(512, help="Tokens per window."),
    seed: int = typer.Option(0, help="Seed of the window choice."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and nothing else) on stdout instead of a line."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Perplexity of a causal language model on held-out text, and the sparsity of its block linears."""
    _check_int("--windows", windows, 1)
    _check_int("--seqlen", seqlen, 2)
    _check_int("--seed", seed, 0)
    text_path = _llm_text("--text", text)
    model_source = _llm_model(source)
    _llm_setup()
    _threads(threads)
    start = time.perf_counter()
    try:
        from prunekit.llm.data import eval_windows
        from prunekit.llm.models import load_causal_lm
        from prunekit.llm.oneshot import perplexity
        from prunekit.llm.recipe import linear_stats, load_streams, parameter_count

        model, tok = load_causal_lm(model_source, log=None if as_json else (lambda s: console.print(s, highlight=False)))
        _, stream, _ = load_streams(tok, None, text_path)
        ids = eval_windows(stream, windows, seqlen, seed)
        ppl = perplexity(model, ids, seqlen=seqlen)
        lin = linear_stats(model)
    except (ValueError, OSError) as e:  # PruneError, and what transformers raises for an unreadable model
        _fail(str(e))
    result = {"source": source, "text": text_path, "windows": windows, "seqlen": seqlen, "seed": seed,
              "tokens": int(ids.numel()), "perplexity": ppl, "params": parameter_count(model),
              "sparsity_linear": lin["zeros"] / lin["weights"] if lin["weights"] else 0.0,
              "seconds": time.perf_counter() - start}
    if as_json:
        cu.print_json(result)
        return
    console.print(f"perplexity {ppl:.4f} · {windows} windows of {seqlen} tokens from {text_path} · "
                  f"sparsity of block linears {result['sparsity_linear']:.2%} · {result['params']:,} parameters · "
                  f"{result['seconds']:.1f} s", highlight=False, soft_wrap=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``prunekit`` script; returns the exit status (0, 2, or 130 after Ctrl-C).

    ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) is set here, before any command
    imports torch: idle OpenMP threads then sleep instead of spinning, which keeps latency
    figures honest on a shared machine.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return app(args=argv, prog_name="prunekit", standalone_mode=False)


if __name__ == "__main__":
    raise SystemExit(main())
