"""Layers left with no channels: what :func:`prunekit.surgery.compact.compact` puts in
place of a Linear/Conv layer or a norm when a coupled group lost every unit.

That happens inside a residual branch pruned away whole (``x + f(x)`` with all of ``f``'s
inner channels removed): PyTorch cannot run a convolution with zero output or input
channels, nor a BatchNorm over none. The masked model computes, there, an empty tensor
and then a constant (the next layer's bias, or zeros), so:

* a layer with no output units becomes :class:`prunekit.layers.EmptyOutput` (the empty
  tensor of the right shape, no compute);
* a layer with no input channels becomes :class:`prunekit.layers.ConstantOutput` (its bias
  broadcast to the output shape, still learnable);
* a norm over no channels becomes ``nn.Identity``;
* a BatchNorm right after a ``ConstantOutput`` in an ``nn.Sequential`` (the end of a
  removed ``conv → BN`` branch) is folded into it, with its running statistics, and becomes
  ``nn.Identity``: a norm over a constant computes nothing the constant cannot hold, and left
  in place it cost a full pass over the activations per removed block (the ResNet-style
  model of ``benchmarks/eager_conv_floor.py``, every branch removed, ran 1.5–1.7× the
  time of the same computation written by hand in eager PyTorch; 1.3–1.6× folded). In training mode such a
  norm would have output its own bias (β) alone; folded, the branch is one learnable
  per-channel constant either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import ConstantOutput, EmptyOutput
from .width import replace_module

__all__ = ["replace_vanished"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.LayerNorm)


def replace_vanished(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Replace every Linear/Conv layer with no output units or no input channels and every
    norm over no channels; returns ``{module name: spec}`` for the surgery record (what
    :func:`rebuild` needs to do it again on load)."""
    out: dict[str, dict[str, Any]] = {}
    for name, mod in list(model.named_modules()):
        w = getattr(mod, "weight", None)
        if isinstance(mod, _LAYERS) and type(mod) in _LAYERS and w is not None and w.dim() >= 2:
            geometry = EmptyOutput.geometry(mod)
            like = {"device": w.device, "dtype": w.dtype}
            if w.shape[0] == 0:
                new: nn.Module = EmptyOutput(**geometry).train(mod.training)
                out[name] = {"class": "EmptyOutput", **geometry}
            elif w.shape[1] == 0 and getattr(mod, "groups", 1) == 1:
                new = ConstantOutput(int(w.shape[0]), **geometry).to(**like).train(mod.training)
                if mod.bias is not None:
                    new.bias.data.copy_(mod.bias.detach())
                new.bias.requires_grad_(mod.bias.requires_grad if mod.bias is not None else w.requires_grad)
                out[name] = {"class": "ConstantOutput", "channels": int(w.shape[0]), **geometry}
            else:
                continue
            replace_module(model, name, new)
        elif isinstance(mod, _NORMS) and _width(mod) == 0:
            replace_module(model, name, nn.Identity())
            out[name] = {"class": "Identity"}
    out.update(_fold_constant_norms(model))
    return out


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fold_constant_norms(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Fold each BatchNorm that directly follows a :class:`ConstantOutput` in a plain
    ``nn.Sequential`` (where the order of the children is the data flow) into that
    constant, with its running statistics; the norm becomes ``nn.Identity``."""
    out: dict[str, dict[str, Any]] = {}
    for pname, parent in list(model.named_modules()):
        if type(parent) is not nn.Sequential:
            continue
        children = list(parent.named_children())
        for (_, const), (b, norm) in zip(children, children[1:]):
            if not (isinstance(const, ConstantOutput) and type(norm) in _BATCH_NORMS
                    and norm.running_mean is not None and norm.num_features == const.channels):
                continue
            with torch.no_grad():
                scale = torch.rsqrt(norm.running_var.float() + norm.eps)
                value = (const.bias.float() - norm.running_mean.float()) * scale
                if norm.affine:
                    value = value * norm.weight.float() + norm.bias.float()
                const.bias.copy_(value.to(const.bias.dtype))
            if norm.affine:
                const.bias.requires_grad_(const.bias.requires_grad or norm.weight.requires_grad)
            setattr(parent, b, nn.Identity())
            out[f"{pname}.{b}" if pname else b] = {"class": "Identity"}
    return out


def _width(norm: nn.Module) -> int:
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(norm, attr, None), int):
            return getattr(norm, attr)
    ref = getattr(norm, "weight", None)
    return -1 if ref is None else int(ref.shape[0])


def rebuild(old: nn.Module | None, spec: dict[str, Any]) -> nn.Module | None:
    """The module a record entry of :func:`replace_vanished` names, or ``None`` when the
    entry does not fit ``old`` (the caller says what is accepted)."""
    kind = spec.get("class")
    if kind == "Identity" and isinstance(old, _NORMS):
        return nn.Identity()
    if kind not in ("EmptyOutput", "ConstantOutput") or not isinstance(old, _LAYERS):
        return None
    ints = lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)  # noqa: E731
    ndim = spec.get("ndim")
    keys = ("kernel_size", "stride", "padding", "dilation")
    if not (isinstance(ndim, int) and 0 <= ndim <= 3 and all(ints(spec.get(k)) and len(spec[k]) == ndim for k in keys)
            and isinstance(spec.get("same"), bool)):
        return None
    geometry = {"ndim": ndim, "same": spec["same"], **{k: spec[k] for k in keys}}
    if kind == "EmptyOutput":
        return EmptyOutput(**geometry)
    channels = spec.get("channels")
    if not (isinstance(channels, int) and not isinstance(channels, bool) and channels > 0):
        return None
    return ConstantOutput(channels, **geometry)
