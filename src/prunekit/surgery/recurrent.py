"""Compaction of recurrent layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` with fewer hidden units.

:func:`prunekit.surgery.compact` slices the removed hidden units out of every gate's rows,
the recurrent columns (or the projection's columns), the biases and the next layer's input
columns (see :mod:`prunekit.graph.recurrent`); this handler then gives the module the
sizes its tensors now have (``hidden_size``, ``input_size``), so it stays an ordinary
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` that ``state_dict``, ``torch.save`` and
``pk.save`` treat like any other.

An initial state passed to the compacted module (``hx``) must have the new width: slice
the caller's state to the kept units, in the same order.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PruneError
from .compact import handler

#: Gate blocks per hidden unit, by ``RNNBase.mode``.
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@handler(nn.LSTM, nn.GRU, nn.RNN)
def _recurrent(m: nn.RNNBase, facts: dict[str, Any]) -> dict[str, Any]:
    """New ``hidden_size`` and ``input_size`` from the sliced weights; the module's flat
    weight list is rebuilt from them."""
    gates = _GATES.get(m.mode)
    if gates is None:
        raise PruneError(f"cannot compact a recurrent layer in mode {m.mode!r}")
    rows, inputs = m.weight_ih_l0.shape
    hidden = rows // gates
    for name in m._flat_weights_names:
        w = getattr(m, name)
        if name.startswith(("weight_ih", "weight_hh", "bias_")) and w.shape[0] != gates * hidden:
            raise PruneError(
                f"{type(m).__name__}.{name} has {w.shape[0]} rows after compaction, not {gates} gates x {hidden} "
                "hidden units: every layer and direction must keep the same hidden units"
            )
    if hidden == 0 or inputs == 0:  # PyTorch's fused kernels divide by these: the process dies (SIGFPE)
        raise PruneError(
            f"cannot compact {type(m).__name__} to {hidden} hidden unit(s) and {inputs} input(s): a recurrent "
            "layer needs at least one of each; keep at least one unit in its groups (min_keep >= 1)"
        )
    attrs = {"hidden_size": hidden, "input_size": inputs}
    for k, v in attrs.items():
        setattr(m, k, v)
    m._init_flat_weights()  # the flat list the fused op reads must hold the new tensors
    return attrs
