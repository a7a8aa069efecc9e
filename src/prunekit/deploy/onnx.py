"""Export a (pruned) model to ONNX, checked against PyTorch in onnxruntime.

The exporter is ``torch.onnx.export(..., dynamo=True)``: it captures the model with
``torch.export`` and translates it with ``onnxscript``. With torch 2.13 the older
TorchScript-based exporter (``dynamo=False``) still runs, but it warns that it is
deprecated and will be removed, so prunekit does not use it. Consequences: ``onnxscript``
must be installed (``pip install prunekit[export]``), the lowest opset is 18 (the
exporter's default is 20 with torch 2.13), and the model must be capturable by
``torch.export`` (Python control flow that depends on tensor values is not).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import numbers
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .. import masking as _masks
from ..errors import PruneError, PruneTypeError
from ..export import current_umask
from ..metrics import check_example_inputs
from ..targets import check_module

__all__ = ["OnnxCheck", "check_onnx", "export_onnx", "export_onnx_checked"]

INSTALL_HINT = "pip install prunekit[export]"
#: Lowest opset the torch.export-based exporter writes.
MIN_OPSET = 18
#: A single ONNX protobuf file holds at most 2 GB; larger models need external data files.
_MAX_BYTES = 2**31 - 1
# Loggers that report harmless notes during export (torchvision ops not registered,
# constant folding skipped); quietened for the duration of the call.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WHERE = re.compile(r'raised this error:\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n(?P<code>[^\n]*)')


@dataclass(frozen=True)
class OnnxCheck:
    """Result of running an ONNX file in onnxruntime next to PyTorch on the same inputs.

    Attributes:
        ok: every output has PyTorch's shape and is within ``rtol``/``atol`` of it.
        max_abs_diff: largest absolute difference over all outputs.
        outputs: number of tensor outputs compared.
        rtol: relative tolerance used.
        atol: absolute tolerance used.
        detail: why the check failed; empty when it passed.
    """

    ok: bool
    max_abs_diff: float
    outputs: int
    rtol: float
    atol: float
    detail: str = ""


def _require(*modules: str) -> None:
    """Import the optional dependencies or say how to install them."""
    for name in modules:
        try:
            __import__(name)
        except ImportError as e:
            raise PruneError(
                f"ONNX export needs the packages onnx, onnxscript and onnxruntime; {name!r} could not be "
                f"imported ({e}). Install them with `{INSTALL_HINT}`"
            ) from e


def _check_tol(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PruneTypeError(f"{name} must be a non-negative number, got {type(value).__name__}: {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise PruneError(f"{name}={value!r} must be a finite number >= 0")
    return v


def _check_opset(opset: object) -> int | None:
    if opset is None:
        return None
    import onnx.defs

    highest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise PruneTypeError(f"opset must be None or an int in [{MIN_OPSET}, {highest}], got {opset!r}")
    if not MIN_OPSET <= opset <= highest:
        raise PruneError(
            f"opset={opset} is not supported: the torch.export-based exporter writes opsets "
            f"{MIN_OPSET} to {highest} (onnx {onnx.__version__}); leave opset=None for the default"
        )
    return opset


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    levels = {n: logging.getLogger(n).level for n in _NOISY_LOGGERS}
    try:
        for n in _NOISY_LOGGERS:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _why(e: BaseException) -> str:
    """One line out of an exporter error: the innermost cause and, when given, the user's line."""
    inner = e
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = _ANSI.sub("", str(inner)).strip()
    why = f"{type(inner).__name__}: {text.splitlines()[0] if text else ''}"
    where = _WHERE.search(_ANSI.sub("", str(e)))
    if where:
        why += f" at {Path(where['file']).name}:{where['line']} in {where['func']}: {where['code'].strip()}"
    return why


