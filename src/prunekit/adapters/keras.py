"""Keras 3 adapter: prune built Sequential and functional models with the prunekit core.

Kernels are scored with the core criteria (weight-only ones on any backend; ``gradient``,
``normalized_gradient`` and ``taylor`` through the torch backend), turned into masks by the
core granularities and allocations, and applied by multiplying the kernel variables, so the
result is an ordinary Keras model. Masks are numpy 0/1 arrays keyed ``"layer_name/kernel"``
in Keras's own layout. :class:`PruningCallback` prunes gradually during ``model.fit`` and
keeps the zeros through any optimizer; :func:`strip` returns a plain copy;
:func:`remove_neurons` rebuilds a genuinely smaller model. Needs ``pip install prunekit[keras]``.

Example:
    >>> from prunekit.adapters import keras as pkk
    >>> result = pkk.prune(model, 0.9)
    >>> model.fit(x, y, callbacks=[pkk.MaskEnforcer(result.masks)])
    >>> small = pkk.remove_neurons(pkk.prune(model, 0.5, granularity="channel").model)
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

def _default_backend() -> None:
    """Pick the torch backend unless the user chose one that is installed.

    Keras defaults to TensorFlow (and writes that into ~/.keras/keras.json on first
    import) even where only torch is installed; torch is prunekit's own dependency.
    """
    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    import importlib.util
    import json

    path = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json")
    try:
        with open(path) as f:
            chosen = json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        chosen = "tensorflow"
    if importlib.util.find_spec(chosen) is None:
        os.environ["KERAS_BACKEND"] = "torch"


_default_backend()

try:
    import keras
    from keras import ops
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("prunekit.adapters.keras needs Keras 3; install it with: pip install prunekit[keras]") from e
if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover
    raise ImportError(f"prunekit.adapters.keras needs Keras 3 (found {keras.__version__}): pip install prunekit[keras]")

import numpy as np
import torch

from ..allocation import Layer
from ..api import LayerReport, Pruner
from ..criteria.base import Context, Criterion
from ..errors import PruneError, PruneTypeError
from ..granularity import NM, Granularity
from ..registry import available, get
from ..schedules import Schedule, make as make_schedule

__all__ = [
    "NOTHING_TO_PRUNE", "PRUNABLE", "KerasPruneResult", "MaskEnforcer", "PruningCallback",
    "apply_masks", "prune", "remove_neurons", "sparsity", "strip",
]

L = keras.layers
#: Layer types whose listed weights are pruned. Add an entry to support a custom layer
#: whose weight keeps output units on its last axis.
PRUNABLE: dict[type, list[str]] = {
    L.Dense: ["kernel"], L.Conv1D: ["kernel"], L.Conv2D: ["kernel"],
    L.DepthwiseConv2D: ["kernel"], L.Embedding: ["embeddings"],
}
#: Supported layers with nothing to prune (their weights, if any, stay dense).
NOTHING_TO_PRUNE: tuple[type, ...] = tuple(getattr(L, n) for n in (
    "InputLayer", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "Flatten", "Reshape", "Permute", "RepeatVector", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "BatchNormalization", "LayerNormalization", "GroupNormalization",
    "UnitNormalization", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "Dot", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
    "UpSampling1D", "UpSampling2D", "Rescaling", "Normalization", "Identity", "Lambda",
) if hasattr(L, n))
_GRADIENT = ("gradient", "normalized_gradient", "taylor")
_BATCH = 128  # rows per calibration batch when data is given as whole arrays


# -- targets ---------------------------------------------------------------------------------
@dataclass
class _Target:
    """One prunable Keras weight, seen by the core in torch layout (units on ``out_dim``)."""

    name: str  # "layer_name/kernel"
    layer: Any
    variable: Any
    original: torch.Tensor = field(repr=False)
    out_dim: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def weight(self) -> torch.Tensor:
        return self.original

    @property
    def numel(self) -> int:
        return self.original.numel()

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        """Keras layout -> torch layout: Dense (in, out) -> (out, in); Conv (k..., in, out) ->
        (out, in, k...); depthwise (kh, kw, in, mult) -> (in·mult, kh, kw); Embedding as is."""
        if isinstance(self.layer, L.Embedding):
            return a
        if isinstance(self.layer, L.DepthwiseConv2D):
            return a.reshape(a.shape[0], a.shape[1], -1).transpose(2, 0, 1)
        n = a.ndim
        return a.transpose((n - 1, n - 2, *range(n - 2)))

    def to_keras(self, a: np.ndarray) -> np.ndarray:
        shape = tuple(self.variable.shape)
        if isinstance(self.layer, L.Embedding):
            return a.reshape(shape)
        if isinstance(self.layer, L.DepthwiseConv2D):
            return a.transpose(1, 2, 0).reshape(shape)
        n = a.ndim
        return a.transpose((*range(2, n), 1, 0))


def _weights_of(layer: Any) -> list[str] | None:
    """Prunable weight names of ``layer``; [] for nothing to prune; None if unsupported."""
    for cls in type(layer).__mro__:
        if cls in PRUNABLE:
            return PRUNABLE[cls]
    if isinstance(layer, NOTHING_TO_PRUNE) or not layer.trainable_weights:
        return []
    return None


def _layers(model: Any) -> list[Any]:
    """Every leaf layer, nested models expanded."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and _weights_of(layer) is None:
            out.extend(_layers(layer))
        else:
            out.append(layer)
    return out


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise PruneTypeError(f"expected a Keras 3 keras.Model, got {type(model).__module__}.{type(model).__name__}")
    if not model.built or not model.weights:
        raise PruneError(f"model {model.name!r} is not built; call it on data or give it a keras.Input first")


