"""The checks that run before a command's work: options, sources and input shapes.

Each check fails with one ``error:`` line naming the option and the value
(:func:`prunekit.cli.common.fail`). This module imports neither torch nor the rest of
prunekit at import time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit.cli.common import fail, one_line

MNIST_INPUT = [1, 1, 28, 28]


# --- option checks --------------------------------------------------------------------------


def check_min(option: str, value: int | None, lo: int, example: str = "") -> None:
    """An integer option is >= ``lo`` (None passes)."""
    if value is not None and not value >= lo:
        fail(f"{option}: {value!r} is too small (expected an integer >= {lo}{', e.g. ' + example if example else ''})")


def check_llm_run(calib_windows: int | None, seqlen: int | None, batch_size: int | None, seed: int | None,
                  threads: int | None, seqlen_example: str = "512") -> None:
    """The options every LLM command that calibrates shares: windows, their length, batch
    size, seed and threads."""
    check_min("--calib-windows", calib_windows, 1, "64")
    check_min("--seqlen", seqlen, 2, seqlen_example)
    check_min("--batch-size", batch_size, 1, "8")
    check_min("--seed", seed, 0, "0")
    check_min("--threads", threads, 1, "2")


def check_positive(option: str, value: float | None, example: str) -> None:
    """A number option is > 0 (None passes)."""
    if value is not None and not value > 0:
        fail(f"{option}: {value!r} is not allowed (expected a number > 0, e.g. {example})")


def check_fraction(option: str, value: float | None, meaning: str) -> None:
    """``value`` in [0, 1) (None passes); ``meaning`` says what the number is."""
    if value is not None and not 0 <= value < 1:
        fail(f"{option}: {value!r} is outside [0, 1) ({meaning}, e.g. 0.9)")


def check_name(option: str, value: str | None, accepted: Sequence[str], extra: str = "", *, kind: str = "") -> None:
    """``value`` is one of the ``accepted`` names (None passes); the error lists them (then
    ``extra``) and calls the value a ``kind`` (default: the option's name)."""
    if value is not None and value not in accepted:
        fail(f"{option}: unknown {kind or option.lstrip('-')} {value!r}; available: {', '.join(accepted)}{extra}")


def parse_names(option: str, text: str, accepted: Sequence[str], *, kind: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; every name must be one of ``accepted``, and at least one given."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        fail(f"{option}: {text!r} names no {kind} (expected comma-separated names from: {', '.join(accepted)})")
    for name in names:
        check_name(option, name, accepted, kind=kind)
    return names


def parse_ints(option: str, text: str, lo: int, example: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; every value must be an integer >= ``lo``."""
    expected = f"expected comma-separated integers >= {lo}, e.g. {example}"
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            fail(f"{option}: {part!r} is not an integer ({expected})")
        if v < lo:
            fail(f"{option}: {part} is too small ({expected})")
        values.append(v)
    if not values:
        fail(f"{option}: {text!r} holds no number ({expected})")
    return values


def parse_fractions(option: str, text: str) -> list[float]:
    """``"0.5,0.9"`` -> ``[0.5, 0.9]``; every value must be a number in [0, 1)."""
    expected = "expected comma-separated numbers in [0, 1), e.g. 0.5,0.9"
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            fail(f"{option}: {part!r} is not a number ({expected})")
        if not 0 <= v < 1:
            fail(f"{option}: {part} is outside [0, 1) ({expected})")
        values.append(v)
    if not values:
        fail(f"{option}: {text!r} holds no number ({expected})")
    return values


def parse_shape(text: str) -> list[int]:
    """``"1,1,28,28"`` (or ``1x1x28x28``) -> ``[1, 1, 28, 28]``."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip())]
    shape = [int(p) for p in parts] if all(p.isdigit() for p in parts) else []  # "1,x" is not [1]
    if not shape or any(s < 1 for s in shape):
        fail(f"--input-shape {text!r} must be positive integers separated by commas, batch first, e.g. 1,1,28,28")
    return shape


def check_input_fits(model: Any, shape: Sequence[int] | tuple[Any, ...], where: str, classes: int | None = None) -> None:
    """Run ``model`` once on zeros of ``shape`` (or on ``shape`` itself when it is a tuple of
    tensors: :func:`example_inputs`); fail naming ``where`` when it does not fit (or, with
    ``classes``, does not give that many outputs). The model is left as it was."""
    import torch

    inputs = tuple(shape) if shape and isinstance(shape[0], torch.Tensor) else (torch.zeros(*shape),)
    shown = str(tuple(inputs[0].shape)) if len(inputs) == 1 and inputs[0].is_floating_point() else describe_inputs(inputs)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            out = model(*inputs)
    except Exception as e:
        fail(f"{where}: inputs of shape {shown} do not run through {type(model).__name__}: "
             f"{type(e).__name__}: {one_line(str(e))}")
    finally:
        for m, mode in modes.items():
            m.training = mode
    if classes is not None and not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        fail(f"{where}: {type(model).__name__} gives outputs of shape {got} for inputs {shown}; "
             f"a {classes}-class classifier is needed")


def set_threads(threads: int | None) -> int:
    """Check --threads and give torch that many intra-op threads (imports torch); return
    the number torch uses (``None``: left as torch set it, from ``OMP_NUM_THREADS`` or the
    machine's cores)."""
    check_min("--threads", threads, 1, "2")
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_prune_options(sparsity: float | None, criterion: str, granularity: str, allocation: str,
                        threshold: float | None = None, *, latency: bool = False) -> None:
    """--sparsity, --criterion, --granularity and --allocation, before anything is loaded
    (``threshold``: ``prunekit prune --threshold``, and ``latency``: ``--latency``, which
    stand in for --sparsity)."""
    import prunekit as pk
    from prunekit.granularity import NM, make

    check_fraction("--sparsity", sparsity, "the fraction of prunable weights to remove")
    check_name("--criterion", criterion, pk.available("criterion"))
    check_name("--allocation", allocation, pk.available("allocation"))
    if allocation == "latency":
        fail("--allocation latency spends a latency target, which this command does not take: use "
             "pk.prune(model, allocation='latency', latency=0.5, granularity='channel', example_inputs=x) in Python")
    try:
        g = make(granularity)
    except pk.PruneError as e:
        nm = " (or N:M such as 2:4)" if str(e).startswith("unknown") else ""
        fail(f"--granularity: {e}{nm}")
    if sparsity is None and threshold is None and not latency and not isinstance(g, NM):
        fail(f"--sparsity is needed with --granularity {granularity} (e.g. --sparsity 0.9); "
             "only N:M granularities such as 2:4 fix the sparsity themselves")


# --- sources ---------------------------------------------------------------------------------


def load_source(source: str) -> Any:
    """A zoo model (mnistnet with its trained weights) or a folder written by ``pk.save``."""
    import prunekit as pk
    from prunekit import zoo

    if os.path.isdir(source):
        try:
            return pk.load(source)
        except pk.PruneError as e:
            fail(f"SOURCE {source!r}: {e}")
    if os.path.exists(source):
        fail(f"SOURCE {source!r} is a file; give a zoo model ({', '.join(zoo.available())}) "
             "or a folder written by pk.save / prunekit prune")
    if source in zoo.available():
        return zoo.create(source, pretrained=source == "mnistnet")
    fail(f"SOURCE {source!r} is neither a saved folder nor a zoo model ({', '.join(zoo.available())})")


def spec_metadata(folder: Path) -> dict[str, Any]:
    """The ``metadata`` a saved folder's spec records (empty if none or unreadable)."""
    try:
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    meta = spec.get("metadata") if isinstance(spec, dict) else None
    return meta if isinstance(meta, dict) else {}


def spec_input_shape(folder: Path) -> list[int] | None:
    """The ``input_shape`` recorded in a saved folder's spec, if any."""
    shape = spec_metadata(folder).get("input_shape")
    return shape if isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape) else None


def spec_inputs(folder: Path) -> tuple[list[list[int]], list[str]] | None:
    """The example inputs a saved folder records: their shapes (batch of 1) and dtypes
    (``input_shape``/``input_dtype``, or ``input_shapes``/``input_dtypes`` for several), if any."""
    meta = spec_metadata(folder)
    shapes = meta.get("input_shapes")
    dtypes = meta.get("input_dtypes")
    if not shapes:
        one = spec_input_shape(folder)
        shapes, dtypes = ([one], [meta.get("input_dtype")]) if one else (None, None)
    ok = isinstance(shapes, list) and shapes and all(
        isinstance(x, list) and x and all(isinstance(n, int) and n > 0 for n in x) for x in shapes)
    if not ok:
        return None
    if not (isinstance(dtypes, list) and len(dtypes) == len(shapes)):
        dtypes = [None] * len(shapes)
    return shapes, [d if isinstance(d, str) else "torch.float32" for d in dtypes]


def example_inputs(shapes: Sequence[Sequence[int]], dtypes: Sequence[str] | None = None) -> tuple[Any, ...]:
    """One example tensor per shape, in its recorded dtype: random normal values for floating
    dtypes, zeros for integer and bool ones (token ids, masks: 0 is always a valid id)."""
    import torch

    out = []
    for i, shape in enumerate(shapes):
        name = (dtypes[i] if dtypes else None) or "torch.float32"
        dtype = getattr(torch, name.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            fail(f"the saved spec records input dtype {name!r}, which is not a torch dtype")
        out.append(torch.randn(*shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(*shape, dtype=dtype))
    return tuple(out)


def describe_inputs(inputs: Sequence[Any]) -> str:
    """``[1, 7] int64`` for one tensor (no dtype named when floating), ``[[1, 8], [1, 8]]``
    for several."""
    if len(inputs) == 1:
        t = inputs[0]
        return f"{list(t.shape)}" + ("" if t.is_floating_point() else f" {str(t.dtype).removeprefix('torch.')}")
    return str([list(t.shape) for t in inputs])


def source_inputs(source: str | Path, shape: Sequence[int] | None) -> tuple[Any, ...] | None:
    """Example inputs for a model: ``--input-shape`` when given (in the dtype the spec records
    for a single input), else what a saved folder's spec records; ``None`` when neither."""
    recorded = spec_inputs(Path(source)) if os.path.isdir(source) else None
    if shape is not None:
        dtype = recorded[1][0] if recorded and len(recorded[0]) == 1 else None
        return example_inputs([list(shape)], [dtype] if dtype else None)
    return example_inputs(*recorded) if recorded else None


def command_inputs(source: str, shape: Sequence[int] | None) -> tuple[Any, ...]:
    """Example inputs of a command that takes SOURCE and ``--input-shape``: the shape given,
    else what a saved folder records, else MNIST's for a zoo name; a folder that records
    no input shape fails, asking for ``--input-shape``."""
    inputs = source_inputs(source, shape)
    if inputs is not None:
        return inputs
    if os.path.isdir(source):
        fail(f"SOURCE {str(source)!r} does not record an input shape; pass --input-shape, e.g. 1,1,28,28")
    return example_inputs([MNIST_INPUT])


def spec_data(folder: Path) -> dict[str, Any] | None:
    """The data set a saved folder records (``{"name": "digits", "flatten": True}``), if any."""
    data = spec_metadata(folder).get("data")
    return data if isinstance(data, dict) and isinstance(data.get("name"), str) else None


def check_mnist_fits(model: Any, source: str, classes: int | None = 10) -> None:
    """The model takes MNIST images (1, 1, 28, 28) and gives ``classes`` scores."""
    shape = spec_input_shape(Path(source)) if os.path.isdir(source) else None
    where = f"SOURCE {source!r} is not an MNIST model" + (f" (it was saved for inputs {shape})" if shape else "")
    check_input_fits(model, MNIST_INPUT, where, classes=classes)
