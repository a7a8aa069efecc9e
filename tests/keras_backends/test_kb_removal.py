"""Neuron removal through branches (Add, Concatenate), depthwise layers, shared layers and
nested models, on the Keras backend of this process. Each case zeroes chosen kernel
columns (biases set so that the folded constants are mostly non-zero), removes the dead
units and checks: the same outputs, the units removed (counted by hand from the zeroed
columns), the parameter count (by hand) and the untouched input model."""

from __future__ import annotations

import numpy as np
import pytest

from kb_setup import MARKS, L, keras

import prunekit.keras as pkk  # noqa: E402
from prunekit import PruneError  # noqa: E402

pytestmark = MARKS


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _randomize(model, seed: int = 0) -> None:
    """Random weights everywhere (BatchNormalization variances positive)."""
    rng = np.random.default_rng(seed)
    for layer in _leaves(model):
        ws = [rng.uniform(0.5, 2.0, w.shape) if v.name == "moving_variance" else rng.normal(0, 0.5, w.shape)
              for v, w in zip(layer.weights, layer.get_weights())]
        layer.set_weights([w.astype("float32") for w in ws])


def _leaves(model):
    out = []
    for layer in model.layers:
        out += _leaves(layer) if isinstance(layer, keras.Model) else [layer]
    return out


def _layer(model, name):
    return next(l for l in _leaves(model) if l.name == name)


def _kill(model, name: str, cols, biases=None) -> None:
    """Zero kernel columns ``cols`` of layer ``name``; set their biases to ``biases``."""
    layer = _layer(model, name)
    kernel, bias = layer.get_weights()
    kernel[..., list(cols)] = 0
    if biases is not None:
        bias[list(cols)] = biases
    layer.set_weights([kernel, bias])


def _remove(model, x, expected: dict, params: int, masks=None):
    """remove_neurons, then check outputs, unit counts, parameters and the untouched input."""
    before = [w.copy() for w in model.get_weights()]
    want = _np(model(x))
    small = pkk.remove_neurons(model, masks)
    got = _np(small(x))
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(np.abs(want).max())), rtol=1e-5)
    report = {c.layer: c for c in small.removal_report.layers}
    assert {n: (report[n].before, report[n].after) for n in expected} == expected
    assert small.count_params() == params
    # the report counts the network's parameters, a wrapper's mask copies left out
    assert small.removal_report.params_after == pkk.strip(small).count_params()
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(_np(model(x)), want)
    return small, report


def _rand(*shape, seed=1):
    return np.random.default_rng(seed).normal(size=(16, *shape)).astype("float32")


def dense(n_in, n_out):
    return n_in * n_out + n_out


def conv(k, n_in, n_out):
    return k * k * n_in * n_out + n_out


# -- Add ---------------------------------------------------------------------------------
def _residual_mlp(r_dead=(1, 2, 3)):
    inp = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="h")(inp)
    r = L.Dense(8, name="r")(h)
    out = L.Dense(3, name="out")(L.Add(name="add")([h, r]))
    model = keras.Model(inp, out)
    _randomize(model)
    _kill(model, "h", [1, 2, 5], [0.7, 0.0, 0.4])  # 1, 2 dead in both branches; 5 only in h
    _kill(model, "r", list(r_dead), [-0.3, 0.6, 0.2][-len(r_dead):])  # 3 only in r
    return model


RESIDUAL_PARAMS = dense(6, 6) + dense(6, 6) + dense(6, 3)


def test_residual_mlp_with_add():
    model = _residual_mlp()
    _, report = _remove(model, _rand(6), {"h": (8, 6), "r": (8, 6), "out": (3, 3)}, RESIDUAL_PARAMS)
    assert report["h"].dead == 3 and "joined with live units of 'r'" in report["h"].note
    assert report["r"].dead == 3 and "joined with live units of 'h'" in report["r"].note


def test_dead_in_one_branch_only_stays():
    model = _residual_mlp(r_dead=[3])  # no channel is dead in both branches
    with pytest.raises(PruneError, match=r"'h' \(3 dead\): joined with live units of 'r'"):
        pkk.remove_neurons(model)


