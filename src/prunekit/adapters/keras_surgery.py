"""Keras 3 surgery: :func:`remove_neurons` (a genuinely smaller model, with a report of what
went). :func:`strip` and :func:`wrap` live in :mod:`prunekit.adapters.keras_strip`; all are
re-exported by :mod:`prunekit.keras`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import validate as V
from ..errors import PruneError
from .keras_base import L, check_model, functional_graph, keras, leaf_layers, to_numpy, variable
from .keras_masks import apply_masks, check_masks, record
from .keras_strip import clone, in_force, recompile, strip, wrap
from .keras_units import UnitPlan, plan_removal
from .keras_wrapper import wrappers

__all__ = ["RemovalReport", "UnitChange", "remove_neurons"]


@dataclass(frozen=True)
class UnitChange:
    """Units of one Dense/Conv layer (channels of a DepthwiseConv2D, dimensions of an
    Embedding with dead ones, which stay) before and after :func:`remove_neurons`.

    Attributes:
        layer: the layer's name.
        before, after: its units (neurons, filters or depthwise channels) before and after.
        dead: units whose kernel column (a depthwise channel's kernel) was all zero; a
            depthwise channel goes with the units feeding it, dead or not.
        note: why dead units stayed ("" when every dead unit went).
    """

    layer: str
    before: int
    after: int
    dead: int
    note: str = ""


@dataclass(frozen=True)
class RemovalReport:
    """What :func:`remove_neurons` did; the smaller model carries it as ``removal_report``."""

    layers: tuple[UnitChange, ...]
    params_before: int
    params_after: int

    @property
    def removed(self) -> int:
        """Units removed over all layers."""
        return sum(c.before - c.after for c in self.layers)

    def summary(self) -> str:
        """One line per layer (units before -> after, and why dead units stayed), then totals."""
        width = max([len(c.layer) for c in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'before':>7} {'after':>7} {'dead':>6}  note"]
        lines += [f"{c.layer:<{width}}  {c.before:>7} {c.after:>7} {c.dead:>6}  {c.note}".rstrip() for c in self.layers]
        lines.append(f"units removed: {self.removed}; parameters {self.params_before:,} -> {self.params_after:,}")
        return "\n".join(lines)


def remove_neurons(model: Any, masks: Mapping[str, np.ndarray] | None = None, *, atol: float = 0.0) -> Any:
    """Rebuild ``model`` without its dead units: a smaller model with the same outputs.

    A unit (Dense neuron, Conv1D/Conv2D filter) is dead when its kernel column is all zero
    after the masks recorded by pruning and ``masks``: it outputs the constant act(bias).
    Channels that must go together form a group (:mod:`prunekit.adapters.keras_units`):
    the inputs of an Add (Subtract, Multiply, Average, Maximum, Minimum) channel by
    channel, every call of a shared layer, and the units feeding a Dense/Conv through
    activations, dropout, BatchNormalization, max/global pooling, Flatten, Concatenate on
    the last axis (each input at its offset), DepthwiseConv2D with depth_multiplier 1
    (its entries are cut) and nested models. A group goes when every unit in it is dead,
    it reaches no model output and no other layer, and each Dense/Conv reading it can fold
    its constant into its bias: the constant is followed through the layers (summed by an
    Add; act(c·sum(kernel) + bias) after a depthwise layer with padding "valid"); a
    padded convolution or depthwise layer takes only a constant 0, a layer without bias
    only a zero fold, and a shared consumer the same constant at every call. A layer
    keeps at least one unit. Nested models are rebuilt in place (same structure and
    names, inputs of their new widths); layer names must be unique across them. Works on
    models loaded from ``.keras`` and ``.h5`` files and on wrapped models (returned
    wrapped). Masks still in force are kept on the smaller model's weights, sliced to
    their new shapes.

    Args:
        model: a built Sequential or functional model; it is not changed.
        masks: masks to apply first (e.g. ``prune(..., granularity="channel").masks``).
        atol: kernel entries with ``|w| <= atol`` count as zero (a finite number >= 0).

    Returns:
        A new, smaller ``keras.Model`` (compiled like the original if it was), whose
        ``removal_report`` (a :class:`RemovalReport`) lists every Dense/Conv layer's units
        (a DepthwiseConv2D's channels) before and after and why dead units stayed.

    Raises:
        PruneError: when no unit can be removed, naming each layer with dead units and why
            they stay (or saying that no unit is dead).
    """
    check_model(model)
    atol = V.number("atol", atol, lo=0.0, hint="the largest |w| counted as zero")
    if wrappers(model):  # work on the plain form, then wrap the smaller model again
        plain = strip(model, masks)
        apply_masks(plain, in_force(model, masks))
        smaller = remove_neurons(plain, atol=atol)
        small = wrap(smaller)
        # the network's parameters, not the wrappers' mask copies (count_params counts both)
        small.removal_report = smaller.removal_report
        return small
    layers = {}
    for layer in leaf_layers(model):
        if layer.name in layers and layers[layer.name] is not layer:
            raise PruneError(f"remove_neurons needs unique layer names (nested models included); {layer.name!r} is used twice")
        layers[layer.name] = layer
    forced = in_force(model, masks)
    check_masks(model)
    arrays = {name: [to_numpy(w) for w in l.weights] for name, l in layers.items()}
    mask_of: dict[tuple[str, int], np.ndarray] = {}
    for key, m in forced.items():
        var = variable(model, key)
        name = key.rpartition("/")[0]
        i = next(i for i, w in enumerate(layers[name].weights) if w is var)
        arrays[name][i] = arrays[name][i] * m.astype(arrays[name][i].dtype)
        mask_of[(name, i)] = m
    plan = plan_removal(model, arrays, atol)
    changes = [UnitChange(*c) for c in plan.changes]
    if not plan.removed:
        if not any(c.dead for c in changes):
            raise PruneError(
                f"model {model.name!r} has no dead unit (a Dense/Conv1D/Conv2D/DepthwiseConv2D kernel column with all "
                f"|w| <= {atol}): nothing to remove; prune whole units first, e.g. "
                "prunekit.keras.prune(model, 0.5, granularity='channel')"
            )
        why = "; ".join(f"{c.layer!r} ({c.dead} dead): {c.note}" for c in changes if c.dead)
        raise PruneError(f"remove_neurons cannot remove any unit of model {model.name!r}: {why}")

    def clone_function(layer: Any) -> Any:
        if isinstance(layer, keras.Model):  # rebuilt in place, on inputs of its new widths
            graph = functional_graph(layer)
            widths = plan.widths.get(layer.name, [t.shape[-1] for t in keras.tree.flatten(graph.inputs)])
            new = [keras.Input(batch_shape=(*t.shape[:-1], w), dtype=t.dtype, name=t.name)
                   for t, w in zip(keras.tree.flatten(graph.inputs), widths)]
            tensors = new[0] if isinstance(layer, keras.Sequential) else keras.tree.pack_sequence_as(layer.input, new)
            return keras.models.clone_model(layer, input_tensors=tensors, clone_function=clone_function)
        cfg = layer.get_config()
        if layer.name in plan.units:
            cfg["units" if isinstance(layer, L.Dense) else "filters"] = int(plan.units[layer.name].sum())
        return type(layer).from_config(cfg)

    small = clone(model, clone_function)
    for layer in leaf_layers(small):
        if arrays.get(layer.name):
            weights = []
            for w, a in zip(layer.weights, arrays[layer.name]):
                if w.name == "bias" and layer.name in plan.fold:
                    a = a + plan.fold[layer.name].astype(a.dtype)
                weights.append(plan.slice(layer, w.name, a))
            layer.set_weights(weights)
            _keep_masks(layer, mask_of, plan)
    recompile(model, small)
    report = RemovalReport(tuple(changes), int(model.count_params()), int(small.count_params()))
    small.removal_report = report  # like model.history after fit
    return small


def _keep_masks(layer: Any, mask_of: dict, plan: UnitPlan) -> None:
    """Record on the smaller layer the masks its original had, sliced like its weights."""
    for i, w in enumerate(layer.weights):
        m = mask_of.get((layer.name, i))
        attr = next((a for a in ("kernel", "bias") if getattr(layer, a, None) is w), None)
        if attr is None:
            continue
        record(layer, attr, plan.slice(layer, attr, m) if m is not None else None)
