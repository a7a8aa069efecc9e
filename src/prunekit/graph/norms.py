"""Norms over a stream of channels: LayerNorm and RMSNorm, torch's and hand-written ones.

A norm over the last dimension (a transformer's residual stream, a channels-last conv
block) keeps each channel where it was: its input and output carry the same ids, and its
per-channel ``weight``/``bias`` are members of those channels. What pruning changes is
the statistics: the masked model still normalizes over the full width ``W``, with the
removed channels at zero. Compaction reproduces that exactly on the ``K`` kept channels
(see :mod:`prunekit.surgery.norms`):

* RMSNorm: ``x / sqrt(sum(x^2) / W + eps)`` equals ``sqrt(W / K) * x / sqrt(sum(x^2) / K +
  eps * W / K)``, so the compacted RMSNorm stays an RMSNorm of width ``K`` whose weight
  is scaled by ``sqrt(W / K)`` and whose ``eps`` is multiplied by ``W / K``;
* LayerNorm: the mean and variance of ``W`` values of which ``W - K`` are zero are not
  those of the ``K`` kept ones, so the compacted layer is
  :class:`prunekit.layers.PrunedLayerNorm`, which normalizes with the full-width
  statistics.

Norms are recognised as ``F.layer_norm`` / ``F.rms_norm`` called by ``nn.LayerNorm`` /
``nn.RMSNorm``, as :class:`~prunekit.layers.PrunedLayerNorm`, or, for a hand-written module
(a ``weight``, maybe a ``bias``, an ``eps``-like attribute and no submodules), by running it
once on a probe input before tracing and comparing its output with LayerNorm, RMSNorm
and RMSNorm with ``(1 + weight)``. A module that looks like a norm but matches none keeps
the channels it normalizes, with a note saying so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import PrunedLayerNorm
from ..masking import parametrized_names, plain_class
from . import channels as T
from .args import arg as _arg

#: ``graph.extra`` key kind: ``("norm", module) -> facts`` (kind, width, eps attribute, class).
KIND = "norm"

#: Attributes a hand-written norm keeps its epsilon in.
EPS_ATTRS = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "rms_norm_eps")

_STOCK = {"layer_norm": nn.LayerNorm, "rms_norm": nn.RMSNorm}


def op_norm(tr: T.ChannelTracer, name: str, func, args: tuple, kwargs: dict, out: Any) -> None:
    """Handler for ``layer_norm(x, shape, weight, bias, eps)`` and ``rms_norm(x, shape, weight, eps)``."""
    x = _arg(args, kwargs, 0, "input")
    g = tr.grid(x)
    if g is None:
        return
    shape = _arg(args, kwargs, 1, "normalized_shape")
    w = _arg(args, kwargs, 2, "weight")
    b = _arg(args, kwargs, 3, "bias") if name == "layer_norm" else None
    kind = "layer" if name == "layer_norm" else "rms"
    owner = _owner(tr, w)
    why = _why_not(tr, x, g, w, b, kind)
    if why is None and (len(tuple(shape)) != 1):
        why = f"{name} normalizes over {len(tuple(shape))} dimensions"
    if why is None and (owner is None or plain_class(owner[1]) is not _STOCK[name] or tr.where() != owner[0]):
        why = f"{name} is called outside an nn.{_STOCK[name].__name__} of its own, whose width compaction could update"
    if why is not None:
        tr.fix(g)
        tr.note(name, f"{why}; the channels it normalizes are kept")
        return
    facts = {"kind": kind, "width": int(x.shape[-1]), "eps": "eps", "class": _STOCK[name].__name__}
    _couple(tr, name, x, g, out, w, b, owner[0], facts)


def _owner(tr: T.ChannelTracer, w: Any) -> tuple[str, nn.Module] | None:
    key = tr.params.get(id(w)) if isinstance(w, torch.Tensor) else None
    if key is None:
        return None
    mname = tr.g.param_modules.get(key[0], "")
    return mname, tr.model.get_submodule(mname)


def _why_not(tr: T.ChannelTracer, x: torch.Tensor, g: torch.Tensor, w: Any, b: Any, kind: str) -> str | None:
    """Why the channels of ``x`` cannot go through this norm, or None when they can."""
    vary = [d + x.dim() - g.dim() for d in T.varying_dims(g)]
    if vary != [x.dim() - 1]:
        return "channel ids vary along dimensions other than the normalized one"
    if w is None:
        return ("normalization without a weight: a removed channel would not stay zero" if kind == "layer" else
                "RMSNorm without a weight cannot absorb the rescaling a narrower width needs")
    if id(w) not in tr.params or (b is not None and id(b) not in tr.params):
        return "its weight or bias is not a module parameter"
    fill = tr.fill(x)
    if fill != 0.0:
        return f"removed channels hold {fill:g} here, not zero"
    return None


def _couple(tr: T.ChannelTracer, op: str, x: torch.Tensor, g: torch.Tensor, out: Any, w: torch.Tensor,
            b: torch.Tensor | None, module: str, facts: dict[str, Any]) -> None:
    ids = tr.channel_ids(x, x.dim() - 1, op)
    tr.member(w, 0, ids, "chan")
    if b is not None:
        tr.member(b, 0, ids, "chan")
    tr.g.extra[(KIND, module)] = facts
    o = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(o, torch.Tensor) and o.shape == x.shape:
        tr.set(o, g, 0.0)


# ---- whole modules ---------------------------------------------------------------------------
def _eps_attr(m: nn.Module) -> str | None:
    for a in EPS_ATTRS:
        v = getattr(m, a, None)
        if isinstance(v, (float, int)) and not isinstance(v, bool) and v >= 0:
            return a
    return None


def _tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p for n, p in m.named_parameters(recurse=False)}
    for n in parametrized_names(m):
        out[n] = getattr(m, n)
    return out


def _looks_like_norm(m: nn.Module) -> bool:
    return _eps_attr(m) is not None or "norm" in plain_class(m).__name__.lower()


def _probe(m: nn.Module, eps: float, w: torch.Tensor, b: torch.Tensor | None) -> str | None:
    """Which norm ``m`` computes over its last dimension: "layer", "rms", "rms1p" or None."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, w.shape[0], generator=gen, dtype=torch.float64) + 0.5
    try:
        y = m(x.to(w.dtype))
    except Exception:
        return None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return None
    y, wd = y.double(), w.detach().double()
    bd = b.detach().double() if b is not None else 0.0
    rms = x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps)
    mu = x.mean(-1, keepdim=True)
    layer = (x - mu) / torch.sqrt((x - mu).square().mean(-1, keepdim=True) + eps)
    tol = 1e-4 if w.dtype in (torch.float32, torch.float64) else 3e-2
    candidates = {"layer": layer * wd + bd}
    if b is None:
        candidates.update({"rms": rms * wd, "rms1p": rms * (1 + wd)})
    for kind, ref in candidates.items():
        if bool(torch.allclose(y, ref, rtol=tol, atol=tol)):
            return kind
    return None


