"""Keras 3 surgery: :func:`remove_neurons` (a genuinely smaller model, with a report of what
went). :func:`strip` and :func:`wrap` live in :mod:`prunekit.adapters.keras_strip`; all are
re-exported by :mod:`prunekit.keras`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PruneError, PruneTypeError
from .keras_base import GraphView, L, check_model, functional_graph, graph_view, keras, ops, to_numpy, variable
from .keras_masks import apply_masks, check_masks, record
from .keras_strip import clone, in_force, recompile, strip, wrap
from .keras_wrapper import wrappers

__all__ = ["RemovalReport", "UnitChange", "remove_neurons"]


@dataclass(frozen=True)
class UnitChange:
    """Units of one Dense/Conv layer before and after :func:`remove_neurons`.

    Attributes:
        layer: the layer's name.
        before, after: its units (neurons or filters) before and after.
        dead: units whose kernel column was all zero.
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


_PASS = tuple(getattr(L, n) for n in ("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
              "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "BatchNormalization", "MaxPooling1D",
              "MaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
              "GlobalMaxPooling2D") if hasattr(L, n))
_SHRINK = (L.Dense, L.Conv1D, L.Conv2D)  # layers whose units can be removed (not depthwise/embedding)
_ELEMENTWISE = tuple(getattr(L, n) for n in ("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "GaussianNoise",
                     "GaussianDropout") if hasattr(L, n))  # what may follow a Flatten before the Dense


def _chain(view: GraphView, layer: Any) -> tuple[list[Any], Any] | str:
    """(pass-through layers, consumer) after ``layer``, or why its units cannot be removed."""
    if view.uses.get(id(layer), 0) != 1:
        return f"layer is called {view.uses.get(id(layer), 0)} times in the model (shared)"
    path, cur = [], layer
    while True:
        nxt = view.consumers.get(id(cur), [])
        if id(cur) in view.outputs:
            return f"its units reach a model output through {cur.name!r}" if path else "its units are a model output"
        if len(nxt) != 1:
            return f"{cur.name!r} feeds {len(nxt)} layers {[c.name for c in nxt]}; only a single chain is supported"
        c = nxt[0]
        if view.uses.get(id(c), 0) != 1 or len(view.inputs.get(id(c), [])) != 1:
            return f"next layer {c.name!r} is shared or takes several inputs"
        if isinstance(c, L.BatchNormalization):
            rank = len(view.inputs[id(c)][0].shape)
            if c.axis not in (-1, rank - 1):
                return f"BatchNormalization {c.name!r} normalizes axis {c.axis}, not the units"
        flat = any(isinstance(p, L.Flatten) for p in path)
        if isinstance(c, L.Flatten) and not flat and getattr(c, "data_format", "channels_last") == "channels_last":
            path.append(c)  # units become every (position, unit) row of the next Dense
            cur = c
            continue
        if isinstance(c, _PASS) and not (flat and not isinstance(c, _ELEMENTWISE)):
            path.append(c)
            cur = c
            continue
        if type(c) in _SHRINK and not (flat and not isinstance(c, L.Dense)):
            return path, c
        return (
            f"next layer {c.name!r} is a {type(c).__name__}; removal needs Dense/Conv1D/Conv2D next, "
            "through activations, dropout, BatchNormalization, pooling or Flatten (then Dense)"
        )


def _propagate(layer: Any, v: np.ndarray, arrays: list[np.ndarray]) -> np.ndarray:
    """Value of constant units ``v`` after a pass-through layer (pooling keeps constants)."""
    if isinstance(layer, L.BatchNormalization):
        ws = dict(zip([w.path.rsplit("/", 1)[-1] for w in layer.weights], arrays))
        out = (v - ws["moving_mean"]) / np.sqrt(ws["moving_variance"] + layer.epsilon)
        return out * ws.get("gamma", 1.0) + ws.get("beta", 0.0)
    if isinstance(layer, (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)):
        return to_numpy(layer(ops.convert_to_tensor(v[None].astype(np.float32))))[0]
    return v


