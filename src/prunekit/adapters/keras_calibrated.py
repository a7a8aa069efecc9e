"""Keras 3 calibrated criteria (``wanda``, ``ria``, ``sparsegpt``) on every backend.

The core's calibrated criteria read what each weight multiplies on the data: the input
columns of a layer (:mod:`prunekit.criteria.inputs`). Here a Keras feature-extraction model
returns every pruned layer's input on each batch, with the backend's own forward pass;
those inputs become the columns of the weight's torch layout (a Dense input as it is; a
convolution input padded exactly as Keras pads it, ``"same"`` with strides included, then
unfolded channel by kernel offset; a depthwise convolution per channel) and are summed in
an :class:`~prunekit.criteria.inputs.InputStatistics`. The core criteria then score from
those statistics, so Keras and torch give the same scores for the same weights and data.

SparseGPT's sweep changes the weights it keeps: :func:`write_back` copies the swept weights
into the Keras variables, once every layer has been computed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..criteria.base import Context, Criterion
from ..criteria.inputs import InputStatistics, columns
from ..errors import PruneError
from .keras_base import L, KerasTarget, batches, functional_graph, graph_view, keras, to_numpy

__all__ = ["calibration_context", "is_calibrated", "write_back"]

_CONVS = {1: L.Conv1D, 2: L.Conv2D}


def is_calibrated(crit: Criterion) -> bool:
    """True for criteria scored from input statistics (``wanda``, ``ria``, ``sparsegpt``)."""
    return getattr(crit, "statistics", None) in ("squares", "gram")


def _shadow(layer: Any) -> nn.Module:
    """A torch module with the layer's geometry (no weights allocated), padding 0: the input
    is padded beforehand the way Keras pads it."""
    if isinstance(layer, L.Dense):
        return nn.Linear(1, 1, device="meta")
    kernel = tuple(layer.kernel_size)
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[len(kernel)]
    if isinstance(layer, L.DepthwiseConv2D):
        channels = int(layer.kernel.shape[-2])
        return conv(channels, channels * layer.depth_multiplier, kernel, layer.strides, 0, layer.dilation_rate,
                    groups=channels, device="meta")
    channels = int(layer.kernel.shape[-2]) * int(getattr(layer, "groups", 1))
    return conv(channels, int(layer.kernel.shape[-1]), kernel, layer.strides, 0, layer.dilation_rate,
                groups=int(getattr(layer, "groups", 1)), device="meta")


def _pads(layer: Any, spatial: tuple[int, ...]) -> list[int]:
    """``F.pad`` widths (last dimension first) equal to Keras's padding of this input."""
    pads = []
    for size, k, s, d in zip(spatial, layer.kernel_size, layer.strides, layer.dilation_rate):
        span = d * (k - 1) + 1
        if layer.padding == "same":
            total = max((math.ceil(size / s) - 1) * s + span - size, 0)
            pads.append((total // 2, total - total // 2))
        elif layer.padding == "causal":
            pads.append((span - 1, 0))
        else:
            pads.append((0, 0))
    return [p for pair in reversed(pads) for p in pair]


def _columns(layer: Any, shadow: nn.Module, x: np.ndarray) -> torch.Tensor:
    """The input columns ``[groups, rows, cols]`` the layer's torch-layout weight multiplies."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if isinstance(shadow, nn.Linear):
        return t.reshape(1, -1, t.shape[-1])
    if getattr(layer, "data_format", "channels_last") == "channels_last":
        t = t.movedim(-1, 1)
    pad = _pads(layer, tuple(t.shape[2:]))
    if any(pad):
        t = F.pad(t, pad)
    return columns(shadow, t)


def _check_layer(t: KerasTarget) -> str | None:
    """Why the input columns of this target are unknown (None: they are known)."""
    layer = t.layer
    if isinstance(layer, (L.Dense, L.DepthwiseConv2D)) or type(layer) in _CONVS.values():
        return None
    return f"a {type(layer).__name__} (calibrated criteria read the inputs of Dense, Conv1D, Conv2D, DepthwiseConv2D)"


def input_statistics(model: Any, targets: list[KerasTarget], data: Any, max_batches: int | None,
                     gram: bool, name: str) -> InputStatistics:
    """Sums of squares (and ``gram``: Gram matrices) of every target's input columns on ``data``."""
    bad = [f"{t.name} ({why})" for t in targets if (why := _check_layer(t))]
    if bad:
        raise PruneError(f"criterion {name!r} cannot score {', '.join(bad)}; leave them out with ignore=[...]")
    view = graph_view(model)
    ops_by_name = {op.name: op for op in view.operations}
    missing = [t.name for t in targets
               if t.layer.name not in ops_by_name or view.uses.get(id(ops_by_name[t.layer.name]), 0) != 1]
    if missing:
        raise PruneError(
            f"criterion {name!r} needs each pruned layer called once in the model's own graph; cannot score "
            f"{missing}. Exclude them with ignore=[...] or pick another criterion"
        )
    graph = functional_graph(model)
    inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
    feeds = [view.inputs[id(ops_by_name[t.layer.name])][0] for t in targets]
    extractor = keras.Model(inputs, feeds)
    shadows = [_shadow(t.layer) for t in targets]
    stats = InputStatistics(gram=gram)
    for x, _ in batches(data, max_batches, labels=False):
        outs = extractor(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for t, shadow, a in zip(targets, shadows, outs):
            stats.add(t.name, _columns(t.layer, shadow, to_numpy(a)))
    return stats


def calibration_context(model: Any, targets: list[KerasTarget], crit: Criterion, data: Any,
                        max_batches: int | None, seed: int) -> Context:
    """A core :class:`~prunekit.criteria.base.Context` holding the targets' input statistics,
    for ``crit.scores(ctx)`` and (SparseGPT) ``crit.finalize(ctx, ...)``."""
    name = getattr(crit, "name", "")
    if data is None:
        raise PruneError(f"criterion {name!r} needs data: pass data=x (inputs), (x, y) or an iterable of batches")
    stats = input_statistics(model, targets, data, max_batches, crit.statistics == "gram", name)
    return Context(model=None, targets=targets, seed=seed, statistics=stats)  # type: ignore[arg-type]


def write_back(targets: list[KerasTarget]) -> None:
    """Copy each target's torch-layout weight (changed by SparseGPT's sweep) into its Keras variable."""
    for t in targets:
        t.variable.assign(t.to_keras(t.original.detach().numpy()).astype(np.dtype(t.variable.dtype)))
