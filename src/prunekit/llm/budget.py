"""Budgets, not ratios: the widths and depth that meet a parameter or MAC count.

* :class:`Shape`: the sizes of a pruned model (hidden, heads, KV heads, MLP, blocks);
* :func:`parameters` / :func:`macs`: what a shape costs, computed from the model's
  :class:`~prunekit.llm.config_update.Architecture` (equal to the compacted model's count;
  the tests check it);
* :func:`candidates`: a few shapes that meet a budget, each the largest of its kind:
  ``"depth"`` (fewest blocks removed, full width), ``"width"`` (hidden size and MLP shrunk by
  one factor, all blocks kept) and ``"mixed"`` (half the depth-only removal, then width);
* :func:`parse_count`: ``"100M"``, ``"1.5G"``, ``"2e6"``, ``250000`` → an integer.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from ..errors import PruneError
from .config_update import Architecture

__all__ = ["MODES", "Shape", "budget_shapes", "candidates", "full_shape", "macs", "parameters", "parse_count"]

MODES = ("width", "depth", "mixed")
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Shape:
    """The sizes of a (pruned) model. ``mode`` says how it was chosen."""

    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    layers: int
    mode: str = "dense"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def full_shape(arch: Architecture) -> Shape:
    return Shape(arch.hidden, arch.heads, arch.kv_heads, arch.intermediate, arch.layers)


def parse_count(name: str, value: Any) -> int:
    """A positive count from an int or a string such as ``"100M"``, ``"2.5k"``, ``"1e6"``."""
    if isinstance(value, bool):
        raise PruneError(f"{name} must be a count such as 100M or 2500000; got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGbBtT]?)\s*", str(value))
        if m is None:
            raise PruneError(f"{name} must be a count such as 100M, 2.5k or 1e6; got {value!r}")
        n = int(round(float(m.group(1)) * _SUFFIX[m.group(2).upper()]))
    if n < 1:
        raise PruneError(f"{name} must be at least 1; got {value!r}")
    return n


@dataclass(frozen=True)
class Biases:
    """Which linears of the family carry biases (read from the model)."""

    qkv: bool = False
    o: bool = False
    mlp: bool = False
    extra_embeddings: int = 0  # BERT: position + token-type rows
    pooler: bool = False
    lm_head: bool = True
    gated: bool = True


def _block(arch: Architecture, s: Shape, b: Biases) -> tuple[int, int]:
    """(parameters, linear weights) of one block of shape ``s``."""
    h, I = s.hidden, s.intermediate
    d = arch.head_dim if arch.family == "llama" else s.hidden // s.heads
    q, kv = s.heads * d, s.kv_heads * d
    lin = h * q + 2 * h * kv + q * h + (3 if b.gated else 2) * h * I
    bias = (q + 2 * kv if b.qkv else 0) + (h if b.o else 0) + ((I + h) if b.mlp else 0)
    norms = 2 * h * (2 if arch.family == "bert" else 1)
    return lin + bias + norms, lin


def parameters(arch: Architecture, s: Shape, b: Biases) -> int:
    """Parameter count (tied weights once) of ``arch`` narrowed to ``s``."""
    h = s.hidden
    per_block, _ = _block(arch, s, b)
    total = s.layers * per_block + arch.vocab * h
    if arch.family == "bert":
        total += b.extra_embeddings * h + 2 * h + ((h * h + h) if b.pooler else 0)
    else:
        total += h + (0 if arch.tied or not b.lm_head else arch.vocab * h)
    return total


def macs(arch: Architecture, s: Shape, b: Biases, seqlen: int = 256) -> int:
    """Multiply-accumulates of one forward pass over ``seqlen`` tokens: every linear (the LM
    head included) plus attention's ``QKᵀ`` and ``AV`` (``2 · seqlen² · heads · head_dim`` per block)."""
    _, lin = _block(arch, s, b)
    d = arch.head_dim if arch.family == "llama" else s.hidden // s.heads
    head = arch.vocab * s.hidden if b.lm_head and arch.family == "llama" else 0
    return s.layers * (seqlen * lin + 2 * seqlen * seqlen * s.heads * d) + seqlen * head


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """The largest ``n`` in ``[lo, hi]`` with ``fits(n)`` (true up to some ``n``, false after), else None."""
    if lo > hi or not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _width(arch: Architecture, base: Shape, cost: Callable[[Shape], int], target: int, mode: str,
           keep_hidden: bool = False) -> Shape | None:
    """Hidden size and MLP shrunk by one factor (hidden a multiple of the heads) to meet
    ``target``; with ``keep_hidden``, the MLP alone."""
    step_h, step_i = base.heads, 8 if arch.intermediate >= 64 else 1

    def at(k: int) -> Shape:  # k in 1..1000: the kept fraction in thousandths
        hid = arch.hidden if keep_hidden else max(step_h, (arch.hidden * k // 1000) // step_h * step_h)
        inter = max(step_i, (arch.intermediate * k // 1000) // step_i * step_i)
        return replace(base, hidden=hid, intermediate=inter, mode=mode)

    k = _largest(1, 1000, lambda k: cost(at(k)) <= target)
    return None if k is None else at(k)


def candidates(arch: Architecture, cost: Callable[[Shape], int], target: int,
               modes: tuple[str, ...] = MODES, *, keep_hidden: bool = False) -> list[Shape]:
    """The largest shape of each mode in ``modes`` whose ``cost`` is at most ``target``.
    ``keep_hidden``: width modes narrow the MLP only (a sentence encoder whose embeddings
    must stay comparable with the dense ones)."""
    full = full_shape(arch)
    if cost(full) <= target:
        raise PruneError(f"the model already meets the budget ({cost(full):,} <= {target:,}); ask for less")
    out: list[Shape] = []
    depth_layers = _largest(1, arch.layers, lambda n: cost(replace(full, layers=n)) <= target)
    for mode in modes:
        if mode == "depth" and depth_layers is not None:
            out.append(replace(full, layers=depth_layers, mode="depth"))
        elif mode == "width":
            s = _width(arch, full, cost, target, "width", keep_hidden)
            if s is not None:
                out.append(s)
        elif mode == "mixed":
            removed = arch.layers - (depth_layers if depth_layers is not None else 1)
            layers = arch.layers - max(1, math.ceil(removed / 2))
            if layers >= 1:
                s = _width(arch, replace(full, layers=layers), cost, target, "mixed", keep_hidden)
                if s is not None:
                    out.append(s)
    if not out:
        raise PruneError(f"no shape of modes {', '.join(modes)} meets the budget {target:,} "
                         f"(the dense model costs {cost(full):,}); ask for more")
    return out


def budget_shapes(arch: Architecture, b: Biases, *, params: Any = None, macs_budget: Any = None, seqlen: int = 256,
                  modes: tuple[str, ...] = MODES, keep_hidden: bool = False) -> tuple[int, str, list[Shape]]:
    """``(target, "params" | "macs", candidates)`` for a parameter budget (``params``) or a MAC
    budget (``macs_budget``, one forward pass over ``seqlen`` tokens); exactly one is given."""
    if params is not None:
        target = parse_count("params", params)
        return target, "params", candidates(arch, lambda s: parameters(arch, s, b), target, modes,
                                            keep_hidden=keep_hidden)
    target = parse_count("macs", macs_budget)
    return target, "macs", candidates(arch, lambda s: macs(arch, s, b, seqlen), target, modes, keep_hidden=keep_hidden)
