"""The :class:`Pruner`: its settings (:meth:`Pruner.resolve` → :class:`ResolvedSettings`), the
checks of the model and inputs, and the per-layer path (every granularity but coupled channels).

``pk.prune(model, ...)`` (:mod:`prunekit.api`) is the functional twin of
``pk.Pruner(...).fit(model, ...)``. With ``granularity="channel"`` and inputs to trace,
:meth:`Pruner.fit` hands over to :func:`prunekit.coupled.fit_coupled`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from . import masking as _masks
from .allocation import Allocation
from .allocation.latency_options import resolve_latency
from .coupled import fit_coupled
from .reconnect import reconnect_targets
from .refine import check_refine, refine_targets
from .criteria.base import Context, Criterion, check_requirements, preserved
from .errors import PruneError, PruneTypeError
from .granularity import NM, Channel, Granularity, make as make_granularity
from .registry import available, create
from .results import PruneResult, config_of, layer_report
from .scope import check_inputs, coverage_of, missed_target, out_of_scope, per_layer_scope
from .selection import masks_from_scores
from .target_masks import current_mask, prior_sparsity, with_aliases
from .targets import Target, check_module, find_targets, ignore_patterns
from .validate import boolean, choice, fraction, integer

__all__ = ["Pruner", "ResolvedSettings"]


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
        latency, runtime: with ``allocation="latency"``, the target instead of a sparsity (a
            fraction of dense in (0, 1], or ``"2.5ms"``) and where it is measured (docs/latency.md).
        round_to: coupled channels (heads) kept per group in multiples of this; "auto": from
            the latency tables; ``None``: no rounding (``allocation="latency"`` chooses).
        reconnect: unstructured only: move kept weights that sit on no input-to-output
            path (into a unit with no kept outgoing weight, or out of one with no kept
            incoming weight) onto the best-scoring live connections of the same layer
            (:mod:`prunekit.reconnect`); needs ``example_inputs=`` or ``data=`` to trace.
        refine: ``None`` or ``"dsnot"``: DSnoT mask refinement on ``data=`` (:mod:`prunekit.refine`);
            unstructured or N:M, not after SparseGPT.

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
        ignore: Iterable[str] | None = (),
        block_shape: tuple[int, int] | None = None,
        min_keep: int = 1,
        max_batches: int | None = None,
        seed: int = 0,
        keep_scores: bool = False,
        keep_output_layer: bool = True,
        group_reduce: str = "joint",
        max_sparsity: float | None = None,
        latency: float | str | None = None,
        runtime: str | None = None,
        round_to: int | str | None = None,
        reconnect: bool = False,
        refine: str | None = None,
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
        self.latency, self.runtime, self.round_to = latency, runtime, round_to
        self.reconnect = reconnect
        self.refine = refine

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
        alloc = resolve_latency(self.allocation, self.latency, self.runtime, self.round_to, gran.name) \
            or create("allocation", self.allocation)
        crit.check()
        if callable(getattr(alloc, "check_granularity", None)):  # e.g. a report measured at one granularity
            alloc.check_granularity("nm" if isinstance(gran, NM) else gran.name)
        if boolean("reconnect", self.reconnect) and gran.name != "unstructured":
            raise PruneError(f"reconnect=True moves single weights and needs granularity='unstructured'; "
                             f"not {gran.name!r}")
        check_refine(self.refine, crit, "nm" if isinstance(gran, NM) else gran.name)
        if crit.granularities is not None and gran.name not in crit.granularities:
            accepted = ", ".join("an N:M pattern such as '2:4'" if g == "nm" else repr(g) for g in crit.granularities)
            raise PruneError(f"criterion {crit.name!r} works with granularity {accepted}; not {gran.name!r}")
        if getattr(alloc, "per", "layer") == "row" and gran.name != "unstructured":
            raise PruneError(
                f"allocation {alloc.name!r} compares the weights of each output row and needs granularity "
                f"'unstructured'; not {gran.name!r}"
            )
        sp, th = self.sparsity, self.threshold
        integer("min_keep", self.min_keep, minimum=0)
        if self.max_batches is not None:
            integer("max_batches", self.max_batches, minimum=1, hint="or None: all batches")
        choice("group_reduce", self.group_reduce, ("joint", "mean", "sum", "max"))
        if self.max_sparsity is not None:
            fraction("max_sparsity", self.max_sparsity, one=True, zero=False, hint="or None: no cap")
        if self.block_shape is not None and not (isinstance(self.granularity, str) and self.granularity == "block"):
            raise PruneError(f"block_shape={self.block_shape!r} applies only to granularity='block'")
        if isinstance(gran, NM):
            if th is not None:
                raise PruneError(f"threshold= does not apply to N:M granularity {gran.n}:{gran.m}")
            if sp is not None and abs(fraction("sparsity", sp) - gran.sparsity) > 1e-9:
                raise PruneError(
                    f"sparsity={sp!r} conflicts with N:M {gran.n}:{gran.m}, which is {gran.sparsity:g}; "
                    "leave sparsity out"
                )
            return ResolvedSettings(crit, gran, None, gran.sparsity, None)
        if getattr(alloc, "needs_tables", False) and (sp is not None or th is not None):
            raise PruneError(f"give latency= (the target of allocation='latency') or sparsity=, not both "
                             f"(got sparsity={sp!r}, threshold={th!r})")
        if getattr(alloc, "needs_tables", False):
            return ResolvedSettings(crit, gran, alloc, None, None)
        if sp is None and th is None:
            raise PruneError("give sparsity= (fraction of weights to remove) or threshold= (score cut-off)")
        if sp is not None and th is not None:
            raise PruneError(f"give sparsity= or threshold=, not both (got {sp!r} and {th!r})")
        if th is not None:
            th = fraction("threshold", th, one=True)
            if not alloc.supports_threshold:
                ok = [n for n in available("allocation") if create("allocation", n).supports_threshold]
                raise PruneError(f"allocation {alloc.name!r} needs a sparsity, not a threshold; threshold works with {ok}")
        else:
            sp = fraction("sparsity", sp)
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
                f"{ignore_patterns(self.ignore)}"
            )
        skipped = out_of_scope(model, targets)
        for t in targets:
            w = t.weight.detach()
            if w.numel() and not all(math.isfinite(float(x)) for x in torch.aminmax(w)):
                bad = int(torch.count_nonzero(~torch.isfinite(w)))
                raise PruneError(f"weight {t.name} has {bad} NaN/Inf values; fix the model before pruning")
        check_inputs(model, example_inputs)
        probe = example_inputs
        if gran.structured and isinstance(gran, Channel) and probe is None and data is not None:
            probe = next(iter(Context(model, targets, data).forward_inputs()), None)
        if getattr(alloc, "needs_tables", False) and getattr(alloc, "target", None) is not None and \
                not (isinstance(gran, Channel) and probe is not None):
            raise PruneError("allocation='latency' with a latency target needs granularity='channel' and "
                             "example_inputs= (the channel groups are what it measures)")
        if isinstance(gran, Channel) and probe is not None:
            return fit_coupled(self, model, targets, crit, gran, alloc, sp, th, data, loss_fn, example_inputs, probe,
                               skipped)
        targets, skipped = per_layer_scope(model, targets, skipped, gran, self.keep_output_layer, example_inputs)
        if isinstance(gran, Channel):
            warnings.warn(
                "granularity='channel' without example_inputs= or data=: channels are chosen layer by layer, "
                "without their coupled BatchNorm/next-layer/residual partners, and pk.compact cannot use them; "
                "pass example_inputs= to prune coupled groups",
                stacklevel=2,
            )
        for t in targets:
            gran.check(t, crit)
        ctx = Context(model, targets, data, loss_fn, example_inputs, self.max_batches, self.seed)
        check_requirements(crit, ctx)
        if self.refine is not None and data is None:
            raise PruneError(f"refine={self.refine!r} reads each layer's inputs on calibration batches: pass data=")

        prior = prior_sparsity(targets)
        with preserved(model):
            scores = crit.scores(ctx)
        new_masks = self._masks(targets, scores, crit, gran, alloc, sp, th)
        before = {t.name: t.original.detach().clone() for t in targets} if self.reconnect and crit.updates_weights else None
        if crit.updates_weights:
            new_masks = self._finalize(ctx, targets, crit, gran, new_masks)
        if self.refine is not None:
            with preserved(model):
                nm = (gran.n, gran.m) if isinstance(gran, NM) else None
                new_masks = with_aliases(targets, refine_targets(ctx, new_masks, nm))
        if self.reconnect:
            new_masks = with_aliases(targets, reconnect_targets(ctx, new_masks, scores, example_inputs, before))
        kept_scores = scores if self.keep_scores else None
        del scores  # masks are about to take this memory; scores are not needed any more
        _masks.apply_masks(model, new_masks)
        del new_masks

        self.targets_ = [t.name for t in targets]
        self.masks_ = _masks.get_masks(model)
        self.scores_ = kept_scores
        layers = [layer_report(t, gran) for t in targets]
        self.report_ = PruneResult(
            model=model,
            masks=self.masks_,
            sparsity=sum(l.sparsity * math.prod(l.shape) for l in layers) / max(1, sum(math.prod(l.shape) for l in layers)),
            layers=layers,
            skipped=[k.name for k in skipped],
            scores=self.scores_,
            config=config_of(self.get_params()),
            coverage=coverage_of(model, targets, skipped),
        )
        if sp is not None and not gran.structured and prior > sp + 0.005:  # asked for fewer zeros than there are
            warnings.warn(
                f"the pruned layers were already {prior:.2%} zeros under earlier masks, more than the sparsity={sp:g} "
                f"asked for: pruning only adds zeros, so nothing was removed (now {self.report_.sparsity:.2%}); "
                "the pruned weights are zero in the model itself (remove_masks or commit keep them at zero), so "
                "prune a copy of the model taken before the first pruning to start afresh", stacklevel=3)
        elif sp is not None and th is None and alloc is not None and alloc.whole_model:
            missed = missed_target(sp, self.report_.sparsity, targets, gran, alloc, self.min_keep, self.max_sparsity)
            if missed:
                warnings.warn(missed, stacklevel=3)
        return self

    def _masks(self, targets, scores, crit, gran, alloc, sp, th) -> dict[str, torch.Tensor]:
        weights, units = masks_from_scores(
            targets, scores, crit, gran, alloc, sp, th, min_keep=self.min_keep, max_sparsity=self.max_sparsity,
            current={t.name: current_mask(t) for t in targets},
        )
        out: dict[str, torch.Tensor] = dict(weights)
        if gran.structured:
            for t in targets:
                if t.module.bias is not None:  # a removed channel must output exactly zero, bias included
                    out[f"{t.module_name}.bias" if t.module_name else "bias"] = units[t.name].clone()
        return with_aliases(targets, out)

    @staticmethod
    def _finalize(ctx: Context, targets: list[Target], crit: Criterion, gran: Granularity,
                  masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Let a weight-updating criterion (SparseGPT) turn the chosen counts into its own
        masks and weights."""
        with preserved(ctx.model):
            out = crit.finalize(ctx, masks, (gran.n, gran.m) if isinstance(gran, NM) else None)
        return with_aliases(targets, out)  # apply_masks ANDs with earlier masks: pruned weights stay pruned

    def state_dict(self) -> dict[str, Any]:
        """Constructor arguments and the fitted masks (tensors keyed by parameter name)."""
        state: dict[str, Any] = {"params": self.get_params()}
        if hasattr(self, "masks_"):
            state["masks"] = {k: v.clone() for k, v in self.masks_.items()}
        return state
