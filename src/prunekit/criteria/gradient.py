"""Loss-aware criteria: gradient sensitivity, normalized gradient, Taylor, and Hessian (OBD).

All of them differentiate ``loss_fn(model(inputs), labels)`` over the calibration batches
with respect to the prunable weights, using ``torch.autograd.grad`` (the model's ``.grad``
fields are never touched) in eval mode (BatchNorm statistics and dropout stay fixed).
"""

from __future__ import annotations

import torch

from ..errors import PruneError
from ..registry import register
from .base import Context, Criterion, call_model


def _originals(ctx: Context) -> list[torch.Tensor]:
    params = [t.original for t in ctx.targets]
    for p in params:
        p.requires_grad_(True)  # restored by `preserved`
    return params


def _loss(ctx: Context, inputs, labels) -> torch.Tensor:
    out = call_model(ctx.model, inputs)
    loss = ctx.loss_fn(out, labels)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise PruneError(
            f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
        )
    if not torch.isfinite(loss):
        raise PruneError(f"loss_fn returned {loss.item()} on a calibration batch; scores would be meaningless")
    return loss


def accumulate_gradients(ctx: Context, fn) -> dict[str, torch.Tensor]:
    """Mean over batches of ``fn(weight, grad)`` per target (cached per context)."""
    params = _originals(ctx)
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    n = 0
    for inputs, labels in ctx.batches():
        grads = torch.autograd.grad(_loss(ctx, inputs, labels), params, allow_unused=True)
        for s, t, g in zip(sums, ctx.targets, grads):
            if g is not None:
                s.add_(fn(t.weight.detach().float(), g.float()))
        n += 1
    return {t.name: s / n for t, s in zip(ctx.targets, sums)}


@register("criterion", "gradient")
class Gradient(Criterion):
    """Sensitivity S = |∂L/∂W|, accumulated (averaged) over the calibration batches.

    Averaging absolute per-batch gradients rather than the signed gradient keeps the signal
    of a trained model, whose mean gradient is close to zero.
    """

    needs_data = True
    needs_loss = True

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return accumulate_gradients(ctx, lambda w, g: g.abs())


@register("criterion", "normalized_gradient")
class NormalizedGradient(Gradient):
    """Sensitivity divided by its Frobenius norm per layer, S / ‖S‖_F, so layers compare on
    a common scale under a global threshold."""

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        out = {}
        for name, s in super().scores(ctx).items():
            norm = torch.linalg.vector_norm(s)
            out[name] = s / norm if norm > 0 else s
        return out


@register("criterion", "taylor")
class Taylor(Criterion):
    """First-order Taylor estimate of the loss change when a weight is zeroed: |w · ∂L/∂w|
    (Molchanov et al. 2017/2019), averaged over the calibration batches."""

    needs_data = True
    needs_loss = True

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return accumulate_gradients(ctx, lambda w, g: (w * g).abs())


@register("criterion", "hessian")
class Hessian(Criterion):
    """Optimal Brain Damage (LeCun et al. 1990): saliency ½ · H_ii · w_i².

    The Hessian diagonal is the empirical Fisher, H_ii ≈ (1/N) Σ_n (∂ℓ_n/∂w_i)², built from
    true per-sample gradients (``torch.func.vmap``; falls back to one sample at a time for
    models vmap cannot batch). ``loss_fn`` is called on single samples with a batch dim of 1.

    Args:
        chunk_size: samples per vectorized chunk; bounds memory at chunk_size × weights.
    """

    needs_data = True
    needs_loss = True

    def __init__(self, chunk_size: int = 32) -> None:
        self.chunk_size = chunk_size

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        fisher = empirical_fisher(ctx, self.chunk_size)
        return {t.name: 0.5 * fisher[t.name] * t.weight.detach().float().pow(2) for t in ctx.targets}


def empirical_fisher(ctx: Context, chunk_size: int = 32) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher per target: mean over samples of squared per-sample grads."""
    from torch.func import functional_call, grad, vmap

    model = ctx.model
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    keys = [names_by_id[id(t.original)] for t in ctx.targets]
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in keys}
    rest.update(dict(model.named_buffers()))

    def sample_loss(tparams, x, y):
        out = functional_call(model, {**rest, **tparams}, (x.unsqueeze(0),))
        return ctx.loss_fn(out, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)
    sums = {k: torch.zeros_like(t.original, dtype=torch.float32) for k, t in zip(keys, ctx.targets)}
    count = 0
    for inputs, labels in ctx.batches():
        if not isinstance(inputs, torch.Tensor) or labels is None:
            raise PruneError("criterion 'hessian' needs (tensor inputs, labels) batches")
        tparams = {k: t.original.detach() for k, t in zip(keys, ctx.targets)}
        try:
            g = per_sample(tparams, inputs, labels)
            for k in keys:
                sums[k].add_(g[k].float().pow(2).sum(0))
        except (RuntimeError, NotImplementedError):
            # Models vmap cannot batch (data-dependent control flow, some custom ops).
            params = _originals(ctx)
            for i in range(inputs.shape[0]):
                gi = torch.autograd.grad(_loss(ctx, inputs[i : i + 1], labels[i : i + 1]), params, allow_unused=True)
                for k, gg in zip(keys, gi):
                    if gg is not None:
                        sums[k].add_(gg.float().pow(2))
        count += inputs.shape[0]
    masks = {k: _mask_of(t) for k, t in zip(keys, ctx.targets)}
    return {t.name: sums[k] / count * masks[k] for k, t in zip(keys, ctx.targets)}


def _mask_of(t) -> torch.Tensor | float:
    # Per-sample grads w.r.t. `original` already carry the mask factor; multiply again only
    # to be explicit that masked weights have zero saliency.
    from ..masking import get_masks_of

    mask = get_masks_of(t.module, t.param)
    return 1.0 if mask is None else mask.float()


def gradient(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`Gradient` (pass data= and loss_fn=)."""
    return Gradient()(model, **kwargs)


def normalized_gradient(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`NormalizedGradient`."""
    return NormalizedGradient()(model, **kwargs)


def taylor(model, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`Taylor`."""
    return Taylor()(model, **kwargs)


def hessian(model, chunk_size: int = 32, **kwargs) -> dict[str, torch.Tensor]:
    """Functional twin of :class:`Hessian`."""
    return Hessian(chunk_size=chunk_size)(model, **kwargs)
