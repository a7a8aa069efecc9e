"""Wanda, RIA and SparseGPT on the Keras backend of this process give what the torch core
gives on the same network and data: the same scores (Dense, Conv1D, Conv2D with strides and
Keras's "same" padding, DepthwiseConv2D), the same SparseGPT masks and updated weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kb_setup import BACKEND, MARKS, L, digits, keras

import prunekit as pk  # noqa: E402
from prunekit import PruneError  # noqa: E402
from prunekit.registry import create  # noqa: E402
import prunekit.keras as pkk  # noqa: E402

pytestmark = MARKS
CALIBRATED = ["wanda", "ria", "sparsegpt"]


def _same(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) of one dimension, written out."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _cnn_pair():
    """Keras: Conv2D(6, 3, stride 2, same) -> ReLU -> DepthwiseConv2D(3, same) -> Conv2D(4, 2)
    -> Flatten -> Dense(10) on 9x9x2 inputs; and the torch network with the same weights
    (explicit padding where Keras pads asymmetrically)."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((9, 9, 2)), L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1"),
        L.DepthwiseConv2D(3, padding="same", name="dw"), L.Conv2D(4, 2, name="c2"), L.Flatten(), L.Dense(10, name="out"),
    ])
    c1, dw, c2, out = (model.get_layer(n) for n in ("c1", "dw", "c2", "out"))
    t1 = nn.Conv2d(2, 6, 3, stride=2)
    tdw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    t2 = nn.Conv2d(6, 4, 2)
    tout = nn.Linear(4 * 4 * 4, 10)
    with torch.no_grad():
        t1.weight.copy_(torch.from_numpy(keras.ops.convert_to_numpy(c1.kernel).transpose(3, 2, 0, 1)))
        t1.bias.copy_(torch.from_numpy(keras.ops.convert_to_numpy(c1.bias)))
        tdw.weight.copy_(torch.from_numpy(keras.ops.convert_to_numpy(dw.kernel).transpose(2, 3, 0, 1).reshape(6, 1, 3, 3)))
        tdw.bias.copy_(torch.from_numpy(keras.ops.convert_to_numpy(dw.bias)))
        t2.weight.copy_(torch.from_numpy(keras.ops.convert_to_numpy(c2.kernel).transpose(3, 2, 0, 1)))
        t2.bias.copy_(torch.from_numpy(keras.ops.convert_to_numpy(c2.bias)))
        # Keras flattens (h, w, c); torch (c, h, w): permute the Dense rows to match
        k = keras.ops.convert_to_numpy(out.kernel).reshape(4, 4, 4, 10).transpose(2, 0, 1, 3).reshape(64, 10)
        tout.weight.copy_(torch.from_numpy(k.T))
        tout.bias.copy_(torch.from_numpy(keras.ops.convert_to_numpy(out.bias)))
    pad = _same(9, 3, 2)
    tmodel = nn.Sequential(nn.ZeroPad2d((pad[0], pad[1], pad[0], pad[1])), t1, nn.ReLU(), tdw, t2, nn.Flatten(), tout)
    return model, tmodel


def _to_torch_layout(key: str, a: np.ndarray) -> np.ndarray:
    if key.startswith("dw"):
        return a.reshape(3, 3, 6).transpose(2, 0, 1)
    if key.startswith("out"):
        return a.reshape(4, 4, 4, 10).transpose(3, 2, 0, 1).reshape(10, 64)
    return a.transpose(3, 2, 0, 1)


TORCH_KEYS = {"1.weight": "c1/kernel", "3.weight": "dw/kernel", "4.weight": "c2/kernel", "6.weight": "out/kernel"}


