"""Trace a model once and find which channel indices are coupled.

The model runs on example inputs under a ``torch.overrides.TorchFunctionMode`` that sees
every torch function, method and operator call (``F.conv2d``, ``x + y``, ``x.view(...)``,
``torch.cat``...). Unlike symbolic tracing (``torch.fx``) it follows data-dependent Python
control flow and needs no traceable ``forward``; it records the one path the example takes.

What the ids, grids and fills are, and the :class:`ChannelTracer` state every op handler
receives, are in :mod:`prunekit.graph.channels` (whose names this module re-exports); the
handlers by op name are :data:`prunekit.graph.ops.HANDLERS`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..criteria.base import call_model, preserved, rows_of
from ..errors import PruneError
from ..masking import cached
from . import opaque
from .channels import (  # noqa: F401  (re-exported: the names this module always had)
    ALONG, BINARY, CONCAT, CONV, FIXED, QUIET, REDUCE, SHAPE, SPATIAL, UNARY, ChannelTracer, Graph, Member, Note,
    UnionFind, compress, tensors_in, varying_dims,
)
from .norms import ModuleNorms
from .ops import HANDLERS


class _Recorder(TorchFunctionMode):
    def __init__(self, tracer: ChannelTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.tracer.handle(func, args, kwargs, out)
        return out


def _slice_inputs(example_inputs: Any) -> Any:
    """At most two samples: the grids are as large as the activations. Only the tensors
    that have the batch's rows are cut (not an ``(L, L)`` attention mask)."""
    return rows_of(example_inputs, slice(0, 2))


def trace(model: nn.Module, example_inputs: Any) -> Graph:
    """Run ``model`` once on (up to two samples of) ``example_inputs`` in eval mode and
    return the coupling :class:`Graph`. The model is left exactly as it was."""
    if example_inputs is None:
        raise PruneError("tracing needs example_inputs= (a batch of inputs the model accepts)")
    tr = ChannelTracer(model, HANDLERS)
    inputs = _slice_inputs(example_inputs)

    norms: ModuleNorms | None = None

    def pre(m, args):
        tr.stack.append(tr.module_names.get(id(m), type(m).__name__))
        norms.enter(tr, m, args)

    def post(m, args, kwargs, out):
        norms.leave(tr, m, out)
        opaque.after_forward(tr, m, args, kwargs, out)
        if tr.stack:
            tr.stack.pop()

    handles = []
    try:
        with preserved(model), torch.no_grad(), cached():
            model.eval()
            tr.register_parametrized()
            tr.own = opaque.own_parameters(model)
            norms = ModuleNorms(model)  # runs candidate norm modules once, before the hooks
            for m in model.modules():
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post, with_kwargs=True))
            try:
                with _Recorder(tr):
                    out = call_model(model, inputs)
            except PruneError:
                raise
            except Exception as e:  # the model's own error says why; we say which inputs
                shapes = [tuple(t.shape) for t in tensors_in(inputs)]
                raise PruneError(
                    f"example_inputs of shape {shapes[0] if len(shapes) == 1 else shapes} do not run through "
                    f"{type(model).__name__}: {type(e).__name__}: {e}"
                ) from e
            opaque.settle(tr)
            outs = tensors_in(out)
            for t in outs:
                g = tr.grid(t)
                if g is not None and bool((g != FIXED).any()):
                    tr.fix(g)
                    tr.stack = ["<output>"]
                    tr.note("output", "channels of the model's output are kept")
    finally:
        for h in handles:
            h.remove()
    return tr.g
