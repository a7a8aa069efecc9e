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

from .errors import PruneError, PruneTypeError
from .masking import foreign_parametrizations as foreign_parametrizations
from .masking import original, parametrizations
from .state_dicts import check_module as check_module  # defined in state_dicts (masking needs it too); used from here

#: Module types whose ``weight`` is prunable by every granularity, and the dimension that
#: indexes output units (filters / neurons) of that weight. Transposed convolutions store
#: their weight as (in, out / groups, *kernel): their output units are on dimension 1.
PRUNABLE_TYPES: dict[type, int] = {
    nn.Linear: 0,
    nn.Conv1d: 0,
    nn.Conv2d: 0,
    nn.Conv3d: 0,
    nn.ConvTranspose1d: 1,
    nn.ConvTranspose2d: 1,
    nn.ConvTranspose3d: 1,
}


def _rnn_weights(module: nn.Module) -> list[str]:
    return [n for n in module._flat_weights_names if n.startswith("weight_")]


def _mha_weights(module: nn.Module) -> list[str]:
    if module.in_proj_weight is not None:
        return ["in_proj_weight"]
    return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]


#: Module types whose weight matrices are prunable element by element (unstructured, N:M,
#: block) but whose rows are not independent output units: recurrent gate matrices,
#: attention's packed q/k/v projection, embedding tables. ``type -> parameter names``.
ELEMENT_TYPES: dict[type, object] = {
    nn.RNNBase: _rnn_weights,
    nn.RNNCellBase: lambda m: ["weight_ih", "weight_hh"],
    nn.MultiheadAttention: _mha_weights,
    nn.Embedding: lambda m: ["weight"],
    nn.EmbeddingBag: lambda m: ["weight"],
}


def kind_of(module: nn.Module) -> str | None:
    """``"unit"`` (every granularity), ``"element"`` (element-wise patterns only) or None."""
    if any(isinstance(module, t) for t in PRUNABLE_TYPES):
        return "unit"
    if any(isinstance(module, t) for t in ELEMENT_TYPES):
        return "element"
    return None


def weight_names(module: nn.Module) -> list[str]:
    """Names of ``module``'s own prunable weights (empty if it has none)."""
    for t, names in PRUNABLE_TYPES.items():
        if isinstance(module, t):
            return ["weight"]
    for t, fn in ELEMENT_TYPES.items():
        if isinstance(module, t):
            return [n for n in fn(module) if getattr(module, n, None) is not None]
    return []


def out_dim_of(module: nn.Module) -> int:
    """The dimension of ``module.weight`` that indexes its output units."""
    for t, d in PRUNABLE_TYPES.items():
        if isinstance(module, t):  # isinstance: parametrized modules get a generated subclass
            return d
    return 0


def rows_per_output(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``[output units, everything else]``: one row per output channel or neuron.
    A grouped transposed convolution stores ``[in, out / groups, ...]``: output channel
    ``g * (out / groups) + j`` is column ``j`` of group ``g``'s input rows."""
    d = out_dim_of(module)
    groups = getattr(module, "groups", 1)
    if d == 1 and groups > 1 and weight.dim() >= 3:
        g = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])  # [g, in/g, out/g, k...]
        return g.movedim(2, 1).reshape(groups * weight.shape[1], -1)
    return weight.movedim(d, 0).reshape(weight.shape[d], -1)


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
        return original(self.module, self.param)

    @property
    def numel(self) -> int:
        return self.original.numel()

    def users(self, model: nn.Module) -> list[nn.Module]:
        """Every module that holds this tensor: ``module``, then those of its ``aliases``
        (a tied embedding's output head), each once."""
        out = {id(self.module): self.module}
        for alias in self.aliases:
            m = model.get_submodule(alias.rpartition(".")[0])
            out.setdefault(id(m), m)
        return list(out.values())

    @property
    def out_dim(self) -> int:
        return out_dim_of(self.module)

    @property
    def units(self) -> bool:
        """True when the weight's slices along ``out_dim`` are output units (channels,
        neurons) that channel granularity can remove with their bias; False for
        recurrent, packed-attention and embedding weights, and for grouped transposed
        convolutions (whose dimension 1 holds only one group's outputs)."""
        if kind_of(self.module) != "unit":
            return False
        return self.out_dim == 0 or getattr(self.module, "groups", 1) == 1


