"""Keras 3 adapter foundation: backend choice, which layers are prunable, the weights of a
model as the core sees them (torch layout), what a call leaves out, and the layer graph.

The other ``keras_*`` modules build on these names; users import :mod:`prunekit.keras`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


def _default_backend() -> None:
    """Pick the torch backend unless the user chose one (``KERAS_BACKEND`` or an existing
    ``keras.json``) that is installed.

    Keras defaults to TensorFlow where no choice was made; torch is prunekit's own
    dependency, so it is the one backend always present.
    """
    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    import importlib.util
    import json

    path = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json")
    try:
        with open(path) as f:
            chosen = json.load(f).get("backend", "torch")
    except (OSError, ValueError):
        chosen = "torch"
    if importlib.util.find_spec(chosen) is None:
        chosen = "torch"
    os.environ["KERAS_BACKEND"] = chosen


_default_backend()

try:
    import keras
    from keras import ops
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("prunekit.keras needs Keras 3; install it with: pip install prunekit[keras]") from e
if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover
    raise ImportError(f"prunekit.keras needs Keras 3 (found {keras.__version__}): pip install prunekit[keras]")

import numpy as np
import torch

from ..coverage import Skipped
from ..errors import PruneError, PruneTypeError

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


# -- targets ---------------------------------------------------------------------------------
@dataclass
class KerasTarget:
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
        """Torch layout -> the variable's Keras layout (inverse of :meth:`to_torch`)."""
        shape = tuple(self.variable.shape)
        if isinstance(self.layer, L.Embedding):
            return a.reshape(shape)
        if isinstance(self.layer, L.DepthwiseConv2D):
            return a.transpose(1, 2, 0).reshape(shape)
        n = a.ndim
        return a.transpose((*range(2, n), 1, 0))


def unwrapped(layer: Any) -> Any:
    """The layer inside a :class:`~prunekit.adapters.keras_wrapper.PruneWrapper`, else ``layer``."""
    return layer.layer if getattr(type(layer), "holds_masks", False) is True else layer


def weights_of(layer: Any) -> list[str] | None:
    """Prunable weight names of ``layer`` (of the layer it wraps, for a prunekit wrapper);
    [] for nothing to prune; None if unsupported."""
    layer = unwrapped(layer)
    for cls in type(layer).__mro__:
        if cls in PRUNABLE:
            return PRUNABLE[cls]
    if isinstance(layer, NOTHING_TO_PRUNE) or not layer.weights:
        return []
    return None


def leaf_layers(model: Any) -> list[Any]:
    """Every leaf layer, nested models expanded, prunekit wrappers replaced by their layer."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and weights_of(layer) is None:
            out.extend(leaf_layers(layer))
        else:
            out.append(unwrapped(layer))
    return out


def check_model(model: Any) -> None:
    """Raise unless ``model`` is a built Keras 3 model."""
    if not isinstance(model, keras.Model):
        raise PruneTypeError(f"expected a Keras 3 keras.Model, got {type(model).__module__}.{type(model).__name__}")
    if not model.built or not model.weights:
        raise PruneError(f"model {model.name!r} is not built; call it on data or give it a keras.Input first")


def _short(var: Any, layer: Any) -> str:
    """``"layer/weight"`` for a variable of ``layer`` (the path below the layer for nested cells)."""
    parts = str(getattr(var, "path", var.name)).split("/")
    if layer.name in parts[:-1]:
        return "/".join(parts[parts.index(layer.name):])
    return f"{layer.name}/{var.name}"


def _listed(var: Any) -> bool:
    """Weight tensors a coverage lists: two or more dimensions (biases and scales are summarized)."""
    return len(var.shape) >= 2


def find_targets(model: Any, ignore: Iterable[str] = ()) -> tuple[list[KerasTarget], list[Skipped]]:
    """Prunable weights of ``model`` and the weight tensors left dense, each with why.

    Args:
        model: a built Keras model.
        ignore: names of layers to leave alone.

    Returns:
        ``(targets, skipped)``: targets in layer order; skipped weights of unsupported layer
        types, of ignored layers, and non-prunable weights of supported layers.
    """
    check_model(model)
    ignore = {ignore} if isinstance(ignore, str) else set(ignore)
    layers = leaf_layers(model)
    names = [l.name for l in layers]
    unknown = ignore - set(names)
    if unknown:
        raise PruneError(f"ignore= names layers not in the model: {sorted(unknown)}; layers are {names}")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise PruneError(f"layer names must be unique to key masks by name; duplicated: {sorted(dupes)}")
    targets: list[KerasTarget] = []
    skipped: list[Skipped] = []
    for layer in layers:
        attrs = weights_of(layer)
        kind = type(layer).__name__
        if layer.name in ignore:
            why = "ignore= names its layer"
            skipped += [Skipped(_short(w, layer), int(np.prod(w.shape)), why, True) for w in layer.weights if _listed(w)]
            continue
        if attrs is None:
            reason = f"layer type {kind} is not supported by prunekit.keras"
            skipped += [Skipped(_short(w, layer), int(np.prod(w.shape)), reason) for w in layer.weights if _listed(w)]
            continue
        chosen = [getattr(layer, a) for a in attrs]
        for w in layer.trainable_weights:
            if _listed(w) and not any(w is c for c in chosen):
                reason = (
                    f"layer type {kind} is left dense by design (NOTHING_TO_PRUNE)" if not attrs
                    else f"weight of {kind} that prunekit.keras does not prune (PRUNABLE lists {attrs})"
                )
                skipped.append(Skipped(_short(w, layer), int(np.prod(w.shape)), reason))
        for attr, var in zip(attrs, chosen):
            t = KerasTarget(f"{layer.name}/{attr}", layer, var, torch.empty(0), 1 if isinstance(layer, L.Embedding) else 0)
            t.original = torch.from_numpy(np.ascontiguousarray(t.to_torch(to_numpy(var))))
            if t.numel:
                targets.append(t)
    return targets, skipped


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy of a variable or tensor."""
    v = getattr(x, "value", x)
    if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16:
        # Torch backend: Keras's own conversion trips numpy 2's copy-keyword deprecation.
        return v.detach().cpu().numpy().copy()
    return np.array(ops.convert_to_numpy(x))


