"""Channel ids, their coupling, and the state of one trace that every op handler receives.

Every channel a layer produces gets an integer *id*. Each traced tensor carries a *grid*:
an int64 tensor broadcastable to the tensor's shape that says which id every element
belongs to (0 = an element no pruning may touch: model inputs, constants). Shape ops are
applied to the grid itself (``view``, ``flatten``, ``permute``, ``cat``, slicing), so a
flatten into a linear layer, a concatenation or a head reshape is followed exactly.
Element-wise ops between two channel-carrying tensors *couple* their ids (union-find):
residual additions, squeeze-excitation gates. Anything the tracer does not understand
couples the ids it touches to 0, i.e. keeps them: the analysis errs on the side of keeping.

For each removed channel the tracer also tracks the *fill*, the constant value the removed
channel holds in the masked model (0 after a masked conv; 0.5 after a sigmoid), so that the
compacted model can fold it into the next layer's bias.

:class:`ChannelTracer` is given the op handlers (``ops.py``, ``contraction.py``,
``transposed.py``, ``recurrent.py``, ``shapes.py``, ``norms.py``) by
:func:`prunekit.graph.tracer.trace`; the handlers
import this module, never the tracer, so the two never import each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import PruneError
from ..masking import is_parametrization_key, parametrized_names

FIXED = 0  # the id of everything that must stay


@dataclass
class Member:
    """One parameter (or buffer) dimension indexed by channel ids.

    ``role``: ``"out"`` (rows of the layer that creates the ids), ``"chan"`` (per-channel
    parameters: biases, norm affine, depthwise filters), ``"in"`` (input columns of the
    next layer), ``"buffer"`` (running statistics: sliced, never masked).
    """

    param: str
    dim: int
    ids: torch.Tensor  # 1-D int64, one id per index of `dim`
    role: str
    module: str
    fill: float = 0.0  # value of a removed input channel ("in" members)


@dataclass
class Note:
    """Why some channels are kept: an op the tracer could not see through, an output, a norm."""

    where: str
    op: str
    reason: str


@dataclass
class _Entry:
    tensor: torch.Tensor
    grid: torch.Tensor | None
    fill: float = 0.0


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = [FIXED]

    def new(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb == FIXED or (ra != FIXED and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra  # FIXED (0) always stays a root

    def union_groups(self, in_ids: torch.Tensor, out_ids: torch.Tensor, groups: int) -> None:
        """Tie each conv group's input and output channels into one unit (a grouped conv
        removes whole groups): group ``j`` owns ``in_ids`` and ``out_ids`` chunk ``j``."""
        gi, go = in_ids.numel() // groups, out_ids.numel() // groups
        for j in range(groups):
            block = torch.cat([in_ids[j * gi : (j + 1) * gi], out_ids[j * go : (j + 1) * go]])
            self.union_pairs(block[:1].expand_as(block), block)

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.numel() == 0:
            return
        a, b = a.reshape(-1), b.reshape(-1)
        keep = a != b
        if not bool(keep.any()):
            return
        base = len(self.parent) + 1
        codes = torch.unique(a[keep] * base + b[keep])  # one int per pair: a 1-D unique is fast
        for x, y in zip((codes // base).tolist(), (codes % base).tolist()):
            if x != y:
                self.union(x, y)

    def roots(self) -> torch.Tensor:
        return torch.tensor([self.find(i) for i in range(len(self.parent))], dtype=torch.long)


def compress(grid: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which the grid is constant to size 1."""
    g = grid
    for d in range(g.dim()):
        if g.shape[d] > 1 and bool((g == g.narrow(d, 0, 1)).all()):
            g = g.narrow(d, 0, 1)
    return g.contiguous() if g.numel() < grid.numel() or not g.is_contiguous() else g


def varying_dims(grid: torch.Tensor) -> list[int]:
    return [d for d in range(grid.dim()) if grid.shape[d] > 1]


def _name(func: Callable) -> str:
    n = getattr(func, "__name__", None)
    if n is None:  # property getters (Tensor.shape.__get__) and similar
        n = getattr(getattr(func, "__self__", None), "__name__", "") or repr(func)
    return n.lstrip("_") if n.startswith("_") and not n.startswith("__") else n


