"""A model's tensors under their canonical names, read through plain attribute access.

:func:`effective_state_dict` is the ``state_dict`` a committed copy of a masked model would
have; :func:`is_parametrization_key` tells the keys inside a parametrization's container from
canonical names; :func:`check_module` is the check that a model is an ``nn.Module``. Nothing
here calls ``torch.nn.utils.parametrize``: :mod:`prunekit.masking`, the one module that does,
builds on these three and re-exports them.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import PruneTypeError

__all__ = ["check_module", "effective_state_dict", "is_parametrization_key"]


def check_module(model: object) -> nn.Module:
    """Raise a clear TypeError unless ``model`` is an ``nn.Module`` (also importable from
    :mod:`prunekit.targets`)."""
    if not isinstance(model, nn.Module):
        raise PruneTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "Keras and scikit-learn models go through prunekit.keras / prunekit.sklearn"
        )
    return model


def is_parametrization_key(name: str) -> bool:
    """True for a ``state_dict`` / ``named_parameters`` key inside a parametrization's
    container (``fc.parametrizations.weight.original``, its mask), not a canonical name."""
    return name.startswith("parametrizations.") or ".parametrizations." in name


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict a committed copy of ``model`` would have, without committing it.

    Parametrized entries (``fc.parametrizations.weight.original`` and its mask) become
    one canonical key (``fc.weight``) holding the effective value. Tensors are detached,
    contiguous, on CPU, and never share memory (safetensors refuses shared storage,
    e.g. tied weights). Also importable from :mod:`prunekit.export`.

    Args:
        model: any ``nn.Module``, masked or not.

    Returns:
        ``{key: tensor}`` in ``state_dict`` order.

    Example:
        >>> list(effective_state_dict(nn.Linear(2, 1)))
        ['weight', 'bias']
    """
    check_module(model)
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if is_parametrization_key(key):
                owner, _, rest = key.rpartition("parametrizations.")
                owner = owner[:-1]  # drop the trailing "."
                pname = rest.split(".", 1)[0]
                key = f"{owner}.{pname}" if owner else pname
                if key in out:
                    continue
                value = getattr(modules[owner], pname)
            if value.layout != torch.strided:  # SparseLinear's CSR weight: files hold dense tensors
                value = value.to_dense()
            t = value.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen and t.numel():
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            out[key] = t
    return out
