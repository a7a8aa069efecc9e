"""Granularity: what is removed together, and how element scores become unit scores.

A *unit* is the smallest thing a granularity removes: one weight (unstructured), one
output channel (filter / neuron), one block of a 2-D view of the weight. N:M is different:
it keeps the N best of every M consecutive weights along the input dimension, so it needs
no allocation.
"""

from __future__ import annotations

import re
from typing import ClassVar

import torch

from .criteria.base import Criterion
from .errors import PruneError, PruneTypeError
from .registry import available, create, register, set_base
from .targets import Target, out_dim_of, rows_per_output


class Granularity:
    """Base class. ``allocates`` is False for patterns that fix the sparsity (N:M)."""

    name: ClassVar[str] = ""
    allocates: ClassVar[bool] = True
    structured: ClassVar[bool] = False

    def check(self, target: Target, criterion: Criterion) -> None:
        if criterion.level == "channel" and not self.structured:
            raise PruneError(
                f"criterion {criterion.name!r} scores whole channels; use granularity='channel' "
                f"(granularity {self.name!r} needs element scores)"
            )
        if criterion.granularities is not None and self.name not in criterion.granularities:
            accepted = ", ".join("'2:4' (any N:M)" if g == "nm" else repr(g) for g in criterion.granularities)
            raise PruneError(f"criterion {criterion.name!r} works with granularity {accepted}, not {self.name!r}")

    def unit_scores(self, target: Target, scores: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        raise NotImplementedError

    def unit_size(self, target: Target) -> torch.Tensor | int:
        """Weights per unit: an int when all units are equal, else a 1-D tensor."""
        raise NotImplementedError

    def to_mask(self, target: Target, keep: torch.Tensor) -> torch.Tensor:
        """Weight-shaped 0/1 mask from a boolean ``keep`` over units."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


@register("granularity", "unstructured")
class Unstructured(Granularity):
    """Every weight on its own."""

    def unit_scores(self, target, scores, criterion):
        return scores.reshape(-1).float()

    def unit_size(self, target):
        return 1

    def to_mask(self, target, keep):
        return keep.reshape(target.original.shape)


@register("granularity", "channel")
class Channel(Granularity):
    """Whole output units: conv filters and linear neurons (the layer's bias goes with them).

    Element scores are combined per unit by the criterion's ``reduce`` (sum, or the Lp norm
    for magnitude). Physical removal of the masked channels is ``pk.compact``'s job.
    """

    structured = True

    def unit_scores(self, target, scores, criterion):
        d = target.out_dim
        n = target.original.shape[d]
        if criterion.level == "channel":
            if scores.shape != (n,):
                raise PruneError(f"channel scores for {target.name} have shape {tuple(scores.shape)}, expected ({n},)")
            return scores.float()
        s = scores.movedim(d, 0).reshape(n, -1).float()
        return criterion.reduce(s, (1,))

    def unit_size(self, target):
        shape = target.original.shape
        return target.original.numel() // shape[target.out_dim]

    def to_mask(self, target, keep):
        shape = [1] * target.original.dim()
        shape[target.out_dim] = -1
        return keep.reshape(shape).expand(target.original.shape)


@register("granularity", "head")
class Head(Channel):
    """Whole attention heads: the q/k/v rows of a head and the output projection's columns,
    traced from hand-written attention (``q @ k.transpose(-2, -1)``, ``softmax``, ``@ v``)
    or ``F.scaled_dot_product_attention``. Only the attention groups are pruned; the
    module's ``num_heads`` (or ``n_heads``...) attribute is lowered by ``pk.compact``.
    Needs ``example_inputs=`` (or ``data=``) to trace the model.
    """


def _as_2d(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def _transposed(target: Target) -> torch.nn.Module | None:
    """The module of a transposed convolution's weight (stored ``(in, out / groups, *k)``)."""
    module = getattr(target, "module", None)
    if isinstance(module, torch.nn.Module) and out_dim_of(module) == 1 and target.original.dim() >= 3:
        return module
    return None


def weight_rows(target: Target, w: torch.Tensor) -> torch.Tensor:
    """``w`` (shaped like ``target``'s weight) as ``(out, in × kernel)``, one row per output
    channel or neuron, input by input: a transposed convolution's ``(in, out / groups, *k)``
    weight is turned around (:func:`prunekit.targets.rows_per_output`)."""
    return rows_per_output(target.module, w) if _transposed(target) is not None else _as_2d(w)


def from_rows(target: Target, rows: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`weight_rows`: ``rows`` back in the weight's own shape."""
    shape = tuple(target.original.shape)
    module = _transposed(target)
    if module is None:
        return rows.reshape(shape)
    g = getattr(module, "groups", 1)
    return rows.reshape(g, shape[1], shape[0] // g, *shape[2:]).movedim(1, 2).reshape(shape)


@register("granularity", "block")
class Block(Granularity):
    """Rectangular blocks of the weight's 2-D view ``(out, in × kernel)``.

    Args:
        shape: ``(rows, cols)`` of a block; edge blocks may be smaller.
    """

    def __init__(self, shape: tuple[int, int] = (4, 4)) -> None:
        self.shape = tuple(shape)

    def _validate(self) -> tuple[int, int]:
        s = self.shape
        if len(s) != 2 or not all(isinstance(v, int) and v >= 1 for v in s):
            raise PruneError(f"block shape must be two positive ints (rows, cols), got {self.shape!r}")
        return s

    def _pad(self, x2d: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        bh, bw = self._validate()
        r, c = x2d.shape
        pr, pc = (-r) % bh, (-c) % bw
        if pr or pc:
            x2d = torch.nn.functional.pad(x2d, (0, pc, 0, pr), value=fill)
        return x2d

    def _blocks(self, x2d: torch.Tensor) -> torch.Tensor:
        bh, bw = self._validate()
        x = self._pad(x2d)
        return x.reshape(x.shape[0] // bh, bh, x.shape[1] // bw, bw)

    def unit_scores(self, target, scores, criterion):
        b = self._blocks(weight_rows(target, scores.float()))
        return criterion.reduce(b, (1, 3)).reshape(-1)

    def unit_size(self, target):
        ones = torch.ones_like(weight_rows(target, target.original.detach()), dtype=torch.float32)
        return self._blocks(ones).sum(dim=(1, 3)).reshape(-1).long()

    def to_mask(self, target, keep):
        bh, bw = self._validate()
        w2 = weight_rows(target, target.original.detach())
        rows, cols = -(-w2.shape[0] // bh), -(-w2.shape[1] // bw)
        m = keep.reshape(rows, cols).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
        return from_rows(target, m[: w2.shape[0], : w2.shape[1]].contiguous())


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask ``[rows, cols]``: the N highest scores of every M consecutive ones in a row
    (``cols`` a multiple of M). Ties keep the earlier element; ``-inf`` (pruned before) stays out."""
    g = scores.reshape(scores.shape[0], -1, m)
    idx = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    keep &= g > float("-inf")
    return keep.reshape(scores.shape)


@register("granularity", "nm")
class NM(Granularity):
    """N:M semi-structured sparsity: keep the N highest-scoring of every M consecutive
    weights along the input dimension (the layout sparse tensor cores accelerate for 2:4).

    Layers whose input size (in × kernel) is not a multiple of M cannot hold the pattern and
    are left dense; the pruning report lists them.
    """

    allocates = False

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.n = n
        self.m = m

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def validate(self) -> None:
        n, m = self.n, self.m
        if not (isinstance(n, int) and isinstance(m, int)) or m < 1 or not (0 <= n <= m):
            raise PruneError(f"N:M needs integers 0 <= N <= M and M >= 1, got N={n!r}, M={m!r}")
        if n == 0:
            raise PruneError("N:M with N=0 removes every weight; pick 1 <= N <= M")

    def row_size(self, target: Target) -> int:
        """Weights per output row (in × kernel), along which the groups of M lie."""
        return int(weight_rows(target, target.original).shape[1])

    def fits(self, target: Target) -> bool:
        return self.row_size(target) % self.m == 0

    def mask(self, target: Target, scores: torch.Tensor) -> torch.Tensor:
        """Keep the top-N of each group of M; earlier masked weights (score -inf) stay out."""
        return from_rows(target, nm_keep(weight_rows(target, scores.float()), self.n, self.m))

    def unit_scores(self, target, scores, criterion):  # pragma: no cover - not allocated
        raise PruneError("N:M granularity does not use an allocation")

    def unit_size(self, target):  # pragma: no cover
        return 1

    def to_mask(self, target, keep):  # pragma: no cover
        return keep


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def make(spec: str | Granularity, block_shape: tuple[int, int] | None = None) -> Granularity:
    """Build a granularity from a name (``"unstructured"``, ``"channel"``, ``"block"``,
    ``"nm"``), an ``"N:M"`` string such as ``"2:4"``, or pass an instance through."""
    if isinstance(spec, str):
        m = _NM.match(spec)
        if m:
            g = NM(int(m.group(1)), int(m.group(2)))
            g.validate()
            return g
        if ":" in spec:
            raise PruneError(f"invalid N:M granularity {spec!r}: expected two integers like '2:4' with N <= M")
        if spec == "block" and block_shape is not None:
            return Block(tuple(block_shape))
        g = create("granularity", spec)
    elif isinstance(spec, Granularity):
        g = spec
    else:
        raise PruneTypeError(
            f"granularity must be a name from {available('granularity')}, an 'N:M' string, or a Granularity; "
            f"got {type(spec).__name__}: {spec!r}"
        )
    if isinstance(g, NM):
        g.validate()
    if isinstance(g, Block):
        g._validate()
    return g


set_base("granularity", Granularity)
