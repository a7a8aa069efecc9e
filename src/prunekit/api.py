"""The public functions: prune / sparsity / masks / commit / compact / measure / inspect / prune_hybrid.

``pk.prune(model, ...)`` is the functional twin of ``pk.Pruner(...).fit(model, ...)``.

This module is the facade: the pruner lives in :mod:`prunekit.pruner` (the per-layer path)
and :mod:`prunekit.coupled` (coupled channel groups), what it reports in
:mod:`prunekit.results` and :mod:`prunekit.scope`. Their public names stay importable from
here (results pickled when they were defined here load as before).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from . import masking as _masks
from .allocation import Allocation
from .coupled import DEFAULT_CHANNEL_CAP as DEFAULT_CHANNEL_CAP  # noqa: F401  (the Keras adapter reads it here)
from .criteria.base import Criterion
from .errors import PruneError, PruneTypeError
from .granularity import Granularity
from .pruner import Pruner as Pruner
from .pruner import ResolvedSettings as ResolvedSettings
from .results import GroupReport as GroupReport
from .results import HybridResult as HybridResult
from .results import LayerReport as LayerReport
from .results import PruneResult as PruneResult
from .targets import find_targets

__all__ = ["GroupReport", "HybridResult", "LayerReport", "PruneResult", "Pruner", "ResolvedSettings", "commit", "compact", "inspect_model", "prune_hybrid", "masks", "measure", "prune", "sparsity"]


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
    # Both steps are checked before the first touches the model; reconnect= and refine= move or
    # swap single weights, so they go to the unstructured step only.
    single = {k: options[k] for k in ("reconnect", "refine") if k in options}
    channel_options = {k: v for k, v in options.items() if k not in single}
    Pruner(channels, criterion=criterion, granularity="channel", allocation=channel_allocation,
           **channel_options).resolve()
    crit = Pruner(weights, criterion=criterion, granularity="unstructured", allocation=weight_allocation,
                  **options).resolve().criterion
    if crit.level == "channel":
        raise PruneError(f"prune_hybrid's second step masks single weights, and criterion {crit.name!r} scores whole "
                         "channels; use a weight criterion (magnitude, wanda, taylor, ...), or pk.prune with "
                         "granularity='channel' alone")
    first = prune(model, channels, criterion=criterion, granularity="channel", allocation=channel_allocation,
                  data=data, loss_fn=loss_fn, example_inputs=example_inputs, **channel_options)
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
