"""prunekit: prune neural networks and measure what was really gained.

Example:
    >>> import prunekit as pk
    >>> result = pk.prune(model, sparsity=0.9, criterion="magnitude", allocation="lamp")
    >>> pk.sparsity(model)
    0.9
    >>> pk.commit(model)

Importing the package itself does not import torch: the public names below load on first
use (PEP 562), and so does everything else the first time any other ``prunekit.*`` module
is imported. Only the ``prunekit.cli`` package (the command line, every module of it) imports
without it, so the command line can set thread settings such as ``OMP_WAIT_POLICY``
before torch starts its thread pool. Once loaded, the package holds exactly what an eager
import would.
"""

from __future__ import annotations

import importlib
import importlib.util
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> (submodule, attribute); a submodule exported as itself has attribute None
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "criteria": ("criteria", None),
    "regularizers": ("regularizers", None),
    "schedules": ("schedules", None),
    "Allocation": ("allocation", "Allocation"),
    "LayerReport": ("api", "LayerReport"),
    "PruneResult": ("api", "PruneResult"),
    "Pruner": ("api", "Pruner"),
    "GroupReport": ("api", "GroupReport"),
    "HybridResult": ("api", "HybridResult"),
    "commit": ("api", "commit"),
    "compact": ("api", "compact"),
    "inspect": ("api", "inspect_model"),
    "masks": ("api", "masks"),
    "measure": ("api", "measure"),
    "prune": ("api", "prune"),
    "prune_hybrid": ("api", "prune_hybrid"),
    "sparsity": ("api", "sparsity"),
    "Criterion": ("criteria", "Criterion"),
    "distill": ("distillation", "distill"),
    "PruneError": ("errors", "PruneError"),
    "PruneTypeError": ("errors", "PruneTypeError"),
    "load": ("export", "load"),
    "save": ("export", "save"),
    "Granularity": ("granularity", "Granularity"),
    "LayerwiseReport": ("layerwise", "LayerwiseReport"),
    "prune_layerwise": ("layerwise", "prune_layerwise"),
    "available": ("registry", "available"),
    "register": ("registry", "register"),
}

#: modules that import without torch (and without loading the rest of the package)
_LIGHT = frozenset({f"{__name__}.cli", *(f"{__name__}.cli.{m}" for m in (
    "__main__", "checks", "common", "data", "deploy", "format", "llm", "llm_shrink", "llm_summary", "output", "packed",
    "prune", "recipes", "reports", "studies", "train"))})

__all__ = [
    "Allocation", "Criterion", "Granularity", "LayerReport", "PruneError", "PruneResult",
    "GroupReport", "HybridResult", "LayerwiseReport", "PruneTypeError", "Pruner", "available", "commit", "compact", "inspect", "criteria", "distill", "load", "masks", "measure",
    "prune", "prune_hybrid", "prune_layerwise", "register", "regularizers", "save", "schedules", "sparsity",
]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from . import criteria as criteria
    from . import regularizers as regularizers
    from . import schedules as schedules
    from .allocation import Allocation as Allocation
    from .api import GroupReport as GroupReport
    from .api import HybridResult as HybridResult
    from .api import LayerReport as LayerReport
    from .api import PruneResult as PruneResult
    from .api import Pruner as Pruner
    from .api import commit as commit
    from .api import compact as compact
    from .api import inspect_model as inspect
    from .api import masks as masks
    from .api import measure as measure
    from .api import prune as prune
    from .api import prune_hybrid as prune_hybrid
    from .api import sparsity as sparsity
    from .criteria import Criterion as Criterion
    from .distillation import distill as distill
    from .errors import PruneError as PruneError
    from .errors import PruneTypeError as PruneTypeError
    from .export import load as load
    from .export import save as save
    from .granularity import Granularity as Granularity
    from .layerwise import LayerwiseReport as LayerwiseReport
    from .layerwise import prune_layerwise as prune_layerwise
    from .registry import available as available
    from .registry import register as register

_lock = threading.RLock()
_loaded = False
_depth = 0  # nesting of prunekit module executions while the finder below is installed


def _load() -> None:
    """Import everything an eager ``import prunekit`` used to (once); bind the public names."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _CompleteOnImport)]
        try:
            for name, (module, attr) in _EXPORTS.items():
                mod = importlib.import_module(f"{__name__}.{module}")
                globals()[name] = mod if attr is None else getattr(mod, attr)
        except BaseException:
            _loaded = False
            raise


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS and not name.startswith("__") and not _loaded \
            and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # `from . import masking` inside a submodule: import that submodule alone, not the
        # whole package (which would import the half-executed importer again)
        return importlib.import_module(f"{__name__}.{name}")
    _load()
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _CompletingLoader(importlib.abc.Loader):
    """Runs a submodule as usual, then loads the package once the outermost prunekit
    import has finished (so no module is half-initialized when the rest arrives)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        global _depth
        _depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            _depth -= 1
        if _depth == 0:
            _load()

    def __getattr__(self, name: str) -> Any:  # get_source, get_data, is_package, ...
        return getattr(self._loader, name)


class _CompleteOnImport(importlib.abc.MetaPathFinder):
    """Until the package is loaded, wraps the loader of every ``prunekit.*`` module except
    the light ones, so that importing e.g. ``prunekit.registry`` directly still registers
    every criterion, granularity and allocation, as an eager package import did."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if _loaded or not fullname.startswith(f"{__name__}.") or fullname in _LIGHT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _CompletingLoader(spec.loader)
        return spec


sys.meta_path.insert(0, _CompleteOnImport())
