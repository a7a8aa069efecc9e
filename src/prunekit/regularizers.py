"""Sparsity-inducing penalties to add to the training loss before pruning.

Each regularizer computes ``penalty(model)``, a differentiable scalar over the model's
prunable weights (or, for ``bn_l1``, its BatchNorm scales), and ``wrap(loss_fn, model)``
turns any ``loss_fn(outputs, labels)`` into ``loss_fn(outputs, labels) + strength *
penalty(model)``. Masked entries contribute nothing and get zero gradient, because the
penalty reads the effective (masked) weight.

Registered names: ``"l1"`` (sum of ``|w|``), ``"l2"`` (sum of ``w**2``), ``"group_lasso"``
(sum over output channels / neurons of their L2 norm; Yuan & Lin 2006, Wen et al. 2016)
and ``"bn_l1"`` (sum of ``|gamma|`` over BatchNorm scales; Liu et al. 2017, network
slimming). ``make(name, **kwargs)`` builds one by name and ``get_config()`` /
``from_config()`` round-trip.

Sparsify-then-threshold: train with a penalty, then remove what it drove to (near) zero.

Example:
    >>> import prunekit as pk, torch.nn.functional as F
    >>> from prunekit.train import fit
    >>> reg = make("l1", strength=1e-4)
    >>> fit(model, data, epochs=5, loss_fn=reg.wrap(F.cross_entropy, model))
    >>> pk.prune(model, threshold=0.05, criterion="magnitude")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import PruneError, PruneTypeError
from .registry import build, register, set_base
from .registry import from_config as registry_from_config
from .targets import check_module, find_targets, ignore_hits, ignore_patterns, rows_per_output
from .validate import number

__all__ = ["BNL1", "GroupLasso", "L1", "L2", "Regularizer", "make"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ignore(value: object) -> tuple[str, ...]:
    return tuple(ignore_patterns(value))


def _total(terms: list[torch.Tensor], what: str) -> torch.Tensor:
    # An empty sum would silently train without the penalty the caller asked for.
    if not terms:
        raise PruneError(f"the model has no {what} to regularize")
    return torch.stack(terms).sum()


class Regularizer:
    """Base class: ``penalty(model)`` plus the ``strength`` (lambda) it is scaled by.

    Args:
        strength: lambda, a finite number > 0.
        ignore: module or parameter names, or shell-style patterns, to leave out (as in
            :func:`prunekit.targets.find_targets`).
    """

    name: ClassVar[str] = ""

    def __init__(self, strength: float, ignore: Iterable[str] | None = ()) -> None:
        self.strength = number("strength", strength, lo=0.0, lo_open=True)
        self.ignore = _ignore(ignore)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The unscaled penalty, a differentiable scalar tensor."""
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """``strength * penalty(model)``: the term added to the loss."""
        return self.strength * self.penalty(model)

    def wrap(self, loss_fn: Loss, model: nn.Module) -> Loss:
        """Return ``loss(outputs, labels) = loss_fn(outputs, labels) + strength * penalty(model)``.

        The penalty is recomputed on every call, so masks registered after wrapping are
        honoured.

        Args:
            loss_fn: ``loss_fn(outputs, labels) -> scalar``, e.g. ``F.cross_entropy``.
            model: the model whose weights are penalized (the one being trained).

        Returns:
            A callable with the signature of ``loss_fn``, usable as
            ``prunekit.train.fit(..., loss_fn=...)`` or in any training loop.

        Example:
            >>> loss_fn = make("group_lasso", strength=1e-3).wrap(F.cross_entropy, model)
            >>> loss_fn(model(x), y).backward()
        """
        if not callable(loss_fn):
            raise PruneTypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        check_module(model)
        self.penalty(model)  # fail now, not at the first step, on a bad ignore or empty model

        def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return loss_fn(outputs, labels) + self.strength * self.penalty(model)

        return loss

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments; ``from_config`` accepts exactly this dict."""
        return {"strength": self.strength, "ignore": list(self.ignore)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Regularizer:
        """Rebuild a regularizer from :meth:`get_config` output (a bad key names what it takes)."""
        return registry_from_config("regularizer", cls, config)

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        return self.get_config() == other.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.strength, self.ignore))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register("regularizer", "l1")
class L1(Regularizer):
    """Lasso: ``sum |w|`` over prunable weights; drives individual weights to zero.

    Example:
        >>> L1(strength=1e-4).penalty(nn.Linear(3, 2))
        tensor(..., grad_fn=<SumBackward0>)
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [t.weight.abs().sum() for t in find_targets(model, self.ignore)]
        return _total(terms, "prunable weights")


@register("regularizer", "l2")
class L2(Regularizer):
    """Squared L2 norm: ``sum w**2`` over prunable weights (weight decay as a loss term).

    Example:
        >>> L2(strength=1e-4).penalty(nn.Linear(3, 2))
        tensor(..., grad_fn=<SumBackward0>)
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [t.weight.pow(2).sum() for t in find_targets(model, self.ignore)]
        return _total(terms, "prunable weights")


@register("regularizer", "group_lasso")
class GroupLasso(Regularizer):
    """Group lasso over output units: ``sum_c ||W_c||_2``, ``W_c`` the weights of one
    output neuron (Linear) or filter (Conv). Drives whole units to zero, ready for
    channel pruning.

    Example:
        >>> GroupLasso(strength=1e-3).penalty(nn.Conv2d(3, 8, 3))
        tensor(..., grad_fn=<SumBackward0>)
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = []
        for t in find_targets(model, self.ignore):
            w = t.weight
            rows = rows_per_output(t.module, w)  # a grouped ConvTranspose: one row per output channel
            # vector_norm's backward is 0 (a valid subgradient) at a zero row, so fully
            # masked units give no NaN.
            terms.append(torch.linalg.vector_norm(rows, ord=2, dim=1).sum())
        return _total(terms, "prunable weights")


@register("regularizer", "bn_l1")
class BNL1(Regularizer):
    """Network slimming: ``sum |gamma|`` over the scales of affine BatchNorm layers.

    ``ignore`` names BatchNorm modules (or their ``.weight``, or a module holding them),
    shell patterns allowed.

    Example:
        >>> BNL1(strength=1e-4).penalty(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
        tensor(8., grad_fn=<SumBackward0>)
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        check_module(model)
        used: set[str] = set()
        terms = []
        for mname, module in model.named_modules():
            if not isinstance(module, _BatchNorm) or module.weight is None:
                continue
            full = f"{mname}.weight" if mname else "weight"
            hit = ignore_hits(self.ignore, full, mname)
            if hit:
                used.update(hit)
                continue
            terms.append(module.weight.abs().sum())
        unused = [p for p in self.ignore if p not in used]
        if unused:
            # Almost always a typo; a silently unmatched pattern would penalize the layer.
            raise PruneError(f"ignore patterns {unused} match no BatchNorm layer")
        return _total(terms, "affine BatchNorm layers")


def make(spec: str | Regularizer, **kwargs: Any) -> Regularizer:
    """Build a regularizer from a registered name and its arguments, or pass an instance through.

    Args:
        spec: ``"l1"``, ``"l2"``, ``"group_lasso"``, ``"bn_l1"`` or a :class:`Regularizer`.
        **kwargs: constructor arguments (``strength``, ``ignore``).

    Returns:
        The regularizer.

    Example:
        >>> make("l1", strength=1e-4)
        L1(strength=0.0001, ignore=[])
    """
    return build("regularizer", spec, **kwargs)


set_base("regularizer", Regularizer)
