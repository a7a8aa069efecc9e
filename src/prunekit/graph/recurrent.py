"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): hidden units as coupled channels.

The modules call one fused op, ``lstm``, ``gru``, ``rnn_tanh`` or ``rnn_relu`` (from
``torch._VF``), with the input, the initial state and the flat list of every layer's
weights; the tracer sees that call. A **unit** is hidden unit ``j`` of *every* layer and
both directions (``nn.LSTM`` has one ``hidden_size`` for all of them, so they shrink
together). It couples, in each layer ``l`` and direction:

* rows ``j, H + j, ...`` (one per gate: LSTM i, f, g, o; GRU r, z, n; RNN one) of
  ``weight_ih_l{l}``, ``weight_hh_l{l}``, ``bias_ih_l{l}`` and ``bias_hh_l{l}``;
* column ``j`` of ``weight_hh_l{l}`` (the recurrent input), or of ``weight_hr_l{l}``
  with ``proj_size``;
* columns ``j`` and ``H + j`` (both directions) of the next layer's ``weight_ih_l{l+1}``;
* the output's features ``j`` (and ``H + j``) and the last dimension of ``h_n`` / ``c_n``,
  which the tracer follows into whatever reads them (``out[:, -1]``, ``h_n[-1]``...).

A unit whose rows and biases are zero outputs exactly zero for ever when its initial state
is zero: LSTM gates are ``sigmoid(0) = 0.5`` and ``g = tanh(0) = 0``, so ``c`` stays 0 and
``h = 0.5 * tanh(0) = 0``; GRU ``n = tanh(0) = 0`` and ``h_t = 0.5 * h_{t-1} = 0``; RNN
``h = tanh(0) = 0`` (or ``relu(0)``). The initial state must therefore be zero in the
removed units: the module's own default, a tensor that is zero when traced, or a state
whose channels the tracer follows back to other removed units (an encoder's ``h_n``).
Otherwise the hidden units are kept, with a note.

With ``proj_size`` the hidden units still go (they feed the projection's columns); the
projected outputs keep their width. Packed sequences are followed like padded ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import channels as T

#: ``torch._VF`` recurrent ops and their gate count.
GATES: dict[str, int] = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

#: ``graph.extra`` key kind: ``("recurrent", module) -> facts`` (see :func:`recurrent`).
KIND = "recurrent"


@dataclass
class _Call:
    """The arguments of one fused recurrent op."""

    x: torch.Tensor
    states: list[Any]
    weights: list[Any]
    has_biases: bool
    layers: int
    bidirectional: bool


def _parse(args: tuple, kwargs: dict) -> _Call | None:
    """Read ``op(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)`` or the packed form ``op(data, batch_sizes, hx, weights, has_biases,
    num_layers, dropout, train, bidirectional)``; None when the call has another shape."""
    if kwargs or len(args) < 8:
        return None
    packed = isinstance(args[3], (list, tuple))
    x, hx, weights, rest = (args[0], args[2], args[3], args[4:]) if packed else (args[0], args[1], args[2], args[3:])
    if not isinstance(x, torch.Tensor) or not isinstance(weights, (list, tuple)) or len(rest) < 5:
        return None
    states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    return _Call(x, states, list(weights), bool(rest[0]), int(rest[1]), bool(rest[4]))


def _keep_weights(tr: T.ChannelTracer, weights: list[Any]) -> None:
    """Fix every index of every parameter in ``weights`` (and whatever other calls of the
    same module coupled to them)."""
    for w in weights:
        if isinstance(w, torch.Tensor) and id(w) in tr.params:
            for d in range(w.dim()):
                tr.member(w, d, torch.zeros(w.shape[d], dtype=torch.long), "chan")


def _refuse(tr: T.ChannelTracer, name: str, args: tuple, kwargs: dict, weights: list[Any], reason: str) -> None:
    tr.fix_all(name, (args, kwargs), reason)
    _keep_weights(tr, weights)
    tr.note(name, reason)


def _module(tr: T.ChannelTracer, weights: list[Any]) -> tuple[str, nn.RNNBase] | str:
    """The ``nn.RNNBase`` whose flat weights ``weights`` are, or why there is none."""
    found = [tr.params.get(id(w)) if isinstance(w, torch.Tensor) else None for w in weights]
    if not found or any(f is None for f in found):
        return "recurrent op with weights that are not module parameters; channels kept"
    mname = tr.g.param_modules.get(found[0][0], "")
    try:
        module = tr.model.get_submodule(mname)
    except AttributeError:
        return f"recurrent weights of {mname!r}, which is not a submodule; channels kept"
    if not isinstance(module, nn.RNNBase):
        return f"recurrent op with weights of a {type(module).__name__}; channels kept"
    prefix = f"{mname}." if mname else ""
    if [f[0] for f in found] != [prefix + n for n in module._flat_weights_names]:
        return f"{mname or type(module).__name__} was called with weights other than its own, in its order; channels kept"
    return mname, module


def _state_reason(tr: T.ChannelTracer, s: Any, units: torch.Tensor, name: str) -> str | None:
    """Couple an initial state's channels to the hidden units, or say why it cannot be."""
    if not isinstance(s, torch.Tensor):
        return "an initial state that is not a tensor"
    g = tr.grid(s)
    if g is None:
        return None if bool((s == 0).all()) else "a non-zero initial state the tracer cannot follow"
    if tr.fill(s) != 0.0:
        tr.fix(g)
        return f"an initial state whose removed channels hold {tr.fill(s):g}"
    ids = tr.channel_ids(s, s.dim() - 1, name)
    if ids.numel() != units.numel():
        tr.fix(g)
        return "an initial state of another width"
    tr.g.uf.union_pairs(ids, units)
    return None


def recurrent(tr: T.ChannelTracer, name: str, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
    """Handler for ``lstm``, ``gru``, ``rnn_tanh`` and ``rnn_relu``.

    Records ``graph.extra[("recurrent", module)] = {"gates", "hidden", "layers",
    "directions", "proj"}`` for compaction and reports."""
    call = _parse(args, kwargs)
    if call is None or not isinstance(out, (tuple, list)):
        weights = args[3] if len(args) > 3 and isinstance(args[3], (list, tuple)) else (
            args[2] if len(args) > 2 and isinstance(args[2], (list, tuple)) else [])
        _refuse(tr, name, args, kwargs, list(weights), f"{name} called in a form the tracer does not read; kept")
        return
    found = _module(tr, call.weights)
    if isinstance(found, str):
        _refuse(tr, name, args, kwargs, call.weights, found)
        return
    mname, module = found
    gates, hidden, dirs = GATES[name], module.hidden_size, 2 if call.bidirectional else 1
    proj = int(getattr(module, "proj_size", 0) or 0)
    w = dict(zip(module._flat_weights_names, call.weights))
    if (call.layers, call.bidirectional, call.has_biases) != (module.num_layers, module.bidirectional, bool(module.bias)) \
            or tuple(w["weight_hh_l0"].shape) != (gates * hidden, proj or hidden):
        _refuse(tr, name, args, kwargs, call.weights,
                f"{mname}: the call does not match the module's hidden_size, layers or directions; kept")
        return
    units = tr.g.uf.new(hidden)
    rows = units.repeat(gates)
    fixed = torch.zeros(proj, dtype=torch.long)
    inner = (fixed if proj else units).repeat(dirs)  # what the next layer reads: both directions
    in_ids = tr.channel_ids(call.x, call.x.dim() - 1, name)
    fill = tr.fill(call.x)
    if fill != 0.0:
        tr.fix(in_ids[None])
        tr.note(name, f"input channels hold {fill:g} when removed, which a recurrent layer cannot fold; kept")
    for layer in range(call.layers):
        for sfx in ("", "_reverse")[:dirs]:
            w_ih, w_hh = w[f"weight_ih_l{layer}{sfx}"], w[f"weight_hh_l{layer}{sfx}"]
            tr.member(w_ih, 0, rows, "out")
            tr.member(w_ih, 1, in_ids if layer == 0 else inner, "in", 0.0)
            tr.member(w_hh, 0, rows, "out")
            if proj:
                tr.member(w[f"weight_hr_l{layer}{sfx}"], 1, units, "in", 0.0)
            else:
                tr.member(w_hh, 1, units, "in", 0.0)
            if call.has_biases:
                tr.member(w[f"bias_ih_l{layer}{sfx}"], 0, rows, "chan")
                tr.member(w[f"bias_hh_l{layer}{sfx}"], 0, rows, "chan")
            tr.g.produced.append(tr.params[id(w_ih)][0])
    tr.g.extra[(KIND, mname)] = {"gates": gates, "hidden": hidden, "layers": call.layers, "directions": dirs,
                                 "proj": proj}
    why = []
    for k, s in enumerate(call.states):
        if proj and k == 0:  # the projected state: its width is not pruned, any value is exact
            g = tr.grid(s)
            if g is not None:
                tr.fix(g)
            continue
        r = _state_reason(tr, s, units, name)
        if r:
            why.append(r)
    if why:
        tr.fix(units[None])
        tr.note(name, f"{'; '.join(dict.fromkeys(why))}: a removed hidden unit would not stay zero; hidden units kept")
        return
    outputs = list(out)
    seq = (fixed if proj else units).repeat(dirs)
    tr.set(outputs[0], seq.view([1] * (outputs[0].dim() - 1) + [-1]), 0.0)
    for k, o in enumerate(outputs[1:]):
        ids = fixed if proj and k == 0 else units
        if isinstance(o, torch.Tensor):
            tr.set(o, ids.view([1] * (o.dim() - 1) + [-1]), 0.0)


def pack_padded(tr: T.ChannelTracer, name: str, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
    """``_pack_padded_sequence(input, lengths, batch_first)``: packed rows keep the
    input's features, when its channel ids vary along the features only."""
    x = args[0] if args else kwargs.get("input")
    _features_only(tr, name, x, out[0] if isinstance(out, (tuple, list)) else out, tr.fill(x))


def pad_packed(tr: T.ChannelTracer, name: str, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
    """``_pad_packed_sequence(data, batch_sizes, batch_first, padding_value, total_length)``:
    a removed channel holds its fill where the sequence runs and ``padding_value`` after."""
    x = args[0] if args else kwargs.get("data")
    pad = args[3] if len(args) > 3 else kwargs.get("padding_value", 0.0)
    fill = tr.fill(x)
    _features_only(tr, name, x, out[0] if isinstance(out, (tuple, list)) else out,
                   fill if float(pad) == fill else None)


def _features_only(tr: T.ChannelTracer, name: str, x: Any, o: Any, fill: float | None) -> None:
    g = tr.grid(x)
    if g is None or not isinstance(o, torch.Tensor):
        return
    g = g.reshape((1,) * (x.dim() - g.dim()) + tuple(g.shape))
    if T.varying_dims(g) not in ([], [x.dim() - 1]):
        tr.fix(g)
        tr.note(name, "channel ids vary along time or batch; kept")
        return
    if fill is None:
        tr.note(name, "padding holds another value than removed channels; kept")
    tr.set(o, g.reshape(-1).view([1] * (o.dim() - 1) + [-1]), fill)


#: Handlers by op name, merged into :data:`prunekit.graph.ops.HANDLERS`.
HANDLERS: dict[str, Callable] = {
    **{n: recurrent for n in GATES},
    "pack_padded_sequence": pack_padded,
    "pad_packed_sequence": pad_packed,
}

