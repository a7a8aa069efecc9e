"""Gradients of a Keras loss with each backend's own autodiff, behind one interface.

Keras 3 has no backend-neutral gradient call. :func:`batch_gradients` differentiates
``mean(loss(y, model(x)))`` with ``tf.GradientTape`` (TensorFlow), ``jax.grad`` (JAX) or
``torch.autograd.grad`` (PyTorch); :func:`squared_sample_gradients` sums the squares of the
per-sample gradients (the empirical Fisher of :mod:`prunekit.criteria.gradient`), with
``jax.vmap`` on JAX and one sample at a time elsewhere. The model runs with
``training=False`` (BatchNormalization statistics and dropout stay fixed), variables are
never changed, and results are float32 numpy arrays in the variables' Keras layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import PruneError, PruneTypeError
from .keras_base import keras, ops, to_numpy

__all__ = ["backend", "batch_gradients", "loss_function", "squared_sample_gradients"]


def backend() -> str:
    """The Keras backend of this process: ``"tensorflow"``, ``"jax"`` or ``"torch"``."""
    return keras.backend.backend()


def loss_function(model: Any, loss: Any, criterion: str) -> Callable[[Any, Any], Any]:
    """The loss to differentiate: ``loss`` (a Keras loss name, function or ``Loss``), else
    the model's compiled loss; raise naming the criterion when there is none."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise PruneError(
            f"criterion {criterion!r} needs a loss: pass loss='sparse_categorical_crossentropy' (or compile the model)"
        )
    fn = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if not callable(fn):
        raise PruneTypeError(f"loss must be a Keras loss name, function or Loss, got {type(loss).__name__}")
    return fn


def _scalar(loss_fn: Callable, y: Any, out: Any) -> Any:
    return ops.mean(loss_fn(y, out))


def _check_finite(value: Any) -> None:
    v = float(to_numpy(value))
    if not np.isfinite(v):
        raise PruneError(f"the loss is {v} on a calibration batch; scores would be meaningless")


def _as_numpy(grads: Sequence[Any], variables: Sequence[Any]) -> list[np.ndarray]:
    """float32 arrays; a weight the loss does not reach gets zeros."""
    return [
        np.zeros(tuple(v.shape), np.float32) if g is None else to_numpy(g).astype(np.float32)
        for g, v in zip(grads, variables)
    ]


def _tensors(x: Any, y: Any) -> tuple[Any, Any]:
    return keras.tree.map_structure(ops.convert_to_tensor, x), ops.convert_to_tensor(y)


_JAX_CACHE: dict[tuple, Any] = {}  # compiled gradient functions, by (model, variables, loss, kind)


def _jax_function(model: Any, variables: Sequence[Any], loss_fn: Callable, kind: str) -> Callable:
    """A jit-compiled ``(values, x, y) -> (loss, grads)`` (``"batch"``) or ``-> Σ per-sample
    grads²`` (``"samples"``), cached so that calibration batches of one shape compile once."""
    import jax
    import jax.numpy as jnp

    wanted = {id(v) for v in variables}
    others = [v for v in model.variables if id(v) not in wanted]  # passed in too: never baked in
    key = (id(model), tuple(id(v) for v in variables), tuple(id(v) for v in others), id(loss_fn), kind)
    if key not in _JAX_CACHE:

        def loss(vals: list[Any], rest: list[Any], x: Any, y: Any) -> Any:
            with keras.StatelessScope([*zip(variables, vals), *zip(others, rest)]):
                return _scalar(loss_fn, y, model(x, training=False))

        if kind == "batch":
            fn = jax.jit(jax.value_and_grad(loss))
        else:
            one = jax.grad(lambda v, r, xi, yi: loss(v, r, xi[None], yi[None]))
            per_sample = jax.vmap(one, in_axes=(None, None, 0, 0))
            fn = jax.jit(lambda v, r, x, y: [jnp.sum(jnp.square(g), axis=0) for g in per_sample(v, r, x, y)])
        if len(_JAX_CACHE) >= 8:
            _JAX_CACHE.pop(next(iter(_JAX_CACHE)))
        _JAX_CACHE[key] = (fn, model, loss_fn)  # the objects stay alive while their ids key the cache
    fn = _JAX_CACHE[key][0]
    return lambda vals, x, y: fn(vals, [v.value for v in others], x, y)


def batch_gradients(model: Any, variables: Sequence[Any], loss_fn: Callable, x: Any, y: Any) -> list[np.ndarray]:
    """Gradients of ``mean(loss_fn(y, model(x, training=False)))`` w.r.t. ``variables``.

    Args:
        model: a built Keras model.
        variables: Keras variables of the model (trainable or not).
        loss_fn: ``loss_fn(y_true, y_pred)`` returning per-sample losses or their mean.
        x, y: one batch of inputs and labels.

    Returns:
        One float32 numpy array per variable, in its shape.
    """
    x, y = _tensors(x, y)
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        values = [v.value for v in variables]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(values)
            value = _scalar(loss_fn, y, model(x, training=False))
        _check_finite(value)
        return _as_numpy(tape.gradient(value, values), variables)
    if name == "jax":
        value, grads = _jax_function(model, variables, loss_fn, "batch")([v.value for v in variables], x, y)
        _check_finite(value)
        return _as_numpy(grads, variables)
    if name == "torch":
        import torch

        values = [v.value for v in variables]
        wanted = [p.requires_grad for p in values]
        try:
            for p in values:
                p.requires_grad_(True)  # frozen layers too
            with torch.enable_grad():
                value = _scalar(loss_fn, y, model(x, training=False))
                _check_finite(value.detach())
                grads = torch.autograd.grad(value, values, allow_unused=True)
        finally:
            for p, r in zip(values, wanted):
                p.requires_grad_(r)
        return _as_numpy([None if g is None else g.detach() for g in grads], variables)
    raise PruneError(f"Keras backend {name!r} is not supported; use 'tensorflow', 'jax' or 'torch'")


def squared_sample_gradients(
    model: Any, variables: Sequence[Any], loss_fn: Callable, x: Any, y: Any
) -> list[np.ndarray]:
    """Σ over the samples of the batch of (∂ℓ_n/∂w)², ℓ_n the loss of sample n alone.

    Args:
        model, variables, loss_fn: as in :func:`batch_gradients`.
        x, y: one batch (a single input array and its labels).

    Returns:
        One float32 numpy array per variable: the sum of squared per-sample gradients.
    """
    if not hasattr(x, "shape"):
        raise PruneError("criterion 'hessian' needs (array inputs, labels) batches")
    n = int(x.shape[0])
    if backend() == "jax":
        xt, yt = _tensors(x, y)
        return _as_numpy(_jax_function(model, variables, loss_fn, "samples")([v.value for v in variables], xt, yt), variables)
    sums = [np.zeros(tuple(v.shape), np.float32) for v in variables]
    x, y = np.asarray(x), np.asarray(y)
    for i in range(n):
        for s, g in zip(sums, batch_gradients(model, variables, loss_fn, x[i : i + 1], y[i : i + 1])):
            s += np.square(g)
    return sums
