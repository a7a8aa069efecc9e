"""Which parameters are prunable, and the rules that leave some out.

A :class:`Target` names one prunable weight by its canonical name (``"features.0.weight"``),
whether or not a mask is currently registered on it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import PruneError, PruneTypeError

#: Module types whose ``weight`` is prunable, and the dimension that indexes output units
#: (filters / neurons) of that weight.
PRUNABLE_TYPES: dict[type, int] = {
    nn.Linear: 0,
    nn.Conv1d: 0,
    nn.Conv2d: 0,
    nn.Conv3d: 0,
}


@dataclass(frozen=True)
class Target:
    """One prunable weight: ``module_name`` + ``param`` = ``name``."""

    name: str
    module_name: str
    param: str
    module: nn.Module
    #: other names of the same tensor (tied weights): they get the same mask
    aliases: tuple[str, ...] = ()

    @property
    def weight(self) -> torch.Tensor:
        """The effective (masked, if a mask is registered) tensor."""
        return getattr(self.module, self.param)

    @property
    def original(self) -> torch.Tensor:
        """The trainable tensor: the parametrization's ``original`` when masked."""
        if parametrize.is_parametrized(self.module, self.param):
            return self.module.parametrizations[self.param].original
        return getattr(self.module, self.param)

    @property
    def numel(self) -> int:
        return self.original.numel()

    @property
    def out_dim(self) -> int:
        return PRUNABLE_TYPES.get(type(self.module), 0)


def check_module(model: object) -> nn.Module:
    """Raise a clear TypeError unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise PruneTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "Keras and scikit-learn models go through prunekit.keras / prunekit.sklearn"
        )
    return model


def _prunable_type(module: nn.Module) -> bool:
    # Parametrized modules get a generated subclass; test against the registered bases.
    return any(isinstance(module, t) for t in PRUNABLE_TYPES)


def find_targets(model: nn.Module, ignore: Iterable[str] = (), include_bias: bool = False) -> list[Target]:
    """List the prunable weights of ``model`` in module order.

    Args:
        model: any ``nn.Module``.
        ignore: module or parameter names, or shell-style patterns (``"classifier.*"``),
            to leave out. A pattern that matches nothing is an error, since it is almost
            always a typo.
        include_bias: also list biases (used by channel masks, never scored).

    Returns:
        ``Target`` objects, one per prunable weight.

    Example:
        >>> [t.name for t in find_targets(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))]
        ['0.weight', '2.weight']
    """
    check_module(model)
    if isinstance(ignore, str):
        ignore = [ignore]
    patterns = list(ignore)
    for p in patterns:
        if not isinstance(p, str):
            raise PruneTypeError(f"ignore entries must be strings (names or patterns), got {p!r}")
    used = set()
    out: list[Target] = []
    first: dict[int, int] = {}  # id(tensor) -> index in out, to fold tied weights together
    for mname, module in model.named_modules():
        if not _prunable_type(module):
            continue
        params = ["weight"] + (["bias"] if include_bias and module.bias is not None else [])
        for pname in params:
            full = f"{mname}.{pname}" if mname else pname
            hit = [p for p in patterns if fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(mname, p)]
            if hit:
                used.update(hit)
                continue
            if parametrize.is_parametrized(module, pname) and not hasattr(module.parametrizations[pname], "original"):
                kinds = [type(p).__name__ for p in module.parametrizations[pname]]
                raise PruneError(
                    f"{full} is parametrized by {kinds} over several tensors; it cannot be masked. "
                    f"Exclude it with ignore=[{full!r}]"
                )
            t = Target(full, mname, pname, module)
            key = id(t.original)
            if key in first:
                i = first[key]
                out[i] = Target(out[i].name, out[i].module_name, out[i].param, out[i].module, out[i].aliases + (full,))
                continue
            first[key] = len(out)
            out.append(t)
    unused = [p for p in patterns if p not in used]
    if unused:
        names = [t.name for t in find_targets(model)]
        raise PruneError(f"ignore patterns {unused} match no prunable weight; prunable weights are {names}")
    return out
