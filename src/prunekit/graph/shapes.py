"""Shape ops and concatenation: how they move channel ids, and views of parameters.

Shape ops (``view``, ``permute``, ``expand``, slicing...) are applied to the grid itself.

A parameter read through a shape op (a class token ``self.cls.expand(b, -1, -1)``, a
positional table ``self.pos[:, :n]``, a per-channel scale ``self.gamma.view(1, -1, 1, 1)``)
is a *view*: the tracer remembers which index of the parameter's last dimension every
element of the view comes from. When such a view meets a tensor whose channel ids run
along the same single dimension (it is concatenated with it along another dimension, or
added to / multiplied with it), the parameter's last dimension joins those channels as a
per-channel member (removed and sliced with them). Anything else leaves the view
unlabelled, as before: the channels it meets are kept.
"""

from __future__ import annotations

import torch

from . import channels as T
from .args import arg as _arg

#: Parameters larger than this are not followed through shape ops (the label grid is as
#: large as the view).
VIEW_LIMIT = 1 << 22


def _labels(tr: T.ChannelTracer, x: torch.Tensor) -> torch.Tensor | None:
    """Index along the source parameter's last dimension of every element of ``x``
    (broadcastable to ``x``), or None when ``x`` is not a parameter or a view of one."""
    v = tr.views.get(id(x))
    if v is not None and v[0] is x:
        return v[2]
    key = tr.params.get(id(x))
    if key is None or x.dim() == 0 or not x.is_floating_point() or x.numel() > VIEW_LIMIT:
        return None
    return torch.arange(x.shape[-1]).view((1,) * (x.dim() - 1) + (-1,))


def _source(tr: T.ChannelTracer, x: torch.Tensor) -> torch.Tensor:
    v = tr.views.get(id(x))
    return v[1] if v is not None and v[0] is x else x


def track_view(tr: T.ChannelTracer, func, args: tuple, kwargs: dict, x: torch.Tensor, out) -> None:
    """``out = func(x, ...)`` where ``x`` is a parameter (or a view of one) without ids."""
    labels = _labels(tr, x)
    if labels is None:
        return
    try:
        res = func(labels.expand(x.shape).contiguous(), *args[1:], **kwargs)
    except Exception:
        return
    src = _source(tr, x)
    outs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else []
    ress = [res] if isinstance(res, torch.Tensor) else list(res) if isinstance(res, (tuple, list)) else []
    for o, r in zip(outs, ress):
        if isinstance(o, torch.Tensor) and isinstance(r, torch.Tensor) and r.shape == o.shape:
            tr.views[id(o)] = (o, src, T.compress(r))


def same_view(tr: T.ChannelTracer, x: torch.Tensor, out) -> None:
    """``out`` is ``x`` cast or copied (``.to(dtype)``, ``.clone()``): the same view."""
    labels = _labels(tr, x) if isinstance(x, torch.Tensor) else None
    if labels is not None and isinstance(out, torch.Tensor) and out.shape == x.shape:
        tr.views[id(out)] = (out, _source(tr, x), labels)


def _vary(g: torch.Tensor, rank: int) -> list[int]:
    """Dimensions (of a rank-``rank`` result) along which ``g`` varies."""
    return [d + rank - g.dim() for d in T.varying_dims(g)]


def lift(tr: T.ChannelTracer, t: torch.Tensor, dims: list[int], rank: int) -> bool:
    """Give the view ``t`` channel ids when its labels vary along exactly ``dims`` (one
    dimension, in a rank-``rank`` result): its source parameter's last dimension becomes a
    per-channel member. Returns whether it did."""
    if tr.grid(t) is not None or id(t) in tr.params or len(dims) != 1:
        return False
    labels = _labels(tr, t)
    if labels is None or _vary(labels, rank) != dims:
        return False
    src = _source(tr, t)
    if tr.is_buffer(src):  # a buffer is never masked: its removed channels would not be zero
        return False
    name = tr.params[id(src)][0]
    last = src.dim() - 1
    ids = tr.seen.get((name, last))
    if ids is None:
        ids = tr.g.uf.new(src.shape[-1])
        tr.member(src, last, ids, "chan")
    tr.set(t, ids[labels], 0.0)
    return True


