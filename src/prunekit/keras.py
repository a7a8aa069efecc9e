"""Keras 3 models, pruned in Keras's idiom: ``prunekit.keras.prune``, ``PruningCallback``,
``MaskEnforcer``, ``strip``, ``remove_neurons``.

Needs ``pip install prunekit[keras]``. See :mod:`prunekit.adapters.keras`.
"""

from .adapters.keras import (
    NOTHING_TO_PRUNE as NOTHING_TO_PRUNE,
    ExportReport as ExportReport,
    PRUNABLE as PRUNABLE,
    KerasPruneResult as KerasPruneResult,
    MaskConstraint as MaskConstraint,
    MaskDriftWarning as MaskDriftWarning,
    MaskEnforcer as MaskEnforcer,
    PruneWrapper as PruneWrapper,
    PruningCallback as PruningCallback,
    RemovalReport as RemovalReport,
    UnitChange as UnitChange,
    apply_masks as apply_masks,
    check_masks as check_masks,
    export_onnx as export_onnx,
    export_tflite as export_tflite,
    masks as masks,
    prune as prune,
    remove_neurons as remove_neurons,
    scores as scores,
    sparsity as sparsity,
    strip as strip,
    wrap as wrap,
)

__all__ = [
    "NOTHING_TO_PRUNE", "PRUNABLE", "ExportReport", "KerasPruneResult", "MaskConstraint", "MaskDriftWarning", "MaskEnforcer",
    "PruneWrapper", "PruningCallback", "RemovalReport", "UnitChange", "apply_masks", "check_masks", "export_onnx", "export_tflite", "masks", "prune",
    "remove_neurons", "scores", "sparsity", "strip", "wrap",
]