@pytest.mark.parametrize("name", CALIBRATED)
def test_conv_scores_match_the_torch_core(name):
    model, tmodel = _cnn_pair()
    x = np.random.default_rng(0).normal(size=(40, 9, 9, 2)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                               tmodel(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy(), atol=1e-4)
    ours = pkk.scores(model, name, data=x)
    batches = [(torch.from_numpy(x[i : i + 16]).permute(0, 3, 1, 2), None) for i in range(0, 40, 16)]
    ref = {TORCH_KEYS[k]: v.numpy() for k, v in create("criterion", name)(tmodel, data=batches).items()}
    assert set(ours) == set(ref)
    for key, r in ref.items():
        if name == "sparsegpt" and key == "out/kernel":
            # Keras flattens (h, w, c), torch (c, h, w): SparseGPT's saliency reads the Cholesky
            # factor of H^-1, which depends on the column order (the Dense case is tested below)
            continue
        got = _to_torch_layout(key, ours[key])
        scale = float(np.abs(r).max())
        assert scale > 0, key
        np.testing.assert_allclose(got.reshape(r.shape), r, rtol=1e-3, atol=1e-5 * scale, err_msg=f"{BACKEND} {name} {key}")


def _mlp_pair():
    rng = np.random.default_rng(1)
    sizes = (64, 32, 10)
    kernels = [rng.normal(0, 1 / np.sqrt(a), size=(a, b)).astype("float32") for a, b in zip(sizes, sizes[1:])]
    model = keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h"), L.Dense(10, name="out")])
    for layer, k in zip(model.layers, kernels):
        layer.set_weights([k, np.zeros(k.shape[1], "float32")])
    lins = [nn.Linear(*k.shape) for k in kernels]
    with torch.no_grad():
        for lin, k in zip(lins, kernels):
            lin.weight.copy_(torch.from_numpy(k.T))
            lin.bias.zero_()
    return model, nn.Sequential(lins[0], nn.ReLU(), lins[1])


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_sparsegpt_prunes_and_updates_weights_like_the_torch_core(granularity):
    model, tmodel = _mlp_pair()
    x, y = digits(256)
    sparsity = None if granularity == "2:4" else 0.6
    result = pkk.prune(model, sparsity, criterion="sparsegpt", granularity=granularity, data=x, allocation="uniform")
    batches = [(torch.from_numpy(x[i : i + 128]), torch.from_numpy(y[i : i + 128])) for i in range(0, 256, 128)]
    pk.prune(tmodel, sparsity, criterion="sparsegpt", granularity=granularity, data=batches, allocation="uniform",
             keep_output_layer=False)
    tmasks = pk.masks(tmodel)
    for key, tkey in (("h/kernel", "0.weight"), ("out/kernel", "2.weight")):
        np.testing.assert_array_equal(result.masks[key].T, tmasks[tkey].numpy().astype("float32"), err_msg=key)
        w = keras.ops.convert_to_numpy(model.get_layer(key.split("/")[0]).kernel)
        tw = dict(tmodel.named_parameters())[tkey.replace("weight", "parametrizations.weight.original")]
        np.testing.assert_allclose(w.T, (tw * tmasks[tkey]).detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    assert result.sparsity == pytest.approx(0.5 if granularity == "2:4" else 0.6, abs=1e-3)
    # the swept weights reproduce the dense layer's output better than plain masking would
    assert pkk.sparsity(model) == pytest.approx(result.sparsity, abs=1e-9)


def test_sparsegpt_keeps_earlier_zeros_and_wanda_prunes_a_cnn():
    model, _ = _cnn_pair()
    x = np.random.default_rng(0).normal(size=(32, 9, 9, 2)).astype("float32")
    first = pkk.prune(model, 0.3, criterion="magnitude")
    second = pkk.prune(model, 0.6, criterion="sparsegpt", data=x)
    for key, m in first.masks.items():
        assert np.all(second.masks[key][m == 0] == 0), key
    assert second.sparsity == pytest.approx(0.6, abs=0.01)
    third = pkk.prune(model, 0.8, criterion="wanda", data=x, allocation="uniform")
    assert third.sparsity == pytest.approx(0.8, abs=0.01)


def test_calibrated_criteria_refuse_clearly_and_leave_the_model():
    keras.utils.set_random_seed(0)
    emb = keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(20, 8, name="emb"), L.Flatten(),
                            L.Dense(3, name="out")])
    before = [keras.ops.convert_to_numpy(w).copy() for w in emb.weights]
    with pytest.raises(PruneError, match=r"cannot score emb/embeddings \(a Embedding"):
        pkk.prune(emb, 0.5, criterion="sparsegpt", data=np.zeros((4, 5), "int32"))
    for b, w in zip(before, emb.weights):
        np.testing.assert_array_equal(b, keras.ops.convert_to_numpy(w))
    model, _ = _mlp_pair()
    with pytest.raises(PruneError, match="criterion 'wanda' needs data"):
        pkk.scores(model, "wanda")
    with pytest.raises(PruneError, match="granularity"):
        pkk.prune(model, 0.5, criterion="sparsegpt", granularity="channel", data=digits(32)[0])
