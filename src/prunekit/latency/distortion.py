"""How much each group's pruning moves the model's outputs: the accuracy side of
``allocation="latency"``, measured without labels.

Criterion scores are divided by their group's mean before allocation (so groups of
different scale compare), which says which units of a group go first but not how much
the model suffers when a group shrinks. For every group, :func:`distortion_curves`
removes its lowest-scoring units at a few widths, alone, on a copy, and records the
relative squared change of the model's outputs on the example inputs,
``‖f_pruned(x) − f(x)‖² / ‖f(x)‖²`` (NetAdapt's short-term check, label-free).

In a network with BatchNorm, removing channels shifts what flows into every later norm,
and the stored running statistics then misjudge the cut (any cut looks ruinous before
fine-tuning). So when the model has BatchNorm layers and the example inputs are one
tensor of two or more samples, the dense copy and every pruned copy first re-estimate
their BatchNorm statistics on those inputs (adaptive BatchNorm, as EagleEye evaluates
pruning candidates: :func:`prunekit.distillation.recalibrate_bn`), and the distortion is
measured between the recalibrated copies.
"""

from __future__ import annotations

import copy
from typing import Any, TYPE_CHECKING

import torch
from torch import nn

from .. import masking as _masks
from ..distillation import BATCH_NORMS, recalibrate_bn

if TYPE_CHECKING:
    from ..graph.groups import Structure

__all__ = ["FRACTIONS", "adapts_norms", "distortion_curves"]

#: Fractions of each group's units kept at which its distortion is measured.
FRACTIONS = (0.75, 0.5, 0.25, 0.1)


def adapts_norms(model: nn.Module, probe: Any) -> bool:
    """Whether :func:`distortion_curves` re-estimates ``model``'s BatchNorm statistics on
    ``probe``: it has a BatchNorm that tracks them, and ``probe`` is one tensor of at least
    two samples (a norm cannot estimate a variance from one)."""
    return (isinstance(probe, torch.Tensor) and probe.dim() > 0 and probe.shape[0] >= 2
            and any(isinstance(m, BATCH_NORMS) and m.track_running_stats for m in model.modules()))


def _outputs(model: nn.Module, probe: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(*probe) if isinstance(probe, tuple) else model(probe)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out.detach().float().reshape(-1)


def distortion_curves(model: nn.Module, structure: Structure, probe: Any, scores: list[torch.Tensor],
                      fractions: tuple[float, ...] = FRACTIONS) -> list[list[tuple[int, float]]]:
    """For each group, ``[(kept units, distortion), ...]`` from all alive units kept
    (distortion 0) down to ``fractions`` of them, the lowest-scoring units removed first.

    Args:
        model: the model (not changed: each measurement prunes a copy).
        structure: its coupled groups, in the order of ``scores``.
        probe: inputs the model accepts.
        scores: one score per unit of every group (``-inf``: already removed).
    """
    values = _masks.effective_weights(model)
    shapes = {n: tuple(v.shape) for n, v in values.items()}
    modes = {m: m.training for m in model.modules()}
    adapt = adapts_norms(model, probe)
    try:
        model.eval()
        if adapt:  # the reference recalibrated as every pruned copy will be
            dense = copy.deepcopy(model)
            recalibrate_bn(dense, probe, batch_size=probe.shape[0])
            ref = _outputs(dense.eval(), probe)
            del dense
        else:
            ref = _outputs(model, probe)
        norm = float(ref.pow(2).sum()) or 1.0
        curves = []
        for grp, s in zip(structure.groups, scores):
            order = torch.sort(s, stable=True).indices.tolist()
            dead = int(torch.count_nonzero(s == float("-inf")))
            alive = len(order) - dead
            curve = [(alive, 0.0)]
            for f in fractions:
                k = max(1, round(f * alive))
                if k >= curve[-1][0]:
                    continue
                removed = {grp.units[i] for i in order[: len(order) - k]}
                dup = copy.deepcopy(model)
                masks = structure.masks_for(removed, shapes)
                if masks:
                    _masks.apply_masks(dup, masks)
                if adapt:
                    recalibrate_bn(dup, probe, batch_size=probe.shape[0])
                dup.eval()
                d = float((_outputs(dup, probe) - ref).pow(2).sum()) / norm
                curve.append((k, max(d, curve[-1][1])))  # more removed never distorts less
            curves.append(curve)
        return curves
    finally:
        for m, t in modes.items():
            m.training = t


def interpolate(curve: list[tuple[int, float]], kept: float) -> float:
    """Distortion at ``kept`` units, linear between the measured points (beyond the last
    one, extended along its last piece)."""
    pts = curve  # kept descending
    for (k0, d0), (k1, d1) in zip(pts, pts[1:]):
        if k1 <= kept <= k0:
            return d0 if k0 == k1 else d0 + (d1 - d0) * (k0 - kept) / (k0 - k1)
    if kept >= pts[0][0]:
        return 0.0
    if len(pts) == 1:
        return 0.0
    (k0, d0), (k1, d1) = pts[-2], pts[-1]
    return d1 + (d1 - d0) * (k1 - kept) / max(k0 - k1, 1)
