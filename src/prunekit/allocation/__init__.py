"""Allocations: how a sparsity budget is spread over layers (and, for some, rows).

``base``: the interface, the exact selection helpers and the budget allocations (uniform,
global, LAMP, ERK). ``adaptive``: allocations that set each layer's sparsity first (row,
OWL, depth). Adding one: subclass :class:`Allocation`, implement ``select``, decorate with
``@register("allocation", "name")`` in a module imported here.
"""

from .adaptive import OWL, PER, Depth, PerLayer, Row, depth_sparsities, outlier_ratio, owl_sparsities, prune_rows
from .base import (
    ERK, LAMP, Allocation, Global, Layer, Uniform, cap_layers, kth_smallest, normalize, protected_scores,
    prune_k_global, prune_lowest,
)

__all__ = [
    "ERK", "LAMP", "OWL", "PER", "Allocation", "Depth", "Global", "Layer", "PerLayer", "Row", "Uniform",
    "cap_layers", "depth_sparsities", "kth_smallest", "normalize", "outlier_ratio", "owl_sparsities",
    "protected_scores", "prune_k_global", "prune_lowest", "prune_rows",
]


def _register_all() -> None:
    """Import every module of this package, so a new file's ``@register("allocation", ...)``
    classes are available without editing this file."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_all()
