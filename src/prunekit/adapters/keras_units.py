"""Which units :func:`prunekit.keras.remove_neurons` can remove: channel groups over the
whole layer graph, nested models included.

Every channel (last-axis entry) of every tensor gets an id. Ids that must go together are
joined (union-find): a layer's unit with the same unit at every call of that layer; the
inputs of an Add (or Subtract, Multiply, Average, Maximum, Minimum) channel by channel; a
pass-through layer's input and output channel; the input rows of a Dense/Conv, or the
entries of a BatchNormalization/DepthwiseConv2D, with the channels of every call. A
Concatenate lays its inputs' ids side by side; a Flatten repeats them per position. A
group goes when every unit in it is dead (an all-zero kernel column: a constant output),
it reaches no model output and no layer removal does not pass through, and every
Dense/Conv reading it can fold the group's constant into its bias. Constants (NaN: not
constant) are followed through the graph alongside the ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .keras_base import L, functional_graph, keras, leaf_layers, ops, to_numpy

__all__ = ["UnitPlan", "plan_removal"]

SHRINK = (L.Dense, L.Conv1D, L.Conv2D)  # layers whose units can be removed
_ELEMENTWISE = tuple(getattr(L, n) for n in ("Activation", "ReLU", "LeakyReLU", "ELU") if hasattr(L, n))
_IDENTITY = tuple(getattr(L, n) for n in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
                  "GaussianDropout", "Identity") if hasattr(L, n))  # identity at inference
_POOL = tuple(getattr(L, n) for n in ("MaxPooling1D", "MaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
              "GlobalMaxPooling1D", "GlobalMaxPooling2D") if hasattr(L, n))  # keep constants constant
_MERGE = {L.Add: np.sum, L.Subtract: lambda c, axis: c[0] - c[1], L.Multiply: np.prod, L.Average: np.mean,
          L.Maximum: np.max, L.Minimum: np.min}
_PASSES = ("activations, dropout, BatchNormalization, max/global pooling, Flatten, Add/Subtract/Multiply/Average/"
           "Maximum/Minimum, Concatenate on the last axis, DepthwiseConv2D and nested models")


@dataclass
class UnitPlan:
    """What to cut: kept entries per layer, constants to fold, new input widths.

    Attributes:
        units: Dense/Conv layer -> kept units (last axis of kernel and bias).
        rows: Dense/Conv layer -> kept input rows (kernel axis -2).
        channels: BatchNormalization/DepthwiseConv2D layer -> kept channels.
        fold: Dense/Conv layer -> added to its bias (constants of the removed inputs).
        widths: nested model -> last dimension of each of its inputs (flattened order).
        changes: ``(layer, before, after, dead, note)`` per Dense/Conv/DepthwiseConv2D layer,
            and per Embedding with dead (all-zero) dimensions, which stay.
    """

    units: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    channels: dict[str, np.ndarray] = field(default_factory=dict)
    fold: dict[str, np.ndarray] = field(default_factory=dict)
    widths: dict[str, list[int]] = field(default_factory=dict)
    changes: list[tuple[str, int, int, int, str]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(b - a for _, b, a, _, _ in self.changes)

    def slice(self, layer: Any, attr: str, a: np.ndarray) -> np.ndarray:
        """Weight (or mask) ``attr`` of ``layer`` cut to the smaller model's shape."""
        name = layer.name
        if name in self.units:
            if attr == "kernel":
                a = a[..., self.rows[name], :] if name in self.rows else a
                return a[..., self.units[name]]
            return a[self.units[name]] if attr == "bias" else a
        if name in self.channels:
            keep = self.channels[name]
            return a[..., keep, :] if attr == "kernel" else a[keep]
        return a


def _nodes(graph: Any) -> list[Any]:
    """The nodes of ``graph`` (walked back from its outputs), inputs before their users."""
    def node_of(t: Any) -> Any:
        h = t._keras_history
        return h.operation._inbound_nodes[h.node_index]

    order: list[Any] = []
    done: set[int] = set()
    stack = [(node_of(t), False) for t in reversed(keras.tree.flatten(graph.outputs))]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        stack += [(node_of(t), False) for t in reversed(keras.tree.flatten(node.input_tensors))]
    return order


def _mixing(fn: Any) -> str:
    """The name of activation ``fn`` when it mixes the units of a layer (softmax), else ""."""
    name = getattr(fn, "__name__", "")
    return name if name in ("softmax", "log_softmax", "sparsemax", "glu") else ""


