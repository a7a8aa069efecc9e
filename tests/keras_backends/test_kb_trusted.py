"""While a prunekit callback drives ``fit``, wrapped layers on TensorFlow and JAX mask only
their gradients (the callback masked the stored weights and their optimizer state at train
begin); outside such a fit, and in inference calls, the forward pass multiplies."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kb_setup import MARKS, L, digits, keras

import prunekit.keras as pkk  # noqa: E402
from prunekit.schedules import Gradual  # noqa: E402
from prunekit.adapters import keras_wrapper  # noqa: E402

pytestmark = MARKS
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
GRADIENT_ONLY = keras.backend.backend() != "torch"  # PyTorch has its own path (gradient hooks)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _pruned(sparsity: float = 0.8):
    keras.utils.set_random_seed(0)
    model = pkk.wrap(keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h"),
                                       L.Dense(10, name="out")]))
    result = pkk.prune(model, sparsity)
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    return model, result


class _Probe(keras.callbacks.Callback):
    """Records, at every batch end, whether the wrappers trusted their stored zeros, and can
    write ``value`` at the masked positions of ``h/kernel`` behind the optimizer's back."""

    def __init__(self, write_at: int | None = None, value: float = 1.0, mask=None) -> None:
        super().__init__()
        self.trusted: list[bool] = []
        self.write_at, self.value, self.mask = write_at, value, mask

    def on_train_batch_end(self, batch, logs=None):
        wrappers = [l for l in self.model.layers if isinstance(l, pkk.PruneWrapper)]
        self.trusted.append(all(w.stored_zeros_trusted for w in wrappers))
        if batch == self.write_at:
            kernel = self.model.get_layer("h").layer.kernel
            kernel.assign(np.where(self.mask == 0, self.value, _np(kernel)).astype("float32"))


def test_a_callback_driven_fit_masks_the_gradients_only_and_keeps_exact_zeros(monkeypatch):
    x, y = digits(512)
    model, result = _pruned()
    traced = []
    real = keras_wrapper.masked_gradient
    monkeypatch.setattr(keras_wrapper, "masked_gradient", lambda v, m: traced.append(tuple(v.shape)) or real(v, m))
    probe = _Probe()
    before = _np(model.get_layer("h").layer.kernel)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks), probe])
    assert probe.trusted and all(probe.trusted)  # for the whole fit
    assert not any(l.stored_zeros_trusted for l in model.layers if isinstance(l, pkk.PruneWrapper))  # and not after
    assert bool(traced) == GRADIENT_ONLY  # the training step took the gradient-only path where it exists
    # kernels only: the bias masks are all ones (unstructured pruning), so the step skips them
    assert set(traced) <= {(64, 32), (32, 10)}
    kernel = _np(model.get_layer("h").layer.kernel)
    for key, m in result.masks.items():
        assert np.all(_np(model.get_layer(key.split("/")[0]).layer.kernel)[m == 0] == 0), key
    assert not np.allclose(kernel[result.masks["h/kernel"] != 0], before[result.masks["h/kernel"] != 0])
    np.testing.assert_allclose(_np(model(x[:64])), _np(pkk.strip(model)(x[:64])), atol=1e-6)
    traced.clear()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)  # no prunekit callback: the product again
    assert not traced
    assert all(np.all(_np(model.get_layer(k.split("/")[0]).layer.kernel)[m == 0] == 0) for k, m in result.masks.items())


def test_a_mask_that_was_all_ones_at_train_begin_is_applied_once_set_during_the_fit(monkeypatch):
    x, y = digits(256)
    keras.utils.set_random_seed(0)
    model = pkk.wrap(keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h"),
                                       L.Dense(10, name="out")]))
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    traced = []
    real = keras_wrapper.masked_gradient
    monkeypatch.setattr(keras_wrapper, "masked_gradient", lambda v, m: traced.append(tuple(v.shape)) or real(v, m))
    cb = pkk.PruningCallback(Gradual(0.6, begin=3, end=15, frequency=3), granularity="channel", ignore=["out"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])  # every mask is all ones until step 3
    masks = pkk.masks(model)
    assert set(masks) == {"h/kernel", "h/bias"} and cb.sparsity_ == pytest.approx(0.6, abs=0.02)
    if GRADIENT_ONLY:  # the step was traced again with the kernel and bias masks of "h" once they were set
        assert set(traced) == {(64, 32), (32,)}
    for key, m in masks.items():
        assert np.all(_np(getattr(model.get_layer("h").layer, key.split("/")[1]))[m == 0] == 0), key
    np.testing.assert_allclose(_np(model(x[:32])), _np(pkk.strip(model)(x[:32])), atol=1e-6)


