"""Masks inside the model (PruneWrapper) on the Keras backend of this process: any fit keeps
exact zeros, .keras files restore the masks, strip gives a plain model with the same outputs."""

from __future__ import annotations

import numpy as np
import pytest

from kb_setup import MARKS, L, digits, keras

import prunekit.keras as pkk  # noqa: E402
from prunekit.schedules import Gradual  # noqa: E402

pytestmark = MARKS
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h"),
                              L.Dropout(0.1), L.Dense(10, name="out")])
    model.compile("adam", LOSS, metrics=["accuracy"])
    return model


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def trained():
    x, y = digits(512)
    model = _mlp()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam", "adamw"])
def test_any_fit_keeps_exact_zeros(trained, opt):
    x, y = digits(512)
    model = pkk.wrap(trained)
    assert isinstance(model.get_layer("h"), pkk.PruneWrapper) and not isinstance(model.layers[1], pkk.PruneWrapper)
    np.testing.assert_allclose(_np(model(x[:64])), _np(trained(x[:64])), atol=1e-6)
    result = pkk.prune(model, 0.8)
    assert pkk.masks(model).keys() == result.masks.keys() == {"h/kernel", "out/kernel"}
    optimizer = {"sgd_momentum": keras.optimizers.SGD(0.05, momentum=0.9), "adam": keras.optimizers.Adam(1e-2),
                 "adamw": keras.optimizers.AdamW(1e-2, weight_decay=0.1)}[opt]
    model.compile(optimizer, LOSS, metrics=["accuracy"])
    pruned_acc = model.evaluate(x, y, verbose=0)[1]
    before = {k: _np(model.get_layer(k.split("/")[0]).layer.kernel) for k in result.masks}
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)  # no callback, no constraint
    for key, m in result.masks.items():
        k = _np(model.get_layer(key.split("/")[0]).layer.kernel)
        assert np.all(k[m == 0] == 0), key
        assert not np.allclose(k[m != 0], before[key][m != 0]), key  # the kept weights trained
    assert pkk.sparsity(model) == pytest.approx(result.sparsity, abs=1e-9)
    assert model.evaluate(x, y, verbose=0)[1] > max(0.5, pruned_acc)  # fine-tuning under the masks helps


def test_keras_file_restores_the_masks_and_strip_gives_a_plain_model(trained, tmp_path):
    x, y = digits(512)
    model = pkk.wrap(trained)
    result = pkk.prune(model, 0.7)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("h"), pkk.PruneWrapper)
    for key, m in pkk.masks(loaded).items():
        np.testing.assert_array_equal(m, result.masks[key])
    np.testing.assert_allclose(_np(loaded(x[:64])), _np(model(x[:64])), atol=1e-6)
    loaded.compile("adam", LOSS)
    loaded.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert pkk.sparsity(loaded) == pytest.approx(result.sparsity, abs=1e-9)
    plain = pkk.strip(loaded)
    assert not any(isinstance(l, pkk.PruneWrapper) for l in plain.layers) and pkk.masks(plain) == {}
    assert [w.shape for w in plain.weights] == [w.shape for w in trained.weights]
    np.testing.assert_allclose(_np(plain(x[:64])), _np(loaded(x[:64])), atol=1e-6)
    path = tmp_path / "plain.keras"
    plain.save(path)
    assert "PruneWrapper" not in keras.models.load_model(path).to_json()


def test_forward_is_masked_even_when_weights_are_overwritten(trained):
    x, _ = digits(64)
    model = pkk.wrap(trained)
    pkk.prune(model, 0.9)
    expected = _np(model(x))
    inner = model.get_layer("h").layer
    inner.set_weights([np.random.default_rng(0).normal(size=w.shape).astype("float32") if w.ndim == 2 else w
                       for w in inner.get_weights()])
    with pytest.warns(pkk.MaskDriftWarning):
        plain = pkk.strip(model)  # re-applies the masks
    np.testing.assert_allclose(_np(model(x)), _np(plain(x)), atol=1e-5)  # wrapper masks the forward pass
    assert not np.allclose(_np(model(x)), expected)


def test_pruning_callback_and_neuron_removal_on_a_wrapped_model(trained):
    x, y = digits(512)
    model = pkk.wrap(trained)
    model.compile("adam", LOSS)
    cb = pkk.PruningCallback(Gradual(0.6, begin=0, end=20, frequency=5), granularity="channel")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    masks = pkk.masks(model)
    assert set(masks) == {"h/kernel", "h/bias"}  # the output layer keeps its units
    dead = int((masks["h/bias"] == 0).sum())
    assert dead == round(0.6 * 32)
    small = pkk.remove_neurons(model)
    assert isinstance(small.get_layer("h"), pkk.PruneWrapper)
    assert tuple(small.get_layer("h").layer.kernel.shape) == (64, 32 - dead)
    assert small.removal_report.removed == dead
    np.testing.assert_allclose(_np(small(x[:64])), _np(model(x[:64])), atol=1e-5)


def _kernel_zeros_kept(model: keras.Model, masks: dict) -> bool:
    return all(np.all(_np(model.get_layer(k.split("/")[0]).layer.kernel)[m == 0] == 0) for k, m in masks.items())


def test_a_layer_called_twice_per_step_and_a_frozen_then_thawed_layer_keep_exact_zeros():
    # A wrapper called twice in one forward pass, and one frozen for a fit and then trained:
    # on PyTorch the paths where the stored weight is masked in place and its gradient hooked.
    x, y = digits(256)
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    shared = L.Dense(64, activation="tanh", name="shared")
    model = pkk.wrap(keras.Model(inp, L.Dense(10, name="out")(shared(shared(inp)))))
    result = pkk.prune(model, 0.7)
    assert set(result.masks) == {"shared/kernel", "out/kernel"}
    model.get_layer("out").trainable = False
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    frozen = _np(model.get_layer("out").layer.kernel)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_array_equal(_np(model.get_layer("out").layer.kernel), frozen)
    assert _kernel_zeros_kept(model, result.masks)
    model.get_layer("out").trainable = True
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(_np(model.get_layer("out").layer.kernel), frozen)
    assert _kernel_zeros_kept(model, result.masks)
    np.testing.assert_allclose(_np(model(x[:64])), _np(pkk.strip(model)(x[:64])), atol=1e-6)


def test_an_overwritten_weight_is_masked_again_on_the_next_call_on_torch_and_masked_in_the_forward_pass_elsewhere(trained):
    x, _ = digits(64)
    model = pkk.wrap(trained)
    result = pkk.prune(model, 0.9)
    masked = _np(model(x))
    inner = model.get_layer("h").layer
    kernel = inner.kernel
    kernel.assign(np.where(result.masks["h/kernel"] == 0, 1.0, _np(kernel)).astype("float32"))
    np.testing.assert_allclose(_np(model(x)), masked, atol=1e-6)
    stored = _np(inner.kernel)[result.masks["h/kernel"] == 0]
    if keras.backend.backend() == "torch":
        assert np.all(stored == 0)  # the stored weight itself was masked again at the call
    else:
        assert np.all(stored == 1)  # the scope masks the value the layer reads; the variable keeps the write
