"""How each traced op moves channel ids: one handler per family, looked up by op name.

A handler receives the tracer, the op's name, the function, its arguments and its output.
It records parameter members (which dimension of which parameter the ids index), couples
ids that must go together, and sets the output's grid and fill.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import channels as T
from .args import arg as _arg
from .contraction import matmul, mha, sdpa
from .recurrent import HANDLERS as _RECURRENT
from .norms import op_norm
from .shapes import concat, lift_against, same_view, shape_op
from .transposed import CONV_TRANSPOSE, conv_transpose


def _const(t: Any) -> float | None:
    """The single value of a tensor whose elements are all equal, else None."""
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return None
    flat = t.reshape(-1).double()
    v = float(flat[0])
    if not math.isfinite(v) or not bool((flat == flat[0]).all()):
        return None
    return v


def _probe_fill(func: Callable, x: torch.Tensor, fill: float, args: tuple, kwargs: dict) -> float | None:
    """Value a removed channel has after ``func``: run it on a constant tensor shaped like ``x``."""
    if fill == 0.0 and x.numel() > 4096:
        probe = torch.zeros(x.shape[:1] + (1,) * (x.dim() - 1), dtype=x.dtype).expand(x.shape).contiguous()
    else:
        probe = torch.full_like(x, fill)
    try:
        r = func(probe, *args[1:], **kwargs)
    except Exception:
        return None
    if isinstance(r, (tuple, list)):
        r = r[0]
    return _const(r)


def conv(tr: T.ChannelTracer, name, func, args, kwargs, out) -> None:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    padding = _arg(args, kwargs, 4, "padding", 0)
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    if id(w) not in tr.params or (b is not None and id(b) not in tr.params):
        tr.fix_all(name, (x,), "convolution with a weight that is not a module parameter; kept")
        return
    cdim = 1 if x.dim() == w.dim() else 0
    cin, cout = x.shape[cdim], w.shape[0]
    in_ids = tr.channel_ids(x, cdim, name)
    fill = tr.fill(x)
    wname = tr.params[id(w)][0]
    if groups == 1:
        pads = padding if isinstance(padding, (tuple, list)) else [padding]
        if fill != 0.0 and not (padding == "valid" or all(p == 0 for p in pads if isinstance(p, int))):
            tr.fix(in_ids[None])
            tr.note(name, f"input channels hold {fill:g} when removed and the convolution pads; kept")
        tr.member(w, 1, in_ids, "in", fill)
        ids = tr.g.uf.new(cout)
        tr.member(w, 0, ids, "out")
        tr.member(b, 0, ids, "chan")
        tr.g.produced.append(wname)
    elif groups == cin and cout % cin == 0:  # depthwise, with an optional channel multiplier
        ids = in_ids.repeat_interleave(cout // cin)
        tr.member(w, 0, ids, "chan")
        tr.member(b, 0, ids, "chan")
        tr.g.extra[("depthwise", tr.g.param_modules[wname])] = cout // cin
    else:  # grouped: whole groups go together (inputs and outputs of a group)
        go = cout // groups
        ids = tr.g.uf.new(cout)
        tr.g.uf.union_groups(in_ids, ids, groups)
        tr.member(w, 0, ids, "out")
        tr.member(b, 0, ids, "chan")
        tr.g.produced.append(wname)
        tr.g.extra[("grouped", tr.g.param_modules[wname])] = go
    shape = [1] * out.dim()
    shape[cdim] = cout
    tr.set(out, ids.view(shape), 0.0)


def linear(tr, name, func, args, kwargs, out) -> None:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    if id(w) not in tr.params or (b is not None and id(b) not in tr.params):
        tr.fix_all(name, (x,), "linear map with a weight that is not a module parameter; kept")
        return
    in_ids = tr.channel_ids(x, x.dim() - 1, name)
    tr.member(w, 1, in_ids, "in", tr.fill(x))
    ids = tr.g.uf.new(w.shape[0])
    tr.member(w, 0, ids, "out")
    tr.member(b, 0, ids, "chan")
    tr.g.produced.append(tr.params[id(w)][0])
    tr.set(out, ids.view([1] * (out.dim() - 1) + [-1]), 0.0)


def embedding(tr, name, func, args, kwargs, out) -> None:
    """An embedding table's columns are channels it creates (the width of the stream it
    starts): one id per column. A tied output layer reading the same table as its input
    columns couples them with the stream it reads. ``max_norm`` rescales whole rows, which
    ties every column to the others: the width is kept then."""
    w = _arg(args, kwargs, 1, "weight")
    if id(w) not in tr.params:
        return
    if _arg(args, kwargs, 3, "max_norm") is not None:
        tr.member(w, 1, torch.full((w.shape[1],), T.FIXED, dtype=torch.long), "chan")
        tr.note(name, "max_norm renormalizes each embedding row over all its columns; the width is kept")
        return
    ids = tr.g.uf.new(w.shape[1])
    tr.member(w, 1, ids, "out")
    tr.g.produced.append(tr.params[id(w)][0])
    if isinstance(out, torch.Tensor):
        tr.set(out, ids.view([1] * (out.dim() - 1) + [-1]), 0.0)


def batch_norm(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    rm, rv = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
    w, b = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
    g = tr.grid(x)
    if g is None:
        return
    ids = tr.channel_ids(x, 1, name)
    if w is None or b is None:
        tr.fix(ids[None])
        tr.note(name, "normalization without affine parameters: a removed channel would not be zero; kept")
        return
    for p in (w, b):
        tr.member(p, 0, ids, "chan")
    for p in (rm, rv):
        if p is not None:
            tr.member(p, 0, ids, "buffer")
    tr.set(out, g, 0.0)


def instance_norm(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    g = tr.grid(x)
    if g is None:
        return
    ids = tr.channel_ids(x, 1, name)
    for i, key, role in ((1, "running_mean", "buffer"), (2, "running_var", "buffer"), (3, "weight", "chan"), (4, "bias", "chan")):
        p = _arg(args, kwargs, i, key)
        if p is not None:
            tr.member(p, 0, ids, role)
    tr.set(out, g, 0.0)  # a constant channel normalizes to 0; the affine part is masked


def group_norm(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    groups = int(_arg(args, kwargs, 1, "num_groups"))
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    g = tr.grid(x)
    if g is None:
        return
    ids = tr.channel_ids(x, 1, name)
    size = ids.numel() // groups
    blocks = ids.view(groups, size)
    tr.g.uf.union_pairs(blocks[:, :1].expand_as(blocks), blocks)  # whole groups only: statistics stay exact
    for p in (w, b):
        if p is not None:
            tr.member(p, 0, ids, "chan")
    if w is not None:
        tr.g.extra[("group_norm", tr.g.param_modules[tr.params[id(w)][0]])] = size
    elif ids.numel() and bool((ids != T.FIXED).any()):
        tr.fix(ids[None])
        tr.note(name, "group_norm without affine parameters cannot record its group size; kept")
        return
    tr.set(out, g, 0.0)


def unary(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    g = tr.grid(x)
    if g is None:
        if name in _CASTS:
            same_view(tr, x, out)
        return
    if name in ("prelu",):
        w = _arg(args, kwargs, 1, "weight")
        if w is not None and w.numel() > 1:
            tr.member(w, 0, tr.channel_ids(x, 1, name), "chan")
    fill = tr.fill(x)
    new = _probe_fill(func, x, fill, args, kwargs) if not (fill == 0.0 and name in _ZERO_KEEPING) else 0.0
    tr.set(out if isinstance(out, torch.Tensor) else x, g, new)


def binary(tr, name, func, args, kwargs, out) -> None:
    a = _arg(args, kwargs, 0, "input")
    b = _arg(args, kwargs, 1, "other")
    if not isinstance(a, torch.Tensor):
        a, b = b, a
    if not isinstance(b, torch.Tensor):  # tensor op python-number
        g = tr.grid(a)
        if g is not None:
            r = func(torch.full((1,), tr.fill(a), dtype=torch.float64), *args[1:], **kwargs)
            tr.set(out, g, _const(r) if isinstance(r, torch.Tensor) else None)
        return
    ga, gb = tr.grid(a), tr.grid(b)
    if ga is None and gb is None:
        return
    if (ga is None or gb is None) and lift_against(tr, a if ga is None else b, b if ga is None else a, out.dim()):
        ga, gb = tr.grid(a), tr.grid(b)  # a view of a parameter along the same channels
    shape = out.shape
    param_member = False
    for x, gx, y, gy in ((a, ga, b, gb), (b, gb, a, ga)):
        if gx is None:
            continue
        vary = [d + len(shape) - gx.dim() for d in T.varying_dims(gx)]
        ysh = (1,) * (len(shape) - y.dim()) + tuple(y.shape)
        spans = [d for d in vary if ysh[d] > 1]
        if gy is None and spans:
            key = tr.params.get(id(y))
            if key is not None and len(vary) == 1 and len(spans) == 1 and not tr.is_buffer(y):
                ydim = spans[0] - (len(shape) - y.dim())
                tr.member(y, ydim, tr.channel_ids(x, vary[0] - (len(shape) - x.dim()), name), "chan")
                param_member = True
            else:
                tr.fix(gx)
                tr.note(name, "combined channel by channel with a tensor the tracer cannot prune; kept")
                return
    if ga is not None and gb is not None:
        ea, eb = torch.broadcast_tensors(ga, gb)  # the compressed grids: no full-size copies
        touched = (ea != T.FIXED) | (eb != T.FIXED)
        tr.g.uf.union_pairs(ea[touched], eb[touched])
        grid = torch.where(ea != T.FIXED, ea, eb)
        fa, fb = tr.fill(a), tr.fill(b)
        r = func(torch.full((1,), fa, dtype=torch.float64), torch.full((1,), fb, dtype=torch.float64), *args[2:], **kwargs)
        tr.set(out, grid, _const(r))
        return
    # one side carries channels; the other is a parameter (masked with it) or broadcast
    x, gx, y = (a, ga, b) if ga is not None else (b, gb, a)
    fx = torch.full((1,), tr.fill(x), dtype=torch.float64)
    if param_member or y.numel() == 1:
        yv = torch.zeros((1,), dtype=torch.float64) if param_member else y.detach().double().reshape(1)
        r = func(*((fx, yv) if x is a else (yv, fx)), *args[2:], **kwargs)
        fill = _const(r)
    elif float(fx) == 0.0 and (name in _MUL or (name in _DIV and x is a)):
        fill = 0.0
    else:
        fill = None  # a removed channel would take the other operand's (varying) values
        tr.note(name, "a removed channel would take the other operand's values; kept")
    tr.set(out, gx, fill)


_CASTS = {"clone", "contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as", "detach", "cpu", "cuda"}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_DIV = {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}


def _spatial_dims(name: str, x: torch.Tensor, args: tuple, kwargs: dict) -> int:
    if name == "pad":
        return len(_arg(args, kwargs, 1, "pad")) // 2
    for k in (1, 2, 3):
        if f"{k}d" in name:
            return k
    return x.dim() - 2


def spatial(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    g = tr.grid(x)
    if g is None:
        return
    s = _spatial_dims(name, x, args, kwargs)
    if any(d >= x.dim() - s for d in T.varying_dims(g)):
        tr.fix(g)
        tr.note(name, "channels vary along the dimensions this op resamples; kept")
        return
    fill = tr.fill(x)
    new = fill if fill == 0.0 and name != "pad" else _probe_fill(func, x, fill, args, kwargs)
    o = out[0] if isinstance(out, (tuple, list)) else out
    tr.set(o, g, new)


def reduce(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    g = tr.grid(x)
    if g is None:
        return
    dim = _arg(args, kwargs, 1, "dim")
    keep = bool(_arg(args, kwargs, 2, "keepdim", False)) if name != "norm" else bool(kwargs.get("keepdim", False))
    if name == "norm":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        tr.fix(g)
        tr.note(name, "reduces over every dimension, channels included; kept")
        return
    dims = [d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
    if any(d in T.varying_dims(g) for d in dims):
        tr.fix(g)
        tr.note(name, "reduces over channels; kept")
        return
    o = out[0] if isinstance(out, (tuple, list)) else out
    grid = g.amax(dim=dims, keepdim=keep)
    fill = tr.fill(x)
    tr.set(o, grid, 0.0 if fill == 0.0 and name in ("mean", "sum", "amax", "amin", "nansum", "nanmean", "norm") else _probe_fill(func, x, fill, args, kwargs))


def along(tr, name, func, args, kwargs, out) -> None:
    x = _arg(args, kwargs, 0, "input")
    g = tr.grid(x)
    if g is None:
        return
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None or (dim % x.dim()) in T.varying_dims(g):
        tr.fix(g)
        tr.note(name, "normalizes across channels; kept")
        return
    tr.set(out, g, _probe_fill(func, x, tr.fill(x), args, kwargs))


_ZERO_KEEPING = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "gelu", "silu", "silu_", "hardswish", "tanh",
    "tanh_", "elu", "elu_", "selu", "celu", "mish", "softsign", "hardtanh", "hardtanh_", "dropout", "dropout_",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "abs", "neg", "__neg__",
    "clone", "contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as", "detach", "cpu",
    "cuda", "requires_grad_", "square", "sqrt", "prelu", "tanhshrink", "hardshrink", "softshrink",
}

HANDLERS: dict[str, Callable] = {}
for _names, _h in (
    (T.CONV, conv),
    (CONV_TRANSPOSE, conv_transpose),
    ({"linear"}, linear),
    ({"embedding"}, embedding),
    ({"batch_norm"}, batch_norm),
    ({"instance_norm"}, instance_norm),
    ({"group_norm"}, group_norm),
    ({"layer_norm", "rms_norm"}, op_norm),
    (T.UNARY, unary),
    (T.BINARY, binary),
    (T.SHAPE, shape_op),
    (T.CONCAT, concat),
    (T.SPATIAL | {"pad"}, spatial),
    (T.REDUCE, reduce),
    (T.ALONG, along),
    ({"matmul", "__matmul__", "bmm"}, matmul),
    ({"scaled_dot_product_attention"}, sdpa),
    ({"multi_head_attention_forward"}, mha),
):
    for _n in _names:
        HANDLERS[_n] = _h
HANDLERS.update(_RECURRENT)