def test_train_begin_masks_stored_weights_and_optimizer_state_written_behind_the_optimizer():
    x, y = digits(256)
    model, result = _pruned()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)  # builds the optimizer's slots
    mask = result.masks["h/kernel"]
    kernel = model.get_layer("h").layer.kernel
    kernel.assign(np.where(mask == 0, 0.5, _np(kernel)).astype("float32"))
    slots = [s for s in model.optimizer.variables if tuple(s.shape) == mask.shape]
    assert slots
    for s in slots:
        s.assign(np.where(mask == 0, 0.25, _np(s)).astype("float32"))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks)])
    assert np.all(_np(kernel)[mask == 0] == 0)
    for s in slots:  # the first moment and the velocity alike: no stale state moves a masked weight
        assert np.all(_np(s)[mask == 0] == (1.0 if keras.backend.backend() == "torch" and "velocity" in s.name else 0.0))


def test_a_write_behind_the_optimizer_during_such_a_fit_is_reported_and_inference_stays_masked():
    x, y = digits(512)
    model, result = _pruned()
    mask = result.masks["h/kernel"]
    probe = _Probe(write_at=2, value=1.0, mask=mask)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks), probe])
    stored = _np(model.get_layer("h").layer.kernel)[mask == 0]
    assert np.all(stored == 1.0)  # no gradient reached them and no training call looked: the write stands
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = pkk.strip(model)
    assert any(issubclass(w.category, pkk.MaskDriftWarning) for w in caught)  # check_masks reports it
    np.testing.assert_allclose(_np(model(x[:64])), _np(plain(x[:64])), atol=1e-5)  # inference multiplies
    if keras.backend.backend() == "torch":  # and on PyTorch the first call after the fit masks the storage
        assert np.all(_np(model.get_layer("h").layer.kernel)[mask == 0] == 0)


def test_the_training_flag_reaches_a_wrapped_layer_that_takes_it(monkeypatch):
    class Shifted(L.Dense):
        def call(self, inputs, training=None):
            return super().call(inputs) + (1.0 if training else 0.0)

    monkeypatch.setitem(pkk.PRUNABLE, Shifted, ["kernel"])
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    model = pkk.wrap(keras.Model(inp, Shifted(4, name="s")(inp)))
    assert isinstance(model.get_layer("s"), pkk.PruneWrapper)
    x = np.ones((2, 8), "float32")
    np.testing.assert_allclose(_np(model(x, training=True)) - _np(model(x, training=False)), 1.0, atol=1e-6)


def test_a_weight_with_its_own_constraint_keeps_it_and_the_optimizer_state_stays_clean():
    x, y = digits(256)
    keras.utils.set_random_seed(0)
    model = pkk.wrap(keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h",
                                                                 kernel_constraint=keras.constraints.NonNeg()),
                                       L.Dense(10, name="out")]))
    result = pkk.prune(model, 0.8)
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[pkk.MaskEnforcer(result.masks)])
    kernel = model.get_layer("h").layer.kernel
    assert isinstance(kernel.constraint, keras.constraints.NonNeg)  # the user's own, untouched
    mask = result.masks["h/kernel"]
    assert np.all(_np(kernel)[mask == 0] == 0) and np.all(_np(kernel) >= 0)  # both held
    assert (_np(kernel)[mask != 0] > 0).any()
    slots = [s for s in model.optimizer.variables if tuple(s.shape) == mask.shape]
    assert slots
    for s in slots:  # no moment at a masked position for a later fit to move it by
        expected = 1.0 if keras.backend.backend() == "torch" and "velocity" in s.name else 0.0
        assert np.all(_np(s)[mask == 0] == expected), s.name