def _deploy_copy(model: nn.Module) -> nn.Module:
    """A committed (masks folded), eval-mode deep copy; ``model`` is not touched.

    :class:`~prunekit.deploy.sparse.SparseLinear` layers become ``nn.Linear`` again: ONNX
    has no CSR weight, and the dense layer computes the same."""
    from .sparse import SparseLinear

    dup = copy.deepcopy(model)
    _masks.commit(dup)
    for name, module in list(dup.named_modules()):
        if isinstance(module, SparseLinear):
            parent, _, child = name.rpartition(".")
            if not parent and not child:
                dup = module.to_linear()
            else:
                setattr(dup.get_submodule(parent) if parent else dup, child, module.to_linear())
    return dup.eval()


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _reference(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    try:
        with torch.no_grad():
            return _flat_outputs(model(*inputs))
    except Exception as e:
        shapes = [tuple(t.shape) for t in inputs]
        raise PruneError(
            f"example_inputs of shape {shapes[0] if len(shapes) == 1 else shapes} do not run through "
            f"{type(model).__name__}: {type(e).__name__}: {e}"
        ) from e


def _compare(path: Path, inputs: tuple[torch.Tensor, ...], reference: list[torch.Tensor],
             rtol: float, atol: float) -> OnnxCheck:
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PruneError(f"onnxruntime {ort.__version__} cannot load {path.name}: {e}") from e
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        return OnnxCheck(False, math.inf, 0, rtol, atol,
                         f"the ONNX graph takes {len(names)} input(s), example_inputs has {len(inputs)}")
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    try:
        got = session.run(None, feed)
    except Exception as e:
        raise PruneError(f"onnxruntime {ort.__version__} failed to run {path.name}: {e}") from e
    if len(got) != len(reference):
        return OnnxCheck(False, math.inf, len(got), rtol, atol,
                         f"the ONNX graph returns {len(got)} output(s), PyTorch returns {len(reference)}")
    worst, detail = 0.0, ""
    for i, (o, r) in enumerate(zip(got, reference)):
        ref = r.detach().cpu().numpy()
        if o.shape != ref.shape:
            return OnnxCheck(False, math.inf, len(got), rtol, atol,
                             f"output {i} has shape {tuple(o.shape)} in ONNX, {tuple(ref.shape)} in PyTorch")
        if ref.size:
            a, b = o.astype(np.float64), ref.astype(np.float64)
            diff = np.abs(a - b)
            diff[np.isnan(a) & np.isnan(b)] = 0.0  # NaN where PyTorch has NaN is a match
            d = float(diff.max())
            d = math.inf if math.isnan(d) else d
            worst = max(worst, d)
            if not detail and not np.allclose(o, ref, rtol=rtol, atol=atol, equal_nan=True):
                detail = f"output {i} differs from PyTorch by up to {d:.3g} (rtol={rtol:g}, atol={atol:g})"
    return OnnxCheck(not detail, worst, len(got), rtol, atol, detail)


def check_onnx(path: str | os.PathLike, model: nn.Module, example_inputs: Any, *,
               rtol: float = 1e-4, atol: float = 1e-5) -> OnnxCheck:
    """Run an ONNX file in onnxruntime (CPU) and compare it with ``model`` on the same inputs.

    ``model`` runs as a committed, eval-mode copy (masks folded), so a masked model is
    compared with the effective weights it exports. ``model`` itself is not changed.

    Args:
        path: the ``.onnx`` file.
        model: the PyTorch model it was exported from.
        example_inputs: a tensor with a batch dimension or a tuple of them.
        rtol: relative tolerance (``numpy.allclose``).
        atol: absolute tolerance.

    Returns:
        An :class:`OnnxCheck`; ``ok`` is False when an output differs (nothing is raised
        for a mismatch).

    Example:
        >>> check_onnx("model.onnx", model, x).max_abs_diff < 1e-5
        True
    """
    _require("onnxruntime")
    check_module(model)
    inputs = check_example_inputs(example_inputs)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    p = Path(path)
    if not p.is_file():
        raise PruneError(f"{str(p)!r} is not a file")
    return _compare(p, inputs, _reference(_deploy_copy(model), inputs), rtol, atol)


#: Parity tolerance of an int8 file against the float model, as a fraction of the largest
#: output magnitude.
INT8_TOL = 0.1


def _quantize_int8(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` with int8 weights (per output channel, symmetric)
    and dynamically quantized activations (onnxruntime's ``quantize_dynamic``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.name + ".int8")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its advice to pre-process is logged on the root logger
    try:
        with _quiet():
            quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(out, path)
    except Exception as e:
        out.unlink(missing_ok=True)
        raise PruneError(f"int8 quantization of the ONNX file failed: {_why(e)}") from e
    finally:
        logging.disable(previous)


def export_onnx_checked(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, opset: int | None = None,
                        check: bool = True, rtol: float = 1e-4, atol: float = 1e-5,
                        dynamic_batch: bool = True, quantize: str | None = None) -> tuple[Path, OnnxCheck | None]:
    """:func:`export_onnx`, also returning the parity check.

    Args:
        model: as :func:`export_onnx`.
        example_inputs: as :func:`export_onnx`.
        path: as :func:`export_onnx`.
        opset: as :func:`export_onnx`.
        check: as :func:`export_onnx`.
        rtol: as :func:`export_onnx`.
        atol: as :func:`export_onnx`.
        dynamic_batch: as :func:`export_onnx`.
        quantize: as :func:`export_onnx`.

    Returns:
        ``(Path(path), check)``: the file written and the :class:`OnnxCheck` of the
        onnxruntime run (``None`` with ``check=False``).
    """
    if quantize not in (None, "int8"):
        raise PruneError(f"quantize={quantize!r} is not one of None, 'int8'")
    _require("onnx", "onnxscript", *(("onnxruntime",) if check or quantize else ()))
    check_module(model)
    inputs = check_example_inputs(example_inputs)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    opset = _check_opset(opset)
    if not isinstance(check, bool) or not isinstance(dynamic_batch, bool):
        raise PruneTypeError(f"check and dynamic_batch must be bools, got {check!r} and {dynamic_batch!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise PruneTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    dest = Path(path)
    if dest.is_dir():
        raise PruneError(f"path {str(dest)!r} is a folder; give a file name such as {str(dest / 'model.onnx')!r}")
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    if nbytes > _MAX_BYTES:
        raise PruneError(
            f"{type(model).__name__} holds {nbytes / 2**30:.1f} GiB of tensors; a single ONNX file holds at most "
            "2 GB and export_onnx does not write external data files"
        )

    dup = _deploy_copy(model)
    reference = _reference(dup, inputs) if check else []
    dynamic = tuple({0: torch.export.Dim.DYNAMIC} for _ in inputs) if dynamic_batch else None
    try:
        with _quiet():
            program = torch.onnx.export(dup, inputs, None, dynamo=True, verbose=False, opset_version=opset,
                                        dynamic_shapes=dynamic)
    except Exception as e:
        hint = " (if it is about the batch dimension, try dynamic_batch=False)" if dynamic_batch else ""
        raise PruneError(
            f"torch.onnx.export (dynamo=True) could not export {type(model).__name__}: {_why(e)}{hint}"
        ) from e
    written = dict(program.model.opset_imports).get("")
    if opset is not None and written != opset:
        raise PruneError(f"the exporter could not convert the graph to opset={opset} (it wrote opset {written}); "
                         "use the default opset=None")

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _quiet():
            program.save(tmp, external_data=False)
        if quantize == "int8":
            _quantize_int8(tmp)
            # int8 error scales with the outputs' range, not with each value
            scale = max([float(r.abs().max()) for r in reference if r.numel()] + [1.0])
            rtol, atol = rtol, max(atol, INT8_TOL * scale)
        result = _compare(tmp, inputs, reference, rtol, atol) if check else None
        if result is not None and not result.ok:
            raise PruneError(f"ONNX parity check failed for {type(model).__name__}: {result.detail}; "
                             f"{str(dest)!r} was not written")
        os.chmod(tmp, 0o666 & ~current_umask())  # what a plain open gives; mkstemp makes 0600
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest, result


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, opset: int | None = None,
                check: bool = True, rtol: float = 1e-4, atol: float = 1e-5, dynamic_batch: bool = True,
                quantize: str | None = None) -> Path:
    """Write ``model`` as an ONNX file that computes what the (pruned) model computes.

    A committed deep copy is exported in eval mode: masks are folded into the weights
    (zeros are stored as zeros), a compacted model keeps its smaller shapes, and
    ``PrunedMultiheadAttention`` exports as plain MatMul/Softmax ops. ``model`` itself is
    left exactly as it was. The file is written atomically (temporary file in the same
    folder, then ``os.replace``): on any error an existing file at ``path`` is unchanged
    and no new file is left.

    Args:
        model: the model, masked, committed or compacted.
        example_inputs: a tensor with a batch dimension or a tuple of them; used to trace
            the model and for the parity check.
        path: the ``.onnx`` file to write (parent folders are created).
        opset: ONNX opset; ``None`` for the exporter's default (20 with torch 2.13).
            Accepted: 18 up to the installed onnx's highest.
        check: run the file in onnxruntime on ``example_inputs`` and compare every output
            with PyTorch's before the file is put in place.
        rtol: relative tolerance of the check.
        atol: absolute tolerance of the check.
        dynamic_batch: make dimension 0 of every input dynamic (any batch size);
            ``False`` fixes the shapes of ``example_inputs``.
        quantize: ``"int8"`` writes int8 weights (per output channel, symmetric; zeros stay
            zero) with dynamically quantized activations (onnxruntime ``quantize_dynamic``),
            a file about 4× smaller that runs int8 kernels in onnxruntime; the parity check
            then allows a difference of ``INT8_TOL`` (0.1) times the largest output magnitude.

    Returns:
        ``Path(path)``.

    Raises:
        PruneError: onnx/onnxscript/onnxruntime missing (install with
            ``pip install prunekit[export]``), the model cannot be exported, or the parity
            check failed (the message names the largest difference).

    Example:
        >>> export_onnx(model, torch.randn(1, 1, 28, 28), "out/model.onnx")
        PosixPath('out/model.onnx')
    """
    return export_onnx_checked(model, example_inputs, path, opset=opset, check=check, rtol=rtol, atol=atol,
                               dynamic_batch=dynamic_batch, quantize=quantize)[0]
