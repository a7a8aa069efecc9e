"""Counting what a model computes: its example inputs, and the FLOPs of one forward pass.

Part of :mod:`prunekit.metrics` (which re-exports these names; import them from there).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul- and conv-type ops,
two FLOPs per multiply-accumulate). Per-module attribution uses forward hooks on the given
modules that read the counter's running total before and after the module runs, so a
module called twice is counted twice and names never need matching. Masks are computed
once before counting (:func:`prunekit.masking.cached`), so the mask multiply is not part of
the model's FLOPs (``FlopCounterMode`` would ignore an elementwise ``mul`` anyway).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import PruneError, PruneTypeError
from .masking import cached, original, parametrized_names


def check_example_inputs(example_inputs: object) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple of tensors, each with a batch dimension.

    Args:
        example_inputs: a tensor, or a non-empty tuple or list of tensors, each with at
            least one sample along dimension 0.

    Returns:
        The tensors as a tuple (a single tensor becomes a 1-tuple).

    Raises:
        PruneTypeError: anything else.
        PruneError: a tensor with no batch dimension or an empty one.
    """
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple = (example_inputs,)
    elif isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        inputs = tuple(example_inputs)
    else:
        raise PruneTypeError(
            "example_inputs must be a torch.Tensor with a batch dimension or a tuple of them, "
            f"got {_describe(example_inputs)}"
        )
    for t in inputs:
        if t.dim() == 0 or t.shape[0] < 1:
            raise PruneError(
                f"example_inputs need a batch dimension with at least one sample; got shape {tuple(t.shape)}"
            )
    return inputs


def _describe(obj: object) -> str:
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of ({', '.join(type(o).__name__ for o in obj)})"
    return type(obj).__name__


def describe_shapes(inputs: tuple[torch.Tensor, ...]) -> str:
    """The inputs' shapes for a message: ``(4, 7)`` for one tensor, a list for several."""
    shapes = [tuple(t.shape) for t in inputs]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def resize_batch(inputs: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """The inputs with exactly ``n`` samples, their rows repeated or cut as needed.

    Args:
        inputs: tensors with a batch dimension, as :func:`check_example_inputs` returns.
        n: the batch size wanted, at least 1.

    Returns:
        One tensor per input, each with ``n`` rows along dimension 0.
    """
    out = []
    for t in inputs:
        reps = -(-n // t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:n] if reps > 1 else t[:n])
    return tuple(out)


def _numel(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, (tuple, list)):
        return sum(_numel(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_numel(o) for o in obj.values())
    return 0


def effective_by_param(model: nn.Module) -> dict[int, torch.Tensor]:
    """``{id(trainable parameter): effective tensor}`` for parametrized parameters."""
    out: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for pname in parametrized_names(module):
            stored = original(module, pname)
            if isinstance(stored, torch.Tensor):
                out[id(stored)] = getattr(module, pname).detach()
    return out


def count_flops(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], modules: list[nn.Module]
) -> tuple[int, dict[int, int], dict[int, int]]:
    """Run one forward pass and count its FLOPs, in total and per module.

    Masks are computed before counting, so the mask multiply is not counted.

    Args:
        model: the model.
        inputs: the forward pass's inputs (callers pass batch 1).
        modules: the modules to attribute FLOPs to (forward hooks read the running total).

    Returns:
        ``(total, flops, activations)``: the total FLOPs, and per ``id(module)`` its FLOPs
        and the elements of its inputs plus outputs.
    """
    flops: dict[int, int] = {}
    acts: dict[int, int] = {}
    start: dict[int, int] = {}
    counter = FlopCounterMode(display=False)

    def pre(mod: nn.Module, args: Any) -> None:
        start[id(mod)] = counter.get_total_flops()

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        key = id(mod)
        flops[key] = flops.get(key, 0) + counter.get_total_flops() - start.pop(key)
        acts[key] = acts.get(key, 0) + _numel(args) + _numel(out)

    handles = []
    for m in modules:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        # no_grad, not inference_mode: FlopCounterMode's module tracker fails to read
        # parametrized weights under inference_mode.
        with torch.no_grad(), cached():
            for m in model.modules():
                for pname in parametrized_names(m):
                    getattr(m, pname)  # fill the cache outside the counter
            with counter:
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()), flops, acts
