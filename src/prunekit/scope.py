"""What a pruning call covers: the weights it leaves out, with why, and the checks of the
caller's example inputs that decide part of it.

:func:`out_of_scope` lists what a call leaves dense before it starts (``ignore=`` matches,
weights under another parametrization, layer types prunekit has no rule for),
:func:`per_layer_scope` narrows the per-layer path's targets to what its granularity can
prune, :func:`coverage_of` turns the final list into the result's :class:`~prunekit.coverage.Coverage`
(warning when much was left out), and :func:`output_layer` finds the layer whose units are
the model's outputs (never channel-pruned). Used by both pruning paths,
:mod:`prunekit.pruner` and :mod:`prunekit.coupled`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .coverage import Coverage, Skipped, total_params, unsupported_weights
from .criteria.base import call_model, preserved
from .errors import PruneError, PruneTypeError
from .granularity import NM, Granularity
from .masking import parametrizations
from .metrics_count import describe_type
from .targets import Target, find_targets, foreign_weights, rows_per_output

__all__ = ["ROWS_REASON", "check_inputs", "coverage_of", "missed_target", "out_of_scope", "output_layer", "per_layer_scope"]


#: Why a weight whose rows are not output units stays dense under channel/head granularity.
ROWS_REASON = ("its rows are not independent output units; channel/head granularity cannot remove them "
               "(use unstructured, N:M or block)")


def out_of_scope(model: nn.Module, targets: list[Target]) -> list[Skipped]:
    """Weights this call leaves out before it starts: ``ignore=`` matches and layer types
    prunekit has no rule for."""
    in_scope = {n for t in targets for n in (t.name, *t.aliases)}
    every = find_targets(model, skip_foreign=True)
    known = {n for t in every for n in (t.name, *t.aliases)}
    out = [Skipped(t.name, t.numel, "matched by ignore=", True) for t in every if t.name not in in_scope and t.numel]
    for name, kinds in foreign_weights(model).items():
        mname, _, pname = name.rpartition(".")
        module = model.get_submodule(mname)
        why = (f"parametrized by {kinds}: a mask cannot be applied exactly; remove the parametrization first to "
               "prune it")
        if pname in dict(module.named_parameters(recurse=False)) or parametrizations(module, pname):
            known.add(name)
            out.append(Skipped(name, getattr(module, pname).numel(), why))
            continue
        # recomputed by a hook (the older torch.nn.utils.weight_norm): its parameters are weight_g, weight_v, ...
        for own, p in module.named_parameters(recurse=False):
            if own.startswith(pname + "_"):
                full = f"{mname}.{own}" if mname else own
                known.add(full)
                out.append(Skipped(full, p.numel(), f"{pname} is computed from it by a {kinds[0]} hook: a mask "
                                   "cannot be applied exactly; remove the hook first (torch.nn.utils."
                                   "remove_weight_norm / remove_spectral_norm) to prune it"))
    return out + unsupported_weights(model, known)


def coverage_of(model: nn.Module, targets: list[Target], skipped: list[Skipped]) -> Coverage:
    """The call's :class:`Coverage`; warns when much was left out (the warning names the function calling this)."""
    cov = Coverage(sum(t.numel for t in targets), total_params(model), tuple(skipped))
    cov.warn("pk.prune", stacklevel=3)
    return cov


def check_inputs(model: nn.Module, example_inputs: Any) -> None:
    """Refuse ``example_inputs`` that are not tensors or do not run through ``model`` (left as it was)."""
    if example_inputs is None:
        return
    tensors = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise PruneTypeError(
            f"example_inputs must be a tensor or a tuple of tensors, got {describe_type(example_inputs)}"
        )
    with preserved(model), torch.no_grad():
        try:
            call_model(model, example_inputs)
        except Exception as e:  # the model's own error says why; we say which inputs
            shapes = [tuple(t.shape) for t in tensors]
            raise PruneError(
                f"example_inputs of shape {shapes[0] if len(shapes) == 1 else shapes} do not run through "
                f"{type(model).__name__}: {type(e).__name__}: {e}"
            ) from e


def output_layer(model: nn.Module, targets: list[Target], inputs: Any) -> str | None:
    """Name of the weight whose layer produces the model's output (never channel-pruned:
    its units are the model's outputs). Looks through tuple/list/dict outputs; when the
    output tensor is not a layer's own (``log_softmax``, ``view``...), the last layer to run."""
    if inputs is None:
        return _traced_output_layer(model, targets) or (targets[-1].name if targets else None)
    produced: dict[int, str] = {}
    order: list[str] = []

    def hook(m, i, o, n):
        produced[id(o)] = n
        order.append(n)

    handles = [
        t.module.register_forward_hook(lambda m, i, o, n=t.name: hook(m, i, o, n)) for t in targets if t.param == "weight"
    ]
    try:
        with preserved(model), torch.no_grad():
            out = call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    outs = list(out.values()) if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if isinstance(o, torch.Tensor) and id(o) in produced:
            return produced[id(o)]
    return order[-1] if order else (targets[-1].name if targets else None)