def _targets(model: Any, ignore: Iterable[str] = ()) -> list[_Target]:
    """Prunable weights of ``model``; raise naming any unsupported layer not in ``ignore``."""
    _check_model(model)
    ignore = {ignore} if isinstance(ignore, str) else set(ignore)
    layers = _layers(model)
    names = [l.name for l in layers]
    unknown = ignore - set(names)
    if unknown:
        raise PruneError(f"ignore= names layers not in the model: {sorted(unknown)}; layers are {names}")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise PruneError(f"layer names must be unique to key masks by name; duplicated: {sorted(dupes)}")
    out = []
    for layer in layers:
        if layer.name in ignore:
            continue
        attrs = _weights_of(layer)
        if attrs is None:
            supported = sorted(c.__name__ for c in PRUNABLE)
            raise PruneTypeError(
                f"layer {layer.name!r} of type {type(layer).__name__} has trainable weights prunekit cannot "
                f"prune; supported: {supported} (and layers with nothing to prune). Skip it with "
                f"ignore=[{layer.name!r}], or add its type to prunekit.adapters.keras.PRUNABLE"
            )
        for attr in attrs:
            var = getattr(layer, attr)
            t = _Target(f"{layer.name}/{attr}", layer, var, torch.empty(0), 1 if isinstance(layer, L.Embedding) else 0)
            t.original = torch.from_numpy(np.ascontiguousarray(t.to_torch(_numpy(var))))
            out.append(t)
    return out


def _numpy(x: Any) -> np.ndarray:
    """A numpy copy of a variable or tensor."""
    v = getattr(x, "value", x)
    if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16:
        # Torch backend: Keras's own conversion trips numpy 2's copy-keyword deprecation.
        return v.detach().cpu().numpy().copy()
    return np.array(ops.convert_to_numpy(x))


# -- result ----------------------------------------------------------------------------------
@dataclass
class KerasPruneResult:
    """What :func:`prune` returns: the (same, masked) model and what was done.

    Attributes:
        model: the pruned model (the object that was passed in).
        masks: ``{"layer/kernel": 0/1 array}`` in Keras layout; channel pruning adds
            ``"layer/bias"`` so removed units output exactly act(0).
        sparsity: zero fraction over the weights this call pruned.
        layers: one :class:`~prunekit.api.LayerReport` per pruned weight.
        skipped: weights left dense because an N:M pattern does not fit them.
    """

    model: Any
    masks: dict[str, np.ndarray]
    sparsity: float
    layers: list[LayerReport]
    skipped: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_sparsity(self) -> dict[str, float]:
        """``{"layer/kernel": zero fraction}``."""
        return {l.name: l.sparsity for l in self.layers}

    def summary(self) -> str:
        """A plain-text per-layer table."""
        lines = [f"{l.name:<28} {str(list(l.shape)):<20} {l.sparsity:>8.2%}" for l in self.layers]
        return "\n".join([*lines, f"sparsity over pruned layers: {self.sparsity:.2%}"])