# ---- op tables (by name: torch.relu, F.relu and Tensor.relu are one op) ----------------------
CONV = {"conv1d", "conv2d", "conv3d"}
UNARY = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "gelu", "silu", "silu_", "hardswish",
    "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "elu_", "selu", "celu", "mish",
    "softplus", "softsign", "hardtanh", "hardtanh_", "logsigmoid", "tanhshrink", "hardshrink",
    "softshrink", "threshold", "prelu", "rrelu",
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "abs", "neg", "__neg__", "exp", "sqrt", "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip",
    "clone", "contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as", "detach",
    "requires_grad_", "cpu", "cuda",
}
BINARY = {
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__rtruediv__",
    "__itruediv__", "true_divide", "maximum", "minimum", "pow", "__pow__",
}
SHAPE = {
    "view", "reshape", "flatten", "permute", "transpose", "transpose_", "t", "squeeze", "unsqueeze",
    "squeeze_", "unsqueeze_", "expand", "expand_as", "view_as", "reshape_as", "repeat", "__getitem__",
    "chunk", "split", "tensor_split", "unflatten", "movedim", "moveaxis", "swapaxes", "swapdims", "narrow",
    "unbind", "index_select",
}
CONCAT = {"cat", "concat", "concatenate", "stack"}
SPATIAL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
    "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    "fractional_max_pool2d", "local_response_norm_",
}
REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "nansum", "nanmean", "norm", "prod"}
ALONG = {"softmax", "log_softmax", "cumsum", "cumprod", "softmin"}
QUIET = {  # ops whose outputs carry no channels and which read nothing we prune
    "size", "dim", "numel", "shape", "dtype", "device", "__len__", "__get__", "is_floating_point",
    "new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like",
    "__bool__", "item", "tolist", "__format__", "__repr__", "__hash__", "is_contiguous", "ndimension",
    "stride", "storage_offset", "data_ptr", "__index__", "__int__", "__float__", "element_size",
    "requires_grad", "grad_fn", "is_leaf", "layout", "names", "ndim", "T", "data", "nelement",
    "get_device", "__eq__", "eq", "ne", "__ne__", "__lt__", "__gt__", "__le__", "__ge__",
}


@dataclass
class Graph:
    """What one trace found. Build it with :func:`trace`."""

    uf: UnionFind
    members: list[Member] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    produced: list[str] = field(default_factory=list)  # params that create ids, in order
    param_modules: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # handler-specific facts (e.g. groups of a conv)

    def classes(self) -> tuple[torch.Tensor, list[int]]:
        """Root of every id, and the prunable class roots in order of first appearance."""
        roots = self.uf.roots()
        order: list[int] = []
        seen = {FIXED}
        for m in self.members:
            if m.role != "out":
                continue
            for r in roots[m.ids].tolist():
                if r not in seen:
                    seen.add(r)
                    order.append(r)
        return roots, order