def _act(fn: Any, v: np.ndarray) -> np.ndarray:
    """``fn`` applied to the finite entries of ``v`` (NaN stays NaN)."""
    nan = np.isnan(v)
    out = to_numpy(fn(ops.convert_to_tensor(np.where(nan, 0, v)[None].astype(np.float32))))[0]
    return np.where(nan, np.nan, out.astype(np.float64))


class _Walk:
    """One pass over the graph: ids, unions, pins (with why) and constants."""

    def __init__(self, arrays: dict[str, list[np.ndarray]], atol: float) -> None:
        self.arrays, self.atol = arrays, atol
        self.parent: list[int] = []
        self.pins: list[tuple[np.ndarray, str | None]] = []  # ids whose groups stay, and why
        self.units: dict[str, np.ndarray] = {}
        self.const: dict[str, np.ndarray] = {}  # layer -> act(bias) of its units
        self.dead: dict[str, np.ndarray] = {}
        self.slots: dict[str, np.ndarray] = {}  # input rows / channels of a layer, joined over calls
        self.first: dict[str, np.ndarray] = {}  # constants at a Dense/Conv's first call
        self.layers: dict[str, Any] = {}  # reported layers, in graph order
        self.refused: dict[str, str] = {}  # layer -> why a call of it is not passed through
        self.models: dict[str, list[np.ndarray]] = {}  # nested model -> ids of its inputs, joined over calls

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[rx] = ry

    def pin(self, ids: np.ndarray, why: str | None) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            self.pins.append((ids, why))

    def roots(self) -> np.ndarray:
        """The group (root id) of every id."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def slot(self, name: str, ids: np.ndarray) -> None:
        if name in self.slots:
            self.union(self.slots[name], ids)
        else:
            self.slots[name] = ids.copy()

    def fresh(self, t: Any, why: str) -> tuple[np.ndarray, np.ndarray]:
        n = int(t.shape[-1]) if len(t.shape) and t.shape[-1] is not None else 0
        ids = self.new(n)
        self.pin(ids, why)
        return ids, np.full(n, np.nan)

    # -- the graph -----------------------------------------------------------------------
    def run(self, graph: Any, values: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        vals = {id(t): v for t, v in zip(keras.tree.flatten(graph.inputs), values)}
        for node in _nodes(graph):
            op = node.operation
            if isinstance(op, L.InputLayer):
                continue
            ins = [vals[id(t)] for t in keras.tree.flatten(node.input_tensors)]
            outs = keras.tree.flatten(node.output_tensors)
            if type(op) in SHRINK or type(op) is L.DepthwiseConv2D:
                self.layers.setdefault(op.name, op)
            res = self.call(op, node, ins)
            if isinstance(res, str):  # not passed through: its inputs and outputs stay
                self.refused.setdefault(op.name, res)
                for ids, _ in ins:
                    self.pin(ids, f"feeds {op.name!r}, {res}")
                res = [self.fresh(t, f"joined with the output of {op.name!r} ({type(op).__name__})") for t in outs]
            vals.update((id(t), v) for t, v in zip(outs, res))
        return [vals[id(t)] for t in keras.tree.flatten(graph.outputs)]

    def call(self, op: Any, node: Any, ins: list) -> list | str:
        """Ids and constants of the outputs of one call of ``op``, or why it is not passed."""
        kind = type(op).__name__
        shapes = [t.shape for t in keras.tree.flatten(node.input_tensors)]
        if isinstance(op, keras.Model):
            return self.nested(op, ins)
        if any(len(s) == 0 or s[-1] is None for s in shapes):
            return f"a {kind} whose input has no known last dimension"
        if getattr(op, "data_format", "channels_last") != "channels_last":
            return f"a {kind} with data_format={op.data_format!r} (removal needs channels_last)"
        if type(op) in _MERGE:
            if len({len(i[0]) for i in ins}) != 1 or len({len(s) for s in shapes}) != 1:
                return f"a {kind} of inputs of different shapes"
            for ids, _ in ins[1:]:
                self.union(ins[0][0], ids)
            return [(ins[0][0], _MERGE[type(op)](np.stack([c for _, c in ins]), axis=0))]
        if isinstance(op, L.Concatenate):
            if op.axis not in (-1, len(shapes[0]) - 1):
                return f"a Concatenate on axis {op.axis} (removal needs the last axis)"
            return [(np.concatenate([i for i, _ in ins]), np.concatenate([c for _, c in ins]))]
        if len(ins) != 1:
            return f"a {kind} with {len(ins)} inputs"
        (ids, c), shape = ins[0], shapes[0]
        if type(op) in SHRINK:
            return self.shrink(op, ids, c)
        if type(op) is L.DepthwiseConv2D:
            return self.depthwise(op, ids, c)
        if isinstance(op, L.BatchNormalization):
            if op.axis not in (-1, len(shape) - 1):
                return f"a BatchNormalization of axis {op.axis}, not the channels"
            self.slot(op.name, ids)
            ws = dict(zip([w.name for w in op.weights], self.arrays[op.name]))
            out = (c - ws["moving_mean"]) / np.sqrt(ws["moving_variance"] + op.epsilon)
            return [(ids, out * ws.get("gamma", 1.0) + ws.get("beta", 0.0))]
        if isinstance(op, _ELEMENTWISE):
            if _mixing(getattr(op, "activation", None)):
                return f"an Activation {_mixing(op.activation)!r}, which mixes channels"
            return [(ids, _act(op, c))]
        if isinstance(op, _IDENTITY + _POOL):
            return [(ids, c)]
        if isinstance(op, L.Flatten):
            if any(d is None for d in shape[1:-1]):
                return "a Flatten of an input with unknown spatial size"
            positions = int(np.prod(shape[1:-1]))  # (position, channel) entries, channels fastest
            return [(np.tile(ids, positions), np.tile(c, positions))]
        return f"a {kind}, which removal does not pass through (it passes {_PASSES})"

    def nested(self, model: Any, ins: list) -> list | str:
        graph = functional_graph(model)
        inputs = keras.tree.flatten(graph.inputs)
        if len(inputs) != len(ins):
            return f"a nested model called with {len(ins)} inputs for its {len(inputs)}"
        if model.name in self.models:  # a model called twice takes the same widths
            for known, (ids, _) in zip(self.models[model.name], ins):
                self.union(known, ids)
        else:
            self.models[model.name] = [ids.copy() for ids, _ in ins]
        return self.run(graph, ins)

    def shrink(self, op: Any, ids: np.ndarray, c: np.ndarray) -> list | str:
        name = op.name
        if getattr(op, "lora_enabled", False) or getattr(op, "groups", 1) != 1:
            return f"a {type(op).__name__} with LoRA or groups, whose input rows removal does not cut"
        kernel = self.arrays[name][0]
        n_in, n_out = kernel.shape[-2], kernel.shape[-1]
        if len(ids) != n_in:
            return f"a {type(op).__name__} reading {len(ids)} channels for its {n_in} input rows"
        self.slot(name, ids)
        matters = np.any(kernel.reshape(-1, n_in, n_out) != 0, axis=(0, 2))  # zero rows absorb anything
        finite = ~np.isnan(c)
        self.pin(ids[~finite], None)
        padding = getattr(op, "padding", "valid")
        if padding != "valid":
            self.pin(ids[finite & matters & (c != 0)],
                     f"{name!r} pads its input ({padding!r}): only units whose constant output is 0 go")
        if not op.use_bias:
            self.pin(ids[finite & matters & (c != 0)],
                     f"{name!r} has no bias to absorb the constant output (act(bias)) of the removed units")
        if name in self.first:
            same = np.isclose(c, self.first[name], rtol=1e-6, atol=0.0, equal_nan=True)
            both = finite & ~np.isnan(self.first[name])  # NaN: pinned already, for another reason
            self.pin(ids[matters & both & ~same], f"{name!r} is shared and would need different constant folds at its calls")
        else:
            self.first[name] = c
        if name not in self.units:
            self.units[name] = self.new(n_out)
            self.dead[name] = np.all(np.abs(kernel.reshape(-1, n_out)) <= self.atol, axis=0)
            bias = self.arrays[name][1] if op.use_bias else np.zeros(n_out)
            self.const[name] = _act(keras.activations.get(op.activation), bias.astype(np.float64))
            self.pin(self.units[name][~self.dead[name]], f"joined with live units of {name!r}")
            if _mixing(op.activation):  # every unit's output depends on all units
                self.pin(self.units[name], f"{name!r} has a {_mixing(op.activation)} activation, which mixes its units")
        return [(self.units[name], np.where(self.dead[name], self.const[name], np.nan))]

    def depthwise(self, op: Any, ids: np.ndarray, c: np.ndarray) -> list | str:
        kernel = self.arrays[op.name][0]
        if op.depth_multiplier != 1:
            return f"a DepthwiseConv2D with depth_multiplier {op.depth_multiplier} (removal needs 1)"
        if _mixing(op.activation):
            return f"a DepthwiseConv2D with a {_mixing(op.activation)} activation, which mixes channels"
        self.slot(op.name, ids)
        bias = self.arrays[op.name][1] if op.use_bias else np.zeros(kernel.shape[2])
        act = keras.activations.get(op.activation)
        if op.padding == "valid":  # every output position sees the constant times the whole kernel
            return [(ids, _act(act, c * kernel.sum(axis=(0, 1, 3)) + bias))]
        zero = c == 0
        self.pin(ids[~zero & ~np.isnan(c)],
                 f"{op.name!r} pads its input ({op.padding!r}): only channels whose constant is 0 pass it")
        return [(ids, np.where(zero, _act(act, bias.astype(np.float64)), np.nan))]


def plan_removal(model: Any, arrays: dict[str, list[np.ndarray]], atol: float) -> UnitPlan:
    """Decide which units of ``model`` go, given its weights ``arrays`` (masks applied).

    Args:
        model: a built Sequential or functional model (nested models allowed).
        arrays: layer name -> its weights as numpy arrays (leaf layers, unique names).
        atol: kernel entries with ``|w| <= atol`` count as zero.

    Returns:
        A :class:`UnitPlan`; the weights in ``arrays`` are not changed.
    """
    walk = _Walk(arrays, atol)
    graph = functional_graph(model)
    start = [walk.fresh(t, "joined with a model input") for t in keras.tree.flatten(graph.inputs)]
    for ids, _ in walk.run(graph, start):
        walk.pin(ids, "its units reach a model output")
    for name, why in walk.refused.items():  # every call of a layer cut or none
        for ids in (walk.units.get(name), walk.slots.get(name)):
            walk.pin(ids if ids is not None else [], f"{name!r} is {why}")
    root = walk.roots()
    pinned = np.zeros(len(root), dtype=bool)
    for ids, _ in walk.pins:
        pinned[root[ids]] = True

    def gone(ids: np.ndarray) -> np.ndarray:
        return ~pinned[root[ids]]

    for name, ids in walk.units.items():  # a layer keeps at least one unit
        if gone(ids).all():
            j = int(np.argmax(np.abs(np.nan_to_num(walk.const[name]))))
            walk.pin(ids[j:j + 1], "a layer keeps at least one unit")
            pinned[root[ids[j]]] = True
    reasons: dict[int, list[str]] = {}
    for ids, why in walk.pins:
        for r in np.unique(root[ids]).tolist() if why is not None else ():
            listed = reasons.setdefault(r, [])
            if why not in listed:
                listed.append(why)

    plan = UnitPlan()
    for name, ids in walk.slots.items():
        keep = ~gone(ids)
        if name in walk.units:
            plan.rows[name] = keep
            if not keep.all():
                kernel = arrays[name][0]
                k = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])[:, ~keep, :]
                plan.fold[name] = np.einsum("kio,i->o", k.astype(np.float64), walk.first[name][~keep])
        else:
            plan.channels[name] = keep
    for name, ids in walk.models.items():
        plan.widths[name] = [int((~gone(i)).sum()) for i in ids]
    for name in walk.layers:
        kernel = arrays[name][0]
        n = kernel.shape[-1] if name in walk.units else kernel.shape[-2] * kernel.shape[-1]
        dead = np.all(np.abs(kernel.reshape(-1, n)) <= atol, axis=0)
        ids = walk.units.get(name, walk.slots.get(name))
        if ids is None:  # never passed through: its dead units (output channels, or depthwise in × mult columns)
            if not isinstance(walk.layers[name], L.DepthwiseConv2D):
                n = kernel.shape[-1]
                dead = np.all(np.abs(kernel.reshape(-1, n)) <= atol, axis=0)
            note = f"{name!r} is {walk.refused[name]}" if dead.any() else ""
            plan.changes.append((name, n, n, int(dead.sum()), note))
            continue
        keep = ~gone(ids)
        if name in walk.units:
            plan.units[name] = keep
        stay = np.unique(root[ids[dead & keep]]).tolist()
        whys: list[str] = []
        for r in stay:
            whys += [w for w in reasons.get(r, []) if w not in whys]
        if stay and not whys:
            whys = ["its constant output does not reach every consumer unchanged"]
        note = "; ".join(whys[:3]) + ("; ..." if len(whys) > 3 else "")
        plan.changes.append((name, len(ids), int(keep.sum()), int(dead.sum()), note))
    kept = []  # channel pruning zeroes Embedding dimensions, which stay: listed, with why
    for layer in leaf_layers(model):
        if isinstance(layer, L.Embedding) and layer.name in arrays and layer.name not in walk.layers:
            table = arrays[layer.name][0]
            dead = int(np.all(np.abs(table.reshape(-1, table.shape[-1])) <= atol, axis=0).sum())
            if dead:
                kept.append((layer.name, table.shape[-1], table.shape[-1], dead,
                             "Embedding dimensions are not removed (only Dense/Conv units and depthwise channels are)"))
    plan.changes[:0] = kept
    return plan
