"""Contractions: ``matmul``/``@``/``bmm``, ``scaled_dot_product_attention`` and
``F.multi_head_attention_forward``.

A contraction couples the ids of the contracted dimension on both sides (``q @ k^T``
couples q's and k's head dimensions). Batch dimensions whose ids vary (attention heads)
make every id of one slice one unit: a whole head. When one side is a module parameter
(``x @ self.weight``), the parameter's contracted dimension follows the other side's
channels like a linear layer's input columns.
"""

from __future__ import annotations

import torch

from . import channels as T
from .args import arg as _arg


def _batch_classes(tr, a: torch.Tensor, ga: torch.Tensor | None, b: torch.Tensor, gb: torch.Tensor | None,
                   batch: tuple[int, ...]) -> torch.Tensor | None:
    """Couple everything in each batch slice (an attention head) into one class; return
    one id per slice, shaped like the batch dims, or None when no labels vary there."""
    nb = len(batch)
    slices = []
    for x, g in ((a, ga), (b, gb)):
        if g is None:
            continue
        full = g.expand(x.shape)
        full = full.expand(batch + tuple(x.shape[-2:])) if x.dim() - 2 < nb else full
        vary = [d for d in T.varying_dims(g) if d < g.dim() - 2]
        if vary:
            slices.append(full.reshape(batch + (-1,)))
    if not slices:
        return None
    allv = torch.cat([s_.reshape(-1, s_.shape[-1]) for s_ in slices], 1)  # [n_slices, ids]
    first = allv[:, :1].expand_as(allv)
    labelled = allv != T.FIXED
    tr.g.uf.union_pairs(first[labelled], allv[labelled])
    keep = ~labelled.all(1) & labelled.any(1)  # a slice with some fixed ids is fixed as a whole
    if bool(keep.any()):
        tr.fix(allv[keep])
    return allv[:, 0].reshape(batch)


def _with_param(tr, name: str, x: torch.Tensor, gx: torch.Tensor, xdim: int, p: torch.Tensor, pdim: int) -> bool:
    """``x`` (carrying ids along its contracted dimension ``xdim``) contracted with the
    module parameter ``p`` along ``pdim``: ``p``'s slices follow x's channels like a
    linear layer's input columns. Returns False (and keeps x's channels) when they cannot."""
    only_contracted = T.varying_dims(gx.reshape((1,) * (x.dim() - gx.dim()) + tuple(gx.shape))) in ([xdim], [])
    fill = tr.fill(x)
    if not only_contracted or fill != 0.0:
        tr.fix(gx)
        tr.note(name, "contracted with a parameter along channels that vary elsewhere too, or hold "
                      f"{fill:g} when removed; kept")
        return False
    tr.member(p, pdim, tr.channel_ids(x, xdim, name), "in", 0.0)
    return True


def _labels(g: torch.Tensor, shape: torch.Size, dim: int, coupled: bool) -> bool:
    """Whether one id labels each row (``dim=-1`` contracted) or column (``dim=-2``) of the
    product: the ids are constant along the contracted dimension, or every batch slice
    (an attention head) is one class."""
    full = g.expand(shape)
    if bool((full == full.narrow(dim, 0, 1)).all()):
        return True
    return coupled and any(d < g.dim() - 2 for d in T.varying_dims(g))


def matmul(tr, name, func, args, kwargs, out) -> None:
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    ga, gb = tr.grid(a), tr.grid(b)
    if ga is None and gb is None:
        return
    if a.dim() < 2 or b.dim() < 2:
        tr.fix_all(name, (a, b), "matrix-vector product; kept")
        return
    batch = tuple(out.shape[:-2])
    a_k = ga is not None and bool((ga.expand(a.shape).amax(-2) != T.FIXED).any())  # ids along a's contracted dim
    b_k = gb is not None and bool((gb.expand(b.shape).amax(-1) != T.FIXED).any())
    # contracted dimension: a's last with b's second-to-last, slice by slice
    if ga is not None and gb is not None:
        ea = ga.expand(a.shape).amax(-2)  # [batch_a..., K]
        eb = gb.expand(b.shape).amax(-1)  # [batch_b..., K]
        ea, eb = torch.broadcast_tensors(ea, eb)
        both = (ea != T.FIXED) | (eb != T.FIXED)
        tr.g.uf.union_pairs(ea[both], eb[both])
    elif a_k and id(b) in tr.params and _with_param(tr, name, a, ga, a.dim() - 1, b, b.dim() - 2):
        ga = None  # a's channels end here, like a linear layer's inputs
    elif b_k and id(a) in tr.params and _with_param(tr, name, b, gb, b.dim() - 2, a, a.dim() - 1):
        gb = None
    elif a_k and gb is None:
        tr.fix_all(name, (a,), "contracted with a tensor the tracer cannot prune; kept")
        return
    elif b_k and ga is None:
        tr.fix_all(name, (b,), "contracted with a tensor the tracer cannot prune; kept")
        return
    if ga is None and gb is None:
        return
    heads = _batch_classes(tr, a, ga, b, gb, batch)
    grid = torch.zeros(out.shape[-2:], dtype=torch.long).expand(batch + tuple(out.shape[-2:])).clone()
    if heads is not None:
        grid = heads[..., None, None].expand_as(grid).clone()
        tr.g.extra[("heads", tr.where())] = heads.reshape(-1, heads.shape[-1])[0].clone() if heads.dim() > 1 else heads.clone()
    if gb is not None and _labels(gb, b.shape, -2, heads is not None):
        eb = gb.expand(b.shape)[..., :1, :].expand(batch + (1, b.shape[-1]))
        grid = torch.where(eb != T.FIXED, eb.expand_as(grid), grid)
    if ga is not None and _labels(ga, a.shape, -1, heads is not None):
        ea = ga.expand(a.shape)[..., :, :1].expand(batch + (a.shape[-2], 1))
        grid = torch.where(ea != T.FIXED, ea.expand_as(grid), grid)
    fa, fb = tr.fill(a) if ga is not None else None, tr.fill(b) if gb is not None else None
    if fa is not None and fb is not None:
        fill = a.shape[-1] * fa * fb
    elif (fa == 0.0) or (fb == 0.0):
        fill = 0.0
    else:
        fill = None
    tr.set(out, grid, fill)