class _AnyAlive(Criterion):
    """Reducer that finds units whose weights are all masked already."""

    def reduce(self, scores: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return scores.amax(dim=dims)


# -- prune -----------------------------------------------------------------------------------
def prune(
    model: Any,
    sparsity: float | None = None,
    *,
    criterion: str | Criterion = "magnitude",
    granularity: str | Granularity = "unstructured",
    allocation: str = "global",
    ignore: Iterable[str] = (),
    data: Any = None,
    loss: Any = None,
    masks: Mapping[str, np.ndarray] | None = None,
    min_keep: int = 1,
    max_batches: int | None = None,
    seed: int = 0,
    keep_output_layer: bool = True,
) -> KerasPruneResult:
    """Prune a built Keras model in place by zeroing kernel entries; return what was done.

    Everything is checked and scored before any weight changes: on error the model is as it was.

    Args:
        model: a built ``keras.Sequential`` or functional ``keras.Model``.
        sparsity: fraction of prunable weights to remove, in [0, 1) (leave out for "N:M").
        criterion: a weight-only criterion (``magnitude``, ``normalized_magnitude``,
            ``random``, ``fpgm`` with channels, or a custom weight-only ``Criterion``), or
            ``gradient``/``normalized_gradient``/``taylor`` (torch backend, needs data).
        granularity: ``"unstructured"``, ``"channel"`` (``"neuron"``: whole units, bias
            included), ``"block"`` or an ``"N:M"`` string such as ``"2:4"``.
        allocation: ``"global"``, ``"uniform"``, ``"lamp"`` or ``"erk"``.
        ignore: names of layers to leave alone (also skips unsupported layers).
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches, for gradient criteria.
        loss: a Keras loss (name, function or ``keras.losses.Loss``); default: the model's
            compiled loss.
        masks: earlier masks whose zeros must stay zero (gradual pruning passes them).
        min_keep: units every layer keeps at least.
        max_batches: limit calibration batches.
        seed: seed for random criteria.
        keep_output_layer: with channels, never prune the units of layers producing outputs.

    Returns:
        A :class:`KerasPruneResult` with the masks, per-layer and overall sparsity.
    """
    if isinstance(granularity, str) and granularity == "neuron":
        granularity = "channel"
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)  # may be a one-shot iterator
    crit, gran, alloc, sp, _ = Pruner(
        sparsity, criterion=criterion, granularity=granularity, allocation=allocation, min_keep=min_keep
    )._resolve()
    targets = [t for t in _targets(model, ignore) if t.numel > 0]
    if not targets:
        raise PruneError(f"model {model.name!r} has no prunable weights (types {sorted(c.__name__ for c in PRUNABLE)})")
    for t in targets:
        if not bool(torch.isfinite(t.original).all()):
            raise PruneError(f"weight {t.name} has NaN/Inf values; fix the model before pruning")
    if gran.structured and keep_output_layer:
        outs = _output_layers(model)
        targets = [t for t in targets if t.layer.name not in outs]
        if not targets:
            raise PruneError("the only prunable layer produces the model's output; its units cannot be removed")
    skipped = []
    if isinstance(gran, NM):
        skipped = [t.name for t in targets if not gran.fits(t)]
        targets = [t for t in targets if gran.fits(t)]
        if skipped:
            warnings.warn(f"N:M {gran.n}:{gran.m} does not fit {skipped}; left dense", stacklevel=2)
        if not targets:
            raise PruneError(f"no layer has an input size that is a multiple of {gran.m} for N:M pruning")
    for t in targets:
        gran.check(t, crit)
    current = _check_masks(model, masks or {}, targets)
    scores = _scores(model, targets, crit, data, loss, max_batches, seed)

    new: dict[str, np.ndarray] = {}
    if isinstance(gran, NM):
        for t in targets:
            s = scores[t.name].float()
            if t.name in current:
                s = s.masked_fill(current[t.name] == 0, float("-inf"))
            new[t.name] = t.to_keras(gran.mask(t, s).numpy())
    else:
        layers = []
        for t in targets:
            u = gran.unit_scores(t, scores[t.name], crit)
            if t.name in current:
                u = u.masked_fill(gran.unit_scores(t, current[t.name].float(), _AnyAlive()) == 0, float("-inf"))
            layers.append(Layer(t.name, u, gran.unit_size(t), tuple(t.original.shape)))
        keeps = alloc.select(layers, sp, min_keep)
        for t in targets:
            new[t.name] = t.to_keras(gran.to_mask(t, keeps[t.name]).numpy())
            if gran.structured and getattr(t.layer, "bias", None) is not None:
                new[f"{t.layer.name}/bias"] = keeps[t.name].numpy()
    new = {k: np.ascontiguousarray(v).astype(np.float32) for k, v in new.items()}
    apply_masks(model, new)
    reports = [_report(t, new[t.name], gran) for t in targets]
    total = sum(math.prod(r.shape) for r in reports)
    return KerasPruneResult(
        model=model,
        masks=new,
        sparsity=sum(r.sparsity * math.prod(r.shape) for r in reports) / max(1, total),
        layers=reports,
        skipped=skipped,
        config={
            "sparsity": sp,
            "criterion": getattr(crit, "name", repr(crit)),
            "granularity": repr(gran),
            "allocation": alloc.name if alloc is not None else None,
            "ignore": ignore,
        },
    )


