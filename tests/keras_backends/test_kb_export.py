"""A pruned Keras model exported to TFLite (TensorFlow backend) and ONNX: outputs checked
against Keras, smaller by the zeros, nothing written when the check fails."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kb_setup import BACKEND, MARKS, L, digits, keras

from prunekit import PruneError  # noqa: E402
import prunekit.keras as pkk  # noqa: E402

pytestmark = MARKS


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), L.Dense(256, activation="relu", name="h"), L.Dense(10, name="out")])
    model(np.zeros((1, 64), "float32"))
    return model


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TFLite export runs on the TensorFlow backend")
def test_tflite_of_a_pruned_model_is_smaller_and_matches_keras(tmp_path):
    x, _ = digits(8)
    dense = _mlp()
    pruned = pkk.wrap(dense)
    pkk.prune(pruned, 0.9)
    d = pkk.export_tflite(dense, tmp_path / "dense.tflite", check_inputs=x)
    p = pkk.export_tflite(pruned, tmp_path / "pruned.tflite", check_inputs=x)
    assert p.max_abs_diff <= 1e-4 and d.max_abs_diff <= 1e-4
    assert p.bytes < 0.5 * d.bytes, (p.bytes, d.bytes)  # kernels stored sparse
    assert (tmp_path / "pruned.tflite").stat().st_size == p.bytes
    with pytest.raises(PruneError, match="differ from the Keras model's"):
        pkk.export_tflite(pruned, tmp_path / "bad.tflite", check_inputs=x, atol=-1.0)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dense.tflite", "pruned.tflite"]


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the other backends refuse TFLite")
def test_tflite_needs_the_tensorflow_backend(tmp_path):
    with pytest.raises(PruneError, match="needs the TensorFlow Keras backend"):
        pkk.export_tflite(_mlp(), tmp_path / "m.tflite")


def _missing_converter() -> str | None:
    """What this backend lacks to write ONNX (None: it can), as the error names it."""
    have = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    if BACKEND == "tensorflow" and not have("tf2onnx"):
        return "tf2onnx"
    if BACKEND == "jax" and not have("jax2onnx") and not (have("tensorflow") and have("tf2onnx")):
        return "jax2onnx"
    return None


def test_onnx_of_a_pruned_cnn_matches_keras(tmp_path):
    pytest.importorskip("onnxruntime")
    if _missing_converter():
        pytest.skip(f"no ONNX converter for {BACKEND} here (the MLP test checks the error)")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu", name="c"),
                              L.BatchNormalization(), L.Flatten(), L.Dense(10, name="out")])
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    pkk.prune(model, 0.5, granularity="channel")
    report = pkk.export_onnx(model, tmp_path / "cnn.onnx", check_inputs=x)
    assert report.max_abs_diff <= 1e-4 and (tmp_path / "cnn.onnx").stat().st_size == report.bytes


def test_onnx_of_a_pruned_model_matches_keras(tmp_path):
    pytest.importorskip("onnxruntime")
    x, _ = digits(8)
    dense = _mlp()
    pruned = pkk.wrap(dense)
    pkk.prune(pruned, 0.9)
    missing = _missing_converter()
    if missing:
        with pytest.raises(PruneError, match=missing):
            pkk.export_onnx(pruned, tmp_path / "m.onnx", check_inputs=x)
        assert list(tmp_path.iterdir()) == []
        return
    d = pkk.export_onnx(dense, tmp_path / "dense.onnx", check_inputs=x)
    p = pkk.export_onnx(pruned, tmp_path / "pruned.onnx", check_inputs=x)
    assert p.max_abs_diff <= 1e-4
    assert p.compressed_bytes < 0.5 * d.compressed_bytes, (p.compressed_bytes, d.compressed_bytes)
    with pytest.raises(PruneError, match="differ from the Keras model's"):
        pkk.export_onnx(pruned, tmp_path / "bad.onnx", check_inputs=x, atol=-1.0)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dense.onnx", "pruned.onnx"]
