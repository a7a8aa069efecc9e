"""Export a pruned Keras 3 model for deployment: TFLite (TensorFlow backend) and ONNX.

Both exports strip the pruning state first (:func:`prunekit.keras.strip`: plain layers
holding the zeros), write to a temporary file, run the file on inputs and compare with the
Keras outputs, and only then move it into place (``os.replace``): a failed export leaves
nothing at ``path``. TFLite stores the kernels as sparse tensors where that is smaller
(``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``); ONNX stores them dense (its zeros compress).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PruneError
from .keras_base import check_model, functional_graph, keras, to_numpy
from .keras_strip import strip

__all__ = ["ExportReport", "export_onnx", "export_tflite"]


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely the file reproduces the Keras model.

    Attributes:
        path: the file written.
        format: ``"tflite"`` or ``"onnx"``.
        bytes: its size.
        compressed_bytes: its size after zlib level 9 (zeros compress).
        max_abs_diff: the largest difference between the file's outputs and Keras's.
    """

    path: str
    format: str
    bytes: int
    compressed_bytes: int
    max_abs_diff: float


def _inputs(model: Any, x: Any) -> np.ndarray:
    if x is not None:
        return np.asarray(x, dtype=np.float32)
    shape = tuple(functional_graph(model).inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise PruneError(f"the model's input shape {shape} has unknown sizes; pass check_inputs=<a batch>")
    return np.random.default_rng(0).normal(size=(2, *shape[1:])).astype(np.float32)


def _finish(tmp: str, path: str | os.PathLike, fmt: str, diff: float, atol: float) -> ExportReport:
    if not diff <= atol:
        raise PruneError(f"the {fmt} file's outputs differ from the Keras model's by {diff:.3g} (> atol={atol}); not written")
    data = Path(tmp).read_bytes()
    os.replace(tmp, path)
    return ExportReport(str(path), fmt, len(data), len(zlib.compress(data, 9)), diff)


def _interpreter(tf: Any, flat: bytes) -> Any:
    """LiteRT's interpreter when installed, else TensorFlow's (deprecated there, still working)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
            return tf.lite.Interpreter(model_content=flat)
    return Interpreter(model_content=flat)


def export_tflite(model: Any, path: str | os.PathLike, *, check_inputs: Any = None, sparse: bool = True,
                  atol: float = 1e-4) -> ExportReport:
    """Write ``model`` (pruned or not) as a TFLite flatbuffer, checked against Keras.

    Args:
        model: a built Sequential or functional model (TensorFlow backend); not changed.
        path: the ``.tflite`` file to write.
        check_inputs: a batch to compare outputs on (default: two random inputs).
        sparse: let the converter store kernels sparse where smaller.
        atol: the largest output difference accepted.

    Returns:
        An :class:`ExportReport`.
    """
    check_model(model)
    if keras.backend.backend() != "tensorflow":
        raise PruneError(
            f"export_tflite needs the TensorFlow Keras backend (KERAS_BACKEND=tensorflow, pip install prunekit[keras-tf]); "
            f"this process uses {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    plain = strip(model)
    x = _inputs(plain, check_inputs)
    folder = tempfile.mkdtemp(prefix="prunekit-tflite-")
    try:
        plain.export(os.path.join(folder, "saved"), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(folder, "saved"))
        if sparse:
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        flat = converter.convert()
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{Path(path).name}.tmp")
        Path(tmp).write_bytes(flat)
        interpreter = _interpreter(tf, flat)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        diffs = []
        for row in x:  # the converted signature has batch 1
            interpreter.resize_tensor_input(inp["index"], (1, *row.shape))
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp["index"], row[None])
            interpreter.invoke()
            ref = to_numpy(plain(row[None], training=False))
            diffs.append(float(np.abs(interpreter.get_tensor(out["index"]) - ref).max()))
        try:
            return _finish(tmp, path, "tflite", max(diffs), atol)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def export_onnx(model: Any, path: str | os.PathLike, *, check_inputs: Any = None, atol: float = 1e-4) -> ExportReport:
    """Write ``model`` as ONNX (Keras's own exporter), checked in onnxruntime against Keras.

    Needs prunekit's ``export`` extra, and on TensorFlow ``tf2onnx`` (``keras-tf`` extra).
    On JAX, Keras's exporter needs ``jax2onnx``; where that is missing but TensorFlow and
    ``tf2onnx`` are installed, the stripped model is saved and a TensorFlow-backend Python
    process writes the file (same weights, same layers); the file is then checked against
    the JAX model's own outputs like any other.

    Args:
        model: a built Sequential or functional model; not changed.
        path: the ``.onnx`` file to write.
        check_inputs: a batch to compare outputs on (default: two random inputs).
        atol: the largest output difference accepted.

    Returns:
        An :class:`ExportReport`.
    """
    check_model(model)
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs onnxruntime: pip install prunekit[export]") from e
    plain = strip(model)
    x = _inputs(plain, check_inputs)
    ref = to_numpy(plain(x, training=False))
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{Path(path).name}.tmp.onnx")
    try:
        try:
            with warnings.catch_warnings():  # the exporters' own notes (legacy TorchScript path, tracing)
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
                warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
                if keras.backend.backend() == "jax" and importlib.util.find_spec("jax2onnx") is None:
                    _onnx_through_tensorflow(plain, tmp)
                else:
                    plain.export(tmp, format="onnx", verbose=False)
        except ImportError as e:
            raise PruneError(f"Keras cannot export ONNX on the {keras.backend.backend()!r} backend here: {e}") from e
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        return _finish(tmp, path, "onnx", float(np.abs(got - ref).max()), atol)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _onnx_through_tensorflow(plain: Any, out: str) -> None:
    """Write ``plain`` (a model without pruning state) as ONNX from a TensorFlow-backend process."""
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise PruneError(
            "Keras cannot export ONNX on the 'jax' backend here: it needs jax2onnx, or TensorFlow and tf2onnx "
            f"(missing: {', '.join(missing)}); pip install prunekit[keras-tf] (or jax2onnx)"
        )
    code = ("import sys, keras, numpy as np; m = keras.models.load_model(sys.argv[1], compile=False); "
            "x = [np.zeros((1,) + tuple(d or 1 for d in t.shape[1:]), t.dtype) for t in m.inputs]; "
            "m(x[0] if len(x) == 1 else x); m.export(sys.argv[2], format='onnx', verbose=False)")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryDirectory(prefix="prunekit-onnx-") as folder:
        src = os.path.join(folder, "model.keras")
        plain.save(src)
        proc = subprocess.run([sys.executable, "-c", code, src, out], env=env, capture_output=True, text=True,
                              timeout=1800)
    if proc.returncode != 0 or not os.path.exists(out):
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise PruneError(f"the TensorFlow-backend process could not write ONNX for model {plain.name!r}: {tail}")
