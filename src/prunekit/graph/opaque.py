"""Modules the tracer cannot see into: their channels are kept.

The tracer models ops, not modules. A module whose computation it does not model keeps
every channel that flows into or out of it, with a note naming the module:

* recurrent cells (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``): their state is
  carried from step to step by the caller's own loop, whose initial value and reuse
  the tracer cannot prove (whole ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` layers are
  followed: see :mod:`prunekit.graph.recurrent`);
* any module with parameters of its own that no traced op read during its forward pass
  (a custom extension, an op outside ``torch``'s function dispatch): what it computes
  with them is invisible, so nothing about its inputs or outputs may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..masking import parametrized_names

if TYPE_CHECKING:
    from .channels import ChannelTracer

#: Module types whose channels are always kept.
OPAQUE_TYPES: tuple[type, ...] = (nn.RNNCellBase,)


def own_parameters(model: nn.Module) -> dict[int, set[int]]:
    """``id(module) -> ids of the tensors its forward reads as its own parameters`` (the
    effective tensors of parametrized ones). Call under :func:`prunekit.masking.cached`."""
    out: dict[int, set[int]] = {}
    for module in model.modules():
        ids = {id(p) for p in module.parameters(recurse=False)}
        ids |= {id(getattr(module, n)) for n in parametrized_names(module)}
        if ids:
            out[id(module)] = ids
    return out


def reason(tr: ChannelTracer, module: nn.Module) -> str | None:
    """Why ``module``'s boundary channels must stay, or None when the tracer saw its work.
    Pure Python: safe to call from a forward hook while the tracer's mode is active."""
    kind = type(module).__name__
    if isinstance(module, OPAQUE_TYPES):
        return (f"{kind} is not modelled (a recurrent cell's state is carried by the caller's loop); "
                "channels into and out of it are kept")
    own = tr.own.get(id(module))
    if own and not (own & tr.read):
        return f"{kind} computes with parameters no traced op read; channels into and out of it are kept"
    return None


def after_forward(tr: ChannelTracer, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
    """Forward hook: remember an opaque module's inputs and outputs; :func:`settle` keeps them."""
    why = reason(tr, module)
    if why is not None:
        tr.deferred.append((tr.where(), type(module).__name__, why, (args, kwargs, out)))


def settle(tr: ChannelTracer) -> None:
    """Keep the channels of every opaque module's inputs and outputs (outside the mode)."""
    saved = tr.stack
    try:
        for where, kind, why, tensors in tr.deferred:
            tr.stack = [where]
            tr.fix_all(kind, tensors, why)
    finally:
        tr.stack = saved
        tr.deferred.clear()
