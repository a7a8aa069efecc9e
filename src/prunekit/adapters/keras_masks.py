"""Keras 3 masks that live in the model.

:func:`prunekit.keras.prune` records each mask as a :class:`MaskConstraint` on the pruned
weight. Keras applies a weight's constraint after every optimizer step, so a plain
``model.fit`` (or any loop through a Keras optimizer) keeps the pruned weights at exactly
zero, and the constraint is part of the layer's config: ``clone_model``, ``.keras`` and
``.h5`` files carry it (load them with ``prunekit.keras`` imported; :func:`strip` gives a
plain model without it). Writes that bypass the optimizer (``set_weights``, ``assign``, a
torch optimizer over the variables) are caught by :func:`check_masks`, which
:func:`sparsity`, :func:`prunekit.keras.prune` and :func:`strip` run: they warn when masked
positions hold non-zero values.
"""

from __future__ import annotations

import base64
import warnings
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import PruneError
from .keras_base import L, find_targets, keras, leaf_layers, ops, to_numpy, variable, weights_of
from .keras_wrapper import wrappers

__all__ = ["MaskConstraint", "MaskDriftWarning", "apply_masks", "check_masks", "checked_mask", "forget", "masks", "record", "retrace", "sparsity", "trust_stored_zeros", "unwrap", "zero_slots",
           "SECOND_MOMENTS", "SECOND_MOMENT_FILL"]


class MaskDriftWarning(UserWarning):
    """Masked weights of a Keras model hold non-zero values."""


def _encode(mask: np.ndarray) -> dict[str, Any]:
    bits = np.packbits(np.asarray(mask) != 0, axis=None)
    return {"shape": list(mask.shape), "bits": base64.b64encode(zlib.compress(bits.tobytes(), 9)).decode("ascii")}


def _decode(cfg: Mapping[str, Any]) -> np.ndarray:
    shape = tuple(int(s) for s in cfg["shape"])
    raw = np.frombuffer(zlib.decompress(base64.b64decode(cfg["bits"])), dtype=np.uint8)
    return np.unpackbits(raw, count=int(np.prod(shape))).reshape(shape).astype(np.float32)


