"""prunekit: prune neural networks and measure what was really gained.

Example:
    >>> import prunekit as pk
    >>> result = pk.prune(model, sparsity=0.9, criterion="magnitude", allocation="lamp")
    >>> pk.sparsity(model)
    0.9
    >>> pk.commit(model)
"""

from . import criteria as criteria
from . import regularizers as regularizers
from . import schedules as schedules
from .allocation import Allocation as Allocation
from .api import LayerReport as LayerReport
from .api import PruneResult as PruneResult
from .api import Pruner as Pruner
from .api import GroupReport as GroupReport
from .api import HybridResult as HybridResult
from .api import commit as commit
from .api import compact as compact
from .api import inspect_model as inspect
from .api import masks as masks
from .api import measure as measure
from .api import prune as prune
from .api import prune_hybrid as prune_hybrid
from .api import sparsity as sparsity
from .criteria import Criterion as Criterion
from .errors import PruneError as PruneError
from .errors import PruneTypeError as PruneTypeError
from .export import load as load
from .export import save as save
from .granularity import Granularity as Granularity
from .layerwise import LayerwiseReport as LayerwiseReport
from .layerwise import prune_layerwise as prune_layerwise
from .registry import available as available
from .registry import register as register

__version__ = "0.1.0"


__all__ = [
    "Allocation", "Criterion", "Granularity", "LayerReport", "PruneError", "PruneResult",
    "GroupReport", "HybridResult", "LayerwiseReport", "PruneTypeError", "Pruner", "available", "commit", "compact", "inspect", "criteria", "load", "masks", "measure",
    "prune", "prune_hybrid", "prune_layerwise", "register", "regularizers", "save", "schedules", "sparsity",
]
