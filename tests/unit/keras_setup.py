"""What every Keras adapter test module starts with: the torch backend, chosen before keras
is imported anywhere in this process, and the marks that skip or quiet them."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"

import pytest  # noqa: E402

keras = pytest.importorskip("keras")
L = keras.layers

#: Skip when another module imported keras with another backend first; Keras's torch backend
#: converts tensors with np.array(x), which numpy 2 flags.
MARKS = [
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="keras was imported with another backend"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]
