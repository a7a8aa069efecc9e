"""Keras 3 adapter: prune built Sequential and functional models with the prunekit core.

Kernels are scored with the core criteria (weight-only ones on any backend; ``gradient``,
``normalized_gradient`` and ``taylor`` through the torch backend), turned into masks by the
core granularities and allocations, and applied by multiplying the kernel variables, so the
result is an ordinary Keras model. Masks are numpy 0/1 arrays keyed ``"layer_name/kernel"``
in Keras's own layout, and are recorded on the weights as :class:`MaskConstraint`, which
Keras applies after every optimizer step: a plain ``model.fit`` keeps the zeros, and saved
models keep their masks. :class:`PruningCallback` prunes gradually during ``model.fit``;
:func:`strip` returns a plain copy; :func:`remove_neurons` rebuilds a genuinely smaller
model. Every result carries a :class:`~prunekit.coverage.Coverage` of what was pruned and
what was left dense. Needs ``pip install prunekit[keras]``.

The code lives in ``keras_base`` (layers, targets, graph), ``keras_masks``, ``keras_prune``,
``keras_callbacks`` and ``keras_surgery``; this module gathers the public names.

Example:
    >>> from prunekit.adapters import keras as pkk
    >>> result = pkk.prune(model, 0.9)
    >>> model.fit(x, y)  # the pruned weights stay zero
    >>> small = pkk.remove_neurons(pkk.prune(model, 0.5, granularity="channel").model)
    >>> print(small.removal_report.summary())
"""

from __future__ import annotations

from .keras_base import NOTHING_TO_PRUNE, PRUNABLE
from .keras_callbacks import MaskEnforcer, PruningCallback
from .keras_export import ExportReport, export_onnx, export_tflite
from .keras_masks import MaskConstraint, MaskDriftWarning, apply_masks, check_masks, masks, sparsity
from .keras_prune import KerasPruneResult, prune
from .keras_scores import scores
from .keras_strip import strip, wrap
from .keras_surgery import RemovalReport, UnitChange, remove_neurons
from .keras_wrapper import PruneWrapper

__all__ = [
    "NOTHING_TO_PRUNE", "PRUNABLE", "ExportReport", "KerasPruneResult", "MaskConstraint", "MaskDriftWarning", "MaskEnforcer",
    "PruneWrapper", "PruningCallback", "RemovalReport", "UnitChange", "apply_masks", "check_masks", "export_onnx", "export_tflite", "masks", "prune",
    "remove_neurons", "scores", "sparsity", "strip", "wrap",
]
