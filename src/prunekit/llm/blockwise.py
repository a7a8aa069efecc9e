"""The block loop of one-shot pruning, independent of where the blocks live.

:func:`prunekit.llm.prune_llm` (the model in memory), :func:`prunekit.llm.offload.prune_offloaded`
(the model on disk, or on the CPU with another execution device) and distributed
calibration (:mod:`prunekit.llm.dist`) all run :func:`prune_blocks`: for each block, open it
on the execution device (:class:`MemoryBlocks` or the offload's own blocks), gather the input
statistics its criterion reads on this process's calibration batches, reduce them across
processes when a ``reduce`` is given, prune every linear, optionally reconstruct, recompute
the activations that feed the next block, and close the block (moved back, or committed and
written out). Only one block is open at a time.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..allocation import outlier_ratio
from ..criteria import Criterion
from ..criteria.calibrated import wanda_scores
from ..criteria.inputs import InputStatistics
from ..masking import apply_masks
from .blocks import Chunk, LayerInputs, block_output
from .offload_io import SpilledChunks
from .linears import (collect, in_features, input_groups, is_linear, out_features, prune_matrix, regional_gradients, rows,
                      transposed, weight_param)
from .reconstruct import reconstruct_block
from .results import LLMLayerReport, LLMPruneReport

__all__ = ["Blocks", "BlockPlan", "MemoryBlocks", "attach_blocks", "block_linears", "blocks_for", "move_chunks", "owl_pass", "prune_blocks"]

#: ``reduce(stats, {name: in_features})``: sum the statistics of the named linears over every
#: process, in place (see :class:`prunekit.llm.dist.StatisticsAllReduce`).
Reduce = Callable[[InputStatistics, dict[str, int]], None]


class Blocks(Protocol):
    """Where the transformer blocks live: opened one at a time on the execution device."""

    def __len__(self) -> int: ...
    def prefix(self, index: int) -> str: ...
    def open(self, index: int) -> nn.Module: ...
    def close(self, index: int, pruned: bool) -> None: ...
    def keep(self, chunks: list[Chunk]) -> MutableSequence[Chunk]: ...


def block_linears(layer: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The linears of one block as ``(full model name, module)``, in module order."""
    return [(f"{prefix}.{n}", m) for n, m in layer.named_modules() if n and is_linear(m)]


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def move_chunks(chunks: MutableSequence[Chunk], device: torch.device) -> None:
    """Every tensor of every chunk (hidden states, rotary tables, masks) moved to ``device``, in place."""
    for j, (h, a, k) in enumerate(chunks):
        chunks[j] = (h.to(device), _to(a, device), _to(k, device))


class MemoryBlocks:
    """The blocks of a model held in memory.

    Args:
        layers: the model's stack of blocks.
        prefixes: each block's name in the model (``model.layers.0``, ...).
        device: the execution device; ``None``: where each block already is. Otherwise a
            block is moved there when opened and back to where it was when closed.
    """

    def __init__(self, layers: nn.ModuleList, prefixes: list[str], device: torch.device | None = None) -> None:
        self.layers, self.prefixes, self.device = layers, prefixes, device
        self._home: torch.device | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def prefix(self, index: int) -> str:
        return self.prefixes[index]

    def open(self, index: int) -> nn.Module:
        layer = self.layers[index]
        if self.device is not None:
            self._home = next(layer.parameters()).device
            layer.to(self.device)
        return layer

    def close(self, index: int, pruned: bool) -> None:
        if self.device is not None and self._home is not None:
            self.layers[index].to(self._home)

    def keep(self, chunks: list[Chunk]) -> MutableSequence[Chunk]:
        return chunks


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Blocks] = weakref.WeakKeyDictionary()


def attach_blocks(model: nn.Module, blocks: Blocks | None) -> None:
    """Make :func:`prunekit.llm.prune_llm` take ``model``'s blocks from ``blocks`` (the offload's
    skeleton model, whose blocks hold no weights until opened); ``None`` detaches."""
    if blocks is None:
        _ATTACHED.pop(model, None)
    else:
        _ATTACHED[model] = blocks


def blocks_for(model: nn.Module, layers: nn.ModuleList, prefixes: list[str], device: torch.device | None) -> Blocks:
    """The blocks attached to ``model`` (:func:`attach_blocks`), else its blocks in memory."""
    return _ATTACHED.get(model) or MemoryBlocks(layers, prefixes, device)


@dataclass
class BlockPlan:
    """The settings of one pruning run, validated by the caller."""

    crit: Criterion
    sparsities: list[float]
    nm: tuple[int, int] | None = None
    comparison: str = "row"
    sequential: bool = False
    reconstruct: int = 0
    reconstruct_lr: float = 3e-4
    held: int = 0
    reduce: Reduce | None = None
    refine: str | None = None
    refine_cycles: int = 50

    @property
    def reads(self) -> bool:
        return self.crit.statistics != "none" or self.refine is not None