def foreign_weights(model: nn.Module) -> dict[str, list[str]]:
    """``{weight name: parametrization names}`` of every prunable-kind weight of ``model``
    under a parametrization that is not a prunekit mask."""
    out = {}
    for mname, module in model.named_modules():
        for pname in weight_names(module):
            kinds = foreign_parametrizations(module, pname)
            if kinds:
                out[f"{mname}.{pname}" if mname else pname] = kinds
    return out


def ignore_patterns(ignore: object) -> list[str]:
    """``ignore=`` as a list of names/patterns: ``None`` is none, a string is one; anything
    but strings is a ``PruneTypeError``."""
    if ignore is None:
        return []
    if isinstance(ignore, str):
        return [ignore]
    if not isinstance(ignore, Iterable):
        raise PruneTypeError(f"ignore must be None, a name or a list of names/patterns, got {ignore!r}")
    out = list(ignore)
    for p in out:
        if not isinstance(p, str):
            raise PruneTypeError(f"ignore entries must be strings (names or patterns), got {p!r}")
    return out


def ignore_hits(patterns: Iterable[str], name: str, module_name: str) -> list[str]:
    """The ``ignore=`` patterns that leave parameter ``name`` (of module ``module_name``)
    out: those matching the parameter's name, its module's name or the name of any module
    above it (``"enc"`` covers ``"enc.0.weight"``), shell patterns allowed."""
    parts = module_name.split(".") if module_name else []
    names = [name, module_name] + [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)]


def find_targets(
    model: nn.Module, ignore: Iterable[str] | None = (), include_bias: bool = False, *, skip_foreign: bool = True
) -> list[Target]:
    """List the prunable weights of ``model`` in module order.

    Args:
        model: any ``nn.Module``.
        ignore: module or parameter names, or shell-style patterns (``"classifier.*"``),
            to leave out (``None``: none). A module's name covers every weight under it.
            A pattern that matches nothing is an error, since it is almost always a typo.
        include_bias: also list biases (used by channel masks, never scored).
        skip_foreign: leave out weights under another parametrization (``weight_norm``,
            ``spectral_norm``), which a mask cannot gate exactly (``pk.prune`` lists them in
            its coverage); False raises a ``PruneError`` for them instead.
            :func:`foreign_parametrizations` says which they are.

    Returns:
        ``Target`` objects, one per prunable weight.

    Example:
        >>> [t.name for t in find_targets(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))]
        ['0.weight', '2.weight']
    """
    check_module(model)
    patterns = ignore_patterns(ignore)
    used = set()
    ignored: set[int] = set()  # id(tensor) of every ignored weight
    out: list[Target] = []
    first: dict[int, int] = {}  # id(tensor) -> index in out, to fold tied weights together
    for mname, module in model.named_modules():
        own = weight_names(module)
        if not own:
            continue
        params = own + (["bias"] if include_bias and own == ["weight"] and getattr(module, "bias", None) is not None else [])
        for pname in params:
            full = f"{mname}.{pname}" if mname else pname
            hit = ignore_hits(patterns, full, mname)
            if hit:
                used.update(hit)
                tensor = original(module, pname)
                if tensor is not None:
                    ignored.add(id(tensor))  # its other names (tied weights) are left alone too
                continue
            foreign = foreign_parametrizations(module, pname)
            if skip_foreign and foreign:
                continue
            kinds = [type(p).__name__ for p in parametrizations(module, pname)]
            if foreign and not kinds:
                raise PruneError(f"{full} is recomputed before each forward by a {foreign[0]} hook, not a parameter; "
                                 f"it cannot be masked. Exclude it with ignore=[{full!r}]")
            if kinds and original(module, pname) is None:  # a parametrization over several tensors
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
    out = [t for t in out if id(t.original) not in ignored]
    unused = [p for p in patterns if p not in used]
    if unused:
        names = [t.name for t in find_targets(model)]
        raise PruneError(f"ignore patterns {unused} match no prunable weight; prunable weights are {names}")
    return out