@pytest.mark.parametrize("merge", ["Subtract", "Multiply", "Average", "Maximum", "Minimum"])
def test_other_merges_join_channels_like_add(merge):
    inp = keras.Input((5,))
    a = L.Dense(6, activation="relu", name="a")(inp)
    b = L.Dense(6, activation="tanh", name="b")(inp)
    model = keras.Model(inp, L.Dense(3, name="out")(getattr(L, merge)()([a, b])))
    _randomize(model, 10)
    _kill(model, "a", [0, 1, 4], [0.6, 0.2, 0.3])  # 0, 1 dead in both -> go; 4 (a only), 3 (b only) stay
    _kill(model, "b", [0, 1, 3], [0.9, -0.4, 0.1])
    _remove(model, _rand(5), {"a": (6, 4), "b": (6, 4), "out": (3, 3)}, 2 * dense(5, 4) + dense(4, 3))


def test_conv_residual_block_with_add_and_batchnorm():
    inp = keras.Input((8, 8, 3))
    c1 = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    a1 = L.ReLU(name="a1")(L.BatchNormalization(name="bn1")(c1))
    c2 = L.Conv2D(6, 3, padding="same", name="c2")(a1)
    s = L.Activation("relu")(L.Add()([a1, L.BatchNormalization(name="bn2")(c2)]))
    c3 = L.Conv2D(4, 3, name="c3")(s)  # "valid": absorbs any constant
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(c3)))
    _randomize(model, 1)
    _kill(model, "c1", [0, 1, 2], [0.5, 0.5, 0.5])
    _kill(model, "c2", [0, 1, 4], [0.3, -0.4, 0.2])
    bn1 = _layer(model, "bn1")
    g, b, m, v = bn1.get_weights()
    b[0], b[1], g[:2] = -10.0, 10.0, 1.0  # a1 is 0 on channel 0, positive on channel 1
    bn1.set_weights([g, b, m, v])
    bn2 = _layer(model, "bn2")
    g, b, m, v = bn2.get_weights()
    b[0] = 5.0  # the constant reaching c3 on channel 0 is positive: folded into c3's bias
    bn2.set_weights([g, b, m, v])
    # channel 0: dead in c1 and c2, constant 0 into c2 (padded "same") -> goes; channel 1: its
    # constant into c2 is not 0 -> stays; 2 (c1 only) and 4 (c2 only) stay
    params = conv(3, 3, 5) + 4 * 5 + conv(3, 5, 5) + 4 * 5 + conv(3, 5, 4) + dense(4, 2)
    small, report = _remove(model, _rand(8, 8, 3), {"c1": (6, 5), "c2": (6, 5), "c3": (4, 4)}, params)
    assert "'c2' pads its input ('same')" in report["c1"].note
    assert small.get_layer("bn2").get_weights()[0].shape == (5,)


def test_units_mixed_by_a_softmax_stay():
    inp = keras.Input((4,))
    h = L.Dense(6, activation="softmax", name="sm")(inp)
    d2 = L.Activation("softmax", name="act")(L.Dense(5, name="d2")(h))
    model = keras.Model(inp, L.Dense(2, name="out")(d2))
    _randomize(model, 11)
    _kill(model, "sm", [1], [0.3])
    _kill(model, "d2", [0, 2], [0.3, 0.1])
    with pytest.raises(PruneError, match=r"'sm' \(1 dead\): 'sm' has a softmax activation.*'d2' \(2 dead\): feeds 'act'"):
        pkk.remove_neurons(model)


# -- Concatenate -------------------------------------------------------------------------
def test_concatenate_of_two_dense_branches_into_dense():
    inp = keras.Input((5,))
    a = L.Dense(4, activation="relu", name="a")(inp)
    b = L.Dense(6, activation="tanh", name="b")(inp)
    model = keras.Model(inp, L.Dense(3, name="out")(L.Concatenate()([a, b])))
    _randomize(model, 2)
    _kill(model, "a", [0, 3], [0.8, 0.3])
    _kill(model, "b", [1, 2, 5], [0.5, -0.7, 0.0])
    small, _ = _remove(model, _rand(5), {"a": (4, 2), "b": (6, 3), "out": (3, 3)}, dense(5, 2) + dense(5, 3) + dense(5, 3))
    assert tuple(small.get_layer("out").kernel.shape) == (5, 3)


