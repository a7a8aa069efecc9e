"""Every criterion on the Keras backend of this process gives the scores the torch core
gives on the same network (same weights, same data): the gradient family through the
backend's own autodiff, the activation criteria through a feature-extraction model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kb_setup import BACKEND, MARKS, L, digits, keras

from prunekit import PruneError  # noqa: E402
from prunekit.registry import create  # noqa: E402
import prunekit.keras as pkk  # noqa: E402

pytestmark = MARKS
SIZES = (64, 32, 16, 10)


@pytest.fixture(scope="module")
def pair():
    """A Keras MLP 64-32-16-10 (ReLU) and the torch MLP with the same weights."""
    rng = np.random.default_rng(0)
    kernels = [rng.normal(0, 1 / np.sqrt(a), size=(a, b)).astype("float32") for a, b in zip(SIZES, SIZES[1:])]
    biases = [rng.normal(0, 0.1, size=b).astype("float32") for b in SIZES[1:]]
    model = keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h1"),
                              L.Dense(16, activation="relu", name="h2"), L.Dense(10, name="out")])
    for layer, k, b in zip(model.layers, kernels, biases):
        layer.set_weights([k, b])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    mods = []
    for i, (k, b) in enumerate(zip(kernels, biases)):
        lin = nn.Linear(*k.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(k.T))
            lin.bias.copy_(torch.from_numpy(b))
        mods += [lin, nn.ReLU()] if i < 2 else [lin]
    return model, nn.Sequential(*mods)


def _torch_scores(tmodel, name, x, y):
    batches = [(torch.from_numpy(x[i : i + 128]), torch.from_numpy(y[i : i + 128])) for i in range(0, len(x), 128)]
    raw = create("criterion", name)(tmodel, data=batches, loss_fn=F.cross_entropy)
    keys = {"0.weight": "h1/kernel", "2.weight": "h2/kernel", "4.weight": "out/kernel"}
    return {keys[k]: (v.numpy().T if v.dim() == 2 else v.numpy()) for k, v in raw.items()}


@pytest.mark.parametrize("name", ["gradient", "normalized_gradient", "taylor", "hessian", "apoz",
                                  "activation_entropy", "magnitude", "fpgm", "wanda", "ria", "sparsegpt"])
def test_scores_match_the_torch_core(pair, name):
    model, tmodel = pair
    x, y = digits(64 if name == "hessian" else 256)  # hessian: one backward pass per sample
    ours = pkk.scores(model, name, data=(x, y))
    ref = _torch_scores(tmodel, name, x, y)
    assert set(ours) == set(ref) == {"h1/kernel", "h2/kernel", "out/kernel"}
    for key, r in ref.items():
        assert ours[key].shape == r.shape, key
        scale = float(np.abs(r).max())
        assert scale > 0, (name, key)  # a real signal, not all zeros
        np.testing.assert_allclose(ours[key], r, rtol=2e-4, atol=2e-5 * scale, err_msg=f"{BACKEND} {name} {key}")


def test_pruning_by_gradient_family_uses_those_scores(pair):
    model, tmodel = pair
    x, y = digits(256)
    copy = pkk.strip(model)
    result = pkk.prune(copy, 0.5, criterion="taylor", data=(x, y), allocation="uniform")
    ref = _torch_scores(tmodel, "taylor", x, y)
    for key, s in ref.items():  # uniform: each layer drops its lowest-scoring half
        cut = np.sort(s.ravel())[s.size // 2 - 1]
        gone = result.masks[key] == 0
        assert gone.sum() == s.size // 2
        assert np.all(s[gone] <= cut * (1 + 1e-4) + 1e-12) and np.all(s[~gone] >= cut * (1 - 1e-4)), key


def test_bn_scale_reads_the_following_batchnorm():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(6, 3, name="c1"), L.BatchNormalization(name="bn"), L.ReLU(),
        L.Conv2D(4, 3, name="c2"), L.GlobalAveragePooling2D(), L.Dense(3, name="out"),
    ])
    gamma = np.array([-2.0, -1.5, -0.3, 0.2, 1.0, 2.5], "float32")
    bn = model.get_layer("bn")
    bn.set_weights([gamma, *bn.get_weights()[1:]])
    x, _ = digits(32, images=True)
    out = pkk.scores(model, "bn_scale", data=x, ignore=["c2", "out"])
    np.testing.assert_array_equal(out["c1/kernel"], np.abs(gamma))
    with pytest.raises(PruneError, match=r"none follows \['c2/kernel'\]"):
        pkk.scores(model, "bn_scale", data=x, ignore=["out"])
    result = pkk.prune(model, 0.5, criterion="bn_scale", granularity="channel", data=x, ignore=["c2", "out"])
    np.testing.assert_array_equal(result.masks["c1/bias"], (np.abs(gamma) > 1.2).astype("float32"))


def test_gradient_criteria_need_data_and_a_loss(pair):
    model, _ = pair
    plain = keras.Sequential([keras.Input((64,)), L.Dense(4, name="d")])
    with pytest.raises(PruneError, match="criterion 'hessian' needs data"):
        pkk.scores(model, "hessian")
    with pytest.raises(PruneError, match="criterion 'gradient' needs a loss"):
        pkk.scores(plain, "gradient", data=(np.zeros((4, 64), "float32"), np.zeros(4)))


def test_scores_follow_later_weight_changes(pair):
    model, _ = pair
    x, y = digits(128)
    copy = pkk.strip(model)
    first = pkk.scores(copy, "gradient", data=(x, y))
    bias = copy.get_layer("h2").bias
    bias.assign(keras.ops.add(bias, 1.0))  # a weight the criterion does not score
    second = pkk.scores(copy, "gradient", data=(x, y))
    assert not np.allclose(first["h1/kernel"], second["h1/kernel"])


@pytest.mark.parametrize("filters", [8, 6])  # 8: the output width equals the filter count
@pytest.mark.parametrize("name", ["apoz", "activation_entropy"])
def test_activation_criteria_read_channels_first_outputs_by_channel(name, filters):
    """A channels_first Conv2D has its channels on axis 1: the scores equal the channels_last
    twin's (same weights), and APoZ equals the hand count per filter."""
    def build(fmt):
        keras.utils.set_random_seed(0)
        i = keras.Input((3, 10, 10) if fmt == "channels_first" else (10, 10, 3))
        h = L.Conv2D(filters, 3, activation="relu", data_format=fmt, name="c1")(i)
        h = L.GlobalAveragePooling2D(data_format=fmt)(h)
        return keras.Model(i, L.Dense(4, name="out")(h))

    x_last = np.random.default_rng(0).normal(size=(32, 10, 10, 3)).astype("float32")
    x_first = np.transpose(x_last, (0, 3, 1, 2)).copy()
    last, first = build("channels_last"), build("channels_first")
    try:
        first(x_first[:1])
    except Exception as e:  # the backend itself, before prunekit is involved
        if BACKEND == "tensorflow" and "NHWC" in str(e):
            pytest.skip("TensorFlow's CPU Conv2D runs channels_first only with oneDNN, "
                        "which this CPU's build leaves off (AVX2 only)")
        raise
    first.set_weights(last.get_weights())
    s_last = np.asarray(pkk.scores(last, name, data=x_last, ignore=["out"])["c1/kernel"])
    s_first = np.asarray(pkk.scores(first, name, data=x_first, ignore=["out"])["c1/kernel"])
    assert s_first.shape == (filters,)
    np.testing.assert_allclose(s_first, s_last, rtol=1e-5, atol=1e-6)
    if name == "apoz":
        feat = keras.ops.convert_to_numpy(keras.Model(first.input, first.get_layer("c1").output)(x_first))
        np.testing.assert_allclose(s_first, 1.0 - (feat == 0).mean(axis=(0, 2, 3)), rtol=1e-5)
