"""The optimizers :func:`prunekit.train.fit` trains with, by name (also importable from
:mod:`prunekit.train`).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import PruneError, PruneTypeError, unknown

__all__ = ["OPTIMIZERS", "make_optimizer"]

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(
    model: nn.Module, optimizer: str | torch.optim.Optimizer, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer :func:`prunekit.train.fit` trains with.

    Args:
        model: the model whose trainable parameters (``requires_grad``) are optimized.
        optimizer: a name from :data:`OPTIMIZERS` (``"adam"``, ``"adamw"``, ``"sgd"`` with
            momentum 0.9), or a ready ``torch.optim.Optimizer``, returned as it is.
        lr: learning rate.
        weight_decay: weight decay.

    Returns:
        The optimizer (Adam and AdamW use the fused kernel where every parameter allows it).

    Raises:
        PruneTypeError: ``optimizer`` is neither a name nor an optimizer.
        PruneError: an unknown name, or no trainable parameters.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if not isinstance(optimizer, str):
        raise PruneTypeError(
            "optimizer must be a name or a torch.optim.Optimizer, got "
            f"{type(optimizer).__name__}: {optimizer!r}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PruneError("the model has no trainable parameters")
    name = optimizer.lower()
    # The fused kernel is 2-3x faster on CPU, and the default one slows down on the exact
    # zeros that masked weights leave in Adam's moments (torch.sqrt of 0 takes a slow path).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise unknown("optimizer", optimizer, OPTIMIZERS)