class ChannelTracer:
    """The state of one trace: channel grids of the tensors seen, coupling, notes.

    :func:`prunekit.graph.tracer.trace` creates one per call; the per-op handlers
    (``ops.py``, ``contraction.py``, ``transposed.py``, ``recurrent.py``, ``opaque.py``)
    receive it and record what each op does to the channel ids.

    Args:
        model: the model being traced; its parameters and buffers are indexed by identity.
        handlers: ``{op name: handler}`` (:data:`prunekit.graph.ops.HANDLERS`); an op
            without one keeps every channel it reads.
    """

    def __init__(self, model: nn.Module, handlers: Mapping[str, Callable]) -> None:
        self.model = model
        self.handlers = handlers
        self.g = Graph(UnionFind())
        self.entries: dict[int, _Entry] = {}
        self.params: dict[int, tuple[str, torch.Tensor]] = {}
        self.stack: list[str] = []
        self.seen: dict[tuple[str, int], torch.Tensor] = {}
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.read: set[int] = set()  # ids of parameters some traced op received
        self.own: dict[int, set[int]] = {}  # id(module) -> ids of its own parameters
        self.deferred: list[tuple[str, str, str, Any]] = []  # opaque modules' boundaries
        self.views: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # parameter views (shapes.py)
        self.muted = 0  # > 0 inside a module handled as a whole (a recognised norm): its ops are not followed
        self.buffer_ids = {id(b) for b in model.buffers()}
        for mname, module in model.named_modules():
            prefix = f"{mname}." if mname else ""
            for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if is_parametrization_key(prefix + pname):
                    continue
                self.params.setdefault(id(p), (prefix + pname, p))
                self.g.param_modules[prefix + pname] = mname

    def register_parametrized(self) -> None:
        """Under :func:`prunekit.masking.cached`: the effective tensors the forward pass will read."""
        for mname, module in self.model.named_modules():
            for pname in parametrized_names(module):
                t = getattr(module, pname)
                full = f"{mname}.{pname}" if mname else pname
                self.params[id(t)] = (full, t)
                self.g.param_modules[full] = mname

    def is_buffer(self, t: torch.Tensor) -> bool:
        """True when ``t`` is one of the model's buffers (never masked, so never sliced with channels)."""
        return id(t) in self.buffer_ids

    # -- bookkeeping -------------------------------------------------------------------------
    def where(self) -> str:
        return self.stack[-1] if self.stack else "<model>"

    def entry(self, t: Any) -> _Entry | None:
        if not isinstance(t, torch.Tensor):
            return None
        e = self.entries.get(id(t))
        return e if e is not None and e.tensor is t else None

    def grid(self, t: Any) -> torch.Tensor | None:
        e = self.entry(t)
        return None if e is None else e.grid

    def fill(self, t: Any) -> float:
        e = self.entry(t)
        return 0.0 if e is None else e.fill

    def set(self, t: torch.Tensor, grid: torch.Tensor | None, fill: float = 0.0) -> None:
        if grid is not None and not bool((grid != FIXED).any()):
            grid = None
        if grid is None and id(t) not in self.entries:
            return
        if fill is None or not math.isfinite(fill):
            if grid is not None:
                self.fix(grid)
            grid, fill = None, 0.0
        self.entries[id(t)] = _Entry(t, compress(grid) if grid is not None else None, float(fill))

    def fix(self, grid: torch.Tensor | None) -> None:
        if grid is not None:
            for i in torch.unique(grid).tolist():
                self.g.uf.union(FIXED, i)

    def note(self, op: str, reason: str) -> None:
        n = Note(self.where() or "<model>", op, reason)  # the root module's name is "": its own forward
        if n not in self.g.notes:
            self.g.notes.append(n)

    def fix_all(self, op: str, args: Any, reason: str) -> None:
        touched = False
        for t in tensors_in(args):
            g = self.grid(t)
            if g is not None and bool((g != FIXED).any()):
                self.fix(g)
                touched = True
        if touched:
            self.note(op, reason)

    def channel_ids(self, t: torch.Tensor, dim: int, op: str) -> torch.Tensor:
        """One id per index of ``dim`` (0 where unlabelled); couples ids that share an index."""
        n = t.shape[dim]
        g = self.grid(t)
        if g is None:
            return torch.zeros(n, dtype=torch.long)
        if g.dim() < t.dim():
            g = g.reshape((1,) * (t.dim() - g.dim()) + tuple(g.shape))
        shape = list(g.shape)
        shape[dim] = n  # other dimensions stay as small as the grid keeps them
        full = g.expand(shape).movedim(dim, 0).reshape(n, -1)
        first = full[:, 0]
        if full.shape[1] > 1 and not bool((full == first[:, None]).all()):
            # ids vary within one channel: everything sharing a channel is coupled
            self.g.uf.union_pairs(first[:, None].expand_as(full), full)
            self.note(op, "channel ids vary along other dimensions; coupled")
        return first.clone()

    def member(self, t: torch.Tensor | None, dim: int, ids: torch.Tensor, role: str, fill: float = 0.0) -> bool:
        key = self.params.get(id(t)) if t is not None else None
        if key is None:
            return False
        name, _ = key
        seen = self.seen.get((name, dim))
        if seen is not None:
            # a module used twice (shared weights): both uses must drop the same indices
            self.g.uf.union_pairs(seen, ids)
        else:
            self.seen[(name, dim)] = ids.clone()
        self.g.members.append(Member(name, dim, ids.clone(), role, self.g.param_modules.get(name, ""), fill))
        return True

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        name = _name(func)
        for t in tensors_in((args, kwargs)):
            if id(t) in self.params:
                self.read.add(id(t))
        if self.muted:
            return
        try:
            self._handle(name, func, args, kwargs, out)
        except PruneError:
            raise
        except Exception as e:  # an op we model wrongly must never break the user's model
            self.fix_all(name, (args, kwargs), f"could not follow this op ({type(e).__name__}: {e}); kept")

    def _handle(self, name: str, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        if name in QUIET or not tensors_in(out):
            if name not in QUIET:
                self.fix_all(name, (args, kwargs), "op returns no tensor; its inputs are kept")
            return
        h = self.handlers.get(name)
        if h is None:
            if any(self.grid(t) is not None for t in tensors_in((args, kwargs))):
                self.fix_all(name, (args, kwargs), f"op {name!r} is not modelled; channels it reads are kept")
            return
        h(self, name, func, args, kwargs, out)


def tensors_in(x: Any) -> list[torch.Tensor]:
    """Every tensor in ``x``, looking into lists, tuples and dict values."""
    out: list[torch.Tensor] = []
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for v in x:
            out.extend(tensors_in(v))
    elif isinstance(x, dict):
        for v in x.values():
            out.extend(tensors_in(v))
    return out

