"""Keras: masks live in the model (a constraint Keras applies after every optimizer step),
survive plain ``model.fit`` and saving, and a warning names masked weights that came back."""

from __future__ import annotations


import numpy as np
import pytest

from keras_setup import MARKS, L, keras  # sets the torch backend before keras loads
pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402

from prunekit.adapters import keras as pkk  # noqa: E402

pytestmark = [*MARKS,
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y


@pytest.fixture
def mlp(digits) -> keras.Model:
    """64-32-10 MLP, three epochs on digits; ``h`` has a user constraint of its own."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        L.Dense(32, activation="relu", name="h", kernel_constraint=keras.constraints.MaxNorm(3.0)),
        L.Dense(10, name="out"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(*digits, epochs=3, batch_size=32, verbose=0)
    return model


def _kernels(model: keras.Model) -> dict[str, np.ndarray]:
    return {n: keras.ops.convert_to_numpy(model.get_layer(n).kernel) for n in ("h", "out")}


def test_plain_fit_keeps_the_zeros(mlp, digits):
    result = pkk.prune(mlp, 0.8)
    _, pruned_acc = mlp.evaluate(*digits, verbose=0)
    mlp.fit(*digits, epochs=2, batch_size=32, verbose=0)  # Adam, no MaskEnforcer
    for name, k in _kernels(mlp).items():
        gone = result.masks[f"{name}/kernel"] == 0
        assert np.all(k[gone] == 0), name
        assert not np.allclose(k[~gone], 0)  # the kept weights did train
    assert pkk.sparsity(mlp) == pytest.approx(result.sparsity, abs=1e-6)
    _, acc = mlp.evaluate(*digits, verbose=0)
    assert acc > pruned_acc + 0.05  # fine-tuning recovers accuracy with the zeros in place
    # the user's own constraint still runs under the mask
    norms = np.linalg.norm(_kernels(mlp)["h"], axis=0)
    assert norms.max() <= 3.0 + 1e-5


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_masks_survive_save_and_load(mlp, digits, tmp_path, fmt):
    result = pkk.prune(mlp, 0.7)
    path = tmp_path / f"m.{fmt}"
    keras.saving.save_model(mlp, path)
    loaded = keras.models.load_model(path)
    saved = pkk.masks(loaded)
    assert set(saved) == {"h/kernel", "out/kernel"}
    for key, m in saved.items():
        np.testing.assert_array_equal(m, result.masks[key])
    # Keras restores an .h5 model's optimizer with variables fit() does not know: compile afresh.
    loaded.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(*digits, epochs=1, batch_size=64, verbose=0)
    assert pkk.sparsity(loaded) == pytest.approx(result.sparsity, abs=1e-6)


def test_masked_weights_brought_back_warn(mlp):
    result = pkk.prune(mlp, 0.8)
    dense = [np.random.default_rng(0).normal(size=w.shape).astype("float32") for w in mlp.get_weights()]
    mlp.set_weights(dense)  # bypasses the optimizer, so the masks do not run
    masked = sum(int((m == 0).sum()) for m in result.masks.values())
    with pytest.warns(pkk.MaskDriftWarning, match=rf"{masked:,} of {masked:,} masked weights are non-zero"):
        assert pkk.sparsity(mlp) < 0.01
    with pytest.warns(pkk.MaskDriftWarning):
        plain = pkk.strip(mlp)  # the copy gets its zeros back
    assert pkk.sparsity(plain) == pytest.approx(result.sparsity, abs=1e-6)
    assert pkk.masks(plain) == {}
    assert plain.get_layer("h").get_config()["kernel_constraint"]["class_name"] == "MaxNorm"
    with pytest.warns(pkk.MaskDriftWarning):
        again = pkk.prune(mlp, 0.8)  # the recorded masks are in force again
    for name, k in _kernels(mlp).items():
        assert np.all(k[result.masks[f"{name}/kernel"] == 0] == 0)
    assert again.sparsity == pytest.approx(result.sparsity, abs=1e-6)


def test_pruning_again_keeps_earlier_zeros(mlp):
    first = pkk.prune(mlp, 0.5, granularity="channel")
    second = pkk.prune(mlp, 0.6)
    for key in ("h/kernel",):
        assert np.all(second.masks[key][first.masks[key] == 0] == 0)
    assert np.all(pkk.masks(mlp)["h/bias"] == first.masks["h/bias"])  # channel bias masks stay recorded
    assert pkk.apply_masks(mlp, {"h/kernel": np.ones((64, 32))}) is None
    assert "h/kernel" not in pkk.masks(mlp)  # an all-ones mask lifts the record
