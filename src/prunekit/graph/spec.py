"""Architectures as data: a ``torch.fx`` graph written as JSON, rebuilt without the class.

``describe(model)`` traces ``model`` symbolically (``torch.fx``) and writes every node as
plain JSON: placeholders, calls of submodules (their type and constructor arguments, read
back from the module's attributes), calls of functions (by qualified name, from an
allowlist of ``torch``, ``torch.nn.functional``, ``operator`` and builtins), tensor method
calls, attribute reads and the output. ``build(spec)`` turns it back into a
``torch.fx.GraphModule`` with the same parameter names, ready for the saved weights.
Nothing is executed from the file: function names resolve only within the allowlist, and
module types only among the supported ones; anything else is refused when saving.
"""

from __future__ import annotations

import builtins
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import PruneError
from ..layers import ConstantOutput, EmptyOutput, PrunedLayerNorm, PrunedMultiheadAttention
from ..masking import effective_state_dict, original, parametrized_names, plain_class

FORMAT = 1

_RNN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")

# Module type -> the constructor arguments read back from its attributes.
_MODULES: dict[str, tuple[type, tuple[str, ...]]] = {
    "Conv1d": (nn.Conv1d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode")),
    "Conv2d": (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode")),
    "Conv3d": (nn.Conv3d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode")),
    **{
        f"ConvTranspose{k}d": (getattr(nn, f"ConvTranspose{k}d"), (
            "in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups", "bias",
            "dilation", "padding_mode"))
        for k in (1, 2, 3)
    },
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm3d": (nn.BatchNorm3d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
    "RMSNorm": (nn.RMSNorm, ("normalized_shape", "eps", "elementwise_affine")),
    "Embedding": (nn.Embedding, ("num_embeddings", "embedding_dim", "padding_idx")),
    "ReLU": (nn.ReLU, ()), "ReLU6": (nn.ReLU6, ()), "GELU": (nn.GELU, ("approximate",)), "SiLU": (nn.SiLU, ()),
    "Sigmoid": (nn.Sigmoid, ()), "Tanh": (nn.Tanh, ()), "Hardswish": (nn.Hardswish, ()), "Identity": (nn.Identity, ()),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope",)), "ELU": (nn.ELU, ("alpha",)), "Mish": (nn.Mish, ()),
    "Softmax": (nn.Softmax, ("dim",)), "LogSoftmax": (nn.LogSoftmax, ("dim",)), "Dropout": (nn.Dropout, ("p",)),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Unflatten": (nn.Unflatten, ("dim", "unflattened_size")),
    "MaxPool1d": (nn.MaxPool1d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool1d": (nn.AvgPool1d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, ("output_size",)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size",)),
    "MaxPool3d": (nn.MaxPool3d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool3d": (nn.AvgPool3d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    "AdaptiveAvgPool3d": (nn.AdaptiveAvgPool3d, ("output_size",)),
    "Upsample": (nn.Upsample, ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")),
    "LSTM": (nn.LSTM, _RNN_ARGS + ("proj_size",)),
    "GRU": (nn.GRU, _RNN_ARGS),
    "RNN": (nn.RNN, _RNN_ARGS + ("nonlinearity",)),
}
_FUNC_MODULES = {"torch": torch, "torch.nn.functional": F, "operator": operator, "builtins": builtins}
_BUILTINS = {"getattr", "len", "slice", "int", "float", "range"}


def _module_entry(module: nn.Module, path: str) -> dict[str, Any]:
    cls = plain_class(module)
    if cls is PrunedMultiheadAttention:
        m = module
        init = {"embed_dim": m.embed_dim, "num_heads": m.num_heads, "head_dim": m.head_dim,
                "bias": m.in_proj_bias is not None, "batch_first": m.batch_first, "dropout": m.dropout}
        return {"type": "PrunedMultiheadAttention", "init": init}
    if cls is PrunedLayerNorm:
        m = module
        init = {"normalized_shape": m.normalized_shape[0], "statistics_width": m.statistics_width, "eps": m.eps,
                "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}
        return {"type": "PrunedLayerNorm", "init": init}
    if cls in (EmptyOutput, ConstantOutput):  # a layer left with no channels (a block removed whole)
        m = module
        init = {"ndim": m.ndim, "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding),
                "dilation": list(m.dilation), "same": m.same}
        if cls is ConstantOutput:
            init = {"channels": m.channels, **init}
        return {"type": cls.__name__, "init": init}
    if cls is nn.MultiheadAttention:
        m = module
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise PruneError(f"{path}: this nn.MultiheadAttention setup cannot be described as data")
        init = {"embed_dim": m.embed_dim, "num_heads": m.num_heads, "dropout": m.dropout,
                "bias": m.in_proj_bias is not None, "batch_first": m.batch_first}
        return {"type": "MultiheadAttention", "init": init}
    name = cls.__name__
    if name not in _MODULES or _MODULES[name][0] is not cls:
        raise PruneError(
            f"{path} is a {cls.__module__}.{cls.__qualname__}, which the architecture spec cannot describe; "
            f"supported: {sorted(_MODULES) + ['MultiheadAttention', 'PrunedLayerNorm']}. Load such models with pk.load(path, model=...)"
        )
    if isinstance(module, nn.LSTM) and module.proj_size >= module.hidden_size > 0:
        raise PruneError(
            f"{path}: nn.LSTM with proj_size={module.proj_size} >= hidden_size={module.hidden_size} (left by pruning) "
            "cannot be rebuilt by its constructor; load it with pk.load(path, model=...)"
        )
    init = {}
    for a in _MODULES[name][1]:
        v = getattr(module, a)
        if a == "bias":  # recurrent layers keep a flag, other layers a tensor or None
            v = v if isinstance(v, bool) else v is not None
        init[a] = _to_json(v, path)
    return {"type": name, "init": init}


def _to_json(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list, torch.Size)):
        return {"tuple" if not isinstance(v, list) else "list": [_to_json(x, where) for x in v]}
    if isinstance(v, slice):
        return {"slice": [_to_json(v.start, where), _to_json(v.stop, where), _to_json(v.step, where)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, dict):
        return {"dict": {k: _to_json(x, where) for k, x in v.items()}}
    raise PruneError(f"{where}: a {type(v).__name__} argument cannot be written as data")


def _from_json(v: Any, nodes: dict[str, fx.Node]) -> Any:
    if not isinstance(v, dict):
        return v
    if "node" in v:
        return nodes[v["node"]]
    if "tuple" in v:
        return tuple(_from_json(x, nodes) for x in v["tuple"])
    if "list" in v:
        return [_from_json(x, nodes) for x in v["list"]]
    if "slice" in v:
        return slice(*(_from_json(x, nodes) for x in v["slice"]))
    if "ellipsis" in v:
        return Ellipsis
    if "dtype" in v:
        d = getattr(torch, v["dtype"], None)
        if not isinstance(d, torch.dtype):
            raise PruneError(f"unknown dtype {v['dtype']!r} in the architecture spec")
        return d
    if "dict" in v:
        return {k: _from_json(x, nodes) for k, x in v["dict"].items()}
    raise PruneError(f"unreadable argument {v!r} in the architecture spec")


def _func_name(f: Any, where: str) -> str:
    for mod_name, mod in _FUNC_MODULES.items():
        name = getattr(f, "__name__", None)
        if name and getattr(mod, name, None) is f and (mod_name != "builtins" or name in _BUILTINS):
            return f"{mod_name}.{name}"
    raise PruneError(f"{where}: function {f!r} is outside what the architecture spec may name (torch, F, operator)")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaves = (nn.MultiheadAttention, PrunedMultiheadAttention, PrunedLayerNorm, EmptyOutput, ConstantOutput)
        return isinstance(m, leaves) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, training: bool) -> fx.Graph:
    """The graph of ``model``'s forward with every module in train or eval mode (restored after)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train(training)
        return _Tracer().trace(model)
    except Exception as e:
        raise PruneError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e})") from e
    finally:
        for m, mode in modes.items():
            m.training = mode


def _signature(graph: fx.Graph) -> list[str]:
    return [f"{n.op} {n.target} {n.args} {n.kwargs}" for n in graph.nodes]


def _tied(model: nn.Module, paths: list[str]) -> dict[str, str]:
    """``{alias: first name}`` for the weights of the modules at ``paths`` that are one tensor."""
    modules = dict(model.named_modules())
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for path in paths:
        mod = modules[path]
        names = [n for n, _ in mod.named_parameters(recurse=False)] + parametrized_names(mod)
        for name in dict.fromkeys(names):
            t = original(mod, name)
            if t is None:
                continue
            full = f"{path}.{name}"
            if id(t) in first:
                out[full] = first[id(t)]
            else:
                first[id(t)] = full
    return out


def describe(model: nn.Module) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-ready data (raises ``PruneError`` if it cannot be).

    The forward is traced in eval mode; one whose graph differs in train mode (a Python
    branch on ``self.training``) cannot be written as one graph and is refused. Weights that
    several modules share are recorded as one (``tied``), and state the forward never reads
    (an unused head, a buffer of counts) as plain tensors, so that a load finds every key.
    """
    graph = _trace(model, False)
    if _signature(graph) != _signature(_trace(model, True)):
        raise PruneError(f"{type(model).__name__}.forward computes a different graph in train and eval mode (a branch "
                         "on self.training), which one architecture spec cannot hold")
    modules = dict(model.named_modules())
    nodes, used = [], {}
    for n in graph.nodes:
        entry: dict[str, Any] = {"name": n.name, "op": n.op}
        if n.op == "call_module":
            used[n.target] = _module_entry(modules[n.target], n.target)
            entry["target"] = n.target
        elif n.op == "call_function":
            entry["target"] = _func_name(n.target, n.name)
        elif n.op in ("call_method", "placeholder", "get_attr", "output"):
            entry["target"] = str(n.target)
        entry["args"] = _to_json(tuple(n.args), n.name)
        entry["kwargs"] = _to_json(dict(n.kwargs), n.name)
        nodes.append(entry)
    attrs = {}
    for n in graph.nodes:
        if n.op == "get_attr":
            t = model.get_parameter(n.target) if n.target in dict(model.named_parameters()) else model.get_buffer(n.target)
            attrs[n.target] = {"shape": list(t.shape), "parameter": isinstance(t, nn.Parameter),
                               "dtype": str(t.dtype).removeprefix("torch.")}
    buffers = {k for k, _ in model.named_buffers()}
    for key, t in effective_state_dict(model).items():  # state the forward never reads
        if key not in attrs and not any(key.startswith(p + ".") for p in used):
            attrs[key] = {"shape": list(t.shape), "parameter": key not in buffers, "dtype": str(t.dtype).removeprefix("torch.")}
    spec = {"format": FORMAT, "modules": used, "attributes": attrs, "nodes": nodes}
    tied = _tied(model, list(used))
    if tied:
        spec["tied"] = tied
    return spec


def build(spec: dict[str, Any]) -> fx.GraphModule:
    """Rebuild the module that :func:`describe` wrote (weights uninitialized: load them)."""
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise PruneError(f"architecture spec format {spec.get('format') if isinstance(spec, dict) else spec!r} is not {FORMAT}")
    root = nn.Module()

    def place(path: str, value: Any, into: nn.Module = root) -> None:
        owner = into
        *parents, last = path.split(".")
        for p in parents:
            if not hasattr(owner, p):
                owner.add_module(p, nn.Module())
            owner = getattr(owner, p)
        if isinstance(value, nn.Module):
            owner.add_module(last, value)
        elif value[1]:
            owner.register_parameter(last, nn.Parameter(value[0]))
        else:
            owner.register_buffer(last, value[0])

    for path, m in spec.get("modules", {}).items():
        kind, init = m.get("type"), dict(m.get("init", {}))
        if kind == "PrunedMultiheadAttention":
            module: nn.Module = PrunedMultiheadAttention(**init)
        elif kind == "PrunedLayerNorm":
            module = PrunedLayerNorm(**init)
        elif kind == "EmptyOutput":
            module = EmptyOutput(**init)
        elif kind == "ConstantOutput":
            module = ConstantOutput(**init)
        elif kind == "MultiheadAttention":
            module = nn.MultiheadAttention(**init)
        elif kind in _MODULES:
            cls, names = _MODULES[kind]
            unknown = set(init) - set(names)
            if unknown:
                raise PruneError(f"{path}: unexpected arguments {sorted(unknown)} for {kind}")
            module = cls(**{k: _from_json(v, {}) for k, v in init.items()})
        else:
            raise PruneError(f"{path}: module type {kind!r} is not one the architecture spec supports")
        place(path, module)
    for path, a in spec.get("attributes", {}).items():
        dtype = getattr(torch, a["dtype"])
        place(path, (torch.zeros(a["shape"], dtype=dtype), a["parameter"]))
    for alias, name in spec.get("tied", {}).items():  # one tensor under several names, as saved
        owner, _, attr = alias.rpartition(".")
        try:
            shared = root.get_parameter(name)
            root.get_submodule(owner).register_parameter(attr, shared)
        except (AttributeError, KeyError) as e:
            raise PruneError(f"architecture spec: tied weight {alias!r} -> {name!r} names no parameter") from e
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for e in spec["nodes"]:
        op, target = e["op"], e.get("target")
        args, kwargs = _from_json(e["args"], nodes), _from_json(e["kwargs"], nodes)
        if op == "call_function":
            mod_name, _, fname = target.rpartition(".")
            mod = _FUNC_MODULES.get(mod_name)
            if mod is None or (mod_name == "builtins" and fname not in _BUILTINS) or not hasattr(mod, fname):
                raise PruneError(f"function {target!r} in the architecture spec is not allowed")
            target = getattr(mod, fname)
        elif op == "call_method" and not hasattr(torch.Tensor, target):
            raise PruneError(f"method {target!r} in the architecture spec is not a tensor method")
        node = graph.create_node(op, target, tuple(args), kwargs, name=e["name"])
        nodes[e["name"]] = node
    gm = fx.GraphModule(root, graph, class_name="RebuiltModel")
    read = {str(n.target) for n in graph.nodes if n.op == "get_attr"}
    for path, a in spec.get("attributes", {}).items():
        if path not in read:  # state the forward never reads: the GraphModule copied only what it reads
            place(path, (root.get_parameter(path) if a["parameter"] else root.get_buffer(path), a["parameter"]), gm)
    return gm
