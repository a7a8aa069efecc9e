"""A mask that grows during ``fit`` on a wrapped model: the optimizer state of the newly
masked weights is zeroed with them, so the stored weights stay exactly zero on every backend
without any per-batch work (JAX's compiled step cannot read the mask variables)."""

from __future__ import annotations

import numpy as np
import pytest

from kb_setup import MARKS, L, digits, keras

import prunekit.keras as pkk  # noqa: E402
from prunekit.adapters.keras_masks import zero_slots  # noqa: E402
from prunekit.schedules import Gradual  # noqa: E402

pytestmark = MARKS
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _wrapped_and_trained(optimizer) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = pkk.wrap(keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h"),
                                       L.Dense(10, name="out")]))
    model.compile(optimizer, LOSS)
    x, y = digits(256)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # the optimizer state is now non-zero everywhere
    return model


def _slots(model, name: str) -> list[np.ndarray]:
    var = model.get_layer(name).layer.kernel
    prefix = var.path.replace("/", "_") + "_"
    return [_np(s) for s in model.optimizer.variables if s.name.startswith(prefix) and tuple(s.shape) == tuple(var.shape)]


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
def test_pruning_zeroes_the_optimizer_state_of_masked_weights(opt):
    optimizer = keras.optimizers.Adam(1e-2) if opt == "adam" else keras.optimizers.SGD(0.05, momentum=0.9)
    model = _wrapped_and_trained(optimizer)
    before = _slots(model, "h")
    assert len(before) == (2 if opt == "adam" else 1) and all(np.count_nonzero(s) > 0.5 * s.size for s in before)  # (blank pixels get none)
    result = pkk.prune(model, 0.7)
    m = result.masks["h/kernel"]
    for old, new in zip(before, _slots(model, "h")):
        assert np.count_nonzero(old[m == 0]) > 0 and np.all(new[m == 0] == 0)
        np.testing.assert_array_equal(new[m != 0], old[m != 0])  # kept positions untouched


def test_zero_slots_without_a_built_optimizer_does_nothing():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")])
    assert zero_slots(model, model.get_layer("d").kernel, np.zeros((4, 3))) == 0
    model.compile("adam", LOSS)
    assert zero_slots(model, model.get_layer("d").kernel, np.zeros((4, 3))) == 0  # optimizer not built yet


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd_momentum"])
def test_a_mask_growing_during_fit_keeps_stored_zeros_exact(opt):
    optimizer = {"adam": keras.optimizers.Adam(1e-2), "adamw": keras.optimizers.AdamW(1e-2, weight_decay=0.1),
                 "sgd_momentum": keras.optimizers.SGD(0.05, momentum=0.9)}[opt]
    model = _wrapped_and_trained(optimizer)
    x, y = digits(256)
    cb = pkk.PruningCallback(Gradual(0.8, begin=0, end=24, frequency=6))
    model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[cb])  # 32 steps: the mask grows 5 times
    masks = pkk.masks(model)
    assert cb.sparsity_ == pytest.approx(0.8, abs=0.01)
    for key, m in masks.items():
        k = _np(model.get_layer(key.split("/")[0]).layer.kernel)
        assert np.all(k[m == 0] == 0), key  # the stored weights, not only the forward pass
        assert np.count_nonzero(k[m != 0]) == int((m != 0).sum())
    plain = pkk.strip(model)
    np.testing.assert_allclose(_np(plain(x[:32])), _np(model(x[:32])), atol=1e-5)
