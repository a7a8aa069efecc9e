"""What a narrower stream changes besides the sliced tensors: norms, attention, ``d_model``.

Called by :func:`prunekit.surgery.compact.compact` after every coupled tensor was sliced.

* **Norms** (traced by :mod:`prunekit.graph.norms`): the masked model normalizes over the
  full width ``W`` with the removed channels at zero. An RMSNorm left with ``K`` channels
  gets its weight scaled by ``sqrt(W / K)`` (``(1 + weight)`` for the ``1 + weight``
  convention) and its ``eps`` multiplied by ``W / K``: the same outputs, still an RMSNorm.
  A LayerNorm becomes :class:`prunekit.layers.PrunedLayerNorm` (the full-width mean and
  variance); an existing ``PrunedLayerNorm`` only narrows.
* **nn.MultiheadAttention** whose embedding width or heads shrank becomes
  :class:`prunekit.layers.PrunedMultiheadAttention` (same head size).
* **nn.Transformer** gets the new ``d_model`` (its forward checks its inputs' width).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..graph.groups import Structure
from ..graph.norms import KIND as NORM
from ..layers import PrunedLayerNorm, PrunedMultiheadAttention


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in ``model`` where the submodule called ``name`` was."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def attention(model: nn.Module, st: Structure, removed: set[int]) -> dict[str, dict[str, Any]]:
    """Swap in :class:`PrunedMultiheadAttention` where heads or the embedding width went."""
    modules = dict(model.named_modules())
    replaced: dict[str, dict[str, Any]] = {}
    for (kind, where), value in st.graph.extra.items():
        if kind != "mha" or where not in modules:
            continue
        ids, head_dim = value
        mod = modules[where]
        left = sum(1 for r in st.roots[ids].tolist() if r not in removed)
        width = int(mod.out_proj.weight.shape[0])
        if left < ids.numel() or width != int(mod.in_proj_weight.shape[1]) or width != mod.embed_dim:
            replace_module(model, where, PrunedMultiheadAttention.from_module(mod, left, head_dim))
            replaced[where] = {"class": "PrunedMultiheadAttention", "num_heads": left, "head_dim": head_dim,
                               "embed_dim": width}
    return replaced


def norms(model: nn.Module, st: Structure) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Give every narrowed norm the statistics the masked model computed. Returns
    ``(module attributes set, modules replaced)`` for the surgery record."""
    modules = dict(model.named_modules())
    attrs: dict[str, dict[str, Any]] = {}
    replaced: dict[str, dict[str, Any]] = {}
    for (kind, mname), facts in st.graph.extra.items():
        if kind != NORM or mname not in modules:
            continue
        mod = modules[mname]
        w = mod.weight
        k, wide = int(w.shape[0]), int(facts["width"])
        if k == wide:
            continue
        if facts["kind"] == "layer":
            if isinstance(mod, PrunedLayerNorm):
                mod.normalized_shape = (k,)
                attrs[mname] = {"normalized_shape": [k]}
                continue
            eps = float(getattr(mod, facts["eps"]))
            new = PrunedLayerNorm.from_module(mod, wide, eps)
            replace_module(model, mname, new)
            replaced[mname] = {"class": "PrunedLayerNorm", "normalized_shape": k, "statistics_width": wide,
                               "eps": eps, "bias": new.bias is not None}
            continue
        scale = math.sqrt(wide / k)
        with torch.no_grad():
            if facts["kind"] == "rms":
                w.mul_(scale)
            else:  # rms1p: the layer multiplies by (1 + weight)
                w.copy_((1 + w.double()) * scale - 1)
        eps = getattr(mod, facts["eps"])
        if eps is None:  # nn.RMSNorm(eps=None) uses the dtype's machine epsilon
            eps = torch.finfo(w.dtype).eps
        new_eps = float(eps) * wide / k
        setattr(mod, facts["eps"], new_eps)
        attrs[mname] = {facts["eps"]: new_eps}
        if isinstance(mod, nn.RMSNorm):
            mod.normalized_shape = (k,)
            attrs[mname]["normalized_shape"] = [k]
    return attrs, replaced


def transformers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``nn.Transformer.d_model`` follows its layers' (possibly narrowed) width."""
    attrs: dict[str, dict[str, Any]] = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.Transformer):
            layers = list(mod.encoder.layers)
            width = int(layers[0].linear1.weight.shape[1]) if layers else mod.d_model
            if width != mod.d_model:
                mod.d_model = width
                attrs[mname] = {"d_model": width}
    return attrs
