"""Keras 3 models, pruned in Keras's idiom: ``prunekit.keras.prune``, ``PruningCallback``,
``MaskEnforcer``, ``strip``, ``remove_neurons``.

Needs ``pip install prunekit[keras]``. See :mod:`prunekit.adapters.keras`.
"""

from .adapters.keras import (
    NOTHING_TO_PRUNE as NOTHING_TO_PRUNE,
    PRUNABLE as PRUNABLE,
    KerasPruneResult as KerasPruneResult,
    MaskConstraint as MaskConstraint,
    MaskDriftWarning as MaskDriftWarning,
    MaskEnforcer as MaskEnforcer,
    PruningCallback as PruningCallback,
    RemovalReport as RemovalReport,
    UnitChange as UnitChange,
    apply_masks as apply_masks,
    check_masks as check_masks,
    masks as masks,
    prune as prune,
    remove_neurons as remove_neurons,
    sparsity as sparsity,
    strip as strip,
)

__all__ = [
    "NOTHING_TO_PRUNE", "PRUNABLE", "KerasPruneResult", "MaskConstraint", "MaskDriftWarning", "MaskEnforcer",
    "PruningCallback", "RemovalReport", "UnitChange", "apply_masks", "check_masks", "masks", "prune",
    "remove_neurons", "sparsity", "strip",
]