def lift_against(tr: T.ChannelTracer, t: torch.Tensor, other: torch.Tensor, rank: int) -> bool:
    """Lift the view ``t`` when ``other``'s ids vary along the one dimension its labels do."""
    g = tr.grid(other)
    return g is not None and lift(tr, t, _vary(g, rank), rank)


def shape_op(tr, name, func, args, kwargs, out) -> None:
    x = args[0] if args else kwargs.get("input")
    g = tr.grid(x)
    if g is None:
        if isinstance(x, torch.Tensor):
            track_view(tr, func, args, kwargs, x, out)
        return
    if name == "unflatten" and _fixed_split(tr, x, g, args, kwargs):
        return
    full = g.expand(x.shape).contiguous()
    res = func(full, *args[1:], **kwargs)
    fill = tr.fill(x)
    if isinstance(out, torch.Tensor):
        tr.set(out, res, fill)
    else:
        for o, r in zip(out, res):
            if isinstance(o, torch.Tensor):
                tr.set(o, r, fill)


def _fixed_split(tr, x: torch.Tensor, g: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """``unflatten(dim, sizes)`` (what ``nn.Unflatten`` calls) of a dimension that carries
    channels, with every size given: the sizes cannot shrink with the channels, so they are
    kept. With a ``-1`` among the sizes the split follows the channels."""
    dim, sizes = _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "sizes")
    if sizes is None or -1 in list(sizes):
        return False
    gd = g.reshape((1,) * (x.dim() - g.dim()) + tuple(g.shape))
    if gd.shape[dim % x.dim()] == 1:
        return False
    tr.fix(g)
    tr.note("unflatten", f"split into fixed sizes {tuple(sizes)}, which cannot shrink with the channels; kept "
                         "(write one size as -1 to let it shrink)")
    return True


def concat(tr, name, func, args, kwargs, out) -> None:
    seq = _arg(args, kwargs, 0, "tensors")
    if not any(tr.grid(t) is not None for t in seq):
        return
    rank = out.dim()
    if name not in ("stack",):
        dims = {tuple(_vary(tr.grid(t), rank)) for t in seq if tr.grid(t) is not None}
        if len(dims) == 1:
            along = list(dims.pop())
            for t in seq:
                lift(tr, t, along, rank)  # a class token concatenated with the tokens
            if _merge_same(tr, name, seq, along, args, kwargs, out):
                return
    fills = {tr.fill(t) for t in seq if tr.grid(t) is not None}
    fulls = [
        (tr.grid(t).expand(t.shape) if tr.grid(t) is not None else torch.zeros((), dtype=torch.long).expand(t.shape))
        for t in seq
    ]
    res = func(fulls, *args[1:], **kwargs)
    if len(fills) > 1:
        for t in seq:
            if tr.grid(t) is not None and tr.fill(t) != 0.0:
                tr.fix(tr.grid(t))
        tr.note(name, "concatenated tensors hold different values in removed channels; kept")
        fills = {0.0}
    tr.set(out, res, fills.pop())


def _merge_same(tr, name, seq, along: list[int], args, kwargs, out) -> bool:
    """Every piece carries channel ids along the same dimension, and the concatenation runs
    along another (tokens, positions): the pieces' ids are the same channels, coupled, and
    the result carries them along that dimension."""
    dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
    grids = [tr.grid(t) for t in seq]
    if len(along) != 1 or dim in along or any(g is None for g in grids) or any(tr.fill(t) != 0.0 for t in seq):
        return False
    d = along[0]
    rows = [g.reshape((1,) * (out.dim() - g.dim()) + tuple(g.shape)).movedim(d, 0).reshape(-1) for g in grids]
    n = out.shape[d]
    if any(r.numel() != n for r in rows):
        return False
    for r in rows[1:]:
        tr.g.uf.union_pairs(rows[0], r)
    shape = [1] * out.dim()
    shape[d] = n
    tr.set(out, rows[0].view(shape), 0.0)
    return True
