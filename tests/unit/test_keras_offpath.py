"""Keras: arguments off the most travelled path are checked as on it (masks that are not
0/1, mixed-precision layers under wrap, raw ops in functional graphs, callback arguments,
max_batches and atol), so a mistake is an error that names it, not a silently wrong model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from keras_setup import MARKS, L, keras  # sets the backend before keras loads

from prunekit.adapters import keras as pkk  # noqa: E402
from prunekit.errors import PruneError  # noqa: E402

pytestmark = MARKS


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), L.Dense(8, name="d1"), L.Dense(4, name="d2")])
    model.compile("sgd", "mse")
    return model


def _kernel(model: keras.Model, name: str) -> np.ndarray:
    layer = model.get_layer(name)
    return np.array(keras.ops.convert_to_numpy(getattr(layer, "layer", layer).kernel))


def _soft() -> np.ndarray:
    m = np.full((16, 8), 0.5, dtype="float32")
    m[:, :2] = 0
    return m


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("bad", ["half", "nan"])
def test_masks_that_are_not_0_1_are_refused_before_any_change(wrapped, bad):
    model = _mlp()
    if wrapped:
        model = pkk.wrap(model)
    mask = _soft() if bad == "half" else np.ones((16, 8), "float32")
    if bad == "nan":
        mask[3, 4] = np.nan
    shown = "0.5" if bad == "half" else "nan"
    before = _kernel(model, "d1")
    calls = {
        "apply_masks": lambda: pkk.apply_masks(model, {"d1/kernel": mask}),
        "strip": lambda: pkk.strip(model, {"d1/kernel": mask}),
        "prune": lambda: pkk.prune(model, 0.3, masks={"d1/kernel": mask}),
        "MaskEnforcer": lambda: pkk.MaskEnforcer({"d1/kernel": mask}),
        "PruningCallback": lambda: pkk.PruningCallback({"name": "oneshot", "sparsity": 0.5}, masks={"d1/kernel": mask}),
    }
    for where, call in calls.items():
        with pytest.raises(PruneError, match=rf"mask 'd1/kernel' must hold only 0 and 1.*{shown}"):
            call()
        np.testing.assert_array_equal(_kernel(model, "d1"), before, err_msg=where)
    assert pkk.masks(model) == {}


def test_bool_and_integer_masks_are_applied_as_0_1():
    model = _mlp()
    before = _kernel(model, "d1")
    keep = np.ones((16, 8), bool)
    keep[:, :3] = False
    pkk.apply_masks(model, {"d1/kernel": keep})
    np.testing.assert_array_equal(_kernel(model, "d1"), before * keep)
    np.testing.assert_array_equal(_kernel(pkk.strip(model, {"d1/kernel": keep.astype("int64")}), "d1"), before * keep)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_wrap_keeps_a_layer_pinned_to_float32_under_mixed_precision(policy, tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((16,)), L.Dense(8, name="h"), L.Dense(4, name="out", dtype="float32")])
        wrapped = pkk.wrap(model)
        assert wrapped.get_layer("out").dtype_policy.name == "float32"
        assert wrapped.get_layer("h").dtype_policy.name == policy
        got, want = (np.asarray(keras.ops.convert_to_numpy(m(x))) for m in (wrapped, model))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        path = str(tmp_path / "w.keras")
        wrapped.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.get_layer("out").dtype_policy.name == "float32"
        np.testing.assert_array_equal(np.asarray(keras.ops.convert_to_numpy(loaded(x))), want)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.filterwarnings("ignore::prunekit.coverage.CoverageWarning")
def test_wrap_leaves_raw_ops_and_embedding_masks_in_functional_graphs():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    h = keras.ops.relu(L.Dense(8, name="d1")(inp)) * 0.5  # Relu and Multiply operations, not layers
    ops_model = keras.Model(inp, L.Dense(4, name="d2")(h))
    tokens = keras.Input((6,), dtype="int32")
    emb = L.Embedding(16, 8, mask_zero=True, name="emb")(tokens)  # Keras adds a NotEqual operation
    seq_model = keras.Model(tokens, L.Dense(4, name="out")(L.LSTM(5, name="lstm")(emb)))
    x = np.random.default_rng(0).normal(size=(3, 16)).astype("float32")
    ids = np.array([[3, 5, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [7, 0, 0, 0, 0, 0]], dtype="int32")
    for model, data, names in ((ops_model, x, ("d1", "d2")), (seq_model, ids, ("emb", "out"))):
        pkk.prune(model, 0.5)
        wrapped = pkk.wrap(model)
        for name in names:
            assert isinstance(wrapped.get_layer(name), pkk.PruneWrapper), name
        held, moved = pkk.masks(model), pkk.masks(wrapped)
        assert sorted(moved) == sorted(held) and held
        for key in held:
            np.testing.assert_array_equal(moved[key], held[key])
        want = np.asarray(keras.ops.convert_to_numpy(model(data)))
        np.testing.assert_allclose(np.asarray(keras.ops.convert_to_numpy(wrapped(data))), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"criterion": "bogus"}, "bogus"),
    ({"granularity": "rows"}, "rows"),
    ({"allocation": "bogus"}, r"allocation='bogus' is not available"),
    ({"min_keep": -3}, "min_keep"),
    ({"criterion": "taylor"}, r"criterion 'taylor' needs data"),
    ({"criterion": "apoz", "granularity": "channel"}, r"criterion 'apoz' needs data"),
])
def test_pruning_callback_checks_its_arguments_before_fit(kwargs, message):
    schedule = {"name": "gradual", "sparsity": 0.5, "begin": 2, "end": 4, "frequency": 1}
    with pytest.raises(PruneError, match=message):
        pkk.PruningCallback(schedule, **kwargs)
    # the same settings are accepted where they are valid
    pkk.PruningCallback(schedule, criterion="taylor", data=(np.zeros((2, 16), "float32"), np.zeros((2, 4), "float32")))
    pkk.PruningCallback(schedule, granularity="neuron", allocation="uniform", min_keep=0)
    pkk.PruningCallback({"name": "oneshot", "sparsity": 0.5}, granularity="2:4")


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_max_batches_is_checked_before_any_change(bad):
    model = _mlp()
    data = (np.ones((8, 16), "float32"), np.zeros((8, 4), "float32"))
    before = _kernel(model, "d1")
    for call in (lambda: pkk.prune(model, 0.5, criterion="taylor", data=data, max_batches=bad),
                 lambda: pkk.prune(model, 0.5, max_batches=bad),
                 lambda: pkk.scores(model, "taylor", data=data, max_batches=bad)):
        with pytest.raises(PruneError, match=rf"max_batches must be an integer >= 1 \(or None for every batch\); got {bad!r}"):
            call()
    np.testing.assert_array_equal(_kernel(model, "d1"), before)
    assert pkk.masks(model) == {}
    assert pkk.scores(model, "taylor", data=data, max_batches=1)["d1/kernel"].shape == (16, 8)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "0.1", None])
def test_remove_neurons_checks_atol(bad):
    model = _mlp()
    pkk.prune(model, 0.5, granularity="channel")
    with pytest.raises(PruneError, match=r"atol must be a number >= 0 \(the largest \|w\| counted as zero\); got "
                                         + re.escape(repr(bad))):
        pkk.remove_neurons(model, atol=bad)
    assert pkk.remove_neurons(model, atol=0).get_layer("d1").kernel.shape == (16, 4)


@pytest.mark.filterwarnings("ignore::prunekit.coverage.CoverageWarning")
def test_remove_neurons_lists_embedding_dimensions_it_keeps():
    why = "Embedding dimensions are not removed (only Dense/Conv units and depthwise channels are)"
    ids = np.random.default_rng(0).integers(0, 16, size=(4, 5)).astype("int32")
    for hidden in (True, False):
        keras.utils.set_random_seed(0)
        layers = [keras.Input((5,), dtype="int32"), L.Embedding(16, 8, name="emb")]
        layers += [L.Dense(6, activation="relu", name="d1")] if hidden else []
        model = keras.Sequential([*layers, L.GlobalAveragePooling1D(), L.Dense(10, name="out")])
        result = pkk.prune(model, 0.5, granularity="channel")
        dead = next(l.pruned_units for l in result.layers if l.name == "emb/embeddings")
        assert dead > 0
        if hidden:
            small = pkk.remove_neurons(model)
            emb = small.removal_report.layers[0]
            assert (emb.layer, emb.before, emb.after, emb.dead, emb.note) == ("emb", 8, 8, dead, why)
            assert tuple(small.get_layer("emb").embeddings.shape) == (16, 8)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(small(ids)), keras.ops.convert_to_numpy(model(ids)),
                                       rtol=1e-5, atol=1e-6)
        else:
            with pytest.raises(PruneError, match=rf"cannot remove any unit of model .*'emb' \({dead} dead\): {re.escape(why)}"):
                pkk.remove_neurons(model)


def test_removal_report_counts_the_network_not_the_wrappers_masks():
    """The same network, wrapped or not, reports the same parameters before and after
    remove_neurons: a wrapper's mask copy is not a parameter of the model being shrunk."""
    reports, small_params = [], []
    for wrapped in (False, True):
        model = _mlp()
        if wrapped:
            model = pkk.wrap(model)
        masks = {"d1/kernel": np.ones((16, 8), dtype="float32")}
        masks["d1/kernel"][:, :3] = 0  # three dead neurons of d1
        small = pkk.remove_neurons(model, masks)
        reports.append(small.removal_report)
        small_params.append(pkk.strip(small).count_params() if wrapped else small.count_params())
    plain, wrapped = reports
    assert (wrapped.params_before, wrapped.params_after) == (plain.params_before, plain.params_after)
    assert plain.params_before == 16 * 8 + 8 + 8 * 4 + 4
    assert plain.params_after == small_params[0] == small_params[1] == 16 * 5 + 5 + 5 * 4 + 4
    assert wrapped.removed == plain.removed == 3
