"""The ``prunekit`` command line: demo | run | prune | inspect | analyze | search | train | evaluate | measure |
compare | export | list, and ``prunekit llm prune | eval`` for language models
(:mod:`prunekit.cli_llm`).

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

import prunekit.cli_output as co
import prunekit.cli_util as cu  # not `from prunekit import`: that would load the package (and torch)
from prunekit.cli_llm import llm_app, llm_setup, llm_summary
from prunekit.cli_util import MNIST_INPUT, console, fail as _fail, load_source as _load_source, parse_shape as _parse_shape
from prunekit.cli_util import pct, set_threads as _threads

app = typer.Typer(
    cls=cu.Group,
    add_completion=False,
    no_args_is_help=True,
    help="Prune neural networks and measure what was really gained.",
)
app.add_typer(llm_app, name="llm")  # prunekit llm prune | eval (prunekit.cli_llm)


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
    from prunekit.progress import fit_with_progress
    from prunekit.train import evaluate, set_seed

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
            fit_with_progress("training LeNet-300-100 on MNIST", net, load_mnist("train"), epochs=2, lr=1e-3, seed=0)
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
            fit_with_progress(f"fine-tuning the pruned {model}", net, train, epochs=epochs, lr=ft_lr, seed=0)
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
    path: Path = typer.Argument(..., help="A folder written by `pk.save` / `prunekit prune`, or a zoo model name."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch dim, e.g. 1,1,28,28 (default: from the saved spec; 1,1,28,28 for zoo models)."),
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

    from prunekit import zoo

    if not path.exists() and str(path) in zoo.available():
        model = _load_source(str(path))  # a zoo model, as every other command accepts
        shape = shape or list(MNIST_INPUT)
    else:
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
    threshold: Optional[float] = typer.Option(None, help="Instead of --sparsity: remove units whose per-layer normalized score is <= this, in [0, 1] (allocation global, uniform or lamp)."),
    criterion: str = typer.Option("magnitude", help="Importance criterion."),
    granularity: str = typer.Option("unstructured", help="unstructured, channel, head, block, or N:M such as 2:4."),
    block_shape: Optional[str] = typer.Option(None, help="With --granularity block: ROWS,COLS of a block, e.g. 4,4."),
    allocation: str = typer.Option("global", help="global, uniform, lamp, erk."),
    ignore: Optional[list[str]] = typer.Option(None, help="A weight or module name, or a pattern such as 'classifier.*', to leave dense; repeat the option or separate with commas."),
    calibration: int = typer.Option(8, help="Batches of 128 training images for data-driven criteria (MNIST, or the data set the saved folder records)."),
    compact: bool = typer.Option(False, "--compact", help="With channel/head granularity: save the physically smaller model."),
    format: str = typer.Option("safetensors", "--format", help="safetensors (exact) or packed (model.pkpack: zeros left out, zstd-compressed; pk.load reads both)."),
    quantize: Optional[str] = typer.Option(None, help="With --format packed: none, fp16, int8, codebook or codebook:BITS."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prunekit save at --out."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Prune a model (one shot, masks committed) and save it; prints accuracy before and after.

    Calibration and test data: MNIST for zoo models; for a saved folder, the data set its
    spec records (MNIST or digits)."""
    import prunekit.cli_prune as cpr

    cu.check_prune_options(sparsity, criterion, granularity, allocation, threshold)
    cpr.check_threshold(threshold, sparsity, granularity, allocation)
    blocks = cpr.parse_block_shape(block_shape, granularity)
    patterns = cpr.parse_ignore(ignore)
    cu.check_min("--calibration", calibration, 1, "8")
    if compact and granularity not in ("channel", "head"):
        _fail(f"--compact needs --granularity channel or head, got {granularity!r}")
    import prunekit.cli_packed as cp  # not at the top: it loads the package (and torch)

    cp.check_format("--format", format, cp.SAVE_FORMATS)
    scheme = cp.check_quantize(quantize, format)
    co.check_save_out("--out", out, overwrite)
    _threads(threads)
    import torch
    import torch.nn.functional as F

    import prunekit as pk
    from prunekit.cli_format import prune_tables, prune_totals
    from prunekit.train import evaluate as _evaluate

    data = cpr.prune_data(source)
    model = _load_source(source)
    cpr.check_fits(model, source, data)
    options = {k: v for k, v in (("threshold", threshold), ("block_shape", blocks), ("ignore", patterns)) if v}
    try:
        calib, test = cpr.load(data, calibration)
        loader = torch.utils.data.DataLoader(calib, batch_size=128)
        x = calib.tensors[0][:8]
        acc0 = _evaluate(model, test) if test is not None else None
        try:
            res = pk.prune(model, sparsity, criterion=criterion, granularity=granularity, allocation=allocation,
                           data=loader, loss_fn=F.cross_entropy, example_inputs=x, **options)
        except pk.PruneError as e:
            _fail(f"--ignore: {e}" if str(e).startswith("ignore patterns") else str(e))
        if compact:
            model = pk.compact(model, x)
        acc1 = _evaluate(model, test) if test is not None else None
        pk.commit(model)
        meta = {"input_shape": data.input_shape, "data": data.record, "pruned": res.config}
        if acc1 is not None:
            meta["test_accuracy"] = acc1
        with co.new_parents_removed_on_failure(out):
            pk.save(model, out, metadata=meta, format=format, quantize=scheme)
    except pk.PruneError as e:
        _fail(str(e))
    if data.note:
        console.print(data.note, highlight=False, soft_wrap=True)
    for table in prune_tables(res, f"{source}: pruned weights"):
        console.print(table)
    for line in prune_totals(res):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if acc0 is not None and acc1 is not None:
        console.print(cpr.accuracy_line(data, acc0, acc1), highlight=False, soft_wrap=True)
    else:
        console.print(data.why_not, highlight=False, soft_wrap=True, markup=False)
    if format == "packed":
        cp.report_packed(model, out, data.input_shape, scheme)
    else:
        console.print(f"Saved to {out}", highlight=False, soft_wrap=True)


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
    from prunekit.progress import fit_with_progress
    from prunekit.train import evaluate

    model = _load_source(source)
    cu.check_mnist_fits(model, source)
    try:
        mask_zeros(model)  # a sparse model keeps its zeros while it trains
        fit_with_progress(f"training {source} on MNIST", model, load_mnist("train"), epochs=epochs, lr=lr,
                          batch_size=batch_size, seed=seed)
        acc = evaluate(model, load_mnist("test"))
        sp = pk.sparsity(model)
        pk.commit(model)
        with co.new_parents_removed_on_failure(out):
            pk.save(model, out, metadata={"input_shape": MNIST_INPUT, "data": {"name": "mnist", "flatten": False},
                                          "test_accuracy": acc})
    except pk.PruneError as e:
        _fail(str(e))
    console.print(f"test accuracy {pct(acc)} · sparsity {pct(sp)} · saved to {out}", highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save`."),
    data: Optional[str] = typer.Option(None, help="mnist, digits, or MODULE:FUNCTION (a function of yours returning a Dataset, a DataLoader or an (inputs, labels) pair; the current folder is searched first). Default: the data the saved model records, else mnist."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Accuracy on a test split (MNIST: 10,000 images; digits: 450; or your own data) and sparsity of a model.

    A folder written by `prunekit run` records its data set, so no flag is needed."""
    import prunekit.cli_data as cd

    cd.check_data("--data", data)
    recorded = cu.spec_data(Path(source)) if os.path.isdir(source) else None
    name = data or (recorded or {}).get("name") or "mnist"
    if name not in cd.BUILTIN:
        cd.check_data("--data", name)
    if cd.is_factory(name):
        _threads(threads)
        import prunekit as pk
        from prunekit.train import evaluate as _evaluate

        model = _load_source(source)
        test = cd.load_factory("--data", name)
        try:
            acc = _evaluate(model, test)
        except Exception as e:  # noqa: BLE001 - a shape or type mismatch with the user's data
            _fail(f"--data {name!r}: evaluating SOURCE {source!r} on it failed: {type(e).__name__}: {e}")
        console.print(f"{name} accuracy {pct(acc)} · sparsity {pct(pk.sparsity(model))}", highlight=False)
        return
    flatten = bool((recorded or {}).get("flatten", False)) if recorded and recorded.get("name") == name else False
    _threads(threads)
    import prunekit as pk
    from prunekit.datasets import load_digits, load_mnist
    from prunekit.train import evaluate as _evaluate

    model = _load_source(source)
    if name == "mnist":
        cu.check_mnist_fits(model, source)
        test = load_mnist("test", flatten=flatten)
    else:
        test = load_digits("test", flatten=flatten)
        cu.check_input_fits(model, [1, *test.tensors[0].shape[1:]], f"SOURCE {source!r} does not take {name} inputs",
                            classes=10)
    try:
        acc = _evaluate(model, test)
    except pk.PruneError as e:
        _fail(str(e))
    console.print(f"{name} test accuracy {pct(acc)} · sparsity {pct(pk.sparsity(model))}", highlight=False)


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
    report: Optional[Path] = typer.Option(None, "--report", help="Write report.html (accuracy per method, accuracy against parameters and MACs with the dense point, settings), report.md and compare.json into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file at --json or an earlier report at --report."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Compare pruning schedules (one-shot, iterative, gradual, L1/L2 + threshold, combined) on MNIST at one epoch budget.

    The dense row (no pruning, same budget and evaluation) is always shown. A schedule that the
    budget reduces to one-shot pruning is reported as a `warning:` line (on stderr) before training."""
    cu.check_fraction("--sparsity", sparsity, "the fraction of prunable weights to remove")
    cu.check_min("--epochs", epochs, 2, "7")
    cu.check_min("--train-epochs", train_epochs, 1, "4")
    if train_epochs is not None and train_epochs >= epochs:
        _fail(f"--train-epochs: {train_epochs} leaves no fine-tuning in --epochs {epochs}; use 1 .. {epochs - 1}")
    cu.check_min("--seeds", seeds, 1, "3")
    cu.check_min("--limit", limit, 1, "2000")
    cu.check_positive("--lr", lr, "3e-3")
    cu.check_positive("--finetune-lr", finetune_lr, "1e-2")
    cu.check_min("--gradual-frequency", gradual_frequency, 1, "25")
    if json_out is not None:
        co.check_file_out("--json", json_out, overwrite)
    if report is not None:
        co.check_report_out("--report", report, overwrite)
    _threads(threads)
    import prunekit as pk
    from prunekit import zoo
    from prunekit.compare import DENSE, METHODS, Recipe, compare as _compare, format_rows, planned_steps
    from prunekit.progress import StageProgress
    from prunekit.datasets import load_mnist, subset
    from prunekit.schedules import printed_warnings

    cu.check_name("--model", model, zoo.available(), kind="zoo model")
    names = cu.parse_names("--methods", methods, (DENSE, *METHODS), kind="method")
    cu.check_name("--allocation", allocation, pk.available("allocation"))
    overrides = {k: v for k, v in (("lr", lr), ("finetune_lr", finetune_lr), ("allocation", allocation),
                                   ("gradual_frequency", gradual_frequency)) if v is not None}
    try:
        recipe = Recipe(sparsity=sparsity, epochs=epochs, train_epochs=train_epochs, **overrides)
    except pk.PruneError as e:
        _fail(str(e))
    start = time.perf_counter()
    warned: list[str] = []

    def warn(message: str) -> None:
        warned.append(message)
        cu.warn(message)

    try:
        train, test = load_mnist("train"), load_mnist("test")
        if limit is not None:
            train, test = subset(train, min(limit, len(train)), seed=0), subset(test, min(limit, len(test)), seed=0)
        total = planned_steps(recipe, names, len(train), seeds)
        title = f"compare: {len(set(names) | {DENSE})} methods × {seeds} seed{'s' * (seeds != 1)}"
        with printed_warnings(warn), StageProgress(title=title, total=total, keep=False) as bars:
            rows = _compare(lambda: zoo.create(model), train, test, recipe, methods=names, seeds=range(seeds),
                            log=lambda line: console.print(line, highlight=False, markup=False), progress=bars)
    except pk.PruneError as e:
        _fail(str(e))
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
        co.write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False)
    if report is not None:
        from prunekit.cli_reports import write_compare

        write_compare(report, payload, threads)


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
        from prunekit.cli_format import inspect_text

        console.print(inspect_text(report), soft_wrap=True, markup=False, highlight=False)


@app.command()
def export(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by `pk.save`."),
    out: Path = typer.Option(..., help="The .onnx file to write (--format packed: the folder)."),
    input_shape: Optional[str] = typer.Option(None, help="Example input shape with batch dim (default: the saved spec's, else 1,1,28,28)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset, 18 or higher (default: the exporter's)."),
    int8: bool = typer.Option(False, "--int8", help="int8 weights and dynamically quantized activations (about 4x smaller)."),
    format: str = typer.Option("onnx", "--format", help="onnx (a .onnx file) or packed (a pk.save folder with model.pkpack: zeros left out, zstd-compressed)."),
    quantize: Optional[str] = typer.Option(None, help="With --format packed: none, fp16, int8, codebook or codebook:BITS."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file (or save) at --out."),
) -> None:
    """Export a model to ONNX (masks folded in) and check it against PyTorch in onnxruntime.
    The batch dimension stays dynamic. Needs the export extra (onnx, onnxscript, onnxruntime).

    With --format packed: write a pk.save folder in the packed format (smaller on disk; the
    spec of a saved SOURCE is kept) and check it by loading it back."""
    shape = _parse_shape(input_shape) if input_shape else None
    import prunekit.cli_packed as cp  # not at the top: it loads the package (and torch)

    cp.check_format("--format", format, cp.EXPORT_FORMATS)
    scheme = cp.check_quantize(quantize, format)
    if format == "packed":
        if int8 or opset is not None:
            _fail(f"{'--int8' if int8 else '--opset'} is for --format onnx; with --format packed use --quantize int8")
        co.check_save_out("--out", out, overwrite)
    else:
        co.check_file_out("--out", out, overwrite)
    import torch

    import prunekit as pk

    if format == "packed":
        model = _load_source(source)
        saved = os.path.isdir(source)
        if shape is None and saved:
            shape = cu.spec_input_shape(Path(source))
        meta = {**(cu.spec_metadata(Path(source)) if saved else {}), "input_shape": shape or MNIST_INPUT}
        cu.check_input_fits(model, shape or MNIST_INPUT, f"--input-shape {input_shape!r}" if input_shape else
                            f"SOURCE {source!r}")
        try:
            with co.new_parents_removed_on_failure(out):
                pk.save(model, out, format="packed", quantize=scheme, metadata=meta)
        except pk.PruneError as e:
            _fail(str(e))
        cp.report_packed(model, out, shape or MNIST_INPUT, scheme)
        return
    try:
        from prunekit.deploy.onnx import export_onnx_checked
    except ImportError as e:
        _fail(f"prunekit export needs the export extra: pip install prunekit[export] ({e})")
    model = _load_source(source)
    if shape is None and os.path.isdir(source):
        shape = cu.spec_input_shape(Path(source))
    try:
        torch.manual_seed(0)
        with co.new_parents_removed_on_failure(out):
            path, result = export_onnx_checked(model, torch.randn(*(shape or MNIST_INPUT)), out, opset=opset,
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
            llm_setup()
            from prunekit.llm.recipe import check_supported

            check_supported(r)
    except PruneError as e:
        _fail(str(e))
    co.check_run_out("--out", out, overwrite)
    try:
        with co.staged_folder(out) as tmp:
            metrics = run_recipe(r, tmp, progress=True, command=f"prunekit run {recipe} --out {out} --threads {threads}")
    except PruneError as e:
        _fail(str(e))
    if metrics.get("task") == "llm":
        llm_summary(metrics, title=f"{r.name}: {r.model}")
        console.print(f"Wrote {out}/model, metrics.json, recipe.yaml", highlight=False, soft_wrap=True)
        return
    b, a = metrics.get("before_pruning", metrics["before"]), metrics["after"]
    console.print(f"{r.name}: accuracy {pct(b['accuracy'])} -> {pct(a['accuracy'])}, "
                  f"nonzero params {b['nonzero_params']:,} -> {a['nonzero_params']:,}, "
                  f"params {b['params']:,} -> {a['params']:,}", soft_wrap=True)
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
    report: Optional[Path] = typer.Option(None, "--report", help="Write report.html (the sensitivity curves, their table, settings and machine), report.md and sensitivity.json into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file at --out or an earlier report at --report."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Sensitivity analysis: prune each layer alone at several sparsities and evaluate."""
    cu.check_name("--data", data, ("mnist", "digits"))
    levels = cu.parse_fractions("--sparsities", sparsities)
    cu.check_name("--granularity", granularity, ("unstructured", "channel"))
    cu.check_min("--samples", samples, 1, "2000")
    if out is not None:
        co.check_file_out("--out", out, overwrite)
    if report is not None:
        co.check_report_out("--report", report, overwrite)
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
    if report is not None:
        from prunekit.cli_reports import write_sensitivity

        write_sensitivity(report, rep, {"source": source, "data": f"{data}, {len(test):,} held-out test images",
                                        "sparsities": sparsities, "granularity": granularity, "threads": threads})


#: the shape of one input image of each --data, batch first (an MLP takes it flattened)
_DATA_SHAPES = {"mnist": [1, 1, 28, 28], "digits": [1, 1, 8, 8]}
SCHEDULES = ("oneshot", "gradual", "iterative")


def _check_results(path: Path) -> None:
    """``search --results``: a file to append runs to. An existing one must hold the runs of
    an earlier search (JSON lines with a ``key``; the last line may be cut short), so that
    no file of the user's is appended to."""
    if path.is_dir():
        _fail(f"--results {str(path)!r} is a folder; give a file name such as {str(path / 'search.jsonl')!r}")
    co.check_writable("--results", path)
    if not path.exists():
        return
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"--results {str(path)!r} cannot be read: {e}")
    for i, line in enumerate(lines):
        try:
            run = json.loads(line)
            ok = isinstance(run, dict) and "key" in run
        except ValueError:
            ok = i == len(lines) - 1  # a line cut short by an interruption
        if not ok:
            _fail(f"--results {str(path)!r} is not a prunekit search results file (line {i + 1} is not a run); "
                  "choose another file (runs are appended to it)")


@app.command()
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
    cu.check_name("--data", data, tuple(_DATA_SHAPES))
    levels = cu.parse_fractions("--sparsities", sparsities)
    schedule_names = cu.parse_names("--schedules", schedules, SCHEDULES, kind="schedule")
    cu.check_min("--folds", folds, 2, "3")
    seed_values = cu.parse_ints("--seeds", seeds, 0, "0,1,2")
    cu.check_min("--train-epochs", train_epochs, 0, "2")
    cu.check_min("--finetune-epochs", finetune_epochs, 0, "1")
    cu.check_min("--samples", samples, 1, "3000")
    if folds > samples:
        _fail(f"--folds {folds} needs at least as many --samples, got {samples}")
    cu.check_min("--workers", workers, 1, "2")
    _check_results(results)
    if report is not None:
        from prunekit.cli_reports import check_search_report_out

        check_search_report_out("--report", report, results)
    start = time.perf_counter()
    import math

    import prunekit as pk
    from prunekit import zoo
    from prunekit.datasets import subset
    from prunekit.progress import StageProgress
    from prunekit.schedules import printed_warnings
    from prunekit.search import ZooModel, search as run_search

    cu.check_name("--model", model, zoo.available(), kind="zoo model")
    grid = {"criterion": cu.parse_names("--criteria", criteria, pk.available("criterion"), kind="criterion"),
            "allocation": cu.parse_names("--allocations", allocations, pk.available("allocation"), kind="allocation"),
            "sparsity": levels, "schedule": schedule_names}
    flat = model in ("lenet300100",)
    kwargs = {"in_features": 64} if (model == "lenet300100" and data == "digits") else {}
    shape = _DATA_SHAPES[data]
    cu.check_input_fits(ZooModel(model, kwargs)(0), [1, math.prod(shape[1:])] if flat else shape,
                        f"--model {model} does not fit --data {data}", classes=10)
    try:
        train, _ = _dataset(data, flat)
        train = subset(train, min(samples, len(train)), seed=0)
        if folds > len(train):
            _fail(f"--folds {folds} needs at least as many images; --data {data} has {len(train)}")
        with co.new_parents_removed_on_failure(results):
            results.parent.mkdir(parents=True, exist_ok=True)
            with printed_warnings(cu.warn), StageProgress() as bars:
                res = run_search(ZooModel(model, kwargs), train, grid, folds=folds, seeds=seed_values,
                                 train_epochs=train_epochs, finetune_epochs=finetune_epochs, results=results,
                                 workers=workers, progress=bars)
    except pk.PruneError as e:
        _fail(str(e))
    console.print(res.summary(), markup=False, soft_wrap=True, highlight=False)
    console.print(f"Runs in {results} (rerun the same command to resume)", highlight=False)
    if report is not None:
        from prunekit.cli_reports import write_search

        write_search(report, res, {
            "model": model, "data": f"{data}, {len(train):,} training images (--samples {samples})",
            **{f"{k} (grid)": ", ".join(map(str, v)) for k, v in grid.items()},
            "baselines": "random, magnitude (always added)",
            "folds": folds, "seeds": ", ".join(map(str, seed_values)), "train epochs": train_epochs,
            "fine-tune epochs": finetune_epochs, "results": str(results), "workers": workers,
            "wall time": f"{time.perf_counter() - start:.0f} s"}, title=f"prunekit search: {model} on {data}")


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


if __name__ == "__main__":
    raise SystemExit(main())
