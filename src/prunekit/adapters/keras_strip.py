"""Keras 3 copies of a model: :func:`strip` (plain layers holding the zeros, for
deployment) and :func:`wrap` (prunable layers in :class:`PruneWrapper`, masks inside the
model), with the cloning helpers :mod:`prunekit.adapters.keras_surgery` shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PruneError, PruneTypeError
from .keras_base import check_model, functional_graph, keras, ops, variable, weights_of
from .keras_masks import MaskConstraint, apply_masks, check_masks, checked_mask, forget, masks as recorded_masks, unwrap
from .keras_wrapper import PruneWrapper, is_wrapper, wrappers

__all__ = ["clone", "in_force", "recompile", "strip", "wrap"]


def clone(model: Any, clone_function: Any = None) -> Any:
    try:
        return keras.models.clone_model(model, clone_function=clone_function)
    except Exception as e:  # the Keras message says what failed; we say which models work
        raise PruneTypeError(
            f"cannot rebuild model {model.name!r} ({type(model).__name__}): {e}. "
            "Sequential and functional models are supported"
        ) from e


def recompile(src: Any, dst: Any) -> None:
    cfg = src.get_compile_config() if getattr(src, "compiled", False) else None
    if cfg:
        try:
            dst.compile_from_config(cfg)
        except Exception:  # custom losses/metrics may not deserialize; the user compiles then
            pass


def in_force(model: Any, masks: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Recorded masks combined with ``masks`` (checked against the model)."""
    out = recorded_masks(model)
    for key, m in (masks or {}).items():
        m = checked_mask(key, m, variable(model, key))
        out[key] = out[key] * m if key in out else m
    return out


def _fresh(layer: Any) -> Any:
    return type(layer).from_config(layer.get_config())


def _copy_weights(src: Any, dst: Any) -> None:
    """Copy the weights of ``src`` into ``dst`` layer by layer (wrappers matched to their
    layers, masks left out)."""
    by_name = {l.name: l for l in functional_graph(src).layers} if not isinstance(src, keras.Sequential) else {
        l.name: l for l in src.layers}
    targets = functional_graph(dst).layers if not isinstance(dst, keras.Sequential) else dst.layers
    for layer in targets:
        source = by_name.get(layer.name)
        if source is None or not source.weights:
            continue
        inner_src = source.layer if is_wrapper(source) else source
        inner_dst = layer.layer if is_wrapper(layer) else layer
        inner_dst.set_weights(inner_src.get_weights())


def wrap(model: Any, ignore: Any = ()) -> Any:
    """A copy of ``model`` whose prunable layers are wrapped in :class:`PruneWrapper`: the
    masks live inside the model as non-trainable weights.

    Masks recorded on ``model`` (by :func:`prunekit.keras.prune`) move into the wrappers.
    Afterwards :func:`prunekit.keras.prune` and :class:`~prunekit.keras.PruningCallback`
    write their masks into the wrappers; any ``fit`` keeps the pruned weights at exactly
    zero (their gradient is zero); ``.keras`` files hold the masks; :func:`strip` returns a
    plain model. Top-level layers are wrapped (a nested model keeps constraint masks).

    Args:
        model: a built Sequential or functional model; it is not changed.
        ignore: names of layers to leave unwrapped.

    Returns:
        A new ``keras.Model`` with the same weights and outputs (compiled like the original).
    """
    check_model(model)
    ignore = {ignore} if isinstance(ignore, str) else set(ignore)
    known = {l.name for l in model.layers}
    if ignore - known:
        raise PruneError(f"ignore= names layers not in the model: {sorted(ignore - known)}; layers are {sorted(known)}")
    held = recorded_masks(model)
    check_masks(model)

    def clone_function(layer: Any) -> Any:
        if is_wrapper(layer):
            return PruneWrapper(_fresh(layer.layer))
        if not isinstance(layer, keras.layers.Layer):  # a keras.ops operation in the graph (Relu, NotEqual)
            return _fresh(layer)
        if layer.name not in ignore and weights_of(layer) and not isinstance(layer, keras.Model):
            fresh = _fresh(layer)
            for attr in ("kernel_constraint", "bias_constraint", "depthwise_constraint", "embeddings_constraint"):
                # the user's own constraints stay; recorded masks move into the wrapper
                if isinstance(getattr(fresh, attr, None), MaskConstraint):
                    setattr(fresh, attr, unwrap(getattr(fresh, attr)))
            return PruneWrapper(fresh)
        return _fresh(layer)

    out = clone(model, clone_function)
    _copy_weights(model, out)
    forget(out)  # constraints copied with the layer configs
    apply_masks(out, held)
    recompile(model, out)
    return out


def strip(model: Any, masks: Mapping[str, np.ndarray] | None = None) -> Any:
    """A plain copy of ``model`` whose kernels hold the zeros, with no pruning state.

    The copy has no :class:`MaskConstraint` and no :class:`PruneWrapper` (its config loads
    without prunekit). Recorded
    masks and ``masks`` are applied to the copy, so zeros lost since pruning come back
    (with a warning when recorded masks no longer held).

    Args:
        model: a (pruned) Sequential or functional model; it is not changed.
        masks: masks to apply to the copy too, if the weights may have drifted since.

    Returns:
        A new ``keras.Model`` (compiled like the original, with a fresh optimizer).
    """
    check_model(model)
    held = in_force(model, masks)
    check_masks(model)
    if wrappers(model):
        copy = clone(model, lambda l: _fresh(l.layer) if is_wrapper(l) else _fresh(l))
        _copy_weights(model, copy)
    else:
        copy = clone(model)
        copy.set_weights(model.get_weights())
    for key, m in held.items():
        var = variable(copy, key)
        var.assign(ops.multiply(var, ops.cast(ops.convert_to_tensor(m), var.dtype)))
    forget(copy)
    recompile(model, copy)
    return copy