def remove_neurons(model: Any, masks: Mapping[str, np.ndarray] | None = None, *, atol: float = 0.0) -> Any:
    """Rebuild ``model`` without its dead units: a smaller model with the same outputs.

    A unit (Dense neuron, Conv1D/Conv2D filter) is dead when its kernel column is all zero
    after the masks recorded by pruning and ``masks``. It is removed when its output reaches
    exactly one Dense/Conv layer through pass-through layers (activations, dropout,
    BatchNormalization, pooling, or a Flatten then a Dense): its constant output act(bias) is
    folded into that layer's bias, and the consumer's input rows (every position's, after a
    Flatten) and the BatchNormalization entries are sliced. Units feeding a model output, a
    branch (Add, Concatenate), a shared layer or a depthwise layer stay, as do units
    with a non-zero constant feeding a convolution with padding other than "valid". Works
    on models loaded from ``.keras`` and ``.h5`` files. Masks still in force are kept on the
    smaller model's weights, sliced to their new shapes.

    Args:
        model: a built Sequential or functional model; it is not changed.
        masks: masks to apply first (e.g. ``prune(..., granularity="channel").masks``).
        atol: kernel entries with ``|w| <= atol`` count as zero.

    Returns:
        A new, smaller ``keras.Model`` (compiled like the original if it was), whose
        ``removal_report`` (a :class:`RemovalReport`) lists every Dense/Conv layer's units
        before and after and why dead units stayed.

    Raises:
        PruneError: when no unit can be removed, naming each layer with dead units and why
            they stay (or saying that no unit is dead).
    """
    check_model(model)
    if wrappers(model):  # work on the plain form, then wrap the smaller model again
        plain = strip(model, masks)
        apply_masks(plain, in_force(model, masks))
        smaller = remove_neurons(plain, atol=atol)
        small = wrap(smaller)
        small.removal_report = smaller.removal_report
        return small
    view = graph_view(model)
    graph = functional_graph(model)
    if any(isinstance(l, keras.Model) for l in model.layers):
        raise PruneTypeError("remove_neurons does not handle nested models; flatten the model first")
    forced = in_force(model, masks)
    check_masks(model)
    arrays = {l.name: [to_numpy(w) for w in l.weights] for l in graph.layers}
    mask_of: dict[tuple[str, int], np.ndarray] = {}
    for key, m in forced.items():
        var = variable(model, key)
        name = key.rpartition("/")[0]
        i = next(i for i, w in enumerate(model.get_layer(name).weights) if w is var)
        arrays[name][i] = arrays[name][i] * m.astype(arrays[name][i].dtype)
        mask_of[(name, i)] = m
    changes: list[UnitChange] = []
    cut: dict[str, np.ndarray] = {}  # layer -> kept units (last axis)
    cut_in: dict[str, tuple[np.ndarray, int]] = {}  # consumer -> (kept input units, positions after Flatten or 0)
    for layer in view.operations:
        if type(layer) not in _SHRINK:
            continue
        kernel = arrays[layer.name][0]
        n = kernel.shape[-1]
        dead = np.all(np.abs(kernel.reshape(-1, n)) <= atol, axis=0)
        n_dead = int(dead.sum())
        if not n_dead:
            changes.append(UnitChange(layer.name, n, n, 0))
            continue
        chain = _chain(view, layer)
        if isinstance(chain, str):
            changes.append(UnitChange(layer.name, n, n, n_dead, chain))
            continue
        path, consumer = chain
        bias = arrays[layer.name][1] if layer.use_bias else np.zeros(n, kernel.dtype)
        v = to_numpy(keras.activations.get(layer.activation)(ops.convert_to_tensor(bias)))
        for p in path:
            v = _propagate(p, v, arrays[p.name])
        flat = next((p for p in path if isinstance(p, L.Flatten)), None)
        positions = int(np.prod(view.inputs[id(flat)][0].shape[1:-1])) if flat is not None else 1
        cw = arrays[consumer.name][0]
        if flat is not None:  # Dense rows after Flatten: (position, unit) pairs, units fastest
            cw = cw.reshape(positions, n, cw.shape[-1])
        foldable = isinstance(consumer, L.Dense) or consumer.padding == "valid"
        note = ""
        if not foldable:
            dead &= v == 0  # borders see zero padding, not the constant: only exact zeros go
            if int(dead.sum()) < n_dead:
                note = f"{consumer.name!r} pads its input ({consumer.padding!r}): only units whose constant output is 0 go"
        if dead.all():
            dead[np.argmax(np.abs(v))] = False  # a layer keeps at least one unit
            note = "a layer keeps at least one unit"
        if not dead.any():
            changes.append(UnitChange(layer.name, n, n, n_dead, note))
            continue
        # A dead unit outputs the constant v; the consumer sees v · (its input rows).
        rows = cw[..., dead, :].reshape(-1, int(dead.sum()), cw.shape[-1])  # (kernel positions, dead, out)
        fold = np.einsum("kio,i->o", rows, v[dead]) if foldable else np.zeros(cw.shape[-1])
        if np.any(fold != 0) and not consumer.use_bias:
            why = f"{consumer.name!r} has no bias to absorb the constant output (act(bias)) of the removed units"
            changes.append(UnitChange(layer.name, n, n, n_dead, why))
            continue
        if np.any(fold != 0):
            arrays[consumer.name][1] = arrays[consumer.name][1] + fold.astype(cw.dtype)
        keep = ~dead
        arrays[layer.name] = [a[..., keep] for a in arrays[layer.name]]
        for p in path:
            if isinstance(p, L.BatchNormalization):
                arrays[p.name] = [a[keep] for a in arrays[p.name]]
        arrays[consumer.name][0] = cw[..., keep, :].reshape(-1, cw.shape[-1]) if flat is not None else cw[..., keep, :]
        cut[layer.name], cut_in[consumer.name] = keep, (keep, positions if flat is not None else 0)
        changes.append(UnitChange(layer.name, n, int(keep.sum()), n_dead, note))

    if not cut:
        if not any(c.dead for c in changes):
            raise PruneError(
                f"model {model.name!r} has no dead unit (a Dense/Conv1D/Conv2D kernel column with all |w| <= {atol}): "
                "nothing to remove; prune whole units first, e.g. prunekit.keras.prune(model, 0.5, granularity='channel')"
            )
        why = "; ".join(f"{c.layer!r} ({c.dead} dead): {c.note}" for c in changes if c.dead)
        raise PruneError(f"remove_neurons cannot remove any unit of model {model.name!r}: {why}")

    def clone_function(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer.name in cut:
            cfg["units" if isinstance(layer, L.Dense) else "filters"] = int(cut[layer.name].sum())
        return type(layer).from_config(cfg)

    small = clone(model, clone_function)
    for layer in functional_graph(small).layers:
        if arrays.get(layer.name):
            layer.set_weights(arrays[layer.name])
            _keep_masks(layer, mask_of, cut, cut_in)
    recompile(model, small)
    report = RemovalReport(tuple(changes), int(model.count_params()), int(small.count_params()))
    small.removal_report = report  # like model.history after fit
    return small


def _keep_masks(layer: Any, mask_of: dict, cut: dict, cut_in: dict) -> None:
    """Record on the smaller layer the masks its original had, sliced like its weights."""
    for i, w in enumerate(layer.weights):
        m = mask_of.get((layer.name, i))
        attr = next((a for a in ("kernel", "bias") if getattr(layer, a, None) is w), None)
        if attr is None:
            continue
        if m is not None:
            if attr == "kernel" and layer.name in cut_in:
                keep, positions = cut_in[layer.name]
                if positions:
                    m = m.reshape(positions, keep.size, m.shape[-1])[..., keep, :].reshape(-1, m.shape[-1])
                else:
                    m = m[..., keep, :]
            if layer.name in cut:
                m = m[..., cut[layer.name]]
        record(layer, attr, m)
