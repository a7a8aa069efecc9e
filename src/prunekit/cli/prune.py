"""``prunekit prune``: prune a model in one shot, commit the masks and save it.

What it calibrates on, what it evaluates on, and its options that mirror ``pk.prune``'s
(``--threshold``, ``--block-shape``, ``--ignore``):

* A zoo model: MNIST (calibration from the training split, accuracy on the 10,000 test
  images). Only ``mnistnet`` has trained weights; the others are pruned untrained, and a
  ``note:`` line says so.
* A saved folder whose spec records its data set (``prunekit run``, ``prunekit train`` and
  ``prunekit prune`` write it): that data set, MNIST or digits, for both.
* A saved folder that records none: MNIST calibration, and one line saying why no
  accuracy is shown.

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from prunekit.cli import checks, output, packed
from prunekit.cli.checks import MNIST_INPUT
from prunekit.cli.common import console, fail, handles_errors, threads_option
from prunekit.cli.format import pct, points, prune_tables, prune_totals


@handles_errors(outputs=("out",))
def prune(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by `pk.save`."),
    out: Path = typer.Option(..., help="Folder to write the pruned model to."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of prunable weights to remove, in [0, 1) (not for N:M)."),
    threshold: Optional[float] = typer.Option(None, help="Instead of --sparsity: remove units whose per-layer normalized score is <= this, in [0, 1] (allocation global, uniform or lamp)."),
    criterion: str = typer.Option("magnitude", help="Importance criterion."),
    granularity: str = typer.Option("unstructured", help="unstructured, channel, head, block, or N:M such as 2:4."),
    block_shape: Optional[str] = typer.Option(None, help="With --granularity block: ROWS,COLS of a block, e.g. 4,4."),
    allocation: str = typer.Option("global", help="global, uniform, lamp, erk, row, owl, depth; latency with --latency."),
    latency: Optional[str] = typer.Option(None, help="Instead of --sparsity, with --granularity channel: a latency target measured on this machine, a fraction of the dense model's (0.5) or milliseconds (2.5ms)."),
    runtime: Optional[str] = typer.Option(None, help="With --latency: where latency is measured: eager (default), torchscript, compile or onnxruntime."),
    latency_batch: Optional[int] = typer.Option(None, help="With --latency: the batch size timed (64)."),
    ignore: Optional[list[str]] = typer.Option(None, help="A weight or module name, or a pattern such as 'classifier.*', to leave dense; repeat the option or separate with commas."),
    calibration: int = typer.Option(8, help="Batches of 128 training images for data-driven criteria (MNIST, or the data set the saved folder records)."),
    compact: bool = typer.Option(False, "--compact", help="With channel/head granularity: save the physically smaller model."),
    format: str = typer.Option("safetensors", "--format", help="safetensors (exact) or packed (model.pkpack: zeros left out, zstd-compressed; pk.load reads both)."),
    quantize: Optional[str] = typer.Option(None, help="With --format packed: none, fp16, int8, codebook or codebook:BITS."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prunekit save at --out."),
    threads: int | None = threads_option(),
) -> None:
    """Prune a model (one shot, masks committed) and save it; prints accuracy before and after.

    Calibration and test data: MNIST for zoo models; for a saved folder, the data set its
    spec records (MNIST or digits)."""
    target = check_latency(latency, runtime, latency_batch, sparsity, threshold, granularity, allocation)
    if allocation == "latency" and target is None:
        fail("--allocation latency spends a latency target: give it with --latency (0.5 of dense, or 2.5ms) "
             "and --granularity channel")
    checks.check_prune_options(sparsity, criterion, granularity, "global" if target else allocation, threshold,
                               latency=target is not None)
    check_threshold(threshold, sparsity, granularity, allocation)
    blocks = parse_block_shape(block_shape, granularity)
    patterns = parse_ignore(ignore)
    checks.check_min("--calibration", calibration, 1, "8")
    if compact and granularity not in ("channel", "head"):
        fail(f"--compact needs --granularity channel or head, got {granularity!r}")
    packed.check_format("--format", format, packed.SAVE_FORMATS)
    scheme = packed.check_quantize(quantize, format)
    output.check_save_out("--out", out, overwrite)
    threads = checks.set_threads(threads)
    import torch
    import torch.nn.functional as F

    import prunekit as pk
    from prunekit.train import evaluate as _evaluate

    data = prune_data(source)
    model = checks.load_source(source)
    check_fits(model, source, data)
    options = {k: v for k, v in (("threshold", threshold), ("block_shape", blocks), ("ignore", patterns)) if v}
    how: Any = allocation
    if target is not None:
        from prunekit.allocation.latency import LatencyAllocation

        how = LatencyAllocation(target, runtime=runtime or "eager", batch_size=latency_batch or 64)
    calib, test = load_data(data, calibration)
    loader = torch.utils.data.DataLoader(calib, batch_size=128)
    x = calib.tensors[0][:8]
    acc0 = _evaluate(model, test) if test is not None else None
    try:
        res = pk.prune(model, sparsity, criterion=criterion, granularity=granularity, allocation=how,
                       data=loader, loss_fn=F.cross_entropy, example_inputs=x, **options)
    except pk.PruneError as e:
        fail(f"--ignore: {e}" if str(e).startswith("ignore patterns") else str(e))
    if compact:
        model = pk.compact(model, x)
    acc1 = _evaluate(model, test) if test is not None else None
    pk.commit(model)
    acc_float = None
    if scheme is not None and acc1 is not None:  # what the file holds: the quantized values
        from prunekit.deploy import quantized

        acc_float, acc1 = acc1, _evaluate(quantized(model, scheme), test)
    meta = {"input_shape": data.input_shape, "data": data.record, "pruned": res.config}
    if acc1 is not None:
        meta["test_accuracy"] = acc1
    if acc_float is not None:
        meta["test_accuracy_before_quantization"] = acc_float
    if target is not None:
        meta["latency"] = {"runtime": how.runtime, "batch_size": how.batch_size, "dense_ms": how.dense_ms_,
                           "measured_ms": how.measured_ms_, "target": target,
                           "measured_allocations": sum("measured_ms" in s for s in how.history_)}
    pk.save(model, out, metadata=meta, format=format, quantize=scheme)
    if data.note:
        console.print(data.note, highlight=False, soft_wrap=True)
    for table in prune_tables(res, f"{source}: pruned weights"):
        console.print(table)
    for line in prune_totals(res):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if target is not None:
        console.print(latency_line(how), highlight=False, soft_wrap=True, markup=False)
    if acc0 is not None and acc1 is not None:
        line = accuracy_line(data, acc0, acc1)
        if acc_float is not None:
            line += f" with the {scheme} values saved ({pct(acc_float)} before quantization)"
        console.print(line, highlight=False, soft_wrap=True)
    else:
        console.print(data.why_not, highlight=False, soft_wrap=True, markup=False)
    if format == "packed":
        torch.manual_seed(0)
        packed.report_packed(model, out, checks.example_inputs([data.input_shape]), scheme)
    else:
        console.print(f"Saved to {out}", highlight=False, soft_wrap=True)


# --- a latency target ------------------------------------------------------------------------


def check_latency(latency: Optional[str], runtime: Optional[str], batch: Optional[int], sparsity: Optional[float],
                  threshold: Optional[float], granularity: str, allocation: str) -> Any:
    """The target ``--latency`` gives (a fraction of dense or ``"2.5ms"``), or None; checks
    the options that go with it before anything is loaded."""
    if latency is None:
        for flag, value in (("--runtime", runtime), ("--latency-batch", batch)):
            if value is not None:
                fail(f"{flag} sets how --latency is measured; give --latency too (e.g. --latency 0.5)")
        return None
    if sparsity is not None or threshold is not None:
        fail("give --latency or --sparsity/--threshold, not both: the latency target decides how much goes")
    if granularity not in ("channel", "head"):
        fail(f"--latency removes coupled channels or heads: use --granularity channel (or head), not {granularity!r}")
    if allocation not in ("global", "latency"):
        fail(f"--latency spends its target with --allocation latency; --allocation {allocation} cannot take it")
    from prunekit import PruneError
    from prunekit.allocation.latency import parse_target
    from prunekit.metrics_timing import RUNTIMES

    text = latency.strip()
    try:
        kind, value = parse_target(text if text.lower().endswith("ms") else float(text))
    except (PruneError, ValueError):
        fail(f"--latency: {latency!r} is not a latency target (expected a fraction of the dense latency in (0, 1] "
             "such as 0.5, or milliseconds such as 2.5ms)")
    if runtime is not None:
        checks.check_name("--runtime", runtime, RUNTIMES)
    if batch is not None:
        checks.check_min("--latency-batch", batch, 1, "64")
    return f"{value}ms" if kind == "ms" else value


def latency_line(alloc: Any) -> str:
    """One line: the target, what the chosen configuration measured, and whether it meets it."""
    steps = [s for s in alloc.history_ if "measured_ms" in s]
    pick = next((s for s in steps if s["measured_ms"] == alloc.measured_ms_), steps[-1])
    verdict = "meets it" if pick["ok"] else "misses it (the fastest configuration allowed; see docs/latency.md)"
    return (f"latency ({alloc.runtime}, batch {alloc.batch_size}): dense {alloc.dense_ms_:.3f} ms, target "
            f"{pick['target_ms']:.3f} ms, pruned {alloc.measured_ms_:.3f} ms measured after {len(steps)} measured "
            f"allocation(s): {verdict}")


# --- the data it calibrates and evaluates on --------------------------------------------------

#: the data sets ``prunekit prune`` can load, and their test split's size
TEST_IMAGES = {"mnist": "10,000", "digits": "450"}


@dataclass(frozen=True)
class PruneData:
    name: str  # "mnist" or "digits"
    flatten: bool
    input_shape: list[int]
    evaluate: bool  # accuracy before and after is printed
    why_not: Optional[str] = None  # when not: the one line that says why
    note: Optional[str] = None  # printed before the tables (an untrained zoo model)

    @property
    def record(self) -> dict[str, Any]:
        """What the pruned model's spec records, so that ``evaluate`` needs no flag."""
        return {"name": self.name, "flatten": self.flatten}