def _gather(layer: nn.Module, group: list[tuple[str, nn.Module]], chunks: MutableSequence[Chunk], kind: str,
            stop_early: bool, outputs: list[torch.Tensor] | None, reduce: Reduce | None) -> InputStatistics:
    stats = collect(layer, group, chunks, kind, stop_early=stop_early, outputs=outputs)
    if reduce is not None:
        reduce(stats, {n: in_features(m) for n, m in group})
    return stats


def owl_pass(blocks: Blocks, chunks: MutableSequence[Chunk], m: float, reduce: Reduce | None = None,
             inputs: LayerInputs | None = None) -> list[float]:
    """Outlier ratio of every block's Wanda scores on the dense model (its own copy of the activations)."""
    work = chunks.copy() if isinstance(chunks, SpilledChunks) else [(h.clone(), a, k) for h, a, k in chunks]
    ratios = []
    for li in range(len(blocks)):
        layer = blocks.open(li)
        try:
            if inputs is not None:
                inputs.apply(work, li)
            linears = block_linears(layer, blocks.prefix(li))
            stats = _gather(layer, linears, work, "squares", False, None, reduce)
            scores = [wanda_scores(rows(mod), stats.squares[name]) for name, mod in linears]
            ratios.append(outlier_ratio(scores, m))
            del stats, scores
            if li + 1 < len(blocks):
                for j, (hidden, args, kwargs) in enumerate(work):
                    work[j] = (block_output(layer, hidden, args, kwargs), args, kwargs)
        finally:
            blocks.close(li, pruned=False)
    return ratios


def _prune_block(layer: nn.Module, prefix: str, li: int, chunks: MutableSequence[Chunk], plan: BlockPlan,
                 report: LLMPruneReport) -> None:
    linears = block_linears(layer, prefix)
    cut = len(prefix) + 1
    groups = input_groups(layer, linears, chunks[0]) if plan.sequential and plan.reads else [linears]
    targets: list[torch.Tensor] | None = None
    if plan.reconstruct:
        # The dense block's outputs; the statistics pass computes them when it runs the whole block.
        targets = [] if len(groups) == 1 and plan.reads else [block_output(layer, *c) for c in chunks]
    for group in groups:
        stats = None
        if plan.reads:
            fill = targets if targets is not None and len(groups) == 1 else None
            stats = _gather(layer, group, chunks, str(plan.crit.statistics), plan.sequential, fill, plan.reduce)
        masks: dict[str, torch.Tensor] = {}
        grads = regional_gradients(layer, group, chunks) if plan.crit.statistics == "regional" else {}
        for name, mod in group:
            t0 = time.perf_counter()
            new, keep = prune_matrix(mod, name, stats, plan.crit, plan.sparsities[li], plan.nm, plan.comparison,
                                     plan.refine, plan.refine_cycles, grads.pop(name, None))
            if stats is not None:
                stats.grams.pop(name, None)  # free each Hessian once used
            if transposed(mod):
                new, keep = new.t(), keep.t()
            weight_param(mod).copy_(new)
            masks[f"{name[cut:]}.weight"] = keep
            zeros = int((~keep).sum())
            report.layers.append(
                LLMLayerReport(name, (out_features(mod), in_features(mod)), zeros / keep.numel(), time.perf_counter() - t0)
            )
        apply_masks(layer, masks)
    if targets is not None:
        report.reconstruction.append(reconstruct_block(
            layer, [weight_param(m) for _, m in linears], list(chunks), targets, plan.reconstruct, plan.reconstruct_lr,
            plan.held,
        ))


def prune_blocks(blocks: Blocks, chunks: MutableSequence[Chunk], plan: BlockPlan, report: LLMPruneReport,
                 inputs: LayerInputs | None = None) -> None:
    """Prune every block in order, each on the activations the pruned blocks before it give.

    ``chunks`` (this process's calibration batches; empty for magnitude without data) are
    replaced in place, block by block, by the next block's inputs; ``inputs`` gives each
    block the mask and rotary tables of its own attention type.
    """
    for li in range(len(blocks)):
        layer = blocks.open(li)
        try:
            if inputs is not None:
                inputs.apply(chunks, li)
            _prune_block(layer, blocks.prefix(li), li, chunks, plan, report)
            if li + 1 < len(blocks):
                for j, (hidden, args, kwargs) in enumerate(chunks):
                    chunks[j] = (block_output(layer, hidden, args, kwargs), args, kwargs)
        except BaseException:
            blocks.close(li, pruned=False)
            raise
        blocks.close(li, pruned=True)
