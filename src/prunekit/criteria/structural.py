"""Channel criteria that need no data: BatchNorm scale (network slimming) and FPGM."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PruneError
from ..registry import register
from .activation import ChainTracker
from .base import Context, Criterion, call_model


@register("criterion", "bn_scale")
class BNScale(Criterion):
    """|γ| of the BatchNorm that follows each layer (Liu et al. 2017, network slimming).

    The BatchNorm is found by running one forward pass (the first data batch or the
    example inputs) and following each layer's output. Layers without a BatchNorm right
    after them cannot be scored this way: the error lists them so they can be ignored.
    """

    needs_data = True  # one forward pass, to find which BatchNorm follows which layer
    level = "channel"

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        with ChainTracker(ctx) as tracker, torch.no_grad():
            call_model(ctx.model, next(iter(ctx.forward_inputs())))
            chains = dict(tracker.chains)
        out, missing = {}, []
        for t in ctx.targets:
            bn = next((m for m in chains.get(t.name, []) if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
            if bn is None or bn.weight is None or bn.weight.shape[0] != t.weight.shape[t.out_dim]:
                missing.append(t.name)
                continue
            out[t.name] = bn.weight.detach().abs().float().clone()
        if missing:
            raise PruneError(
                f"criterion 'bn_scale' needs an affine BatchNorm right after each pruned layer; "
                f"none follows {missing}. Exclude them with ignore={missing!r} or pick another criterion"
            )
        return out


@register("criterion", "fpgm")
class FPGM(Criterion):
    """Filter Pruning via Geometric Median (He et al. 2019).

    A filter's score is the sum of its Euclidean distances to the other filters of its layer.
    Filters near the geometric median are the most replaceable by the others and score low,
    whatever their norm.
    """

    level = "channel"

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        out = {}
        for t in ctx.targets:
            w = t.weight.detach().float().movedim(t.out_dim, 0).reshape(t.weight.shape[t.out_dim], -1)
            if w.shape[0] < 2:
                raise PruneError(f"criterion 'fpgm' needs at least 2 filters per layer; {t.name} has {w.shape[0]}")
            out[t.name] = torch.cdist(w, w).sum(1)
        return out


def bn_scale(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`BNScale` (pass example_inputs= or data=)."""
    return BNScale()(model, **kwargs)


def fpgm(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`FPGM`."""
    return FPGM()(model, **kwargs)
