"""Compaction: build the smaller dense model whose outputs equal the masked one.

A unit is removed when every entry that defines it (the producing layer's filter and bias,
norm affine parameters, depthwise filters) is zero. Removed indices are sliced out of every
member parameter and buffer; a removed input channel that held a non-zero constant in the
masked model (e.g. after a sigmoid) is folded into the next layer's bias first. Module
attributes (``out_channels``, ``in_features``, ``num_features``, ``groups``...) are updated
by per-type handlers registered in :data:`HANDLERS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import masking as _masks
from .. import validate as V
from ..criteria.base import call_model, preserved
from ..errors import PruneError
from ..graph.groups import Structure, build
from . import width
from .vanished import replace_vanished
from ..targets import check_module

#: Per-module-type attribute updates after slicing: ``handler(module, facts)``.
HANDLERS: dict[type, Callable[[nn.Module, dict[str, Any]], dict[str, Any]]] = {}

HISTORY_ATTR = "_prunekit_surgery"

#: Attribute names that hold a head count in hand-written attention modules; compaction
#: lowers the one equal to the traced number of heads.
HEAD_ATTRS = ("num_heads", "n_heads", "heads", "n_head", "num_attention_heads", "nhead")


def handler(*types: type):
    def deco(fn):
        for t in types:
            HANDLERS[t] = fn
        return fn

    return deco


@handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Conv1d, facts: dict[str, Any]) -> dict[str, Any]:
    out_c = m.weight.shape[0]
    if "depthwise" in facts:
        groups = out_c // facts["depthwise"]
    elif "grouped" in facts:
        groups = out_c // facts["grouped"]
    else:
        groups = m.groups
    return {"out_channels": out_c, "groups": groups, "in_channels": m.weight.shape[1] * groups}


@handler(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(m: nn.ConvTranspose1d, facts: dict[str, Any]) -> dict[str, Any]:
    """Weight ``(in, out / groups, *k)``: whole conv groups go, so ``groups`` shrinks by
    the input rows removed over the rows one group had."""
    groups, per_group = facts.get("transposed", (m.groups, m.in_channels // m.groups, 0))[:2]
    groups = 1 if groups == 1 else m.weight.shape[0] // per_group
    return {"in_channels": m.weight.shape[0], "out_channels": m.weight.shape[1] * groups, "groups": groups}


@handler(nn.Linear)
def _linear(m: nn.Linear, facts):
    return {"out_features": m.weight.shape[0], "in_features": m.weight.shape[1]}


@handler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def _norm(m, facts):
    ref = m.weight if m.weight is not None else m.running_mean
    return {"num_features": ref.shape[0]}


@handler(nn.GroupNorm)
def _group_norm(m: nn.GroupNorm, facts):
    c = m.weight.shape[0]
    return {"num_channels": c, "num_groups": c // facts.get("group_norm", m.num_channels // m.num_groups)}


@handler(nn.Embedding)
def _embedding(m: nn.Embedding, facts):
    return {"embedding_dim": m.weight.shape[1]}


@handler(nn.PReLU)
def _prelu(m: nn.PReLU, facts):
    return {"num_parameters": m.weight.shape[0]}


def _facts(st: Structure) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (kind, mname), value in st.graph.extra.items():
        out.setdefault(mname, {})[kind] = value
    return out


def _split(name: str) -> tuple[str, str]:
    mname, _, pname = name.rpartition(".")
    return mname, pname


def _fold(module: nn.Module, w: torch.Tensor, dim: int, gone: torch.Tensor, fill: float) -> None:
    """Add the constant contribution of removed input channels to ``module``'s bias."""
    cols = w.detach().index_select(dim, gone.nonzero().flatten().to(w.device))
    add = fill * cols.sum(dim=tuple(d for d in range(cols.dim()) if d != 0))
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    with torch.no_grad():
        module.bias.add_(add.to(module.bias.dtype))