def _report(t: _Target, mask: np.ndarray, gran: Granularity) -> LayerReport:
    m = torch.from_numpy(np.ascontiguousarray(t.to_torch(mask)))
    zeros = int((m == 0).sum())
    if gran.structured:
        per = m.movedim(t.out_dim, 0).reshape(m.shape[t.out_dim], -1)
        units, pruned = per.shape[0], int((per == 0).all(1).sum())
    else:
        units, pruned = m.numel(), zeros
    return LayerReport(t.name, tuple(mask.shape), units, pruned, zeros / max(1, m.numel()))


def _check_masks(model: Any, masks: Mapping[str, np.ndarray], targets: list[_Target]) -> dict[str, torch.Tensor]:
    """Earlier masks in torch layout, keyed like the targets (validated against the model)."""
    by_name = {t.name: t for t in targets}
    out = {}
    for key, m in masks.items():
        var = _variable(model, key)
        if tuple(np.shape(m)) != tuple(var.shape):
            raise PruneError(f"mask {key!r} has shape {tuple(np.shape(m))}, the weight has {tuple(var.shape)}")
        if key in by_name:
            out[key] = torch.from_numpy(np.ascontiguousarray(by_name[key].to_torch(np.asarray(m, dtype=np.float32))))
    return out


def _scores(model, targets, crit, data, loss, max_batches, seed) -> dict[str, torch.Tensor]:
    name = getattr(crit, "name", "")
    if name in _GRADIENT:
        return _gradient_scores(model, targets, name, data, loss, max_batches)
    if crit.needs_data or crit.needs_loss:
        weight_only = [n for n in available("criterion") if n not in _GRADIENT and not _needs_data(n)]
        raise PruneError(
            f"criterion {name!r} needs the torch model's activations and is not available for Keras; "
            f"use one of {weight_only} or {list(_GRADIENT)}"
        )
    return crit.scores(Context(model=None, targets=targets, seed=seed))  # type: ignore[arg-type]


def _needs_data(name: str) -> bool:
    cls = get("criterion", name)
    return bool(cls.needs_data or cls.needs_loss)