def _default_shape(name: str, flatten: bool) -> list[int]:
    if name == "digits":
        return [1, 64] if flatten else [1, 1, 8, 8]
    return [1, 784] if flatten else list(MNIST_INPUT)


def prune_data(source: str) -> PruneData:
    """Where ``prunekit prune SOURCE`` gets its data (reads the spec only; no torch)."""
    if not os.path.isdir(source):
        note = None
        if source != "mnistnet":
            note = (f"note: {source} has no trained weights (only mnistnet is pretrained), so its accuracy is "
                    f"near chance before and after; train it first: prunekit train {source} --out DIR")
        return PruneData("mnist", False, list(MNIST_INPUT), True, note=note)
    folder = Path(source)
    recorded = checks.spec_data(folder)
    shape = checks.spec_input_shape(folder)
    if recorded is None:
        return PruneData("mnist", False, shape or list(MNIST_INPUT), False,
                         why_not=f"no accuracy shown: SOURCE {source!r} does not record its data set "
                                 "(saved without it); calibrated on MNIST")
    name, flatten = recorded["name"], bool(recorded.get("flatten", False))
    if name not in TEST_IMAGES:
        return PruneData("mnist", False, shape or list(MNIST_INPUT), False,
                         why_not=f"no accuracy shown: SOURCE {source!r} records the data set {name!r}, which "
                                 "prunekit prune cannot load (mnist, digits); calibrated on MNIST")
    return PruneData(name, flatten, shape or _default_shape(name, flatten), True)