def _compact_structure(model: nn.Module, st: Structure, removed: set[int]) -> dict[str, Any]:
    modules = dict(model.named_modules())
    keep: dict[str, list[tuple[int, torch.Tensor]]] = {}
    created: list[str] = []
    # 1. folds, on the full-size weights
    for m in st.graph.members:
        if m.role != "in" or m.fill == 0.0:
            continue
        gone = st.positions(m, removed)
        if bool(gone.any()):
            mod = modules[m.module]
            had_bias = mod.bias is not None
            _fold(mod, getattr(mod, _split(m.param)[1]), m.dim, gone, m.fill)
            if not had_bias:
                created.append(f"{m.module}.bias" if m.module else "bias")
    # 2. slices
    for m in st.graph.members:
        gone = st.positions(m, removed)
        if bool(gone.any()):
            entries = keep.setdefault(m.param, [])
            if all(d != m.dim for d, _ in entries):
                entries.append((m.dim, (~gone).nonzero().flatten()))
    for name, entries in keep.items():
        mname, pname = _split(name)
        mod = modules[mname]
        t = getattr(mod, pname)
        new = t.detach()
        for dim, idx in entries:
            new = new.index_select(dim, idx.to(new.device))
        new = new.clone()
        if pname in mod._parameters:
            mod._parameters[pname] = nn.Parameter(new, requires_grad=t.requires_grad)
        else:
            mod._buffers[pname] = new
    # 3. module attributes
    facts = _facts(st)
    attrs: dict[str, dict[str, Any]] = {}
    replaced = width.attention(model, st, removed)
    norm_attrs, norm_replaced = width.norms(model, st)
    replaced.update(norm_replaced)
    for mname, values in norm_attrs.items():
        attrs.setdefault(mname, {}).update(values)
    modules = dict(model.named_modules())
    for (kind, where), ids in st.graph.extra.items():
        if kind != "heads" or where not in modules or where in replaced:
            continue
        roots = st.roots[ids.reshape(-1)].tolist()
        gone = sum(1 for r in roots if r in removed)
        if gone:
            mod = modules[where]
            for attr in HEAD_ATTRS:
                if getattr(mod, attr, None) == len(roots) and not isinstance(getattr(mod, attr), bool):
                    setattr(mod, attr, len(roots) - gone)
                    attrs.setdefault(where, {})[attr] = len(roots) - gone
                    break
    touched = {_split(n)[0] for n in keep} | {_split(n)[0] for n in created}
    for mname in sorted(touched):
        if mname in replaced:  # a new module built with its own sizes
            continue
        mod = modules[mname]
        h = next((fn for t, fn in HANDLERS.items() if type(mod) is t), None)
        if h is None:
            h = next((fn for t, fn in HANDLERS.items() if isinstance(mod, t)), None)
        if h is None:
            continue
        new_attrs = h(mod, facts.get(mname, {}))
        for k, v in new_attrs.items():
            setattr(mod, k, v)
        attrs.setdefault(mname, {}).update(new_attrs)
    for mname, values in width.transformers(model).items():
        attrs.setdefault(mname, {}).update(values)
    shapes = {n: list(getattr(modules[_split(n)[0]], _split(n)[1]).shape) for n in keep}
    vanished = replace_vanished(model)  # layers left with no channels (a residual block removed whole)
    if vanished:
        replaced.update(vanished)

        def stays(name: str) -> bool:  # of a replaced layer, only a ConstantOutput's bias remains
            spec = vanished.get(_split(name)[0])
            return spec is None or (spec["class"] == "ConstantOutput" and _split(name)[1] == "bias")

        attrs = {k: v for k, v in attrs.items() if k not in vanished}
        created = [n for n in created if stays(n)]
        shapes = {n: v for n, v in shapes.items() if stays(n)}
    return {"modules": attrs, "created": created, "replaced": replaced, "shapes": shapes}


