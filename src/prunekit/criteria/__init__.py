"""Importance criteria: one file per family, each a registered class plus a functional twin.

Adding a criterion: subclass :class:`Criterion`, implement ``scores(ctx)``, decorate with
``@register("criterion", "name")``, and import the module here.
"""

from .activation import APoZ, ActivationEntropy, activation_entropy, apoz
from .base import Context, Criterion
from .gradient import Gradient, Hessian, NormalizedGradient, Taylor, gradient, hessian, normalized_gradient, taylor
from .magnitude import Magnitude, NormalizedMagnitude, magnitude, normalized_magnitude
from .random import Random, random
from .structural import BNScale, FPGM, bn_scale, fpgm

__all__ = [
    "APoZ", "ActivationEntropy", "BNScale", "Context", "Criterion", "FPGM", "Gradient", "Hessian",
    "Magnitude", "NormalizedGradient", "NormalizedMagnitude", "Random", "Taylor",
    "activation_entropy", "apoz", "bn_scale", "fpgm", "gradient", "hessian", "magnitude",
    "normalized_gradient", "normalized_magnitude", "random", "taylor",
]
