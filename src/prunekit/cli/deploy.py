"""``prunekit measure | inspect | export``: look at a model and ship it.

``measure`` gives what was really gained (parameters, nonzeros, FLOPs, latency, size,
energy; ``--advise`` also times the deployable forms), ``inspect`` lists what can be pruned
without changing anything, ``export`` writes ONNX checked in onnxruntime, or the packed
format (:mod:`prunekit.cli.packed`).

This module imports neither torch nor the rest of prunekit at import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import typer

from prunekit.cli import checks, output, packed
from prunekit.cli.checks import MNIST_INPUT
from prunekit.cli.common import console, expected_errors, fail, handles_errors, print_json, threads_option
from prunekit.cli.format import inspect_text


@handles_errors
def measure(
    path: Path = typer.Argument(..., help="A folder written by `pk.save` / `prunekit prune`, or a zoo model name."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch dim, e.g. 1,1,28,28 (default: from the saved spec; 1,1,28,28 for zoo models)."),
    batch_size: int = typer.Option(64, help="Batch size for the second latency figure."),
    threads: int | None = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and nothing else) on stdout instead of a table."),
    advise: bool = typer.Option(False, "--advise", help="Also measure the deployable forms (compacted, CSR, packed) and name the fastest and smallest."),
    runtime: str = typer.Option("eager", help="Where latency is timed: eager, torchscript, compile or onnxruntime."),
    batch_sizes: Optional[str] = typer.Option(None, help="Also time these batch sizes, e.g. 1,8,64 (a sweep)."),
) -> None:
    """Measure a saved model: parameters, nonzeros, zeros among all parameters, FLOPs,
    latency, size, energy estimate. Warns when the machine is too busy for honest latency."""
    shape = checks.parse_shape(input_shape) if input_shape else None
    checks.check_min("--batch-size", batch_size, 1, "64")
    checks.check_name("--runtime", runtime, ("eager", "torchscript", "compile", "onnxruntime"))
    sweep = None
    if batch_sizes is not None:
        try:
            sweep = [int(b) for b in batch_sizes.split(",")]
        except ValueError:
            fail(f"--batch-sizes must be comma-separated whole numbers such as 1,8,64; got {batch_sizes!r}")
        for b in sweep:
            checks.check_min("--batch-sizes", b, 1, "1,8,64")
    threads = checks.set_threads(threads)
    import torch

    import prunekit as pk

    from prunekit import zoo

    if not path.exists() and str(path) in zoo.available():
        model = checks.load_source(str(path))  # a zoo model, as every other command accepts
        shape = shape or list(MNIST_INPUT)
    else:
        with expected_errors(prefix=f"PATH {str(path)!r}: "):
            model = pk.load(path)
    inputs = checks.source_inputs(path, shape)
    if inputs is None:
        fail(f"PATH {str(path)!r} does not record an input shape; pass --input-shape, e.g. 1,1,28,28")
    if shape is None:
        where = f"PATH {str(path)!r}: the inputs {checks.describe_inputs(inputs)} recorded in its spec"
    else:
        where = f"--input-shape {input_shape!r}"
    checks.check_input_fits(model, inputs, where)
    x = inputs[0] if len(inputs) == 1 else inputs
    with expected_errors(ImportError, prefix=f"--runtime {runtime}: "):
        m = pk.measure(model, x, batch_size=batch_size, runtime=runtime, batch_sizes=sweep)
    adv = None
    if advise:
        from prunekit.deploy import advise as _advise

        adv = _advise(model, x, batch_size=batch_size)
    if as_json:
        print_json({**m.as_dict(), **({"advise": adv.to_dict()} if adv is not None else {})})
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


@handles_errors
def inspect(
    source: str = typer.Argument(..., help="A zoo name or a folder written by `pk.save`."),
    input_shape: Optional[str] = typer.Option(None, help="Input shape with batch dim (default: the saved spec's; 1,1,28,28 for a zoo name)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (and nothing else) on stdout instead of text."),
) -> None:
    """Dry run: list the prunable channel groups, their coupling and sizes, the head
    constraints, and every op that keeps channels (and why). Changes nothing."""
    shape = checks.parse_shape(input_shape) if input_shape else None
    import torch

    import prunekit as pk

    model = checks.load_source(source)
    inputs = checks.command_inputs(source, shape)
    with expected_errors(prefix=f"--input-shape {input_shape!r}: " if input_shape else ""):
        report = pk.inspect(model, inputs[0] if len(inputs) == 1 else inputs)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(inspect_text(report), soft_wrap=True, markup=False, highlight=False)


@handles_errors(outputs=("out",))
def export(
    source: str = typer.Argument(..., help="A zoo name (mnistnet is pretrained) or a folder written by `pk.save`."),
    out: Path = typer.Option(..., help="The .onnx file to write (--format packed: the folder)."),
    input_shape: Optional[str] = typer.Option(None, help="Example input shape with batch dim (default: the saved spec's; 1,1,28,28 for a zoo name)."),
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
    shape = checks.parse_shape(input_shape) if input_shape else None
    packed.check_format("--format", format, packed.EXPORT_FORMATS)
    scheme = packed.check_quantize(quantize, format)
    if format == "packed":
        if int8 or opset is not None:
            fail(f"{'--int8' if int8 else '--opset'} is for --format onnx; with --format packed use --quantize int8")
        output.check_save_out("--out", out, overwrite)
    else:
        output.check_file_out("--out", out, overwrite)
    import torch

    import prunekit as pk

    torch.manual_seed(0)  # the same example inputs on every run
    inputs = checks.command_inputs(source, shape)
    if format == "packed":
        model = checks.load_source(source)
        saved = os.path.isdir(source)
        meta = checks.spec_metadata(Path(source)) if saved else {}
        if shape is not None or not saved:  # the inputs given (or the default) replace the recorded ones
            meta = {k: v for k, v in meta.items() if k not in ("input_shapes", "input_dtypes")}
            meta.update(input_shape=list(inputs[0].shape), input_dtype=str(inputs[0].dtype))
        checks.check_input_fits(model, inputs, f"--input-shape {input_shape!r}" if input_shape else
                                f"SOURCE {source!r}")
        existed = os.path.exists(out)
        pk.save(model, out, format="packed", quantize=scheme, metadata=meta)
        try:
            packed.report_packed(model, out, inputs, scheme)
        except BaseException:
            if not existed:  # a folder that does not load back is not left behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        return
    try:
        from prunekit.deploy.onnx import export_onnx_checked
    except ImportError as e:
        fail(f"prunekit export needs the export extra: pip install prunekit[export] ({e})")
    model = checks.load_source(source)
    checks.check_input_fits(model, inputs, f"--input-shape {input_shape!r}" if input_shape else f"SOURCE {source!r}")
    path, result = export_onnx_checked(model, inputs[0] if len(inputs) == 1 else inputs, out, opset=opset,
                                       quantize="int8" if int8 else None)
    console.print(f"wrote {path} ({path.stat().st_size:,} bytes)", highlight=False, soft_wrap=True)
    console.print(
        f"parity check (onnxruntime vs PyTorch, input {checks.describe_inputs(inputs)}): passed, "
        f"max abs difference {result.max_abs_diff:.3g} (rtol {result.rtol:g}, atol {result.atol:g})",
        highlight=False, soft_wrap=True,
    )
