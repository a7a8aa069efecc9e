"""Keras 3 masks inside the model: :class:`PruneWrapper`, a layer wrapper that holds the
mask of each prunable weight as a non-trainable weight of the model.

The wrapped layer runs with ``weight · mask`` in place of each masked weight (through a
``keras.StatelessScope`` on TensorFlow and JAX, so the product is differentiable; on
PyTorch the stored weight is kept masked and its gradient multiplied by the mask, which
computes the same with less Python per call: :mod:`.keras_torch_masks`), which makes
the masked positions contribute nothing to the output and receive exactly zero gradient.
When a mask is set or grows (during ``fit`` too), the optimizer state kept for the newly
masked positions (Adam moments, momentum, EMA copies) is zeroed with the weights
(:func:`prunekit.adapters.keras_masks.zero_slots`): with no gradient and no state, no Keras
optimizer moves them again, so they stay exactly zero on every backend with no per-step
work (no constraint, no callback). Writes that bypass the optimizer (``set_weights``,
``assign``) are not masked in the stored weights on TensorFlow and JAX (on PyTorch they
are, at the next call), but the forward pass still is, and
:func:`prunekit.keras.check_masks` reports them. The masks are model weights, so ``.keras``
files save and restore them; :func:`prunekit.keras.strip` removes the wrappers.
:func:`prunekit.keras.wrap` builds a wrapped copy of a model.

While a prunekit callback drives ``fit`` (:class:`~prunekit.keras.PruningCallback`,
:class:`~prunekit.keras.MaskEnforcer`), the training steps skip the forward product: the
callback masks the stored weights and zeroes the optimizer state of the masked positions
when training begins (and every pruning step does the same), so the stored weights already
hold their zeros, and only the gradient is multiplied by the mask (on TensorFlow and JAX
:func:`masked_gradient`, skipping masks that were all ones until one is set; on PyTorch
the stored weight is not re-masked after each optimizer step). That saves about 4 % of a
small MLP's step. Inference calls (``training`` not true) always mask. A weight written behind the optimizer's back during such a ``fit``
(by another callback) is seen unmasked by the training steps until the next fit or pruning
step (on PyTorch, until the next call that is not such a training step);
:func:`prunekit.keras.check_masks` reports it.
"""

from __future__ import annotations

import inspect
from typing import Any

from .keras_base import keras, ops, to_numpy, weights_of

_TORCH = keras.backend.backend() == "torch"
_TF = keras.backend.backend() == "tensorflow"
if _TORCH:
    from .keras_torch_masks import TorchMasks

__all__ = ["PruneWrapper", "is_wrapper", "masked_gradient", "wrappers"]


def _identity(x: Any) -> Any:
    if _TF:
        import tensorflow as tf

        return tf.identity(x)  # a custom gradient's output must be a new tensor
    return x


@ops.custom_gradient
def masked_gradient(value: Any, mask: Any) -> Any:
    """``value`` itself in the forward pass; in the backward pass its gradient times
    ``mask`` (no gradient for the mask). TensorFlow and JAX."""

    def grad(*args: Any, upstream: Any = None) -> Any:
        if upstream is None:
            (upstream,) = args
        # the mask gets none (TensorFlow takes None; JAX wants zeros, which XLA drops)
        return ops.multiply(upstream, mask), None if _TF else ops.zeros_like(mask)

    return _identity(value), grad


