"""The Keras backend of this test process (``KERAS_BACKEND``, torch when unset), chosen
before keras is imported. ``make test`` runs this folder once per backend."""

from __future__ import annotations

import os

BACKEND = os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest  # noqa: E402

keras = pytest.importorskip("keras")
L = keras.layers

MARKS = [
    pytest.mark.skipif(keras.backend.backend() != BACKEND, reason=f"keras was imported with another backend than {BACKEND}"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]


def digits(n: int = 256, images: bool = False):
    """The first ``n`` sklearn digits, scaled to [0, 1] (8×8×1 images with ``images``)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x[:n] / 16.0).astype("float32")
    return (x.reshape(-1, 8, 8, 1) if images else x), y[:n].astype("int64")