def total_params(model: Any) -> int:
    """Elements in every weight of ``model`` (trainable or not), as ``count_params``."""
    return int(model.count_params())


def variable(model: Any, key: str) -> Any:
    """The variable named ``"layer/attr"``; raise naming the key otherwise."""
    layer_name, _, attr = key.rpartition("/")
    layer = next((l for l in leaf_layers(model) if l.name == layer_name), None)
    var = getattr(layer, attr, None) if layer is not None and attr else None
    if var is None or not hasattr(var, "assign"):
        raise PruneError(f"mask key {key!r} names no weight of model {model.name!r}; keys look like 'dense/kernel'")
    return var


# -- graph -----------------------------------------------------------------------------------
def functional_graph(model: Any) -> Any:
    """The functional graph of a Sequential (built with an input) or functional model."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "outputs") or not graph.outputs:
        raise PruneTypeError(
            f"model {model.name!r} has no layer graph (subclassed, or a Sequential built without keras.Input); "
            "use a Sequential with keras.Input or a functional model"
        )
    return graph


@dataclass
class GraphView:
    """The layer graph of one model, from its own nodes only.

    A layer object may carry nodes from other graphs (a model loaded from a file records
    one for its original build and one for the load; a layer reused in two models has
    one per model). Walking back from this model's outputs sees exactly its own.

    Attributes:
        consumers: operation id -> operations reading its output in this graph.
        producers: operation id -> operations whose outputs it reads in this graph.
        uses: operation id -> how many times the operation is called in this graph.
        inputs: operation id -> the input tensors of its (first) call in this graph.
        outputs: ids of operations producing a model output.
        operations: every operation of this graph, in the graph's order.
    """

    consumers: dict[int, list[Any]]
    producers: dict[int, list[Any]]
    uses: dict[int, int]
    inputs: dict[int, list[Any]]
    outputs: set[int]
    operations: list[Any]


def graph_view(model: Any) -> GraphView:
    """The :class:`GraphView` of ``model`` (Sequential with an input, or functional)."""
    graph = functional_graph(model)
    heads = [getattr(o, "_keras_history", None) for o in keras.tree.flatten(graph.outputs)]
    outputs = {id(h.operation) for h in heads if h is not None}
    consumers: dict[int, list[Any]] = {}
    producers: dict[int, list[Any]] = {}
    uses: dict[int, int] = {}
    inputs: dict[int, list[Any]] = {}
    order: list[Any] = []
    seen: set[int] = set()
    todo = [h for h in heads if h is not None]
    while todo:
        op, index, _ = todo.pop()
        node = op._inbound_nodes[index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        uses[id(op)] = uses.get(id(op), 0) + 1
        if id(op) not in inputs:
            order.append(op)
        tensors = keras.tree.flatten(node.input_tensors)
        inputs.setdefault(id(op), tensors)
        for t in tensors:
            h = getattr(t, "_keras_history", None)
            if h is None:
                continue
            users = consumers.setdefault(id(h.operation), [])
            if not any(u is op for u in users):
                users.append(op)
            producers.setdefault(id(op), []).append(h.operation)
            todo.append(h)
    known = [op for op in getattr(graph, "operations", []) if id(op) in uses]  # the graph's own order
    rest = [op for op in order[::-1] if not any(op is k for k in known)]
    return GraphView(consumers, producers, uses, inputs, outputs, known + rest)


def output_layers(model: Any) -> set[str]:
    """Names of prunable layers whose units reach a model output through unprunable layers."""
    view = graph_view(model)
    by_id = {id(op): op for op in view.operations}
    found: set[str] = set()
    todo = [by_id[i] for i in view.outputs if i in by_id]
    seen: set[int] = set()
    while todo:
        op = todo.pop()
        if id(op) in seen:
            continue
        seen.add(id(op))
        if weights_of(op):
            found.add(op.name)
            continue
        todo.extend(view.producers.get(id(op), []))
    return found


# -- calibration data ------------------------------------------------------------------------
_BATCH = 128  # rows per calibration batch when data is given as whole arrays


def batches(data: Any, max_batches: int | None, labels: bool = True) -> Iterator[tuple[Any, Any]]:
    """``(x, y)`` batches from ``(x, y)`` arrays, an iterable of batches, or (``labels=False``)
    an input array alone."""
    if labels is False and hasattr(data, "shape"):
        data = (data, np.zeros(len(data)))
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") for a in data):
        x, y = data
        if len(x) != len(y):
            raise PruneError(f"data=(x, y) needs as many labels as inputs, got {len(x)} and {len(y)}")
        data = [(x[i : i + _BATCH], y[i : i + _BATCH]) for i in range(0, len(x), _BATCH)]
    n = 0
    for batch in data:
        if max_batches is not None and n >= max_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < (2 if labels else 1):
            raise PruneError(f"each data batch must be (inputs, labels), got {type(batch).__name__}")
        n += 1
        yield batch[0], (batch[1] if len(batch) > 1 else None)
    if n == 0:
        raise PruneError("data yielded no batches")
