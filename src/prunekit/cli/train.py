"""``prunekit demo | train | evaluate``: the commands that train and evaluate on MNIST (and
digits, or data of your own for ``evaluate``).

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

from prunekit.cli import checks, output
from prunekit.cli.checks import MNIST_INPUT
from prunekit.cli.common import console, fail, handles_errors, threads_option
from prunekit.cli.data import BUILTIN, check_data, is_factory, load_factory
from prunekit.cli.format import pct


@handles_errors(outputs=("out",))
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
    threads: int | None = threads_option(),
) -> None:
    """Prune a trained model on real MNIST, fine-tune briefly, and print a before/after table."""
    if model not in ("mnistnet", "lenet300100"):
        fail(f"--model {model!r} is not available for the demo; use 'mnistnet' or 'lenet300100'")
    checks.check_prune_options(sparsity, criterion, "unstructured", allocation)
    checks.check_min("--epochs", epochs, 0, "1")
    checks.check_positive("--lr", lr, "1e-3")
    checks.check_min("--train-samples", train_samples, 1, "50000")
    output.check_save_out("--out", out, overwrite, own_demo=True)
    threads = checks.set_threads(threads)
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
    saved = pk.save(net, out, metadata={"input_shape": MNIST_INPUT, "test_accuracy": acc2, "demo": model})
    console.print(compare_table(before, after, before_acc=acc0, after_acc=acc2,
                                title=f"{model} on MNIST test (10,000 images): dense → {sparsity:.0%} pruned"))
    console.print(
        "Notes: the pruned model is still stored and run densely, so latency and raw size do not change; "
        "zeros show in nonzero params, effective FLOPs and the compressed size. Energy is an estimate "
        f"(Horowitz, ISSCC 2014); with sparse storage it would be {after.compute_uj + after.memory_uj_sparse_storage:.1f} µJ."
    )
    console.print(f"Saved to {saved} · total {time.perf_counter() - start:.0f} s · threads {threads}")


@handles_errors(outputs=("out",))
def train(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save` (its zeros stay zero)."),
    out: Path = typer.Option(..., help="Folder to write the trained model to."),
    epochs: int = typer.Option(1, help="Epochs over the MNIST training split (50,000 images)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(128, help="Batch size."),
    seed: int = typer.Option(0, help="Seed for initialization order and shuffling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prunekit save at --out."),
    threads: int | None = threads_option(),
) -> None:
    """Train or fine-tune a model on MNIST; a pruned model keeps its zeros. Prints test accuracy."""
    checks.check_min("--epochs", epochs, 0, "1")
    checks.check_positive("--lr", lr, "1e-3")
    checks.check_min("--batch-size", batch_size, 1, "128")
    checks.check_min("--seed", seed, 0, "0")
    output.check_save_out("--out", out, overwrite)
    threads = checks.set_threads(threads)
    import prunekit as pk
    from prunekit.datasets import load_mnist
    from prunekit.masking import mask_zeros
    from prunekit.progress import fit_with_progress
    from prunekit.train import evaluate

    model = checks.load_source(source)
    checks.check_mnist_fits(model, source)
    mask_zeros(model)  # a sparse model keeps its zeros while it trains
    fit_with_progress(f"training {source} on MNIST", model, load_mnist("train"), epochs=epochs, lr=lr,
                      batch_size=batch_size, seed=seed)
    acc = evaluate(model, load_mnist("test"))
    sp = pk.sparsity(model)
    pk.commit(model)
    pk.save(model, out, metadata={"input_shape": MNIST_INPUT, "data": {"name": "mnist", "flatten": False},
                                  "test_accuracy": acc})
    console.print(f"test accuracy {pct(acc)} · sparsity {pct(sp)} · saved to {out}", highlight=False, soft_wrap=True)


@handles_errors
def evaluate(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save`."),
    data: Optional[str] = typer.Option(None, help="mnist, digits, or MODULE:FUNCTION (a function of yours returning a Dataset, a DataLoader or an (inputs, labels) pair; the current folder is searched first). Default: the data the saved model records, else mnist."),
    threads: int | None = threads_option(),
) -> None:
    """Accuracy on a test split (MNIST: 10,000 images; digits: 450; or your own data) and sparsity of a model.

    A folder written by `prunekit run` records its data set, so no flag is needed."""
    check_data("--data", data)
    recorded = checks.spec_data(Path(source)) if os.path.isdir(source) else None
    name = data or (recorded or {}).get("name") or "mnist"
    if name not in BUILTIN:
        check_data("--data", name)
    if is_factory(name):
        threads = checks.set_threads(threads)
        import prunekit as pk
        from prunekit.train import evaluate as _evaluate

        model = checks.load_source(source)
        test = load_factory("--data", name)
        try:
            acc = _evaluate(model, test)
        except Exception as e:  # noqa: BLE001 - a shape or type mismatch with the user's data
            fail(f"--data {name!r}: evaluating SOURCE {source!r} on it failed: {type(e).__name__}: {e}")
        console.print(f"{name} accuracy {pct(acc)} · sparsity {pct(pk.sparsity(model))}", highlight=False)
        return
    flatten = bool((recorded or {}).get("flatten", False)) if recorded and recorded.get("name") == name else False
    threads = checks.set_threads(threads)
    import prunekit as pk
    from prunekit.datasets import load_digits, load_mnist
    from prunekit.train import evaluate as _evaluate

    model = checks.load_source(source)
    if name == "mnist":
        checks.check_mnist_fits(model, source)
        test = load_mnist("test", flatten=flatten)
    else:
        test = load_digits("test", flatten=flatten)
        checks.check_input_fits(model, [1, *test.tensors[0].shape[1:]], f"SOURCE {source!r} does not take {name} inputs",
                                classes=10)
    acc = _evaluate(model, test)
    console.print(f"{name} test accuracy {pct(acc)} · sparsity {pct(pk.sparsity(model))}", highlight=False)
