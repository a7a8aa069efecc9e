"""The linear layers of a transformer block, as the block-by-block driver prunes them.

``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored ``(in, out)``) are both seen as a
matrix ``[out, in]``. For each, the driver gathers the input statistics its criterion
reads (:class:`prunekit.criteria.inputs.InputStatistics`) while the block runs, and
:func:`prune_matrix` turns them into a mask by the core's rules: the criterion's
``matrix_scores`` and the core's selection (:func:`select`), or SparseGPT's sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..allocation import prune_lowest, prune_rows
from ..criteria import Criterion, SparseGPT, region_gradients
from ..criteria.inputs import InputStatistics
from ..errors import PruneError
from ..granularity import nm_keep
from ..masking import original
from ..refine import dsnot
from .blocks import Chunk, StopForward, block_output


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or GPT-2's ``Conv1D`` (a linear layer whose weight is stored (in, out))."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def transposed(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear)


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if transposed(module) else module.in_features


def out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if transposed(module) else module.out_features


def rows(module: nn.Module) -> torch.Tensor:
    """The effective weight as (out_features, in_features), whatever the layer stores."""
    w = module.weight.detach()
    return w.t().contiguous() if transposed(module) else w


def weight_param(module: nn.Linear) -> torch.Tensor:
    """The stored tensor behind ``module.weight`` (the parametrization's original if masked)."""
    return original(module, "weight")


def layer_count(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a fraction removes: ``round(n * sparsity)``, as the core's allocations count."""
    return round(n * sparsity)


def select(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, comparison: str) -> torch.Tensor:
    """Boolean keep-mask ``[out, in]`` by the core's selection rules: N:M
    (:func:`prunekit.granularity.nm_keep`), per output row (:func:`prunekit.allocation.prune_rows`)
    or per layer (:func:`prunekit.allocation.prune_lowest`)."""
    if nm is not None:
        return nm_keep(scores, *nm)
    if comparison == "row":
        return prune_rows(scores, sparsity)
    ones = torch.ones(scores.numel(), dtype=torch.long, device=scores.device)
    return prune_lowest(scores.reshape(-1), ones, sparsity * scores.numel()).reshape(scores.shape)


def prune_matrix(
    module: nn.Module,
    name: str,
    stats: InputStatistics | None,
    crit: Criterion,
    sparsity: float,
    nm: tuple[int, int] | None,
    comparison: str,
    refine: str | None = None,
    refine_cycles: int = 50,
    gradient: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New weights (pruned entries zero) and boolean keep-mask for one linear layer;
    ``refine="dsnot"`` then refines the mask (:func:`prunekit.refine.dsnot`); ``gradient``
    (``[out, in]``) is the regional gradient a ``"regional"`` criterion (RGS) reads."""
    W = rows(module)  # effective weight as (out, in): earlier masks already applied
    if stats is not None and stats.rows.get(name, 0) == 0:
        raise PruneError(f"no calibration tokens reached {name} ({type(module).__name__}); cannot score it")
    if isinstance(crit, SparseGPT):
        assert stats is not None
        exact = layer_count(W.numel(), sparsity) / W.numel()  # the count every allocation removes
        new, keep = crit.sweep(W, stats.hessian(name)[0], exact, nm)
        return new.to(W.dtype), keep
    squares = stats.squares[name] if stats is not None else None
    scores = crit.matrix_scores(W, squares, gradient) if crit.statistics == "regional" else crit.matrix_scores(W, squares)
    keep = select(scores, sparsity, nm, comparison)
    if refine == "dsnot":
        if stats is None:
            raise PruneError(f"refine='dsnot' reads the calibration inputs of {name}; none were collected")
        mean, var = stats.moments(name)
        keep = dsnot(W, keep, mean[0], var[0], stats.squares[name][0].sqrt(), nm=nm, cycles=refine_cycles)
    return W * keep.to(W.dtype), keep


def collect(
    layer: nn.Module,
    linears: list[tuple[str, nn.Module]],
    chunks: list[Chunk],
    statistics: str,
    stop_early: bool,
    outputs: list[torch.Tensor] | None = None,
) -> InputStatistics:
    """Run ``layer`` on every chunk and return the input statistics of ``linears``
    (``statistics``: ``"squares"`` or ``"gram"``, as the criterion reads them).

    With ``stop_early`` the forward pass is cut as soon as the last of ``linears`` has
    seen its input (the rest of the block is not needed for these statistics). Otherwise
    the block's outputs are appended to ``outputs`` when a list is given.
    """
    stats = InputStatistics(gram=statistics == "gram")
    pending: set[str] = set()
    handles = []

    def make(name: str) -> Any:
        def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            stats.add(name, x.detach().reshape(-1, x.shape[-1]).to(torch.float32))
            pending.discard(name)
            if stop_early and not pending:
                raise StopForward

        return pre

    for name, mod in linears:
        handles.append(mod.register_forward_pre_hook(make(name)))
    try:
        for hidden, args, kwargs in chunks:
            pending.update(n for n, _ in linears)
            try:
                out = block_output(layer, hidden, args, kwargs)
                if outputs is not None:
                    outputs.append(out)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return stats


def input_groups(layer: nn.Module, linears: list[tuple[str, nn.Linear]], chunk: Chunk) -> list[list[tuple[str, nn.Linear]]]:
    """The block's linears grouped by the tensor they read, in call order.

    Linears fed the same tensor (q/k/v, gate/up) form one group; ``o_proj`` and
    ``down_proj`` read tensors computed from earlier groups and come after them. Found
    with one forward pass of the first calibration chunk, cut once every linear was called.
    """
    order: list[tuple[str, torch.Tensor]] = []  # the inputs are held, so identity checks are sound
    by_module = {id(m): n for n, m in linears}
    pending = set(by_module)

    def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        order.append((by_module[id(module)], inputs[0]))
        pending.discard(id(module))
        if not pending:
            raise StopForward

    handles = [mod.register_forward_pre_hook(pre) for _, mod in linears]
    try:
        block_output(layer, *chunk)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    mods = dict(linears)
    groups: list[list[tuple[str, nn.Linear]]] = []
    seen: set[str] = set()
    last: torch.Tensor | None = None
    for name, inp in order:
        if name in seen:
            continue
        seen.add(name)
        if groups and inp is last:
            groups[-1].append((name, mods[name]))
        else:
            groups.append([(name, mods[name])])
        last = inp
    missing = [(n, m) for n, m in linears if n not in seen]
    if missing:  # never called on these inputs: prune them with the last group
        groups.append(missing)
    return groups


def _split(value: Any, batch: int, i: int) -> Any:
    """Sample ``i`` of a captured block argument: tensors of two or more dimensions whose
    first is the batch are sliced (1-D tensors such as cache positions are per token)."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value[i : i + 1]
        if value.dim() >= 3 and value.shape[0] > batch and value.shape[0] % batch == 0:  # BLOOM's ALiBi: batch × heads
            per = value.shape[0] // batch
            return value[i * per : (i + 1) * per]
        return value
    if isinstance(value, tuple):
        return tuple(_split(v, batch, i) for v in value)
    if isinstance(value, list):
        return [_split(v, batch, i) for v in value]
    if isinstance(value, dict):
        return {k: _split(v, batch, i) for k, v in value.items()}
    return value


def chunk_samples(layer: nn.Module, chunks: list[Chunk]) -> Iterator[Chunk]:
    """Every calibration window of ``chunks`` as its own chunk (batch 1). The first split is
    checked: the block's output on it must equal its slice of the batch's output, else the
    block's arguments cannot be split per window and this raises."""
    checked = False
    for hidden, args, kwargs in chunks:
        b = hidden.shape[0]
        for i in range(b):
            one = (hidden[i : i + 1], _split(args, b, i), _split(kwargs, b, i))
            if not checked and b > 1:
                with torch.no_grad():
                    whole = block_output(layer, hidden, args, kwargs)[i : i + 1]
                    try:
                        alone = block_output(layer, *one)
                    except Exception as e:  # a shape the split left whole: the same answer as a wrong split
                        raise PruneError(f"{type(layer).__name__}: the block's arguments cannot be split into single "
                                         f"windows ({type(e).__name__}: {str(e)[:200]}); use batch_size=1") from e
                # a wrong split (a mask or position of another window) changes the output by
                # its own size; kernels at another batch size differ by rounding only
                tol = 3e-2 if whole.dtype in (torch.float16, torch.bfloat16) else 1e-3
                scale = float(whole.float().abs().max().clamp_min(1e-6))
                if alone.shape != whole.shape or float((alone.float() - whole.float()).abs().max()) > tol * scale:
                    raise PruneError(f"{type(layer).__name__}: the block's arguments cannot be split into single "
                                     "windows (a per-window gradient is needed); use batch_size=1")
                checked = True
            yield one


def regional_gradients(layer: nn.Module, linears: list[tuple[str, nn.Module]], chunks: list[Chunk]) -> dict[str, torch.Tensor]:
    """``{name: G}``, ``G`` ``[out, in]``: the root mean square over calibration windows of the
    gradient of the block's output norm with respect to each linear's weight (Wanda++)."""
    params = [weight_param(m) for _, m in linears]
    grads = region_gradients(layer, params, chunk_samples(layer, chunks), lambda l, c: block_output(l, *c))
    return {name: (g.t() if transposed(m) else g) for (name, m), g in zip(linears, grads)}


def layer_gradient(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """:func:`prunekit.criteria.region_gradients` of one layer's weight, the layer its own
    region and each row of ``inputs``' first dimension a sample (``prune_linear``'s RGS)."""
    samples = (x.unsqueeze(0) for x in inputs.detach())
    return region_gradients(layer, [weight_param(layer)], samples, lambda m, x: m(x))[0]
