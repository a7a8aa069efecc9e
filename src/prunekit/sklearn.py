"""scikit-learn models, pruned in scikit-learn's idiom: ``prunekit.sklearn.PrunedEstimator``.

Needs ``pip install prunekit[sklearn]``. See :mod:`prunekit.adapters.sklearn`.
"""

from .adapters.sklearn import PrunedEstimator as PrunedEstimator

__all__ = ["PrunedEstimator"]