def test_concatenate_then_conv():
    inp = keras.Input((6, 6, 2))
    c1 = L.Conv2D(4, 3, activation="relu", name="c1")(inp)
    c2 = L.Conv2D(5, 3, name="c2")(inp)
    c3 = L.Conv2D(3, 2, name="c3")(L.Concatenate()([c1, c2]))
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalMaxPooling2D()(c3)))
    _randomize(model, 3)
    _kill(model, "c1", [1], [0.6])
    _kill(model, "c2", [0, 4], [0.0, -0.5])
    params = conv(3, 2, 3) + conv(3, 2, 3) + conv(2, 6, 3) + dense(3, 2)
    small, _ = _remove(model, _rand(6, 6, 2), {"c1": (4, 3), "c2": (5, 3), "c3": (3, 3)}, params)
    assert tuple(small.get_layer("c3").kernel.shape) == (2, 2, 6, 3)


# -- DepthwiseConv2D ---------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_depthwise_conv(padding):
    inp = keras.Input((7, 7, 2))
    c1 = L.Conv2D(5, 3, activation="relu", name="c1")(inp)
    dw = L.DepthwiseConv2D(3, padding=padding, activation="tanh", name="dw")(c1)
    c2 = L.Conv2D(3, 2, name="c2")(dw)
    model = keras.Model(inp, L.Dense(2, name="out")(L.Flatten()(c2)))
    _randomize(model, 4)
    _kill(model, "c1", [0, 2, 3], [0.0, 0.7, -0.5])  # constants after relu: 0, 0.7, 0
    # "valid": all three go (tanh(c·sum(k) + b) is folded into c2); "same": only the zeros
    k = 2 if padding == "valid" else 3
    side = 3 if padding == "valid" else 5  # dw output; c2 gives (side - 1)²·3 features
    params = conv(3, 2, k) + 9 * k + k + conv(2, k, 3) + dense((side - 1) ** 2 * 3, 2)
    small, report = _remove(model, _rand(7, 7, 2), {"c1": (5, k), "dw": (5, k), "c2": (3, 3)}, params)
    assert tuple(small.get_layer("dw").kernel.shape) == (3, 3, k, 1)
    if padding == "same":
        assert "'dw' pads its input ('same')" in report["c1"].note


def test_depthwise_with_a_depth_multiplier_keeps_its_inputs():
    inp = keras.Input((6, 6, 2))
    c1 = L.Conv2D(4, 3, activation="relu", name="c1")(inp)
    dw = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(c1)
    model = keras.Model(inp, L.Conv2D(2, 2, name="c2")(dw))
    _randomize(model, 5)
    _kill(model, "c1", [1], [0.3])
    with pytest.raises(PruneError, match=r"'c1' \(1 dead\): feeds 'dw', a DepthwiseConv2D with depth_multiplier 2"):
        pkk.remove_neurons(model)


# -- shared layers -----------------------------------------------------------------------
def test_shared_dense_called_twice():
    in1, in2 = keras.Input((4,)), keras.Input((4,))
    shared = L.Dense(6, activation="relu", name="shared")
    pa = L.Dense(3, name="pa")(shared(in1))
    pb = L.Dense(3, name="pb")(shared(in2))
    model = keras.Model([in1, in2], L.Add()([pa, pb]))
    _randomize(model, 6)
    _kill(model, "shared", [1, 4], [0.9, 0.0])
    x = [_rand(4), _rand(4, seed=2)]
    params = dense(4, 4) + dense(4, 3) + dense(4, 3)
    _remove(model, x, {"shared": (6, 4), "pa": (3, 3), "pb": (3, 3)}, params)


def test_shared_consumer():
    inp = keras.Input((5,))
    a = L.Dense(6, activation="relu", name="a")(inp)
    b = L.Dense(6, activation="relu", name="b")(inp)
    sh = L.Dense(4, name="sh")
    model = keras.Model(inp, L.Add()([sh(a), sh(b)]))
    _randomize(model, 7)
    # column 0: dead in both, same constant 0.3 -> goes; 5: both 0 -> goes; 2: constants 0.5
    # and 0 need different folds -> stays; 3 (a only) and 4 (b only) stay
    _kill(model, "a", [0, 2, 3, 5], [0.3, 0.5, 0.1, 0.0])
    _kill(model, "b", [0, 2, 4, 5], [0.3, -0.2, 0.1, 0.0])
    params = dense(5, 4) + dense(5, 4) + dense(4, 4)
    _, report = _remove(model, _rand(5), {"a": (6, 4), "b": (6, 4), "sh": (4, 4)}, params)
    assert "'sh' is shared and would need different constant folds" in report["a"].note