def sdpa(tr, name, func, args, kwargs, out) -> None:
    q, k, v = (_arg(args, kwargs, i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
    grids = [tr.grid(t) for t in (q, k, v)]
    if all(g is None for g in grids):
        return
    batch = tuple(out.shape[:-2])
    fake = [g.expand(t.shape) if g is not None else torch.zeros((), dtype=torch.long).expand(t.shape) for g, t in zip(grids, (q, k, v))]
    # q and k: contracted per head; everything of a head is one class
    tr.g.uf.union_pairs(fake[0].amax(-2), fake[1].amax(-2))
    heads = _batch_classes(tr, q, grids[0], v, grids[2], batch)
    _batch_classes(tr, q, grids[0], k, grids[1], batch)
    if heads is not None:
        tr.g.extra[("heads", tr.where())] = heads.reshape(-1, heads.shape[-1])[0].clone() if heads.dim() > 1 else heads.clone()
    tr.set(out, fake[2][..., :1, :].expand(out.shape) if grids[2] is not None else None, 0.0)


def mha(tr, name, func, args, kwargs, out) -> None:
    """``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` calls).

    Each head's rows of the packed q/k/v projection and its columns of the output
    projection form one unit (a whole head). The embedding width is the residual width:
    the columns of the packed projection follow the channels of query, key and value (one
    column serves all three, so their channels are coupled), and the rows of the output
    projection create the channels of the output. The head size never changes."""
    names = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal"]
    a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
    qkv = (a["query"], a["key"], a["value"])
    unsupported = [n for n in ("bias_k", "bias_v", "static_k", "static_v") if a[n] is not None]
    unsupported += [n for n in ("add_zero_attn", "use_separate_proj_weight") if a[n]]
    if a["need_weights"] in (None, True):
        unsupported.append("need_weights=True (weights averaged over all heads are returned)")
    w, b, ow, ob = a["in_proj_weight"], a["in_proj_bias"], a["out_proj_weight"], a["out_proj_bias"]
    if unsupported or w is None or id(w) not in tr.params or id(ow) not in tr.params or (
            ob is not None and id(ob) not in tr.params):
        tr.fix_all(name, qkv, "nn.MultiheadAttention keeps its embedding width")
        tr.note(name, f"attention heads kept: {', '.join(unsupported) or 'projection weights not found'}")
        return
    heads = int(a["num_heads"])
    d = int(a["embed_dim_to_check"]) // heads
    hids = tr.g.uf.new(heads)
    rows = hids.repeat_interleave(d)
    tr.member(w, 0, torch.cat([rows, rows, rows]), "out")
    if b is not None:
        tr.member(b, 0, torch.cat([rows, rows, rows]), "chan")
    tr.member(ow, 1, rows, "in", 0.0)
    tr.g.produced.append(tr.params[id(w)][0])
    tr.g.extra[("mha", tr.where())] = (hids.clone(), d)
    tr.g.extra[("heads", tr.where())] = hids.clone()
    _mha_width(tr, name, qkv, w, ow, ob, out)


def _mha_width(tr, name: str, qkv: tuple, w: torch.Tensor, ow: torch.Tensor, ob: torch.Tensor | None, out) -> None:
    """The embedding width of ``nn.MultiheadAttention``: input columns and output rows."""
    q = qkv[0]
    if any(not isinstance(t, torch.Tensor) or t.shape[-1] != w.shape[1] for t in qkv):
        tr.fix_all(name, qkv, "query, key and value widths differ from the projection's; kept")
        cols = torch.zeros(w.shape[1], dtype=torch.long)
    elif any(tr.grid(t) is not None and tr.fill(t) != 0.0 for t in qkv):
        tr.fix_all(name, qkv, "removed input channels would hold a non-zero value here; kept")
        cols = torch.zeros(w.shape[1], dtype=torch.long)
    else:
        ids = [tr.channel_ids(t, t.dim() - 1, name) for t in qkv]
        for other in ids[1:]:  # one column of the packed projection reads all three
            tr.g.uf.union_pairs(ids[0], other)
        cols = ids[0]
    tr.member(w, 1, cols, "in", 0.0)
    new = tr.g.uf.new(ow.shape[0])
    tr.member(ow, 0, new, "out")
    tr.member(ob, 0, new, "chan")
    tr.g.produced.append(tr.params[id(ow)][0])
    o = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(o, torch.Tensor) and o.shape[-1] == ow.shape[0] and q is not None:
        tr.set(o, new.view([1] * (o.dim() - 1) + [-1]), 0.0)
