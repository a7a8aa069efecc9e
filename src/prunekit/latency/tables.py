"""Latency lookup tables: one layer configuration, timed alone, at a grid of widths.

A :class:`LayerSpec` describes a Linear or Conv layer as it runs inside a model (kernel,
stride, padding, the spatial size or leading dimensions of its input); a
:class:`LatencyTable` times that layer alone, rebuilt at several input/output widths, in
one runtime at one batch size, and answers any width by bilinear interpolation between
the measured ones. Measurements are cached on disk (:mod:`prunekit.latency.cache`), so a
configuration is timed once per machine, runtime, thread count and torch version.

ONNX Runtime tables are built from one-node ONNX graphs written directly with
``onnx.helper`` (an export per width would take seconds); the whole-model checks export
through ``torch.onnx`` like :func:`prunekit.measure`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PruneError
from ..metrics_timing import RUNTIMES, ort_runner, ort_session, prepare, time_runner
from ..validate import choice, integer
from .cache import read_entries, table_key, write_entries

__all__ = ["GRID", "LatencyTable", "LayerSpec", "spec_of"]

#: Fractions of a layer's width at which a table is measured (interpolated in between).
GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
#: ``torch.compile`` takes seconds per layer: a coarser grid.
GRID_COMPILE = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class LayerSpec:
    """A Linear or Conv layer as it runs in a model, widths aside.

    ``kind``: ``"linear"``, ``"conv1d"``, ``"conv2d"`` or ``"conv3d"``; ``lead``: the input's
    shape between batch and channels (Linear) or its spatial size (Conv); ``depthwise``: a
    conv with one filter per input channel (its width is its channel count).
    """

    kind: str
    lead: tuple[int, ...]
    n_in: int
    n_out: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    depthwise: bool = False
    bias: bool = True

    def config(self, cin: int, cout: int) -> str:
        geo = f"k{self.kernel}s{self.stride}p{self.padding}d{self.dilation}" if self.kind != "linear" else ""
        return f"{self.kind}|dw{int(self.depthwise)}|lead{self.lead}|{geo}|b{int(self.bias)}|{cin}x{cout}"

    def flops(self, cin: int, cout: int) -> float:
        """Multiply-accumulates of one sample at these widths."""
        if self.kind == "linear":
            return float(math.prod(self.lead) * cin * cout)
        out = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(self.lead, self.kernel, self.stride, self.padding, self.dilation)
        ]
        per = math.prod(self.kernel) * (1 if self.depthwise else cin)
        return float(math.prod(out) * cout * per)

    def build(self, cin: int, cout: int, batch: int,
              dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor]:
        """The layer at these widths, and an input batch for it, in ``dtype``."""
        if self.kind == "linear":
            return (nn.Linear(cin, cout, bias=self.bias).eval().to(dtype),
                    torch.randn(batch, *self.lead, cin, dtype=dtype))
        conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[self.kind]
        groups = cin if self.depthwise else 1
        layer = conv(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups=groups, bias=self.bias)
        return layer.eval().to(dtype), torch.randn(batch, cin, *self.lead, dtype=dtype)


def spec_of(module: nn.Module, input_shape: tuple[int, ...]) -> LayerSpec | None:
    """The :class:`LayerSpec` of ``module`` seen with an input of ``input_shape``; ``None``
    for a layer a table cannot stand for (a grouped, non-depthwise conv; a string padding
    other than ``"same"``/``"valid"``; a padding mode other than zeros)."""
    if type(module) is nn.Linear:
        return LayerSpec("linear", tuple(input_shape[1:-1]), module.in_features, module.out_features,
                         bias=module.bias is not None)
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.padding_mode == "zeros":
        dw = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if module.groups > 1 and not dw:
            return None
        pad = module.padding
        if isinstance(pad, str):
            if pad == "valid":
                pad = (0,) * len(module.kernel_size)
            elif all(s == 1 for s in module.stride):
                total = [d * (k - 1) for k, d in zip(module.kernel_size, module.dilation)]
                if any(t % 2 for t in total):
                    return None
                pad = tuple(t // 2 for t in total)
            else:
                return None
        kind = f"conv{len(module.kernel_size)}d"
        return LayerSpec(kind, tuple(input_shape[2:]), module.in_channels, module.out_channels,
                         tuple(module.kernel_size), tuple(module.stride), tuple(pad), tuple(module.dilation),
                         dw, module.bias is not None)
    return None


def _onnx_layer(spec: LayerSpec, layer: nn.Module, x: torch.Tensor) -> bytes:
    """A one-node ONNX graph of ``layer`` (Conv, or MatMul + Add), no exporter involved."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise ImportError("runtime='onnxruntime' needs onnx: pip install prunekit[export]") from e
    with torch.no_grad():
        y = layer(x)
    inits, nodes = [], []
    w = layer.weight.detach()
    if spec.kind == "linear":
        inits.append(numpy_helper.from_array(w.t().contiguous().numpy(), "W"))
        nodes.append(helper.make_node("MatMul", ["X", "W"], ["Y0" if spec.bias else "Y"]))
        if spec.bias:
            inits.append(numpy_helper.from_array(layer.bias.detach().numpy(), "B"))
            nodes.append(helper.make_node("Add", ["Y0", "B"], ["Y"]))
    else:
        ins = ["X", "W"] + (["B"] if spec.bias else [])
        inits.append(numpy_helper.from_array(w.numpy(), "W"))
        if spec.bias:
            inits.append(numpy_helper.from_array(layer.bias.detach().numpy(), "B"))
        nodes.append(helper.make_node("Conv", ins, ["Y"], kernel_shape=list(spec.kernel), strides=list(spec.stride),
                                      pads=list(spec.padding) * 2, dilations=list(spec.dilation),
                                      group=layer.groups))
    # inputs and outputs in the layer's own dtype (the initializers carry it already)
    kind = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16, torch.float64: TensorProto.DOUBLE,
            torch.bfloat16: TensorProto.BFLOAT16}.get(w.dtype, TensorProto.FLOAT)
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", kind, list(x.shape))],
                              [helper.make_tensor_value_info("Y", kind, list(y.shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


class LatencyTable:
    """Measured milliseconds of layer configurations in one runtime, at one batch size.

    Args:
        runtime: one of :data:`prunekit.metrics_timing.RUNTIMES`.
        batch_size: the batch every configuration is timed at.
        threads: torch (and ONNX Runtime) intra-op threads while timing; part of the key.
        warmup: untimed runs per configuration.
        repeats: timed runs per configuration (the fastest is kept: other work on a shared
            machine only adds time, and the tables compare configurations).
        cache: read and write the on-disk tables (:mod:`prunekit.latency.cache`).
        dtype: the dtype layers are timed in (the model's: bfloat16 kernels are not float32's).

    Example:
        >>> table = LatencyTable("eager", batch_size=64, threads=1)
        >>> spec = LayerSpec("linear", (), 256, 128)
        >>> table.interpolate(spec, 256, 100) <= table.interpolate(spec, 256, 128) * 1.5
        True
    """

    def __init__(self, runtime: str = "eager", batch_size: int = 64, threads: int = 1, *, warmup: int = 3,
                 repeats: int = 15, cache: bool = True, dtype: torch.dtype = torch.float32) -> None:
        self.runtime = choice("runtime", runtime, RUNTIMES)
        self.dtype = dtype
        self.batch_size = integer("batch_size", batch_size, minimum=1)
        self.threads = integer("threads", threads, minimum=1)
        self.warmup = integer("warmup", warmup, minimum=0)
        self.repeats = integer("repeats", repeats, minimum=1)
        self.cache = cache
        self.key = {**table_key(runtime, threads, batch_size), "statistic": "min"}
        if dtype != torch.float32:  # float32 tables keep the key they always had
            self.key["dtype"] = str(dtype).removeprefix("torch.")
        self.entries: dict[str, float] = read_entries(self.key) if cache else {}
        self.measured = 0  # configurations timed by this object (the rest came from the cache)
        self._new: dict[str, float] = {}
        self._here: set[str] = set()  # configurations this object timed (not read from the cache)

    def grid(self, n: int) -> list[int]:
        """Widths at which a dimension of size ``n`` is measured."""
        fractions = GRID_COMPILE if self.runtime == "compile" else GRID
        return sorted({max(1, round(f * n)) for f in fractions} | {n})

    def time(self, spec: LayerSpec, cin: int, cout: int) -> float:
        """Milliseconds of ``spec`` at exactly these widths (measured once, then cached)."""
        cfg = spec.config(cin, cout)
        if cfg not in self.entries:
            self.entries[cfg] = self._new[cfg] = self.measure(spec, cin, cout)
            self.measured += 1
            self._here.add(cfg)
        return self.entries[cfg]

    def cached(self, spec: LayerSpec, cin: int, cout: int) -> bool:
        """Whether this configuration's figure came from the on-disk table (timed in an
        earlier process, perhaps while the machine ran faster or slower than now)."""
        cfg = spec.config(cin, cout)
        return cfg in self.entries and cfg not in self._here

    def remeasure(self, spec: LayerSpec, cin: int, cout: int) -> float:
        """Time ``spec`` at these widths once more and keep the faster of the two figures.

        A burst of other work on a shared machine can slow every repeat of one
        measurement; a second one taken at another moment is rarely hit by the same burst.
        A lower figure replaces the table's entry (and is written by :meth:`save`).
        """
        cfg = spec.config(cin, cout)
        old = self.time(spec, cin, cout)
        new = self.measure(spec, cin, cout)
        self.measured += 1
        if new < old:
            self.entries[cfg] = self._new[cfg] = new
        return self.entries[cfg]

    def measure(self, spec: LayerSpec, cin: int, cout: int) -> float:
        """Milliseconds of ``spec`` at these widths, timed now (the table is not read nor changed)."""
        old = torch.get_num_threads()
        torch.manual_seed(0)
        try:
            torch.set_num_threads(self.threads)
            layer, x = spec.build(cin, cout, self.batch_size, self.dtype)
            try:
                if self.runtime == "onnxruntime":
                    run = ort_runner(ort_session(_onnx_layer(spec, layer, x), self.threads))
                else:
                    run = prepare(layer, (x,), self.runtime, self.threads)
            except ImportError:
                raise
            except Exception as e:  # e.g. a dtype the runtime has no kernels for (bfloat16 in ONNX Runtime)
                raise PruneError(f"allocation='latency' cannot time a {spec.kind} layer "
                                 f"({str(self.dtype).removeprefix('torch.')}) in runtime={self.runtime!r}: "
                                 f"{type(e).__name__}: {str(e)[:300]}") from e
            return time_runner(run, (x,), self.warmup, self.repeats, statistic="min")
        finally:
            torch.set_num_threads(old)

    def save(self) -> None:
        """Write the configurations measured since the last save to the on-disk table."""
        if self.cache and self._new:
            write_entries(self.key, self._new)
        self._new = {}

    def interpolate(self, spec: LayerSpec, cin: int, cout: int, in_varies: bool = True,
                    out_varies: bool = True) -> float:
        """Milliseconds of ``spec`` at any widths: bilinear between the grid widths measured
        around them (linear beyond the grid's ends, never below zero)."""
        if spec.depthwise:
            xs = self.grid(spec.n_out)
            return max(0.0, _interp1(xs, [self.time(spec, w, w) for w in xs], cout))
        gi = self.grid(spec.n_in) if in_varies else [spec.n_in]
        go = self.grid(spec.n_out) if out_varies else [spec.n_out]
        i0, i1, ti = _bracket(gi, cin)
        o0, o1, to = _bracket(go, cout)
        t00, t01 = self.time(spec, gi[i0], go[o0]), self.time(spec, gi[i0], go[o1])
        t10, t11 = self.time(spec, gi[i1], go[o0]), self.time(spec, gi[i1], go[o1])
        low = t00 + (t01 - t00) * to
        high = t10 + (t11 - t10) * to
        return max(0.0, low + (high - low) * ti)


def _bracket(xs: list[int], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and the position between them (may lie
    outside [0, 1] beyond the grid's ends)."""
    if len(xs) == 1:
        return 0, 0, 0.0
    j = 1
    while j < len(xs) - 1 and xs[j] < x:
        j += 1
    return j - 1, j, (x - xs[j - 1]) / (xs[j] - xs[j - 1])


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    i0, i1, t = _bracket(xs, x)
    return ys[i0] + (ys[i1] - ys[i0]) * t