@keras.saving.register_keras_serializable(package="prunekit")
class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by a fixed 0/1 mask (after the layer's own constraint, if any).

    Keras applies it after every optimizer step; its config stores the mask bit-packed and
    compressed, so saved models keep their masks.

    Args:
        mask: a 0/1 array of the weight's shape, or its encoded config form.
        inner: the constraint the weight had before pruning (applied first), or None.
    """

    def __init__(self, mask: np.ndarray | Mapping[str, Any], inner: Any = None) -> None:
        self.mask = _decode(mask) if isinstance(mask, Mapping) else (np.asarray(mask) != 0).astype(np.float32)
        self.inner = keras.constraints.get(inner) if inner is not None else None
        self._tensors: dict[str, Any] = {}

    def __call__(self, w: Any) -> Any:
        if self.inner is not None:
            w = self.inner(w)
        dtype = keras.backend.standardize_dtype(w.dtype)
        if keras.backend.backend() != "torch":
            # A tensor made inside one traced function (tf.function, jax.jit) cannot be
            # reused by another: a constant per trace, folded into the compiled step.
            return ops.multiply(w, ops.convert_to_tensor(self.mask, dtype=dtype))
        if dtype not in self._tensors:  # backend tensors once per dtype, not per step
            self._tensors[dtype] = ops.convert_to_tensor(self.mask, dtype=dtype)
        return ops.multiply(w, self._tensors[dtype])

    def get_config(self) -> dict[str, Any]:
        return {"mask": _encode(self.mask), "inner": keras.constraints.serialize(self.inner) if self.inner else None}

    def __deepcopy__(self, memo: dict) -> MaskConstraint:
        return MaskConstraint(self.mask.copy(), self.inner)


def _constraint_attr(layer: Any, attr: str) -> str | None:
    """The layer attribute its config serializes the constraint of weight ``attr`` from."""
    if isinstance(layer, L.DepthwiseConv2D) and attr == "kernel":
        return "depthwise_constraint"
    name = f"{attr}_constraint"
    return name if hasattr(layer, name) else None


def unwrap(constraint: Any) -> Any:
    """The user's own constraint under a :class:`MaskConstraint` (or ``constraint`` itself)."""
    return constraint.inner if isinstance(constraint, MaskConstraint) else constraint


def record(layer: Any, attr: str, mask: np.ndarray | None) -> None:
    """Keep ``mask`` on weight ``attr`` of ``layer`` as a :class:`MaskConstraint`;
    ``None`` or an all-ones mask removes it (the user's own constraint stays)."""
    var = getattr(layer, attr)
    inner = unwrap(var.constraint)
    c = inner if mask is None or bool(np.all(np.asarray(mask) != 0)) else MaskConstraint(mask, inner)
    var.constraint = c
    cattr = _constraint_attr(layer, attr)
    if cattr is not None:
        setattr(layer, cattr, c)


def _recorded_vars(model: Any) -> list[tuple[str, Any, Any]]:
    """``(key, layer, variable)`` of every weight carrying a :class:`MaskConstraint`."""
    out = []
    for layer in leaf_layers(model):
        for w in layer.weights:
            if isinstance(getattr(w, "constraint", None), MaskConstraint):
                attr = next((a for a in (*(weights_of(layer) or ()), "bias") if getattr(layer, a, None) is w), w.name)
                out.append((f"{layer.name}/{attr}", layer, w))
    return out


def masks(model: Any) -> dict[str, np.ndarray]:
    """The masks recorded in ``model`` by pruning: ``{"layer/kernel": 0/1 array}``.

    Args:
        model: a Keras model.

    Returns:
        One float32 0/1 array per masked weight, in the weight's Keras layout.
    """
    out = {key: w.constraint.mask.copy() for key, _, w in _recorded_vars(model)}
    for key, m, _ in _wrapped(model):
        out[key] = m
    return out


def _wrapped(model: Any) -> list[tuple[str, np.ndarray, Any]]:
    """``(key, mask, weight variable)`` of every weight whose :class:`PruneWrapper` mask
    is not all ones."""
    out = []
    for name, wrapper in wrappers(model).items():
        for attr, mvar in zip(wrapper.masked, wrapper.mask_weights):
            m = to_numpy(mvar).astype(np.float32)
            if not bool(np.all(m != 0)):
                out.append((f"{name}/{attr}", m, getattr(wrapper.layer, attr)))
    return out


def check_masks(model: Any, stacklevel: int = 3) -> int:
    """Warn when masked weights of ``model`` hold non-zero values; return how many do.

    Keras applies the masks after every optimizer step; values written another way
    (``set_weights``, ``assign``, a torch optimizer over the variables) are not masked.

    Args:
        model: a Keras model.
        stacklevel: passed to ``warnings.warn``.

    Returns:
        The number of masked positions that are non-zero (0 when the masks hold).
    """
    alive = masked = 0
    worst: list[str] = []
    held = [(key, w.constraint.mask, w) for key, _, w in _recorded_vars(model)] + _wrapped(model)
    for key, mask, w in held:
        gone = mask == 0
        n = int(np.count_nonzero(to_numpy(w)[gone]))
        alive, masked = alive + n, masked + int(gone.sum())
        if n:
            worst.append(key)
    if alive:
        warnings.warn(
            f"masked weights of model {model.name!r} were changed outside their masks (set_weights, assign, or an "
            f"optimizer other than Keras's): {alive:,} of {masked:,} masked weights are non-zero, in {worst}. "
            "prunekit.keras.apply_masks(model, prunekit.keras.masks(model)) restores the zeros",
            MaskDriftWarning,
            stacklevel=stacklevel,
        )
    return alive


def checked_mask(key: str, mask: Any, var: Any = None) -> np.ndarray:
    """``mask`` as a float32 0/1 array, after checking that it has the shape of weight
    ``var`` (unless None) and holds only 0 and 1 (False/True): a 0.5 or a NaN would be used as a multiplier
    while the recorded mask is 0/1. Raises :class:`PruneError` naming ``key`` otherwise."""
    m = np.asarray(mask)
    if var is not None and tuple(m.shape) != tuple(var.shape):
        raise PruneError(f"mask {key!r} has shape {tuple(m.shape)}, the weight has {tuple(var.shape)}")
    if m.dtype != np.bool_:
        try:
            m = m.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise PruneError(f"mask {key!r} must hold only 0 and 1 (a bool or number array); got dtype {m.dtype}") from e
        bad = ~((m == 0) | (m == 1))
        if bad.any():
            shown = np.unique(m[bad])[:5]  # NaN sorts last, once
            raise PruneError(
                f"mask {key!r} must hold only 0 and 1 (0 = pruned); it holds {int(bad.sum()):,} other values, "
                f"e.g. {', '.join(repr(float(v)) for v in shown)}. Binarize it first, e.g. (mask > 0.5)"
            )
    return m.astype(np.float32)


def apply_masks(model: Any, masks: Mapping[str, Any], *, keep: bool = True) -> None:
    """Multiply each named weight by its 0/1 mask and (``keep=True``) record the mask on it,
    so Keras re-applies it after every optimizer step.

    Args:
        model: the Keras model whose weights are masked in place.
        masks: ``{"layer/kernel": 0/1 array}`` in the weights' shapes (any other value,
            NaN included, is refused with a :class:`PruneError` before any weight changes).
        keep: record the masks as :class:`MaskConstraint` (False: zero the weights only).
    """
    pairs = []
    for key, m in masks.items():
        var = variable(model, key)
        pairs.append((key, var, checked_mask(key, m, var)))
    layers = {l.name: l for l in leaf_layers(model)}
    inside = wrappers(model)
    constrained = rebuild_step = False
    for key, var, m in pairs:  # all checked first: a bad key leaves the model untouched
        var.assign(ops.multiply(var, ops.cast(ops.convert_to_tensor(m), var.dtype)))
        name, _, attr = key.rpartition("/")
        wrapped = name in inside and attr in inside[name].masked
        revived = None
        if keep and wrapped:  # positions the wrapper masked and this mask keeps: fresh optimizer state
            revived = (m != 0) & (to_numpy(inside[name].mask_of(attr)) == 0)
        zero_slots(model, var, m, revived=revived if revived is not None and revived.any() else None,
                   gradient_masked=wrapped and keep)
        if keep:
            if wrapped:
                inside[name].mask_of(attr).assign(ops.convert_to_tensor((np.asarray(m) != 0).astype(np.float32)))
                rebuild_step |= inside[name].mask_set(attr)  # a trusted step skipped it while all ones
            else:
                record(layers[name], attr, m)
                constrained = True
    if constrained:
        retrace(model)
    elif rebuild_step and keras.backend.backend() != "torch":
        retrace(model, ("train",))


#: Optimizer slots (by Keras's slot names) holding a running mean of squared gradients
#: whose square root divides the step: Adam, AdamW, Nadam, Lamb, AMSGrad's maximum. With the
#: first moment at zero and no gradient, their value changes no update.
SECOND_MOMENTS = ("velocity", "velocity_hat")
#: What :func:`zero_slots` writes at masked positions of :data:`SECOND_MOMENTS` on the
#: PyTorch backend instead of 0: PyTorch's CPU square root takes about 15 times longer on an
#: exact zero (and 30 times on a subnormal) than on a normal number, which made a 90 %
#: sparse MLP's Adam step about 9 % slower. 1 decays under Adam's default ``beta_2`` to
#: subnormal values only after about 87,000 steps; :class:`PruningCallback` writes it again
#: every epoch.
SECOND_MOMENT_FILL = 1.0


def zero_slots(model: Any, var: Any, mask: Any, *, revived: Any = None, gradient_masked: bool = False) -> int:
    """Zero the masked positions of the optimizer state kept for ``var`` (Adam moments,
    momentum, EMA copies: the slots Keras optimizers create from the variable, named after
    its path, of its shape). With its slots at zero, a weight that gets no gradient does not
    move under any Keras optimizer, so a mask that grows during ``fit`` needs no per-step
    re-application (JAX's compiled step cannot read a mask variable). ``gradient_masked``
    (a :class:`PruneWrapper`'s weight, whose masked positions get no gradient): on the
    PyTorch backend the masked positions of second moments (:data:`SECOND_MOMENTS`) get
    :data:`SECOND_MOMENT_FILL` instead (see there; with the first moment at zero the
    weight still does not move). ``revived``: positions unmasked again (0/1, the shape of
    ``var``), whose state is reset to zero so that they train like fresh weights. Returns
    how many slots were written (0 when the model has no built optimizer)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "built", False):
        return 0
    prefix = var.path.replace("/", "_") + "_"
    shape = tuple(var.shape)
    fill = gradient_masked and keras.backend.backend() == "torch"
    slots = [s for s in optimizer.variables if s.name.startswith(prefix) and tuple(s.shape) == shape]
    if not slots:
        return 0
    masked = np.asarray(mask) == 0
    keep = ~masked if revived is None else ~masked & (np.asarray(revived) == 0)  # computed once for every slot
    for slot in slots:
        value = ops.multiply(slot, ops.cast(ops.convert_to_tensor(keep), slot.dtype))
        if fill and slot.name[len(prefix):] in SECOND_MOMENTS:
            value = ops.add(value, ops.cast(ops.convert_to_tensor(masked * SECOND_MOMENT_FILL), slot.dtype))
        slot.assign(value)
    return len(slots)


def trust_stored_zeros(model: Any, trusted: bool) -> None:
    """Let the training steps of ``model``'s :class:`PruneWrapper` layers skip the forward
    product on TensorFlow and JAX (``trusted=True``), or make them multiply again.

    Trusting first masks the stored weights and zeroes the optimizer state of their masked
    positions (``model.optimizer``'s, when built), so that with gradients masked no step of
    that optimizer moves them: the product would change nothing. For the length of a
    ``fit`` driven by a prunekit callback, which calls it at train begin and end. The
    training step is traced anew when the setting changes."""
    changed = False
    for wrapper in wrappers(model).values():
        if trusted:
            for attr, mvar in zip(wrapper.masked, wrapper.mask_weights):
                var = getattr(wrapper.layer, attr)
                mask = to_numpy(mvar)
                if not mask.all():
                    var.assign(ops.multiply(var, ops.cast(mvar, var.dtype)))
                    zero_slots(model, var, mask, gradient_masked=True)
        changed |= wrapper.trust(trusted)
    if changed and keras.backend.backend() != "torch":
        retrace(model, ("train",))


def retrace(model: Any, kinds: Iterable[str] = ("train", "test", "predict")) -> None:
    """Drop the model's compiled train/test/predict functions (``kinds``), so the next
    ``fit`` traces anew and runs the constraints just recorded (TensorFlow and JAX compile
    them into the traced step; a step traced before pruning would not apply the masks)."""
    for kind in kinds:
        if getattr(model, f"{kind}_function", None) is not None:  # rebuilt now: fit may be running
            getattr(model, f"make_{kind}_function")(force=True)


def sparsity(model: Any, ignore: Iterable[str] = ()) -> float:
    """Fraction of zeros among the prunable weights of ``model`` (``PRUNABLE`` layers).

    Warns (:class:`MaskDriftWarning`) when recorded masks no longer hold.

    Args:
        model: a built Keras model.
        ignore: layer names to leave out of the count.

    Returns:
        A float in [0, 1].
    """
    targets, _ = find_targets(model, ignore)
    check_masks(model)
    total = sum(t.numel for t in targets)
    return sum(int((t.original == 0).sum()) for t in targets) / max(1, total)



def forget(model: Any) -> None:
    """Remove every recorded mask from ``model``: constraints go, wrapper masks become all
    ones (the weights keep their zeros)."""
    for key, layer, _ in _recorded_vars(model):
        record(layer, key.rpartition("/")[2], None)
    for wrapper in wrappers(model).values():
        for mvar in wrapper.mask_weights:
            mvar.assign(ops.ones(tuple(mvar.shape), dtype=mvar.dtype))
    retrace(model)
