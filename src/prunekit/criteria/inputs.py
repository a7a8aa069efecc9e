"""What a layer's weight multiplies: the input columns of Linear and convolution layers.

A weight is seen as a matrix ``[out, cols]`` (``weight.reshape(out, -1)``); each row meets
the same input column ``j`` at every token (Linear) or output position (convolutions, whose
input patches are unfolded so that column ``j`` is channel ``c`` at kernel offset ``k``, the
weight's own order). Calibrated criteria (Wanda, SparseGPT) need two statistics of these
columns over the calibration data: the sum of squares of each column and the Gram matrix
``X^T X``. :class:`InputStatistics` gathers them with forward pre-hooks: products in float32
(half-precision inputs are cast first), sums in float64.

Grouped convolutions have ``groups`` independent column sets: output rows of group ``g``
read only input channels of group ``g``. Statistics are kept per group.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruneError
from ..targets import Target

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def supports(module: nn.Module) -> bool:
    """True for the layers whose input columns are known: ``nn.Linear`` and ``nn.Conv1d/2d/3d``."""
    return isinstance(module, (nn.Linear, *_CONVS))


def groups_of(module: nn.Module) -> int:
    return int(getattr(module, "groups", 1)) if isinstance(module, _CONVS) else 1


def _padding(conv: nn.Module, spatial: int) -> list[int]:
    """``F.pad`` widths (last dimension first) equal to what the convolution pads."""
    k, d = conv.kernel_size, conv.dilation
    pads: list[tuple[int, int]] = []
    for i in range(spatial):
        if conv.padding == "valid":
            pads.append((0, 0))
        elif conv.padding == "same":
            total = d[i] * (k[i] - 1)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((conv.padding[i], conv.padding[i]))
    return [p for pair in reversed(pads) for p in pair]


def columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input columns ``[groups, rows, cols]`` that ``module``'s weight multiplies.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv1d/2d/3d``.
        x: the module's input (``[..., in_features]``, or ``[N, C, *spatial]``; an unbatched
            convolution input ``[C, *spatial]`` is accepted).

    Returns:
        float32 columns: one row per token or output position, ``cols = in / groups * prod(kernel)``.
    """
    if isinstance(module, nn.Linear):
        return x.detach().reshape(1, -1, x.shape[-1]).to(torch.float32)
    if not isinstance(module, _CONVS):
        raise PruneError(f"input columns are defined for Linear and Conv1d/2d/3d layers, not {type(module).__name__}")
    spatial = len(module.kernel_size)
    x = x.detach().to(torch.float32)
    if x.dim() == spatial + 1:
        x = x.unsqueeze(0)
    pad = _padding(module, spatial)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    n, c = x.shape[:2]
    for i in range(spatial):  # sliding windows along each spatial dimension, dilation by slicing
        span = module.dilation[i] * (module.kernel_size[i] - 1) + 1
        x = x.unfold(2 + i, span, module.stride[i])
    # [N, C, *out, *span] -> keep every dilation-th element of each span
    index = (slice(None),) * (2 + spatial) + tuple(slice(None, None, d) for d in module.dilation)
    x = x[index]
    g = module.groups
    positions = math.prod(x.shape[2 : 2 + spatial])
    x = x.reshape(n, g, c // g, positions, -1)  # [N, G, C/G, P, K]
    return x.permute(1, 0, 3, 2, 4).reshape(g, n * positions, -1)


class InputStatistics:
    """Running sums over the calibration data of each target's input columns.

    Args:
        targets: the weights to watch (their modules must satisfy :func:`supports`).
        gram: also accumulate ``X^T X`` per group (SparseGPT's Hessian); costs
            ``groups * cols**2`` float64 values per layer.

    Use as a context manager around forward passes (or call :meth:`add`); afterwards ``squares[name]`` holds
    ``[groups, cols]`` sums of squares, ``grams[name]`` ``[groups, cols, cols]`` and
    ``rows[name]`` the number of rows (tokens or positions) seen.
    """

    def __init__(self, targets: list[Target] = (), *, gram: bool = False) -> None:
        bad = [f"{t.name} ({type(t.module).__name__})" for t in targets if not supports(t.module) or t.param != "weight"]
        if bad:
            raise PruneError(
                f"calibrated criteria read the inputs of Linear and Conv1d/2d/3d weights; cannot score {', '.join(bad)}: "
                "leave them out with ignore=[...]"
            )
        self.targets = targets
        self.gram = gram
        self.squares: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.grams: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self._handles: list[Any] = []

    def add(self, name: str, cols: torch.Tensor) -> None:
        """Add columns ``[groups, rows, cols]`` (or ``[rows, cols]``) to the sums of ``name``."""
        if cols.dim() == 3 and cols.shape[0] == 1:
            cols = cols[0]
        if cols.dtype not in (torch.float32, torch.float64):
            # Products in float32 at least: a half-precision square overflows above 256
            # (float16) and a bfloat16 Gram matrix keeps 8 bits of each entry.
            cols = cols.float()
        if cols.dim() == 2:  # one group: plain matrix products
            sq = (cols * cols).sum(0).to(torch.float64).unsqueeze(0)
            total = cols.sum(0).to(torch.float64).unsqueeze(0)
            xtx = (cols.t() @ cols).to(torch.float64).unsqueeze(0) if self.gram else None
        else:
            sq = (cols * cols).sum(1).to(torch.float64)
            total = cols.sum(1).to(torch.float64)
            xtx = (cols.transpose(1, 2) @ cols).to(torch.float64) if self.gram else None
        if name in self.squares:
            self.squares[name] += sq
            self.sums[name] += total
        else:
            self.squares[name] = sq
            self.sums[name] = total
        if xtx is not None:
            if name in self.grams:
                self.grams[name] += xtx
            else:
                self.grams[name] = xtx
        self.rows[name] = self.rows.get(name, 0) + cols.shape[-2]

    def __enter__(self) -> InputStatistics:
        for t in self.targets:
            def pre(module: nn.Module, inputs: tuple[Any, ...], name: str = t.name) -> None:
                if inputs and isinstance(inputs[0], torch.Tensor):
                    self.add(name, columns(module, inputs[0]))

            self._handles.append(t.module.register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def check_seen(self, criterion: str, names: list[str] | None = None) -> None:
        """Raise when a watched layer (or one of ``names``) saw no input."""
        names = [t.name for t in self.targets] if names is None else names
        missing = [n for n in names if self.rows.get(n, 0) == 0]
        if missing:
            raise PruneError(
                f"criterion {criterion!r}: layers {missing} never ran in the forward pass on the given data; "
                "exclude them with ignore=[...]"
            )

    def column_norms(self, name: str, out: int) -> torch.Tensor:
        """``[out, cols]``: for each output row, the L2 norm of the input column each weight meets."""
        norms = self.squares[name].sqrt().to(torch.float32)  # [G, cols]
        return norms.repeat_interleave(out // norms.shape[0], dim=0)

    def moments(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``([groups, cols], [groups, cols])``: each input column's mean and variance over
        the rows seen, in float32 (DSnoT's statistics, :mod:`prunekit.refine`)."""
        n = max(1, self.rows[name])
        mean = self.sums[name] / n
        var = (self.squares[name] / n - mean * mean).clamp_min(0.0)
        return mean.to(torch.float32), var.to(torch.float32)

    def hessian(self, name: str) -> torch.Tensor:
        """``[groups, cols, cols]``: ``2 X^T X / rows`` in float32 (SparseGPT's layer Hessian)."""
        return (self.grams[name] * (2.0 / self.rows[name])).to(torch.float32)
