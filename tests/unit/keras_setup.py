"""What every Keras adapter test module starts with: the Keras backend, chosen before keras
is imported anywhere in this process, and the marks that skip or quiet them.

The backend is ``KERAS_BACKEND`` when set (``make test`` runs these tests once more with
``tensorflow`` and once with ``jax``), else torch, prunekit's own dependency.
"""

from __future__ import annotations

import os

BACKEND = os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest  # noqa: E402

keras = pytest.importorskip("keras")
L = keras.layers

#: Skip when another module imported keras with another backend first; Keras's torch backend
#: converts tensors with np.array(x), which numpy 2 flags.
MARKS = [
    pytest.mark.skipif(keras.backend.backend() != BACKEND, reason=f"keras was imported with another backend than {BACKEND}"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]