# -- nested models -----------------------------------------------------------------------
def test_nested_sequentials_inside_a_functional_model():
    deep = keras.Sequential([keras.Input((8,)), L.Dense(7, activation="relu", name="deep_d")], name="deep")
    inner = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="in_d1"), deep,
                              L.Dense(5, name="in_d2")], name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(3, name="out")(inner(L.Dense(6, activation="relu", name="d0")(inp))))
    _randomize(model, 8)
    _kill(model, "d0", [1, 3], [0.4, 0.2])  # into the nested model: its input narrows
    _kill(model, "in_d1", [0, 2, 7], [0.5, 0.0, 0.9])
    _kill(model, "deep_d", [3], [0.6])
    _kill(model, "in_d2", [4], [-0.8])  # out of the nested model
    params = dense(4, 4) + dense(4, 5) + dense(5, 6) + dense(6, 4) + dense(4, 3)
    expected = {"d0": (6, 4), "in_d1": (8, 5), "deep_d": (7, 6), "in_d2": (5, 4), "out": (3, 3)}
    small, _ = _remove(model, _rand(4), expected, params)
    assert isinstance(small.get_layer("inner"), keras.Sequential)  # nested models stay nested
    assert small.get_layer("inner").get_layer("deep").get_layer("deep_d").units == 6


def test_nested_functional_inside_a_sequential():
    fi = keras.Input((6,))
    x = L.Dense(6, activation="relu", name="f_a")(fi)
    block = keras.Model(fi, L.Add()([x, L.Dense(6, name="f_b")(x)]), name="block")
    model = keras.Sequential([keras.Input((5,)), L.Dense(6, activation="relu", name="s0"), block, L.Dense(2, name="s_out")])
    _randomize(model, 9)
    _kill(model, "s0", [2], [0.5])
    _kill(model, "f_a", [0, 1], [0.4, 0.3])  # 0 dead in f_a and f_b -> goes; 1 only in f_a
    _kill(model, "f_b", [0, 4], [-0.2, 0.1])
    params = dense(5, 5) + dense(5, 5) + dense(5, 5) + dense(5, 2)
    small, report = _remove(model, _rand(5), {"s0": (6, 5), "f_a": (6, 5), "f_b": (6, 5)}, params)
    assert isinstance(small, keras.Sequential) and small.get_layer("block").input.shape == (None, 5)
    assert "joined with live units of 'f_b'" in report["f_a"].note


# -- files and wrappers ------------------------------------------------------------------
def test_saved_and_loaded_model(tmp_path):
    model = _residual_mlp()
    kernel = _np(_layer(model, "h").kernel)
    pkk.apply_masks(model, {"h/kernel": (kernel != 0).astype("float32")})  # recorded with the model
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    small, _ = _remove(loaded, _rand(6), {"h": (8, 6), "r": (8, 6), "out": (3, 3)}, RESIDUAL_PARAMS)
    kept = pkk.masks(small)["h/kernel"]  # kept, sliced like the kernel: unit 5 still masked
    assert kept.shape == (6, 6) and (kept == 0).sum() == 6


def test_wrapped_model_with_add():
    model = pkk.wrap(_residual_mlp())
    h = _np(model.get_layer("h").layer.kernel)
    pkk.apply_masks(model, {"h/kernel": (h != 0).astype("float32")})
    small, _ = _remove(model, _rand(6), {"h": (8, 6), "r": (8, 6), "out": (3, 3)}, 2 * RESIDUAL_PARAMS)  # + masks
    assert isinstance(small.get_layer("h"), pkk.PruneWrapper)
    assert pkk.masks(small)["h/kernel"].shape == (6, 6)


def test_a_refused_channels_first_conv_counts_its_dead_filters():
    """The refusal of a channels_first Conv2D names how many of its filters are zero (it
    counted every dead kernel column: 12 for 4 filters)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((3, 10, 10))
    h = L.Conv2D(8, 3, activation="relu", data_format="channels_first", name="c1")(i)
    h = L.Conv2D(6, 3, data_format="channels_first", name="c2")(h)
    h = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    model = keras.Model(i, L.Dense(4, name="out")(h))
    pkk.prune(model, 0.5, criterion="magnitude", granularity="channel")
    kernel = keras.ops.convert_to_numpy(model.get_layer("c1").kernel)
    dead = int(np.all(kernel.reshape(-1, 8) == 0, axis=0).sum())
    with pytest.raises(PruneError, match=rf"'c1' \({dead} dead\): 'c1' is a Conv2D with data_format='channels_first'"):
        pkk.remove_neurons(model)