def _traced_output_layer(model: nn.Module, targets: list[Target]) -> str | None:
    """Without inputs: the weight of the layer the model's output comes from, read from a
    ``torch.fx`` symbolic trace (back along first arguments, through functions, methods and
    modules without prunable weights: ``log_softmax``, ``view``, pooling, norms, dropout);
    ``None`` when its output does not come from such a layer, or, with a warning, when the
    model does not trace (the caller then takes the last layer declared)."""
    import torch.fx

    by_module = {t.module_name: t.name for t in targets if t.param == "weight"}
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # data-dependent control flow, unsupported ops: no trace, no answer
        if len(by_module) > 1:
            warnings.warn(
                f"without example_inputs= the layer producing {type(model).__name__}'s output could not be traced "
                f"({type(e).__name__}); the last layer declared ({targets[-1].name}) is kept whole as the output "
                "layer. If another layer produces the output, its units would be removed: pass example_inputs=",
                stacklevel=4)
        return None
    out = next((n for n in graph.nodes if n.op == "output"), None)
    node = out.args[0] if out is not None else None
    for _ in range(len(graph.nodes)):
        if isinstance(node, (tuple, list)):
            node = node[0] if node else None
        elif isinstance(node, dict):
            node = next(iter(node.values()), None)
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == "call_module" and str(node.target) in by_module:
            return by_module[str(node.target)]
        if node.op not in ("call_module", "call_function", "call_method") or not node.args:
            return None
        node = node.args[0]
    return None


def missed_target(sp: float, reached: float, targets: list[Target], gran: Any, alloc: Any, min_keep: int,
                  max_sparsity: float | None) -> str | None:
    """The warning for a whole-model ``sparsity=sp`` that the per-layer path (unstructured,
    block, N:M, rows) missed by more than 5 points, naming the options that limit it; None
    when it was reached."""
    if reached + 0.05 >= sp:
        return None
    total = sum(t.numel for t in targets)
    limits = []
    if max_sparsity is not None and max_sparsity < sp:
        limits.append(f"max_sparsity={max_sparsity:g} caps every layer")
    per_row = getattr(alloc, "per", "layer") == "row"
    floor, whole = 0.0, []
    for t in targets:
        size = gran.unit_size(t)
        units = t.numel // size if isinstance(size, int) else len(size)
        rows = rows_per_output(t.module, t.original.detach()).shape[0] if per_row else 1
        floor += min(t.numel, min_keep * rows * t.numel / max(1, units))
        if units <= min_keep:
            whole.append(t.name)
    if min_keep and floor > (1 - sp) * total + 0.5:
        unit = {"unstructured": "weight(s)",
                "block": f"block(s) of {getattr(gran, 'shape', '')}"}.get(gran.name, "unit(s)")
        limits.append(f"min_keep={min_keep} keeps at least {min_keep} {unit} per {'row' if per_row else 'layer'} "
                      f"({round(floor):,} of {total:,} weights)"
                      + (f"; {whole} have no more units than that and stay whole" if whole else ""))
    why = "; ".join(limits) or (f"allocation {getattr(alloc, 'name', alloc)!r} with granularity "
                                f"{gran.name!r} left the rest")
    return (f"asked for sparsity={sp:g}, reached {reached:.2%} of the pruned layers' weights: {why}. "
            "Lower min_keep or max_sparsity, or use smaller blocks, to go further")


def per_layer_scope(model: nn.Module, targets: list[Target], skipped: list[Skipped], gran: Granularity,
                    keep_output_layer: bool, example_inputs: Any) -> tuple[list[Target], list[Skipped]]:
    """The targets the per-layer path prunes under ``gran``, and what it leaves dense on top
    of ``skipped`` (:func:`out_of_scope`'s list): under a structured granularity, weights
    whose rows are not output units and (``keep_output_layer``) the layer whose units are
    the model's outputs; under N:M, layers whose input size is not a multiple of M (with a
    warning).

    Raises:
        PruneError: no target is left.
    """
    skipped = list(skipped)
    if gran.structured:
        rows = [t for t in targets if not t.units]
        skipped += [Skipped(t.name, t.numel, f"{type(t.module).__name__} weight: {ROWS_REASON}") for t in rows]
        targets = [t for t in targets if t.units]
        if not targets:
            raise PruneError(
                f"granularity={gran.name!r}: no weight of {type(model).__name__} has removable output units "
                f"({', '.join(t.name for t in rows)} are recurrent/attention/embedding weights); "
                "use granularity='unstructured', an N:M pattern or 'block'"
            )
    if gran.structured and keep_output_layer:
        out_name = output_layer(model, targets, example_inputs)
        skipped += [Skipped(t.name, t.numel, "its units are the model's outputs (keep_output_layer=True)", True)
                    for t in targets if t.name == out_name]
        targets = [t for t in targets if t.name != out_name]
        if not targets:
            others = "; ".join(f"{k.name}: {k.reason}" for k in skipped if not k.by_choice)[:500]
            raise PruneError(
                f"the only layer with removable channels ({out_name}) produces the model's output; its channels "
                f"cannot be removed{'; left out: ' + others if others else ''}"
            )
    if isinstance(gran, NM):
        misfit = [t for t in targets if not gran.fits(t)]
        skipped += [Skipped(t.name, t.numel, f"input size {gran.row_size(t)} is not a multiple "
                            f"of {gran.m} (N:M {gran.n}:{gran.m})") for t in misfit]
        targets = [t for t in targets if gran.fits(t)]
        if misfit:
            warnings.warn(
                f"N:M {gran.n}:{gran.m}: input size of {[t.name for t in misfit]} is not a multiple of {gran.m}; "
                "left dense",
                stacklevel=3,
            )
        if not targets:
            raise PruneError(f"no layer has an input size that is a multiple of {gran.m} for N:M pruning")
    return targets, skipped