def load_data(data: PruneData, calibration_batches: int) -> tuple[Any, Any]:
    """(calibration subset of the training split, test split or None)."""
    from prunekit.datasets import load_digits, load_mnist, subset

    loader = load_mnist if data.name == "mnist" else load_digits
    train = loader("train", flatten=data.flatten)
    calib = subset(train, min(len(train), 128 * calibration_batches), seed=0)
    return calib, (loader("test", flatten=data.flatten) if data.evaluate else None)


def check_fits(model: Any, source: str, data: PruneData) -> None:
    """The model takes the data set's inputs (a clear error before any work)."""
    if data.name == "mnist" and data.input_shape == MNIST_INPUT:
        checks.check_mnist_fits(model, source, classes=None)
    else:
        checks.check_input_fits(model, data.input_shape,
                                f"SOURCE {source!r} does not take {data.name} inputs of shape {data.input_shape}")


def accuracy_line(data: PruneData, before: float, after: float) -> str:
    return (f"accuracy on the {data.name} test set ({TEST_IMAGES[data.name]} images): "
            f"{pct(before)} before, {pct(after)} after ({points(before, after)})")


# --- the options that mirror pk.prune's -------------------------------------------------------


def parse_block_shape(text: Optional[str], granularity: str) -> Optional[tuple[int, int]]:
    """``"4,4"`` or ``"4x4"`` -> ``(4, 4)``; only with ``--granularity block``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        fail(f"--block-shape: {text!r} is not a block shape (expected two positive integers ROWS,COLS, e.g. 4,4)")
    if granularity != "block":
        fail(f"--block-shape {text!r} applies only to --granularity block, got --granularity {granularity}")
    return shape  # type: ignore[return-value]


def check_threshold(threshold: Optional[float], sparsity: Optional[float], granularity: str,
                    allocation: str) -> None:
    """--threshold in [0, 1], instead of --sparsity, with an allocation that supports it."""
    if threshold is None:
        return
    if not 0 <= threshold <= 1:
        fail(f"--threshold: {threshold!r} is outside [0, 1] (the normalized score at or below which "
             "units are removed, e.g. 0.1)")
    if sparsity is not None:
        fail(f"give --sparsity or --threshold, not both (got --sparsity {sparsity!r} and --threshold {threshold!r})")
    if ":" in granularity:
        fail(f"--threshold {threshold!r} does not apply to N:M granularity {granularity}")
    import prunekit as pk
    from prunekit.registry import create

    ok = [n for n in pk.available("allocation") if create("allocation", n).supports_threshold]
    if allocation not in ok:
        fail(f"--threshold {threshold!r} does not work with --allocation {allocation}; "
             f"it works with {', '.join(ok)}")


def parse_ignore(values: Optional[Sequence[str]]) -> list[str]:
    """Repeated ``--ignore`` values, each also split at commas; an empty one is an error."""
    patterns: list[str] = []
    for v in values or ():
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts:
            fail(f"--ignore: {v!r} names no weight or module (expected a name or a pattern such as 'classifier.*')")
        patterns.extend(parts)
    return patterns
