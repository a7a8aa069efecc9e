"""Activation-based criteria: activation entropy and APoZ, scored per output channel.

Both look at what a layer's units *produce* on real data. The activation of a unit is taken
after the element-wise modules that directly follow its layer (BatchNorm, ReLU, GELU, ...,
found by following the output tensor through forward hooks), so ``conv → bn → relu`` is
scored on the ReLU output. Functional activations (``F.relu``) are invisible to hooks; the
layer's own output is used then.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PruneError
from ..registry import register
from .base import Context, Criterion, call_model

ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
)
ELEMENTWISE: tuple[type, ...] = ACTIVATIONS + (
    nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.Identity,
)


class ChainTracker:
    """Forward hooks that follow each target's output through element-wise modules.

    After a forward pass, ``entries`` holds one ``[name, activation, chain]`` per call of a
    target layer (a layer called twice gives two entries); ``chain`` lists the element-wise
    modules the output went through (e.g. ``[BatchNorm2d, ReLU]``).
    """

    def __init__(self, ctx: Context) -> None:
        self.by_module = {}
        for t in ctx.targets:
            if t.param == "weight":
                self.by_module.setdefault(id(t.module), []).append(t.name)
        self.model = ctx.model
        self.entries: list[list] = []
        self.handles = []

    def __enter__(self) -> ChainTracker:
        for module in self.model.modules():
            self.handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def reset(self) -> None:
        self.entries.clear()

    @property
    def chains(self) -> dict[str, list[nn.Module]]:
        """The chain of the first call of each target."""
        out: dict[str, list[nn.Module]] = {}
        for name, _, chain in self.entries:
            out.setdefault(name, chain)
        return out

    def _hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        names = self.by_module.get(id(module))
        if names is not None and isinstance(output, torch.Tensor):
            for n in names:
                self.entries.append([n, output, []])
        elif isinstance(module, ELEMENTWISE) and inputs and isinstance(inputs[0], torch.Tensor):
            for entry in self.entries:
                if entry[1] is inputs[0] and isinstance(output, torch.Tensor):
                    entry[1] = output
                    entry[2].append(module)


def channel_view(t_module: nn.Module, act: torch.Tensor) -> torch.Tensor:
    """(N, C, rest...) view: Linear puts units last, convolutions at dim 1."""
    if isinstance(t_module, nn.Linear):
        act = act.movedim(-1, 1) if act.dim() > 2 else act
    return act.reshape(act.shape[0], act.shape[1], -1)


def collect(ctx: Context, fn) -> None:
    """Run forward passes over the calibration inputs, calling ``fn(target, (N, C, P) activation)``."""
    by_name = {t.name: t for t in ctx.targets}
    with ChainTracker(ctx) as tracker, torch.no_grad():
        for inputs in ctx.forward_inputs():
            tracker.reset()
            call_model(ctx.model, inputs)
            for name, act, _ in tracker.entries:
                fn(by_name[name], channel_view(by_name[name].module, act.float()))


def _check_seen(ctx: Context, seen: set[str], criterion: str) -> None:
    missing = [t.name for t in ctx.targets if t.name not in seen]
    if missing:
        raise PruneError(
            f"criterion {criterion!r}: layers {missing} never ran in the forward pass on the given data; "
            "exclude them with ignore=[...]"
        )


@register("criterion", "activation_entropy")
class ActivationEntropy(Criterion):
    """Entropy of each unit's activation over data (Luo & Wu 2017).

    Each unit's activation is average-pooled per sample (over spatial positions/tokens),
    the values over all samples are binned into ``bins`` equal-width bins between their
    min and max, and H = −Σ p log p. A unit whose output barely varies carries little
    information (low entropy) and is pruned first.

    Args:
        bins: histogram bins.
    """

    needs_data = True
    level = "channel"

    def __init__(self, bins: int = 32) -> None:
        self.bins = bins

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        pooled: dict[str, list[torch.Tensor]] = {}
        collect(ctx, lambda t, a: pooled.setdefault(t.name, []).append(a.mean(dim=2)))
        _check_seen(ctx, set(pooled), self.name)
        return {name: entropy_per_channel(torch.cat(v), self.bins) for name, v in pooled.items()}


def entropy_per_channel(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Entropy (nats) of each column of ``values`` (N, C) after equal-width binning."""
    lo = values.min(0).values
    hi = values.max(0).values
    span = (hi - lo).clamp_min(1e-12)
    idx = ((values - lo) / span * bins).long().clamp_(0, bins - 1)  # (N, C)
    counts = torch.zeros(values.shape[1], bins, dtype=torch.float64)
    counts.scatter_add_(1, idx.t(), torch.ones_like(idx.t(), dtype=torch.float64))
    p = counts / values.shape[0]
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
    h[(hi - lo) <= 1e-12] = 0.0  # a constant unit carries no information
    return h.float().clamp_max_(math.log(bins))


@register("criterion", "apoz")
class APoZ(Criterion):
    """1 − Average Percentage of Zeros of each unit's (post-ReLU) activation (Hu et al. 2016).

    Units that are zero for most inputs and positions score low and go first. Meaningful
    after ReLU-like activations; with activations that are never exactly zero every unit
    scores 1.
    """

    needs_data = True
    level = "channel"

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        zeros: dict[str, torch.Tensor] = {}
        totals: dict[str, int] = {}

        def fn(t, a):
            z = (a == 0).sum(dim=(0, 2)).double()
            zeros[t.name] = zeros.get(t.name, 0) + z
            totals[t.name] = totals.get(t.name, 0) + a.shape[0] * a.shape[2]

        collect(ctx, fn)
        _check_seen(ctx, set(zeros), self.name)
        return {n: (1.0 - zeros[n] / totals[n]).float() for n in zeros}


def activation_entropy(model, bins: int = 32, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`ActivationEntropy` (pass data=)."""
    return ActivationEntropy(bins=bins)(model, **kwargs)


def apoz(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`APoZ` (pass data=)."""
    return APoZ()(model, **kwargs)
