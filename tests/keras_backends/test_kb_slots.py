"""A mask that grows during ``fit`` on a wrapped model: the optimizer state of the newly
masked weights is zeroed with them, so the stored weights stay exactly zero on every backend
without any per-batch work (JAX's compiled step cannot read the mask variables)."""

from __future__ import annotations

import numpy as np
import pytest

from kb_setup import MARKS, L, digits, keras

import prunekit.keras as pkk  # noqa: E402
from prunekit.adapters.keras_masks import SECOND_MOMENT_FILL, SECOND_MOMENTS, zero_slots  # noqa: E402
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


def _slots(model, name: str) -> dict[str, np.ndarray]:
    """``{slot kind ("momentum", "velocity"...): value}`` of layer ``name``'s kernel."""
    layer = model.get_layer(name)
    var = (layer.layer if isinstance(layer, pkk.PruneWrapper) else layer).kernel
    prefix = var.path.replace("/", "_") + "_"
    return {s.name[len(prefix):]: _np(s) for s in model.optimizer.variables
            if s.name.startswith(prefix) and tuple(s.shape) == tuple(var.shape)}


def _masked_value(kind: str) -> float:
    """What a slot holds at masked positions: 0, except second moments on PyTorch."""
    return SECOND_MOMENT_FILL if keras.backend.backend() == "torch" and kind in SECOND_MOMENTS else 0.0


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
def test_pruning_zeroes_the_optimizer_state_of_masked_weights(opt):
    optimizer = keras.optimizers.Adam(1e-2) if opt == "adam" else keras.optimizers.SGD(0.05, momentum=0.9)
    model = _wrapped_and_trained(optimizer)
    before = _slots(model, "h")
    assert set(before) == ({"momentum", "velocity"} if opt == "adam" else {"momentum"})
    assert all(np.count_nonzero(s) > 0.5 * s.size for s in before.values())  # (blank pixels get none)
    result = pkk.prune(model, 0.7)
    m = result.masks["h/kernel"]
    after = _slots(model, "h")
    for kind, old in before.items():
        new = after[kind]
        assert np.count_nonzero(old[m == 0]) > 0 and np.all(new[m == 0] == _masked_value(kind)), kind
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
        for kind, slot in _slots(model, key.split("/")[0]).items():  # refreshed at the last epoch's end
            assert np.all(slot[m == 0] == _masked_value(kind)), (key, kind)
    plain = pkk.strip(model)
    np.testing.assert_allclose(_np(plain(x[:32])), _np(model(x[:32])), atol=1e-5)


def test_positions_unmasked_again_get_fresh_optimizer_state_and_train():
    model = _wrapped_and_trained(keras.optimizers.Adam(1e-2))
    x, y = digits(256)
    m = pkk.prune(model, 0.7).masks["h/kernel"]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    revive = (m == 0) & (np.random.default_rng(0).random(m.shape) < 0.5) & (x.std(axis=0) > 0)[:, None]
    looser = np.where(revive, 1.0, m).astype("float32")
    pkk.apply_masks(model, {"h/kernel": looser})
    slots = _slots(model, "h")
    for kind, slot in slots.items():
        assert np.all(slot[revive] == 0), kind  # fresh state: they train like new weights
        assert np.all(slot[looser == 0] == _masked_value(kind)), kind
    before = _np(model.get_layer("h").layer.kernel)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    kernel = _np(model.get_layer("h").layer.kernel)
    assert np.all(kernel[looser == 0] == 0)
    step = np.abs(kernel - before)
    # Adam's steps are about lr in size whatever the gradient's scale: revived weights move as
    # far as the weights kept all along (stale second moments would shrink their steps ~100x).
    assert step[revive].mean() > 0.3 * step[m != 0].mean()


def test_plain_layers_pruned_with_constraints_get_zeroed_slots_on_every_backend():
    # Their masked positions still get gradients (the constraint zeroes them after each step),
    # so their second moments never sit at zero: nothing to fill.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu", name="h"), L.Dense(10, name="out")])
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    x, y = digits(256)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    m = pkk.prune(model, 0.7).masks["h/kernel"]
    for kind, slot in _slots(model, "h").items():
        assert np.all(slot[m == 0] == 0), kind