def _batches(data: Any, max_batches: int | None) -> Iterable[tuple[Any, Any]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") for a in data):
        x, y = data
        if len(x) != len(y):
            raise PruneError(f"data=(x, y) needs as many labels as inputs, got {len(x)} and {len(y)}")
        data = [(x[i : i + _BATCH], y[i : i + _BATCH]) for i in range(0, len(x), _BATCH)]
    n = 0
    for batch in data:
        if max_batches is not None and n >= max_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise PruneError(f"each data batch must be (inputs, labels), got {type(batch).__name__}")
        n += 1
        yield batch[0], batch[1]
    if n == 0:
        raise PruneError("data yielded no batches")


def _gradient_scores(model, targets, name, data, loss, max_batches) -> dict[str, torch.Tensor]:
    """Mean over batches of |g| (gradient) or |w·g| (taylor), in torch layout."""
    if data is None:
        raise PruneError(f"criterion {name!r} needs data=(x, y) arrays or an iterable of (x, y) batches")
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise PruneError(f"criterion {name!r} needs a loss: pass loss='sparse_categorical_crossentropy' (or compile the model)")
    if keras.backend.backend() != "torch":
        # Keras has no backend-neutral gradient call; the torch one runs on the variables directly.
        raise PruneError(
            f"criterion {name!r} needs the torch Keras backend (KERAS_BACKEND=torch); this process uses "
            f"{keras.backend.backend()!r}. Weight-only criteria work on every backend"
        )
    loss_fn = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if not callable(loss_fn):
        raise PruneTypeError(f"loss must be a Keras loss name, function or Loss, got {type(loss).__name__}")
    params = [t.variable.value for t in targets]
    sums = [torch.zeros_like(t.original) for t in targets]
    n = 0
    for x, y in _batches(data, max_batches):
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        with torch.enable_grad():
            value = ops.mean(loss_fn(ops.convert_to_tensor(y), model(x, training=False)))
            if not bool(torch.isfinite(value)):
                raise PruneError(f"the loss is {float(value)} on a calibration batch; scores would be meaningless")
            grads = torch.autograd.grad(value, params, allow_unused=True)
        for s, t, g in zip(sums, targets, grads):
            if g is not None:
                g = torch.from_numpy(np.ascontiguousarray(t.to_torch(g.detach().cpu().float().numpy())))
                s.add_((g * t.original.float()).abs() if name == "taylor" else g.abs())
        n += 1
    out = {t.name: s / n for t, s in zip(targets, sums)}
    if name == "normalized_gradient":
        out = {k: s / torch.linalg.vector_norm(s) if torch.linalg.vector_norm(s) > 0 else s for k, s in out.items()}
    return out


# -- masks -----------------------------------------------------------------------------------
def _variable(model: Any, key: str) -> Any:
    layer_name, _, attr = key.rpartition("/")
    layer = next((l for l in _layers(model) if l.name == layer_name), None)
    var = getattr(layer, attr, None) if layer is not None and attr else None
    if var is None or not hasattr(var, "assign"):
        raise PruneError(f"mask key {key!r} names no weight of model {model.name!r}; keys look like 'dense/kernel'")
    return var


def apply_masks(model: Any, masks: Mapping[str, Any]) -> None:
    """Multiply each named weight by its 0/1 mask (``variable.assign(variable * mask)``).

    Args:
        model: the Keras model whose weights are masked in place.
        masks: ``{"layer/kernel": array}`` in the weights' shapes.
    """
    pairs = []
    for key, m in masks.items():
        var = _variable(model, key)
        if tuple(np.shape(m)) != tuple(var.shape):
            raise PruneError(f"mask {key!r} has shape {tuple(np.shape(m))}, the weight has {tuple(var.shape)}")
        pairs.append((var, m))
    for var, m in pairs:  # all checked first: a bad key leaves the model untouched
        var.assign(ops.multiply(var, ops.cast(ops.convert_to_tensor(m), var.dtype)))


def sparsity(model: Any, ignore: Iterable[str] = ()) -> float:
    """Fraction of zeros among the prunable weights of ``model``.

    Args:
        model: a built Keras model.
        ignore: layer names to leave out of the count.

    Returns:
        A float in [0, 1].
    """
    targets = _targets(model, ignore)
    total = sum(t.numel for t in targets)
    return sum(int((t.original == 0).sum()) for t in targets) / max(1, total)


def _output_layers(model: Any) -> set[str]:
    """Names of prunable layers whose units reach a model output through unprunable layers."""
    found: set[str] = set()
    todo = [getattr(o, "_keras_history", None) for o in keras.tree.flatten(_graph(model).outputs)]
    ops_ = [h.operation for h in todo if h is not None]
    seen: set[int] = set()
    while ops_:
        op = ops_.pop()
        if id(op) in seen:
            continue
        seen.add(id(op))
        if _weights_of(op):
            found.add(op.name)
            continue
        for node in op._inbound_nodes:
            ops_.extend(p.operation for p in node.parent_nodes)
    return found


def _graph(model: Any) -> Any:
    """The functional graph of a Sequential (built with an input) or functional model."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "outputs") or not graph.outputs:
        raise PruneTypeError(
            f"model {model.name!r} has no layer graph (subclassed, or a Sequential built without keras.Input); "
            "use a Sequential with keras.Input or a functional model"
        )
    return graph


# -- callbacks -------------------------------------------------------------------------------
class MaskEnforcer(keras.callbacks.Callback):
    """Re-applies masks after every training batch, so pruned weights stay exactly zero
    whatever the optimizer does (momentum and Adam moments keep pushing them).

    Args:
        masks: ``{"layer/kernel": 0/1 array}``, e.g. ``prune(...).masks``.
    """

    def __init__(self, masks: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.masks = dict(masks or {})
        self._tensors: list[tuple[Any, Any]] | None = None

    def _enforce(self) -> None:
        if not self.masks:
            return
        if self._tensors is None:  # backend tensors once per mask set, not per batch
            pairs = [(_variable(self.model, k), m) for k, m in self.masks.items()]
            for (var, m), key in zip(pairs, self.masks):
                if tuple(np.shape(m)) != tuple(var.shape):
                    raise PruneError(f"mask {key!r} has shape {tuple(np.shape(m))}, the weight has {tuple(var.shape)}")
            self._tensors = [(v, ops.cast(ops.convert_to_tensor(m), v.dtype)) for v, m in pairs]
        for var, m in self._tensors:
            var.assign(ops.multiply(var, m))

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._tensors = None  # the callback may be reused with another model
        self._enforce()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._enforce()


class PruningCallback(MaskEnforcer):
    """Prune during ``model.fit`` on a schedule, and keep the zeros after every batch.

    The step is counted in training batches seen by this callback (0 at its first batch),
    so a schedule's ``begin``/``end`` are relative to when pruning starts; ``step`` can be
    set to resume. Each re-pruning keeps every earlier zero.

    Args:
        schedule: a :mod:`prunekit.schedules` schedule (``Gradual(0.9, end=400, frequency=40)``)
            or its config dict with a ``"name"`` key.
        criterion, granularity, allocation, ignore, data, loss, min_keep, seed: as in :func:`prune`.
        masks: masks to start from (e.g. an earlier one-shot pruning).

    Attributes:
        step: the next training step. ``sparsity_``: the last sparsity reached.
    """

    def __init__(
        self,
        schedule: Schedule | Mapping[str, Any],
        *,
        criterion: str = "magnitude",
        granularity: str = "unstructured",
        allocation: str = "global",
        ignore: Iterable[str] = (),
        data: Any = None,
        loss: Any = None,
        min_keep: int = 1,
        seed: int = 0,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(masks)
        if isinstance(schedule, Mapping):
            cfg = dict(schedule)
            schedule = make_schedule(cfg.pop("name", None), **cfg)
        if not callable(schedule):
            raise PruneTypeError(f"schedule must be a prunekit Schedule or its config dict, got {type(schedule).__name__}")
        self.schedule = schedule
        self.criterion, self.granularity, self.allocation = criterion, granularity, allocation
        self.ignore = tuple(ignore) if not isinstance(ignore, str) else (ignore,)
        self.data, self.loss, self.min_keep, self.seed = data, loss, min_keep, seed
        self.step = 0
        self.sparsity_ = 0.0
        self._target = 0.0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        now, target = self.schedule(self.step)
        if now and target > self._target:
            result = prune(
                self.model, target, criterion=self.criterion, granularity=self.granularity,
                allocation=self.allocation, ignore=self.ignore, data=self.data, loss=self.loss,
                masks=self.masks, min_keep=self.min_keep, seed=self.seed,
            )
            self.masks = {**self.masks, **result.masks}
            self._tensors = None
            self._target, self.sparsity_ = target, result.sparsity

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._enforce()
        self.step += 1

    def get_config(self) -> dict[str, Any]:
        """JSON-able arguments (not data or masks); ``PruningCallback(**config)`` rebuilds it."""
        sched = {"name": getattr(self.schedule, "name", type(self.schedule).__name__), **self.schedule.get_config()}
        return {"schedule": sched, "criterion": self.criterion, "granularity": self.granularity,
                "allocation": self.allocation, "ignore": list(self.ignore), "min_keep": self.min_keep, "seed": self.seed}


# Surgery lives in its own module; imported last because it builds on the names above.
from .keras_surgery import remove_neurons, strip  # noqa: E402
