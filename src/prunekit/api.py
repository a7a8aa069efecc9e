"""The public functions: prune / sparsity / masks / commit / measure / save / load.

``pk.prune(model, ...)`` is the functional twin of ``pk.Pruner(...).fit(model, ...)``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from . import masking as _masks
from .allocation import Allocation, Layer, cap_layers
from .coverage import Coverage, Skipped, total_params, unsupported_weights
from .criteria.base import Context, Criterion, call_model, check_requirements, preserved
from .errors import PruneError, PruneTypeError
from .granularity import NM, Channel, Granularity, Head, make as make_granularity
from .registry import available, create
from .selection import masks_from_scores
from .targets import Target, check_module, find_targets, foreign_weights

__all__ = ["GroupReport", "HybridResult", "LayerReport", "PruneResult", "Pruner", "ResolvedSettings", "commit", "compact", "inspect_model", "prune_hybrid", "masks", "measure", "prune", "sparsity"]


@dataclass(frozen=True)
class LayerReport:
    """What pruning did to one weight."""

    name: str
    shape: tuple[int, ...]
    units: int
    pruned_units: int
    sparsity: float


@dataclass(frozen=True)
class GroupReport:
    """What coupled channel pruning did to one group of coupled channels."""

    name: str
    units: int
    pruned_units: int
    params: list[str]
    #: output channels of the group's producing layers (residual partners each count; a
    #: unit of a grouped conv is several channels) and how many of them were removed
    channels: int = 0
    pruned_channels: int = 0


@dataclass
class PruneResult:
    """What :func:`prune` returns: the (masked, same-object) model and what was done."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    sparsity: float  # zero fraction over the weights this call pruned (its targets)
    layers: list[LayerReport]
    skipped: list[str] = field(default_factory=list)  # weights left dense; why: coverage.skipped
    scores: dict[str, torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    groups: list[GroupReport] | None = None  # coupled channel pruning only
    coverage: Coverage | None = None  # what this call covered and what it left dense, with why

    def __repr__(self) -> str:
        cov = f", scope={self.coverage.share:.1%} of parameters" if self.coverage else ""
        return (
            f"PruneResult(sparsity={self.sparsity:.4f}, layers={len(self.layers)}, masks={len(self.masks)}, "
            f"skipped={len(self.skipped)}{cov})"
        )

    def summary(self) -> str:
        """A plain-text per-layer table."""
        width = max([len(l.name) for l in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'shape':<20} {'units':>8} {'pruned':>8} {'sparsity':>9}"]
        for l in self.layers:
            lines.append(
                f"{l.name:<{width}}  {str(list(l.shape)):<20} {l.units:>8} {l.pruned_units:>8} {l.sparsity:>8.2%}"
            )
        if self.groups is not None:
            gw = max([len(g.name) for g in self.groups] + [5])
            lines.append("")
            lines.append(f"{'group':<{gw}}  {'channels':>8} {'pruned':>8}")
            for g in self.groups:
                lines.append(f"{g.name:<{gw}}  {g.units:>8} {g.pruned_units:>8}")
            ch = sum(g.channels for g in self.groups)
            gone = sum(g.pruned_channels for g in self.groups)
            lines.append(
                f"channels removed: {gone} of {ch} output channels ({gone / max(1, ch):.2%}); "
                f"coupled units removed: {self.sparsity:.2%}"
            )
        else:
            lines.append(f"sparsity over pruned layers: {self.sparsity:.2%}")
        if self.coverage is not None:
            lines.append(self.coverage.describe())
        elif self.skipped:
            lines.append(f"left dense: {', '.join(self.skipped)}")
        return "\n".join(lines)


def _check_fraction(name: str, value: object, hi_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PruneTypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    v = float(value)
    upper_ok = v <= 1 if hi_inclusive else v < 1
    if not math.isfinite(v) or v < 0 or not upper_ok:
        accepted = "[0, 1]" if hi_inclusive else "[0, 1)"
        raise PruneError(f"{name}={value!r} is outside {accepted}")
    return v


def _check_inputs(model: nn.Module, example_inputs: Any) -> None:
    if example_inputs is None:
        return
    tensors = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise PruneTypeError(
            f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
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


def _output_layer(model: nn.Module, targets: list[Target], inputs: Any) -> str | None:
    """Name of the weight whose layer produces the model's output (never channel-pruned:
    its units are the model's outputs). Looks through tuple/list/dict outputs; when the
    output tensor is not a layer's own (``log_softmax``, ``view``...), the last layer to run."""
    if inputs is None:
        return targets[-1].name if targets else None
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


def _current_mask(t: Target) -> torch.Tensor | None:
    return _masks.get_masks_of(t.module, t.param)


class ResolvedSettings(NamedTuple):
    """A :class:`Pruner`'s arguments checked and turned into the objects it prunes with.

    Returned by :meth:`Pruner.resolve`; unpacks as a 5-tuple.

    Attributes:
        criterion: the :class:`~prunekit.criteria.Criterion` instance.
        granularity: the :class:`~prunekit.granularity.Granularity` instance.
        allocation: the :class:`~prunekit.allocation.Allocation` instance; ``None`` for N:M,
            which allocates nothing.
        sparsity: the target fraction in [0, 1) (N:M: the pattern's own sparsity); ``None``
            when a threshold is given.
        threshold: the score cut-off in [0, 1]; ``None`` when a sparsity is given.
    """

    criterion: Criterion
    granularity: Granularity
    allocation: Allocation | None
    sparsity: float | None
    threshold: float | None


class Pruner:
    """Object form of :func:`prune` (scikit-learn style: ``__init__`` only stores arguments).

    Args:
        sparsity: fraction of prunable weights to remove, in [0, 1). Not needed for N:M.
        threshold: instead of a sparsity, remove units whose per-layer normalized score is
            <= threshold (in [0, 1]); with allocations "global", "uniform" (the same
            thing in this mode) and "lamp" (on LAMP scores).
        criterion: a name from ``pk.available("criterion")`` or a ``Criterion`` instance.
        granularity: "unstructured", "channel", "head", "block", an "N:M" string like "2:4",
            or a ``Granularity`` instance.
        allocation: "global", "uniform", "lamp", "erk" (ignored by N:M).
        ignore: names or patterns of weights/modules to leave alone.
        block_shape: block size for granularity="block".
        min_keep: units every layer keeps at least (0 allows emptying a layer).
        max_batches: limit calibration batches drawn from ``data``.
        seed: seed for random criteria.
        keep_scores: keep the criterion's scores in ``scores_`` (costs one copy of the weights).
        keep_output_layer: with channel granularity, never prune the units of the layer that
            produces the model's output (they are the outputs).
        group_reduce: with coupled channel pruning, how a unit's scores across the coupled
            parameters become one: "joint" (the criterion's reduction over every element the
            unit removes, e.g. the group L2 norm), or "mean", "sum", "max" over per-parameter
            scores that are first divided by their mean.
        max_sparsity: the largest fraction of any one layer (or channel group) that may be
            removed, in (0, 1]. ``None``: no cap, except that coupled channel pruning with a
            non-uniform allocation caps each group at max(0.9, (1 + sparsity) / 2), so a
            global ranking never collapses a layer to one channel.

    With ``granularity="channel"`` and inputs to trace (``example_inputs=`` or ``data=``),
    channels are pruned in **coupled groups** (see ``prunekit.graph``): a conv filter goes
    with its BatchNorm entries, the next layers' input slices and its residual partners,
    so ``pk.compact`` can remove them physically. There ``sparsity`` is the fraction of
    coupled units removed (Torch-Pruning's "pruning ratio"), not of weights; each
    ``GroupReport`` also counts the output channels its producing layers lost (residual
    partners each lose the channel, a grouped conv's unit is several channels).

    Attributes set by :meth:`fit`: ``masks_``, ``scores_``, ``report_`` (a ``PruneResult``),
    ``targets_``.

    Example:
        >>> pruner = Pruner(0.9, criterion="magnitude").fit(model)
        >>> pruner.report_.sparsity
        0.9
    """

    def __init__(
        self,
        sparsity: float | None = None,
        *,
        threshold: float | None = None,
        criterion: str | Criterion = "magnitude",
        granularity: str | Granularity = "unstructured",
        allocation: str | Allocation = "global",
        ignore: Iterable[str] = (),
        block_shape: tuple[int, int] | None = None,
        min_keep: int = 1,
        max_batches: int | None = None,
        seed: int = 0,
        keep_scores: bool = False,
        keep_output_layer: bool = True,
        group_reduce: str = "joint",
        max_sparsity: float | None = None,
    ) -> None:
        self.sparsity = sparsity
        self.threshold = threshold
        self.criterion = criterion
        self.granularity = granularity
        self.allocation = allocation
        self.ignore = ignore
        self.block_shape = block_shape
        self.min_keep = min_keep
        self.max_batches = max_batches
        self.seed = seed
        self.keep_scores = keep_scores
        self.keep_output_layer = keep_output_layer
        self.group_reduce = group_reduce
        self.max_sparsity = max_sparsity

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as scikit-learn's ``get_params``."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    # -- validation ----------------------------------------------------------------------
    def resolve(self) -> ResolvedSettings:
        """Check every argument and build the criterion, granularity and allocation, without a model.

        :meth:`fit` starts with this; call it alone to fail early, e.g. before a long
        training run that prunes later.

        Returns:
            A :class:`ResolvedSettings` (criterion, granularity, allocation, sparsity, threshold).

        Raises:
            PruneError: an unknown name, a value out of range or a conflicting combination
                (sparsity and threshold, ``block_shape`` without block granularity, ...).
            PruneTypeError: an argument of the wrong type.
        """
        crit = create("criterion", self.criterion)
        gran = make_granularity(self.granularity, self.block_shape)
        if isinstance(self.allocation, str) and self.allocation == "sensitivity":
            raise PruneError(
                "allocation='sensitivity' needs a sensitivity report: "
                "report = prunekit.sensitivity.sensitivity(model, evaluate_fn); "
                "pk.prune(model, sparsity, allocation=prunekit.sensitivity.SensitivityAllocation(report))"
            )
        if isinstance(self.allocation, str) and self.allocation == "layerwise":
            raise PruneError(
                "allocation='layerwise' prunes layer by layer under an accuracy budget and needs a held-out "
                "accuracy function: use pk.prune_layerwise(model, target_sparsity, evaluate_fn, max_drop=...)"
            )
        alloc = create("allocation", self.allocation)
        crit.check()
        if crit.granularities is not None and gran.name not in crit.granularities:
            accepted = ", ".join("an N:M pattern such as '2:4'" if g == "nm" else repr(g) for g in crit.granularities)
            raise PruneError(f"criterion {crit.name!r} works with granularity {accepted}; not {gran.name!r}")
        if getattr(alloc, "per", "layer") == "row" and gran.name != "unstructured":
            raise PruneError(
                f"allocation {alloc.name!r} compares the weights of each output row and needs granularity "
                f"'unstructured'; not {gran.name!r}"
            )
        sp, th = self.sparsity, self.threshold
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, int) or self.min_keep < 0:
            raise PruneError(f"min_keep must be a non-negative int, got {self.min_keep!r}")
        mb = self.max_batches
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            raise PruneError(f"max_batches must be None (all batches) or an int >= 1, got {mb!r}")
        if self.group_reduce not in ("joint", "mean", "sum", "max"):
            raise PruneError(f"group_reduce={self.group_reduce!r} is not one of ['joint', 'max', 'mean', 'sum']")
        if self.max_sparsity is not None:
            cap = self.max_sparsity
            if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not (0 < float(cap) <= 1):
                raise PruneError(f"max_sparsity={cap!r} must be None or a number in (0, 1]")
        if self.block_shape is not None and not (isinstance(self.granularity, str) and self.granularity == "block"):
            raise PruneError(f"block_shape={self.block_shape!r} applies only to granularity='block'")
        if isinstance(gran, NM):
            if th is not None:
                raise PruneError(f"threshold= does not apply to N:M granularity {gran.n}:{gran.m}")
            if sp is not None and abs(_check_fraction("sparsity", sp, False) - gran.sparsity) > 1e-9:
                raise PruneError(
                    f"sparsity={sp!r} conflicts with N:M {gran.n}:{gran.m}, which is {gran.sparsity:g}; "
                    "leave sparsity out"
                )
            return ResolvedSettings(crit, gran, None, gran.sparsity, None)
        if sp is None and th is None:
            raise PruneError("give sparsity= (fraction of weights to remove) or threshold= (score cut-off)")
        if sp is not None and th is not None:
            raise PruneError(f"give sparsity= or threshold=, not both (got {sp!r} and {th!r})")
        if th is not None:
            th = _check_fraction("threshold", th, True)
            if not alloc.supports_threshold:
                ok = [n for n in available("allocation") if create("allocation", n).supports_threshold]
                raise PruneError(f"allocation {alloc.name!r} needs a sparsity, not a threshold; threshold works with {ok}")
        else:
            sp = _check_fraction("sparsity", sp, False)
        return ResolvedSettings(crit, gran, alloc, sp, th)

    # -- fit -----------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        data: Iterable | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        example_inputs: Any = None,
    ) -> Pruner:
        """Score, allocate and mask ``model`` in place. All checks run before any change:
        on error the model is exactly as it was.

        Args:
            model: the ``nn.Module`` to prune.
            data: iterable of ``(inputs, labels)`` batches for data-driven criteria.
            loss_fn: ``loss_fn(outputs, labels) -> scalar`` for loss-aware criteria.
            example_inputs: a batch of inputs; checked to run through the model.

        Returns:
            ``self``, with ``masks_``, ``scores_``, ``report_`` set.
        """
        check_module(model)
        crit, gran, alloc, sp, th = self.resolve()
        # Weights under weight_norm/spectral_norm cannot be masked exactly: left out, listed in coverage.
        targets = [t for t in find_targets(model, self.ignore, skip_foreign=True) if t.numel > 0]
        if data is not None and (isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable)):
            raise PruneTypeError(
                f"data must be an iterable of (inputs, labels) batches, e.g. a DataLoader; got {type(data).__name__}"
            )
        if data is not None and iter(data) is data:
            # A one-shot iterator: keep every batch for the criterion, however often we look.
            data = list(data)
        if not targets:
            raise PruneError(
                f"{type(model).__name__} has no prunable parameters (weights of Linear, Conv1d/2d/3d, "
                "ConvTranspose1d/2d/3d, RNN/LSTM/GRU, MultiheadAttention, Embedding layers) left after ignore="
                f"{list(self.ignore) if not isinstance(self.ignore, str) else [self.ignore]}"
            )
        skipped = _out_of_scope(model, targets)
        for t in targets:
            w = t.weight.detach()
            if w.numel() and not all(math.isfinite(float(x)) for x in torch.aminmax(w)):
                bad = int(torch.count_nonzero(~torch.isfinite(w)))
                raise PruneError(f"weight {t.name} has {bad} NaN/Inf values; fix the model before pruning")
        _check_inputs(model, example_inputs)
        probe = example_inputs
        if gran.structured and isinstance(gran, Channel) and probe is None and data is not None:
            probe = next(iter(Context(model, targets, data).forward_inputs()), None)
        if isinstance(gran, Channel) and probe is not None:
            return self._fit_coupled(model, targets, crit, gran, alloc, sp, th, data, loss_fn, example_inputs, probe,
                                     skipped)
        if gran.structured:
            rows = [t for t in targets if not t.units]
            skipped += [Skipped(t.name, t.numel, f"{type(t.module).__name__} weight: {_ROWS}") for t in rows]
            targets = [t for t in targets if t.units]
            if not targets:
                raise PruneError(
                    f"granularity={gran.name!r}: no weight of {type(model).__name__} has removable output units "
                    f"({', '.join(t.name for t in rows)} are recurrent/attention/embedding weights); "
                    "use granularity='unstructured', an N:M pattern or 'block'"
                )
        if isinstance(gran, Channel):
            warnings.warn(
                "granularity='channel' without example_inputs= or data=: channels are chosen layer by layer, "
                "without their coupled BatchNorm/next-layer/residual partners, and pk.compact cannot use them; "
                "pass example_inputs= to prune coupled groups",
                stacklevel=2,
            )
        if gran.structured and self.keep_output_layer:
            probe = example_inputs
            out_name = _output_layer(model, targets, probe)
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
            skipped += [Skipped(t.name, t.numel, f"input size {t.numel // t.original.shape[0]} is not a multiple "
                                f"of {gran.m} (N:M {gran.n}:{gran.m})") for t in misfit]
            targets = [t for t in targets if gran.fits(t)]
            if misfit:
                warnings.warn(
                    f"N:M {gran.n}:{gran.m}: input size of {[t.name for t in misfit]} is not a multiple of {gran.m}; "
                    "left dense",
                    stacklevel=2,
                )
            if not targets:
                raise PruneError(f"no layer has an input size that is a multiple of {gran.m} for N:M pruning")
        for t in targets:
            gran.check(t, crit)
        ctx = Context(model, targets, data, loss_fn, example_inputs, self.max_batches, self.seed)
        check_requirements(crit, ctx)

        with preserved(model):
            scores = crit.scores(ctx)
        new_masks = self._masks(targets, scores, crit, gran, alloc, sp, th)
        if crit.updates_weights:
            new_masks = self._finalize(ctx, targets, crit, gran, new_masks)
        kept_scores = scores if self.keep_scores else None
        del scores  # masks are about to take this memory; scores are not needed any more
        _masks.apply_masks(model, new_masks)
        del new_masks

        self.targets_ = [t.name for t in targets]
        self.masks_ = _masks.get_masks(model)
        self.scores_ = kept_scores
        layers = [_layer_report(t, gran) for t in targets]
        self.report_ = PruneResult(
            model=model,
            masks=self.masks_,
            sparsity=sum(l.sparsity * math.prod(l.shape) for l in layers) / max(1, sum(math.prod(l.shape) for l in layers)),
            layers=layers,
            skipped=[k.name for k in skipped],
            scores=self.scores_,
            config=_config(self),
            coverage=_coverage(model, targets, skipped),
        )
        return self

    def _masks(self, targets, scores, crit, gran, alloc, sp, th) -> dict[str, torch.Tensor]:
        weights, units = masks_from_scores(
            targets, scores, crit, gran, alloc, sp, th, min_keep=self.min_keep, max_sparsity=self.max_sparsity,
            current={t.name: _current_mask(t) for t in targets},
        )
        out: dict[str, torch.Tensor] = dict(weights)
        if gran.structured:
            for t in targets:
                if t.module.bias is not None:  # a removed channel must output exactly zero, bias included
                    out[f"{t.module_name}.bias" if t.module_name else "bias"] = units[t.name].clone()
        return _with_aliases(targets, out)

    @staticmethod
    def _finalize(ctx: Context, targets: list[Target], crit: Criterion, gran: Granularity,
                  masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Let a weight-updating criterion (SparseGPT) turn the chosen counts into its own
        masks and weights."""
        with preserved(ctx.model):
            out = crit.finalize(ctx, masks, (gran.n, gran.m) if isinstance(gran, NM) else None)
        return _with_aliases(targets, out)  # apply_masks ANDs with earlier masks: pruned weights stay pruned

    def _fit_coupled(self, model, targets, crit, gran, alloc, sp, th, data, loss_fn, example_inputs, probe,
                     skipped) -> Pruner:
        """Channel pruning over traced dependency groups (see :mod:`prunekit.graph`)."""
        from .graph.groups import build, unit_scores

        st = build(model, probe)
        all_names = {t.name for t in find_targets(model)}
        ignored = all_names - {t.name for t in targets}
        # A group touching a weight under weight_norm/spectral_norm cannot be masked exactly.
        foreign = set(foreign_weights(model))
        groups = [
            (i, g) for i, g in enumerate(st.groups)
            if not any(m.param in ignored for m in g.members if m.role in ("out", "chan"))
            and not any(m.param in foreign for m in g.members)
        ]
        if isinstance(gran, Head):
            head_roots = {
                int(st.roots[i]) for (kind, _), ids in st.graph.extra.items() if kind == "heads" for i in ids.reshape(-1).tolist()
            }
            groups = [(i, g) for i, g in groups if set(g.units) & head_roots]
            if not groups:
                raise PruneError(
                    f"granularity='head' found no attention heads in {type(model).__name__}: heads are traced through "
                    "q @ k.transpose(-2, -1) ... @ v, F.scaled_dot_product_attention and nn.MultiheadAttention "
                    "called with need_weights=False"
                    + "".join(f"; {n.where}: {n.reason}" for n in st.notes if "head" in n.reason)[:600]
                    + "; use granularity='channel' for other layers"
                )
        if not groups:
            reasons = "; ".join(f"{n.where}: {n.op}: {n.reason}" for n in st.notes[:5]) or "no coupled channels found"
            if foreign:
                reasons += f"; the groups of {sorted(foreign)} are left out: their weights carry another parametrization"
            raise PruneError(f"{type(model).__name__} has no channel group that can be pruned ({reasons})")
        roles = {"out", "chan"} if crit.level == "channel" else {"out", "chan", "in"}
        used = {m.param for _, g in groups for m in g.members if m.role in roles}
        in_groups = {m.param for _, g in groups for m in g.members}
        skipped = skipped + [
            Skipped(t.name, t.numel, f"{type(t.module).__name__} weight: {_ROWS}"
                    if not t.units and t.name not in in_groups and not isinstance(t.module, nn.RNNBase) else
                    "in no prunable channel group (see pk.inspect for why its channels stay)",
                    t.name in in_groups)  # only scored by channel criteria, its units still go with the group
            for t in targets if t.name not in used
        ]
        # Raw parameters the tracer coupled (``x @ self.w``) lose their slices with the group.
        skipped = [
            Skipped(k.name, k.numel, "a parameter outside any layer type: its rows/columns follow the coupled "
                    "channels, it is not scored", True) if k.name in in_groups and not k.by_choice else k
            for k in skipped
        ]
        targets = [t for t in targets if t.name in used]
        for t in targets:
            gran.check(t, crit)
        ctx = Context(model, targets, data, loss_fn, example_inputs, self.max_batches, self.seed)
        check_requirements(crit, ctx)
        with preserved(model):
            scores = crit.scores(ctx)
        for name, s in scores.items():
            if torch.isnan(s).any():
                raise PruneError(f"criterion {crit.name!r} produced NaN scores for {name}")
        sub = type(st)(st.graph, st.roots, [g for _, g in groups], {})
        for gi, (_, g) in enumerate(groups):
            for ui, r in enumerate(g.units):
                sub.unit_of[r] = (gi, ui)
        per_group = unit_scores(sub, crit, scores, self.group_reduce)
        current = _masks.effective_weights(model)
        dead = sub.removed_units(current)
        layers = []
        for g, u in zip(sub.groups, per_group):
            if dead:
                u = u.masked_fill(torch.tensor([r in dead for r in g.units]), float("-inf"))
            layers.append(Layer(g.name, u, 1, (len(g.units), 1)))
        cap = self.max_sparsity
        if cap is None and alloc.name != "uniform":
            cap = max(DEFAULT_CHANNEL_CAP, (1.0 + (sp or 0.0)) / 2)  # never collapse a layer to a sliver
        layers = cap_layers(layers, cap)
        keeps = alloc.select(layers, sp, self.min_keep) if th is None else alloc.select_threshold(layers, th, self.min_keep)
        removed = {r for g in sub.groups for r, k in zip(g.units, keeps[g.name].tolist()) if not k}
        kept_scores = scores if self.keep_scores else None
        del scores
        shapes = {n: tuple(v.shape) for n, v in current.items()}
        new_masks = sub.masks_for(removed, shapes)
        if new_masks:
            _masks.apply_masks(model, new_masks)
        self.targets_ = [t.name for t in targets]
        self.masks_ = _masks.get_masks(model)
        self.scores_ = kept_scores
        self.structure_ = sub
        layers_r = [_layer_report(t, gran) for t in targets]
        total = sum(len(g.units) for g in sub.groups)
        gone = sum(1 for g in sub.groups for r in g.units if r in removed)
        if th is None and sp and alloc.whole_model and gone / max(1, total) + 0.05 < sp:
            warnings.warn(
                f"asked for {sp:.0%} of the channels, removed {gone} of {total} coupled units "
                f"({gone / max(1, total):.0%}) in {len(sub.groups)} group(s): min_keep={self.min_keep}, the per-group "
                "cap and the coupling (grouped convs, shuffles, residuals) keep the rest; pk.inspect(model, x) shows them",
                stacklevel=2,
            )
        self.report_ = PruneResult(
            model=model,
            masks=self.masks_,
            sparsity=gone / max(1, total),
            layers=layers_r,
            skipped=[k.name for k in skipped],
            scores=self.scores_,
            config=_config(self),
            coverage=_coverage(model, targets, skipped),
            groups=[
                GroupReport(g.name, len(g.units), sum(1 for r in g.units if r in removed), g.params,
                            *sub.channel_counts(g, removed))
                for g in sub.groups
            ],
        )
        return self

    def state_dict(self) -> dict[str, Any]:
        """Constructor arguments and the fitted masks (tensors keyed by parameter name)."""
        state: dict[str, Any] = {"params": self.get_params()}
        if hasattr(self, "masks_"):
            state["masks"] = {k: v.clone() for k, v in self.masks_.items()}
        return state


_ROWS = ("its rows are not independent output units; channel/head granularity cannot remove them "
         "(use unstructured, N:M or block)")

#: With coupled channel pruning and a non-uniform allocation, no layer loses more than this
#: fraction of its channels unless ``max_sparsity`` says otherwise (or the target needs more).
DEFAULT_CHANNEL_CAP = 0.9


def _config(p: Pruner) -> dict[str, Any]:
    return {k: repr(v) if not isinstance(v, (int, float, str, type(None))) else v for k, v in p.get_params().items()}


def _out_of_scope(model: nn.Module, targets: list[Target]) -> list[Skipped]:
    """Weights this call leaves out before it starts: ``ignore=`` matches and layer types
    prunekit has no rule for."""
    in_scope = {n for t in targets for n in (t.name, *t.aliases)}
    every = find_targets(model, skip_foreign=True)
    known = {n for t in every for n in (t.name, *t.aliases)}
    out = [Skipped(t.name, t.numel, "matched by ignore=", True) for t in every if t.name not in in_scope and t.numel]
    for name, kinds in foreign_weights(model).items():
        known.add(name)
        mname, _, pname = name.rpartition(".")
        out.append(Skipped(name, getattr(model.get_submodule(mname), pname).numel(), f"parametrized by {kinds}: a "
                           "mask cannot be applied exactly; remove the parametrization first to prune it"))
    return out + unsupported_weights(model, known)


def _coverage(model: nn.Module, targets: list[Target], skipped: list[Skipped]) -> Coverage:
    cov = Coverage(sum(t.numel for t in targets), total_params(model), tuple(skipped))
    cov.warn("pk.prune", stacklevel=3)
    return cov


def _with_aliases(targets: list[Target], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights (one tensor, several names) get the one mask computed for the tensor."""
    for t in targets:
        for alias in t.aliases:
            out[alias] = out[t.name]
    return out


def _layer_report(t: Target, gran: Granularity) -> LayerReport:
    # apply_masks zeroed `original` where masked, so it equals the effective weight here
    # and counting on it avoids materializing original * mask once more.
    w = t.original.detach()
    zeros = w.numel() - int(torch.count_nonzero(w))
    if isinstance(gran, NM) or not gran.structured:
        units, pruned = w.numel(), zeros
    else:
        per = w.movedim(t.out_dim, 0).reshape(w.shape[t.out_dim], -1)
        units, pruned = per.shape[0], int((per == 0).all(1).sum())
    return LayerReport(t.name, tuple(w.shape), units, pruned, zeros / max(1, w.numel()))


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    criterion: str | Criterion = "magnitude",
    granularity: str | Granularity = "unstructured",
    allocation: str | Allocation = "global",
    data: Iterable | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    example_inputs: Any = None,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` in place with masks; return what was done.

    Functional twin of ``Pruner(sparsity, ...).fit(model, data, loss_fn, example_inputs)``;
    ``options`` are the other :class:`Pruner` arguments (threshold, ignore, block_shape,
    min_keep, max_batches, seed, keep_scores, keep_output_layer).

    Args:
        model: the module to prune (masked in place; parameters keep their identity).
        sparsity: fraction of prunable weights to remove, in [0, 1).
        criterion: how importance is scored (see ``pk.available("criterion")``).
        granularity: what is removed together.
        allocation: how the global target is split over layers.
        data: calibration batches ``(inputs, labels)`` for data-driven criteria.
        loss_fn: ``loss_fn(outputs, labels)`` for gradient/Taylor/Hessian criteria.
        example_inputs: a batch the model accepts (checked; used to find the output layer).

    Returns:
        A :class:`PruneResult` (``.masks``, ``.sparsity``, ``.layers``, ``.summary()``).

    Example:
        >>> import prunekit as pk
        >>> result = pk.prune(model, sparsity=0.9, criterion="magnitude", allocation="lamp")
        >>> print(result.summary())
    """
    unknown_opts = set(options) - set(inspect.signature(Pruner).parameters)
    if unknown_opts:
        raise PruneTypeError(f"prune() got unknown options {sorted(unknown_opts)}; see help(prunekit.Pruner)")
    pruner = Pruner(sparsity, criterion=criterion, granularity=granularity, allocation=allocation, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.fit(model, data=data, loss_fn=loss_fn, example_inputs=example_inputs)
    for w in caught:  # re-issue at the caller's line, not inside prunekit
        warnings.warn(w.message, w.category, stacklevel=2)
    return pruner.report_


def sparsity(model: nn.Module, ignore: Iterable[str] = ()) -> float:
    """Fraction of zero weights among the prunable weights (masked zeros included)."""
    targets = find_targets(model, ignore)
    total = sum(t.numel for t in targets)
    if total == 0:
        return 0.0
    with torch.no_grad():
        zeros = sum(t.numel - int(torch.count_nonzero(t.weight)) for t in targets)
    return zeros / total


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{param_name: mask}`` of every masked parameter."""
    return _masks.get_masks(model)


def commit(model: nn.Module) -> nn.Module:
    """Make masks permanent (zeros stay, plain modules again, same parameter objects)."""
    return _masks.commit(model)


def compact(model: nn.Module, example_inputs: Any, **kwargs: Any) -> nn.Module:
    """Physically remove pruned channels; see :func:`prunekit.surgery.compact`."""
    from .surgery import compact as _compact

    return _compact(model, example_inputs, **kwargs)


@dataclass
class HybridResult:
    """What :func:`prune_hybrid` returns: the compacted, masked model and both steps' reports."""

    model: nn.Module
    channels: PruneResult
    weights: PruneResult


def prune_hybrid(
    model: nn.Module,
    channels: float,
    weights: float,
    *,
    example_inputs: Any,
    criterion: str | Criterion = "magnitude",
    channel_allocation: str | Allocation = "uniform",
    weight_allocation: str | Allocation = "lamp",
    data: Iterable | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    **options: Any,
) -> HybridResult:
    """Hybrid pruning in one call: remove a fraction ``channels`` of the channels (coupled),
    compact, then mask the remaining weights unstructured until a fraction ``weights`` of
    the smaller model's prunable weights is zero.

    ``model`` itself is channel-masked; the returned ``HybridResult.model`` is the new,
    smaller model carrying the unstructured masks (fine-tune it, then ``pk.commit``).

    Example:
        >>> res = pk.prune_hybrid(net, 0.5, 0.8, example_inputs=x)
        >>> res.model(x).shape == net(x).shape
        True
    """
    first = prune(model, channels, criterion=criterion, granularity="channel", allocation=channel_allocation,
                  data=data, loss_fn=loss_fn, example_inputs=example_inputs, **options)
    small = compact(model, example_inputs)
    second = prune(small, weights, criterion=criterion, granularity="unstructured", allocation=weight_allocation,
                   data=data, loss_fn=loss_fn, example_inputs=example_inputs, **options)
    return HybridResult(small, first, second)


def inspect_model(model: nn.Module, example_inputs: Any):
    """Dry run of channel pruning; see :func:`prunekit.graph.inspect.inspect`."""
    from .graph.inspect import inspect as _inspect

    return _inspect(model, example_inputs)


def measure(model: nn.Module, example_inputs: Any, **kwargs: Any):
    """Parameters, nonzeros, FLOPs, latency, bytes on disk and an energy estimate.

    See :func:`prunekit.metrics.measure` for the options.
    """
    from .metrics import measure as _measure

    return _measure(model, example_inputs, **kwargs)