@keras.saving.register_keras_serializable(package="prunekit")
class PruneWrapper(keras.layers.Wrapper):
    """Wraps a prunable layer and holds its masks as non-trainable weights.

    The wrapper takes the wrapped layer's name, so masks keep their keys
    (``"dense/kernel"``) and ``model.get_layer("dense").layer`` is the original layer.

    Args:
        layer: a layer whose type is in :data:`prunekit.keras.PRUNABLE`.
        **kwargs: passed to ``keras.layers.Wrapper`` (``name`` and ``dtype`` default to the
            layer's own: under mixed precision a layer pinned to float32 stays float32).

    Attributes:
        masked: the names of the wrapped layer's weights that carry a mask
            (its prunable weights, then ``"bias"`` when it has one).
    """

    holds_masks = True  # how keras_base recognizes a wrapper without importing this module

    def __init__(self, layer: Any, **kwargs: Any) -> None:
        kwargs.setdefault("name", layer.name)
        # the wrapper casts the inputs and computes like the layer did, not by the global policy
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        attrs = weights_of(layer)
        if not attrs:
            raise TypeError(
                f"PruneWrapper wraps prunable layers (types listed in prunekit.keras.PRUNABLE); "
                f"got {type(layer).__name__} {layer.name!r}"
            )
        self.masked = list(attrs) + (["bias"] if getattr(layer, "use_bias", False) else [])
        self.mask_weights: list[Any] = []
        # True only while a prunekit callback drives fit and has masked the stored weights
        # (keras_masks.trust_stored_zeros): training calls then mask the gradient only,
        # and skip the masks that were all ones (_ones: their ids) until one is set.
        self.stored_zeros_trusted = False
        self._ones: frozenset[int] = frozenset()
        self._layer_takes_training = "training" in inspect.signature(layer.call).parameters

    def build(self, input_shape: Any = None) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        self.mask_weights = [
            self.add_weight(name=f"{attr}_mask", shape=tuple(getattr(self.layer, attr).shape),
                            initializer="ones", trainable=False, dtype="float32")
            for attr in self.masked
        ]
        self.built = True

    def mask_of(self, attr: str) -> Any:
        """The mask variable of weight ``attr`` of the wrapped layer."""
        return self.mask_weights[self.masked.index(attr)]

    def trust(self, trusted: bool) -> bool:
        """Set :attr:`stored_zeros_trusted` (the caller has masked the stored weights and
        their optimizer state) and note which masks are all ones, which trusted training
        calls then skip; True when the traced training step must be rebuilt."""
        ones = frozenset(id(m) for m in self.mask_weights if trusted and to_numpy(m).all())
        changed = trusted != self.stored_zeros_trusted or ones != self._ones
        object.__setattr__(self, "stored_zeros_trusted", trusted)
        object.__setattr__(self, "_ones", ones)
        return changed

    def mask_set(self, attr: str) -> bool:
        """Note that the mask of ``attr`` was just written; True when the traced training
        step must be rebuilt (it skipped that mask, which was all ones, and now is not)."""
        mvar = self.mask_of(attr)
        if id(mvar) in self._ones and not to_numpy(mvar).all():
            object.__setattr__(self, "_ones", self._ones - {id(mvar)})
            return True
        return False

    def _pairs(self) -> tuple[tuple[Any, Any, bool], ...]:
        """``(variable, its mask or None, mask needs a cast)`` for every variable of the
        wrapped layer, computed once (walking a layer's variables costs more than the product)."""
        if getattr(self, "_pairs_cache", None) is None:
            masked = {id(getattr(self.layer, a)): m for a, m in zip(self.masked, self.mask_weights)}
            pairs = tuple((v, masked.get(id(v)), masked[id(v)].dtype != v.dtype if id(v) in masked else False)
                          for v in self.layer.variables)
            object.__setattr__(self, "_pairs_cache", pairs)  # a cache, not layer state for Keras to track
        return self._pairs_cache

    def call(self, inputs: Any, *args: Any, training: Any = None, **kwargs: Any) -> Any:
        if self._layer_takes_training:
            kwargs["training"] = training
        if _TORCH:
            if getattr(self, "_torch_masks", None) is None:
                object.__setattr__(self, "_torch_masks", TorchMasks())  # not layer state for Keras to track
            if self._torch_masks.apply(self._pairs(), trusted=training is True and self.stored_zeros_trusted):
                return self.layer.call(inputs, *args, **kwargs)
        # Read every value here (inside an outer stateless scope, e.g. JAX's traced step,
        # these are the traced values: an inner scope hides the outer one's), then
        # substitute the masked ones.
        gradient_only = training is True and self.stored_zeros_trusted and not _TORCH  # the scope's fallback: multiply
        mapping = []
        for v, mask, cast in self._pairs():
            value = v.value
            if mask is not None and not (gradient_only and id(mask) in self._ones):
                m = ops.cast(mask.value, v.dtype) if cast else mask.value
                value = masked_gradient(value, m) if gradient_only else ops.multiply(value, m)
            mapping.append((v, value))
        with keras.StatelessScope(mapping):
            # The wrapped layer's call alone: the wrapper's own __call__ already did what
            # Keras does around a call (casting, checks), once per step instead of twice.
            return self.layer.call(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)


def is_wrapper(layer: Any) -> bool:
    """True for a :class:`PruneWrapper`."""
    return isinstance(layer, PruneWrapper)


def wrappers(model: Any) -> dict[str, PruneWrapper]:
    """``{wrapped layer name: wrapper}`` for every :class:`PruneWrapper` in ``model``
    (nested models included)."""
    out: dict[str, PruneWrapper] = {}
    for layer in getattr(model, "layers", []):
        if isinstance(layer, PruneWrapper):
            out[layer.layer.name] = layer
        elif isinstance(layer, keras.Model):
            out.update(wrappers(layer))
    return out
