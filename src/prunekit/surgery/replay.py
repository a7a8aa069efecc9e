"""Replaying a compacted model's surgery record on a fresh, unpruned instance.

:func:`prunekit.surgery.compact.compact` records what it changed (``HISTORY_ATTR``):
module attributes, created biases, replaced modules and new tensor shapes. ``pk.save``
writes the record; loading into a fresh instance replays it with :func:`replay` before
the weights are loaded. Everything is checked before anything changes: only the module
classes and attributes below are accepted, with values of the expected kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PruneError
from ..graph.norms import EPS_ATTRS
from ..layers import PrunedLayerNorm, PrunedMultiheadAttention
from .vanished import rebuild as rebuild_vanished

#: Integer module attributes a record may set.
INT_ATTRS = frozenset({
    "out_channels", "in_channels", "groups", "out_features", "in_features", "num_features",
    "num_channels", "num_groups", "embedding_dim", "num_parameters", "num_heads", "head_dim",
    "n_heads", "heads", "n_head", "num_attention_heads", "nhead", "hidden_size", "input_size", "d_model",
})
#: Float attributes (a narrowed RMSNorm's epsilon) and shapes (a norm's ``normalized_shape``).
FLOAT_ATTRS = frozenset(EPS_ATTRS)
SHAPE_ATTRS = frozenset({"normalized_shape"})


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def attribute(where: str, key: str, value: Any) -> Any:
    """The value ``key`` takes on load, checked (``PruneError`` names what is accepted)."""
    if key in INT_ATTRS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if key in FLOAT_ATTRS and isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if key in SHAPE_ATTRS and isinstance(value, list) and value and all(_int(x) for x in value):
        return tuple(value)
    raise PruneError(
        f"{where}: surgery attribute {key}={value!r} is not accepted (integers for {sorted(INT_ATTRS)}, "
        f"non-negative numbers for {sorted(FLOAT_ATTRS)}, lists of positive integers for {sorted(SHAPE_ATTRS)})"
    )


def rebuild(old: nn.Module | None, spec: Any, where: str) -> nn.Module:
    """The module a ``replaced`` entry names, built to replace ``old``."""
    kind = spec.get("class") if isinstance(spec, dict) else None
    if kind == "PrunedMultiheadAttention" and isinstance(old, (nn.MultiheadAttention, PrunedMultiheadAttention)) \
            and _int(spec.get("head_dim")) and (_int(spec.get("num_heads")) or spec.get("num_heads") == 0):
        width = spec.get("embed_dim", old.embed_dim)
        if _int(width):
            return PrunedMultiheadAttention(width, spec["num_heads"], spec["head_dim"], bias=old.in_proj_bias is not None,
                                            batch_first=old.batch_first, dropout=old.dropout)
    if kind == "PrunedLayerNorm" and isinstance(getattr(old, "weight", None), torch.Tensor) and old.weight.dim() == 1:
        k, wide, eps = spec.get("normalized_shape"), spec.get("statistics_width"), spec.get("eps")
        if _int(k) and _int(wide) and k <= wide and isinstance(eps, (int, float)) and not isinstance(eps, bool) \
                and eps >= 0 and isinstance(spec.get("bias", True), bool):
            return PrunedLayerNorm(k, wide, float(eps), bias=spec.get("bias", True))
    new = rebuild_vanished(old, spec) if isinstance(spec, dict) else None
    if new is not None:
        return new
    raise PruneError(f"{where}: surgery replaces it with {spec!r}, which does not fit {type(old).__name__}")


def _follow(new: nn.Module, old: nn.Module | None) -> None:
    """Give ``new`` the train/eval mode, dtype and device of the module it replaces."""
    if old is None:
        return
    like = next(iter(old.parameters()), None)
    if like is not None:
        new.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
    new.train(old.training)


def replay(model: nn.Module, surgery: list[dict[str, Any]], tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Give a fresh, unpruned ``model`` the shapes a compacted save has: replace what the
    record replaced, resize what it touched, set the recorded module attributes."""
    from .compact import HISTORY_ATTR

    modules = dict(model.named_modules())
    for rec in surgery:
        if not isinstance(rec, dict):
            raise PruneError(f"{path}: a surgery record must be an object, got {rec!r}")
        for mname, spec in (rec.get("replaced") or {}).items():
            old = modules.get(mname)
            new = rebuild(old, spec, f"{path}: {mname!r}")
            _follow(new, old)
            parent, _, child = mname.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            modules = dict(model.named_modules())
    resize: dict[str, tuple[int, ...]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    for rec in surgery:
        for name in list(rec.get("shapes", {})) + list(rec.get("created", [])):
            if name not in tensors:
                raise PruneError(f"{path}: surgery touches {name!r}, which is not in the saved weights")
            mname, _, pname = name.rpartition(".")
            if mname not in modules:
                raise PruneError(f"{path}: surgery touches module {mname!r}, which {type(model).__name__} does not have")
            resize[name] = tuple(tensors[name].shape)
        for mname, values in rec.get("modules", {}).items():
            if mname not in modules:
                raise PruneError(f"{path}: surgery changes module {mname!r}, which {type(model).__name__} does not have")
            for k, v in values.items():
                attrs.setdefault(mname, {})[k] = attribute(f"{path}: {mname}", k, v)
    made: dict[int, nn.Parameter] = {}  # tied parameters (one tensor, two names) stay tied
    # The fresh model's floating dtype (a bfloat16 instance stays bfloat16, as an uncompacted load does).
    floating = next((t.dtype for t in model.parameters() if t.is_floating_point()), None)
    for name, shape in resize.items():
        mname, _, pname = name.rpartition(".")
        mod = modules[mname]
        old = getattr(mod, pname, None)
        like = old if isinstance(old, torch.Tensor) else tensors[name]
        dtype = tensors[name].dtype
        if dtype.is_floating_point:
            dtype = like.dtype if like.is_floating_point() and like is old else (floating or dtype)
        new = torch.zeros(shape, dtype=dtype, device=like.device)
        if pname in mod._buffers:
            mod._buffers[pname] = new
        elif old is not None and id(old) in made and made[id(old)].shape == shape:
            mod._parameters[pname] = made[id(old)]
        else:
            mod._parameters[pname] = nn.Parameter(new, requires_grad=True if old is None else old.requires_grad)
            if old is not None:
                made[id(old)] = mod._parameters[pname]
    for mname, values in attrs.items():
        for k, v in values.items():
            setattr(modules[mname], k, v)
    object.__setattr__(model, HISTORY_ATTR, list(surgery))