def compact(
    model: nn.Module,
    example_inputs: Any,
    *,
    inplace: bool = False,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> nn.Module:
    """Physically remove pruned channels: a smaller dense model with the same outputs.

    Units (channels, neurons, conv groups) whose defining weights are all zero, as channel
    pruning leaves them, are sliced out of every coupled parameter. Unstructured masks on
    what remains are kept (hybrid pruning), sliced to the new shapes. Parameters are new
    tensors: **rebuild the optimizer** after compacting.

    Args:
        model: a model pruned with ``granularity="channel"`` (masked or committed).
        example_inputs: inputs the model accepts; used to trace the coupling and to check.
        inplace: change ``model`` itself instead of returning a deep copy. With ``check``,
            a copy is compacted and checked first and moved into ``model`` only once it
            passes (peak memory: two copies), so a refusal leaves ``model`` as it was;
            ``check=False`` compacts ``model`` directly.
        check: run both models on ``example_inputs`` and raise if outputs differ by more
            than ``atol + rtol * max|output|`` (then ``model`` is left as it was).
        rtol, atol: the check's tolerances. In bfloat16/float16 the compacted model
            differs from the masked one by the format's rounding: the refusal says so and
            names the ``rtol`` that accepts it (``8 * eps``: 0.0625 for bfloat16).

    Returns:
        The compacted model (``model`` itself when ``inplace=True``).

    Example:
        >>> pk.prune(net, 0.5, granularity="channel", example_inputs=x)
        >>> small = pk.compact(net, x)
        >>> torch.allclose(small(x), net(x), atol=1e-5)
        True
    """
    check_module(model)
    inplace, check = V.boolean("inplace", inplace), V.boolean("check", check)
    rtol, atol = V.number("rtol", rtol, lo=0.0), V.number("atol", atol, lo=0.0)
    if example_inputs is None:
        raise PruneError("compact needs example_inputs= (a batch the model accepts) to trace the coupling")
    st = build(model, example_inputs)
    values = _masks.effective_weights(model)
    for name, buf in model.named_buffers():
        values.setdefault(name, buf)
    removed = st.removed_units(values)
    work = model if inplace and not check else copy.deepcopy(model)
    reference = None
    if check:
        with preserved(model), torch.no_grad():
            model.eval()
            reference = call_model(model, example_inputs)
            if isinstance(reference, torch.Tensor):
                reference = reference.clone()
    masks = _masks.get_masks(work)
    ties = _ties(work)
    _masks.commit(work)
    record = _compact_structure(work, st, removed) if removed else {"modules": {}, "created": [], "replaced": {}, "shapes": {}}
    _retie(work, ties)
    state = dict(work.named_parameters())
    remaining = {}
    for name, mask in masks.items():
        if name not in state:
            continue
        for m in st.graph.members:
            if m.param == name and removed:
                gone = st.positions(m, removed)
                if bool(gone.any()) and mask.shape[m.dim] == gone.numel():
                    mask = mask.index_select(m.dim, (~gone).nonzero().flatten().to(mask.device))
        if tuple(mask.shape) == tuple(state[name].shape) and bool((mask == 0).any()):
            remaining[name] = mask
    if remaining:
        _masks.apply_masks(work, remaining)
    history = list(getattr(work, HISTORY_ATTR, []))
    history.append(record)
    object.__setattr__(work, HISTORY_ATTR, history)
    if check:
        left = "the model was left unchanged"
        with preserved(work), torch.no_grad():
            work.eval()
            try:
                got = call_model(work, example_inputs)
            except Exception as e:
                rnns = [n for n, a in record["modules"].items() if "hidden_size" in a]
                state = (f"; or an initial state (hx) built with the old hidden_size of {', '.join(rnns)}: build it "
                         "from the layer's hidden_size, or leave hx out") if rnns else ""
                raise PruneError(
                    f"the compacted model no longer runs on example_inputs ({type(e).__name__}: {e}). Its code "
                    "depends on a width that shrank: a reshape to a fixed channel count such as "
                    "x.view(-1, 32, 4) or nn.Unflatten(1, (32, 4)) (write that size as -1: x.view(b, -1, 4)), or a "
                    "slice with a fixed bound such as h[:, :16] (split with h.chunk(2, 1) instead); or keep the "
                    f"layer feeding it with ignore=[...]{state}; {left}"
                ) from e
        err = _max_err(reference, got)
        scale = _max_abs(reference)
        if err > atol + rtol * scale:
            shapes = "" if err != float("inf") else " (output shapes differ)"
            eps = _eps(work, got)
            rounding = (f"; the model computes in a {eps:.2g}-epsilon format whose rounding alone can differ by "
                        f"{8 * eps * scale:.3g}: pass rtol={8 * eps:g} to accept that"
                        if rtol < 8 * eps and err <= atol + 8 * eps * scale else "")
            raise PruneError(
                f"compacted model differs from the masked one by {err:.3g}{shapes} "
                f"(tolerance {atol + rtol * scale:.3g}){rounding}; {left}"
            )
    if inplace and work is not model:  # the checked copy becomes the model: same object, new contents
        model.__class__ = work.__class__
        model.__dict__.clear()
        model.__dict__.update(work.__dict__)
        return model
    return work


def _ties(model: nn.Module) -> list[list[str]]:
    """Names that share one stored tensor (a tied embedding and output layer)."""
    by: dict[int, list[str]] = {}
    for mname, mod in model.named_modules():
        names = [n for n, _ in mod.named_parameters(recurse=False)] + _masks.parametrized_names(mod)
        for pname in names:
            t = _masks.original(mod, pname)
            if isinstance(t, torch.Tensor):
                full = f"{mname}.{pname}" if mname else pname
                if not _masks.is_parametrization_key(full) and full not in by.setdefault(id(t), []):
                    by[id(t)].append(full)
    return [names for names in by.values() if len(names) > 1]


def _retie(model: nn.Module, ties: list[list[str]]) -> None:
    """Tie again what committing and slicing untied, where the values still agree."""
    for names in ties:
        first = model.get_parameter(names[0])
        for name in names[1:]:
            mname, pname = _split(name)
            mod = model.get_submodule(mname)
            other = getattr(mod, pname)
            if other is not first and other.shape == first.shape and torch.equal(other, first):
                mod._parameters[pname] = first


def _flat(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flat(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat(v)]
    return []


def _max_err(a: Any, b: Any) -> float:
    fa, fb = _flat(a), _flat(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb)):
        return float("inf")
    return max([float((x.detach().float() - y.detach().float()).abs().max()) if x.numel() else 0.0
                for x, y in zip(fa, fb)] + [0.0])


def _eps(model: nn.Module, outputs: Any) -> float:
    """The machine epsilon of the lowest-precision floating dtype the model computes in."""
    dtypes = {t.dtype for t in _flat(outputs)} | {p.dtype for p in model.parameters()}
    return max([torch.finfo(d).eps for d in dtypes if d.is_floating_point] + [0.0])


def _max_abs(a: Any) -> float:
    return max([float(x.detach().float().abs().max()) if x.numel() else 0.0 for x in _flat(a)] + [0.0])