class ModuleNorms:
    """Norm modules handled as a whole during one trace (hand-written ones and
    :class:`~prunekit.layers.PrunedLayerNorm`). Build it before tracing (it runs each
    candidate once); :func:`prunekit.graph.tracer.trace` calls :meth:`enter` and
    :meth:`leave` from its forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.facts: dict[int, dict[str, Any]] = {}
        self.odd: dict[int, str] = {}  # norm-looking modules that match no norm
        self.open: list[tuple[nn.Module, torch.Tensor]] = []
        self.watched: list[tuple[nn.Module, torch.Tensor]] = []
        for m in model.modules():
            cls = plain_class(m)
            if cls is PrunedLayerNorm:
                self.facts[id(m)] = {"kind": "layer", "eps": "eps", "class": "PrunedLayerNorm"}
                continue
            if cls.__module__.split(".")[0] == "torch" or any(n != "parametrizations" for n, _ in m.named_children()):
                continue
            ts = _tensors(m)
            w, b = ts.get("weight"), ts.get("bias")
            if next(m.buffers(recurse=False), None) is not None:  # running statistics: not a norm over the stream
                continue
            if set(ts) - {"weight", "bias"} or w is None or w.dim() != 1 or w.shape[0] < 2 or (
                    b is not None and b.shape != w.shape) or not w.is_floating_point():
                continue
            attr = _eps_attr(m)
            kind = _probe(m, float(getattr(m, attr)), w, b) if attr is not None else None
            if kind is not None:
                self.facts[id(m)] = {"kind": kind, "eps": attr, "class": cls.__name__}
            elif _looks_like_norm(m):
                self.odd[id(m)] = cls.__name__ + ("" if attr else " (no eps attribute found)")

    def enter(self, tr: T.ChannelTracer, m: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        g = tr.grid(x)
        if g is None or tr.muted:
            return
        if id(m) in self.odd:  # its ops are followed; if they keep the channels, say why
            self.watched.append((m, x))
            return
        facts = self.facts.get(id(m))
        if facts is None:
            return
        ts = _tensors(m)
        w, b = ts.get("weight"), ts.get("bias")
        why = _why_not(tr, x, g, w, b, facts["kind"])
        if why is None and x.shape[-1] != w.shape[0]:
            why = f"its input has {x.shape[-1]} channels, its weight {w.shape[0]}"
        if why is not None:
            tr.fix(g)
            tr.note(plain_class(m).__name__, f"{why}; the channels it normalizes are kept")
            return
        mname = tr.module_names.get(id(m), "")
        _couple(tr, plain_class(m).__name__, x, g, None, w, b, mname, {**facts, "width": int(x.shape[-1])})
        self.open.append((m, x))
        tr.muted += 1

    def leave(self, tr: T.ChannelTracer, m: nn.Module, out: Any) -> None:
        if self.watched and self.watched[-1][0] is m:
            _, x = self.watched.pop()
            g = tr.grid(x)
            if g is not None and any(tr.g.uf.find(i) == T.FIXED for i in torch.unique(g).tolist()):
                tr.note(plain_class(m).__name__, f"{self.odd[id(m)]} looks like a normalization but computes neither "
                                                 "LayerNorm nor RMSNorm over its last dimension; the channels it "
                                                 "normalizes are kept")
            return
        if not self.open or self.open[-1][0] is not m:
            return
        _, x = self.open.pop()
        tr.muted -= 1
        o = out[0] if isinstance(out, (tuple, list)) else out
        g = tr.grid(x)
        if isinstance(o, torch.Tensor) and g is not None and o.shape == x.shape:
            tr.set(o, g, 0.0)
        elif g is not None:
            tr.fix(g)
            tr.note(plain_class(m).__name__, "a norm whose output is not shaped like its input; the channels it normalizes are kept")
