"""Importance criteria: one file per family, each a registered class plus a functional twin.

Adding a criterion: a new module in this package with a subclass of :class:`Criterion`
that implements ``scores(ctx)`` and is decorated with ``@register("criterion", "name")``;
every module here is imported, so nothing else is edited.
"""

from .activation import APoZ, ActivationEntropy, activation_entropy, apoz
from .base import Context, Criterion
from .calibrated import RGS, RIA, SparseGPT, Wanda, region_gradients, rgs, ria, sparsegpt, sparsegpt_sweep, wanda
from .gradient import Gradient, Hessian, NormalizedGradient, Taylor, gradient, hessian, normalized_gradient, taylor
from .magnitude import Magnitude, NormalizedMagnitude, magnitude, normalized_magnitude
from .random import Random, random
from .structural import BNScale, FPGM, bn_scale, fpgm

__all__ = [
    "APoZ", "ActivationEntropy", "BNScale", "Context", "Criterion", "FPGM", "Gradient", "Hessian",
    "Magnitude", "NormalizedGradient", "NormalizedMagnitude", "RGS", "RIA", "Random", "SparseGPT", "Taylor", "Wanda",
    "activation_entropy", "apoz", "bn_scale", "fpgm", "gradient", "hessian", "magnitude",
    "normalized_gradient", "normalized_magnitude", "random", "region_gradients", "rgs", "ria", "sparsegpt", "sparsegpt_sweep",
    "taylor",
    "wanda",
]


def _register_all() -> None:
    """Import every module of this package, so a new file's ``@register("criterion", ...)``
    classes are available without editing this file."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_all()
