"""Keras 3 surgery: :func:`strip` (a plain copy with the zeros) and :func:`remove_neurons`
(a genuinely smaller model). Re-exported by :mod:`prunekit.keras`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PruneTypeError
from .keras import L, _check_model, _graph, _numpy, _variable, apply_masks, keras, ops

__all__ = ["remove_neurons", "strip"]


def _clone(model: Any, clone_function: Any = None) -> Any:
    try:
        return keras.models.clone_model(model, clone_function=clone_function)
    except Exception as e:  # the Keras message says what failed; we say which models work
        raise PruneTypeError(
            f"cannot rebuild model {model.name!r} ({type(model).__name__}): {e}. "
            "Sequential and functional models are supported"
        ) from e


def _recompile(src: Any, dst: Any) -> None:
    cfg = src.get_compile_config() if getattr(src, "compiled", False) else None
    if cfg:
        try:
            dst.compile_from_config(cfg)
        except Exception:  # custom losses/metrics may not deserialize; the user compiles then
            pass


def strip(model: Any, masks: Mapping[str, np.ndarray] | None = None) -> Any:
    """A plain copy of ``model`` whose kernels hold the zeros, with no pruning state.

    Args:
        model: a (pruned) Sequential or functional model; it is not changed.
        masks: masks to apply to the copy too, if the weights may have drifted since.

    Returns:
        A new ``keras.Model`` (compiled like the original, with a fresh optimizer).
    """
    _check_model(model)
    clone = _clone(model)
    clone.set_weights(model.get_weights())
    if masks:
        apply_masks(clone, masks)
    _recompile(model, clone)
    return clone


_PASS = tuple(getattr(L, n) for n in ("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
              "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "BatchNormalization", "MaxPooling1D",
              "MaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
              "GlobalMaxPooling2D") if hasattr(L, n))
_SHRINK = (L.Dense, L.Conv1D, L.Conv2D)  # layers whose units can be removed (not depthwise/embedding)


def _consumers(graph: Any, layer: Any) -> list[Any]:
    inside = {id(l) for l in graph.layers}
    return [n.operation for n in layer._outbound_nodes if id(n.operation) in inside]


def _chain(graph: Any, layer: Any, outputs: set[int]) -> tuple[list[Any], Any] | None:
    """(pass-through layers, consumer) after ``layer``, or None if not a simple chain."""
    path, cur = [], layer
    while True:
        nxt = _consumers(graph, cur)
        if id(cur) in outputs or len(nxt) != 1 or len(nxt[0]._inbound_nodes) != 1:
            return None
        c = nxt[0]
        if isinstance(c, L.BatchNormalization) and c.axis not in (-1, len(c.input.shape) - 1):
            return None
        if isinstance(c, _PASS):
            path.append(c)
            cur = c
            continue
        return (path, c) if type(c) in _SHRINK else None


def _propagate(layer: Any, v: np.ndarray, arrays: list[np.ndarray]) -> np.ndarray:
    """Value of constant units ``v`` after a pass-through layer (pooling keeps constants)."""
    if isinstance(layer, L.BatchNormalization):
        ws = dict(zip([w.path.rsplit("/", 1)[-1] for w in layer.weights], arrays))
        out = (v - ws["moving_mean"]) / np.sqrt(ws["moving_variance"] + layer.epsilon)
        return out * ws.get("gamma", 1.0) + ws.get("beta", 0.0)
    if isinstance(layer, (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)):
        return _numpy(layer(ops.convert_to_tensor(v[None].astype(np.float32))))[0]
    return v


def remove_neurons(model: Any, masks: Mapping[str, np.ndarray] | None = None, *, atol: float = 0.0) -> Any:
    """Rebuild ``model`` without its dead units: a smaller model with the same outputs.

    A unit (Dense neuron, Conv1D/Conv2D filter) is dead when its kernel column is all zero
    after ``masks``. It is removed when its output reaches exactly one Dense/Conv layer
    through pass-through layers (activations, dropout, BatchNormalization, pooling): its
    constant output act(bias) is folded into that layer's bias, and the consumer's input
    rows (and the BatchNormalization entries) are sliced. Units feeding a model output,
    a branch, Flatten or a depthwise layer stay, as do units with a non-zero constant
    feeding a convolution with padding other than "valid".

    Args:
        model: a built Sequential or functional model; it is not changed.
        masks: masks to apply first (e.g. ``prune(..., granularity="channel").masks``).
        atol: kernel entries with ``|w| <= atol`` count as zero.

    Returns:
        A new, smaller ``keras.Model`` (compiled like the original if it was).
    """
    _check_model(model)
    graph = _graph(model)
    if any(isinstance(l, keras.Model) for l in model.layers):
        raise PruneTypeError("remove_neurons does not handle nested models; flatten the model first")
    arrays = {l.name: [_numpy(w) for w in l.weights] for l in graph.layers}
    for key, m in (masks or {}).items():
        var = _variable(model, key)
        layer_name = key.rpartition("/")[0]
        i = next(i for i, w in enumerate(model.get_layer(layer_name).weights) if w is var)
        arrays[layer_name][i] = arrays[layer_name][i] * np.asarray(m, dtype=arrays[layer_name][i].dtype)
    outputs = {id(h.operation) for h in (o._keras_history for o in keras.tree.flatten(graph.outputs))}
    widths: dict[str, int] = {}
    for layer in graph.layers:
        if type(layer) not in _SHRINK:
            continue
        kernel = arrays[layer.name][0]
        dead = np.all(np.abs(kernel.reshape(-1, kernel.shape[-1])) <= atol, axis=0)
        chain = _chain(graph, layer, outputs) if dead.any() else None
        if chain is None:
            continue
        path, consumer = chain
        bias = arrays[layer.name][1] if layer.use_bias else np.zeros(kernel.shape[-1], kernel.dtype)
        v = _numpy(keras.activations.get(layer.activation)(ops.convert_to_tensor(bias)))
        for p in path:
            v = _propagate(p, v, arrays[p.name])
        cw = arrays[consumer.name][0]
        foldable = isinstance(consumer, L.Dense) or consumer.padding == "valid"
        if not foldable:
            dead &= v == 0  # borders see zero padding, not the constant: only exact zeros go
        if dead.all():
            dead[np.argmax(np.abs(v))] = False  # a layer keeps at least one unit
        if not dead.any():
            continue
        # A dead unit outputs the constant v; the consumer sees v · (its input rows).
        rows = cw[..., dead, :].reshape(-1, int(dead.sum()), cw.shape[-1])  # (kernel positions, dead, out)
        fold = np.einsum("kio,i->o", rows, v[dead]) if foldable else np.zeros(cw.shape[-1])
        if np.any(fold != 0):
            if not consumer.use_bias:
                continue
            arrays[consumer.name][1] = arrays[consumer.name][1] + fold.astype(cw.dtype)
        keep = ~dead
        arrays[layer.name] = [a[..., keep] for a in arrays[layer.name]]
        for p in path:
            if isinstance(p, L.BatchNormalization):
                arrays[p.name] = [a[keep] for a in arrays[p.name]]
        arrays[consumer.name][0] = cw[..., keep, :]
        widths[layer.name] = int(keep.sum())

    def clone_function(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer.name in widths:
            cfg["units" if isinstance(layer, L.Dense) else "filters"] = widths[layer.name]
        return type(layer).from_config(cfg)

    small = _clone(model, clone_function)
    for layer in _graph(small).layers:
        if arrays.get(layer.name):
            layer.set_weights(arrays[layer.name])
    _recompile(model, small)
    return small
