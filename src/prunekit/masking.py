"""Masks as ``torch.nn.utils.parametrize`` parametrizations.

``module.weight`` becomes ``original * mask``. The trainable tensor ``original`` is the very
``nn.Parameter`` the module had before (same ``id``), so optimizers built before pruning keep
working. Masked entries get exactly zero gradient and the effective weight stays exactly
zero through any optimizer step (momentum, Adam, weight decay act on ``original``, which the
mask multiplies away). :func:`commit` removes the parametrization and keeps the zeros.

Unlike plain parametrized modules, masked modules here pickle (``torch.save(model)``,
``pickle.dumps``) as well as deepcopy: see :func:`_make_picklable`.

This is the one module that touches ``torch.nn.utils.parametrize``: the rest of prunekit
asks it through :func:`original`, :func:`parametrized_names`, :func:`parametrizations`,
:func:`foreign_parametrizations`, :func:`plain_class`, :func:`is_parametrization_key`,
:func:`cached`, :func:`drop_mask` and :func:`effective_state_dict`.
"""

from __future__ import annotations

import copy

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import PruneError
from .state_dicts import check_module as check_module  # defined there; public here too
from .state_dicts import effective_state_dict as effective_state_dict
from .state_dicts import is_parametrization_key as is_parametrization_key


# --- parametrizations, prunekit's or not ----------------------------------------------------


def parametrized_names(module: nn.Module) -> list[str]:
    """Names of ``module``'s own tensors that are under a parametrization (any kind)."""
    return list(module.parametrizations.keys()) if parametrize.is_parametrized(module) else []


def parametrizations(module: nn.Module, name: str) -> list[nn.Module]:
    """The parametrizations on ``module.<name>``, in order (empty when it has none)."""
    return list(module.parametrizations[name]) if parametrize.is_parametrized(module, name) else []


def original(module: nn.Module, name: str) -> torch.Tensor | None:
    """The stored tensor behind ``module.<name>``: the parametrization's trainable
    ``original`` when ``name`` is parametrized (None when that parametrization spans several
    tensors), else the attribute itself."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations[name], "original", None)
    return getattr(module, name)


def foreign_parametrizations(module: nn.Module, pname: str) -> list[str]:
    """Names of the parametrizations on ``module.<pname>`` that are not prunekit masks
    (``weight_norm``, ``spectral_norm``, ...): a mask cannot be folded into them exactly.
    A weight that is no parameter but recomputed before each forward by a hook (the older
    ``torch.nn.utils.weight_norm`` / ``spectral_norm``) gives the hook's class name."""
    kinds = [type(p).__name__ for p in parametrizations(module, pname) if type(p).__module__ != __name__]
    if kinds or parametrize.is_parametrized(module, pname) or pname in module._parameters:
        return kinds
    if not isinstance(getattr(module, pname, None), torch.Tensor):
        return []
    hooks = [type(h).__name__ for h in module._forward_pre_hooks.values() if getattr(h, "name", None) == pname]
    return hooks or ["a computed attribute"]


def plain_class(module: nn.Module) -> type:
    """``module``'s own class: a parametrized module's class is a generated subclass of it."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def cached():
    """A context manager under which every parametrized tensor is computed once
    (``torch.nn.utils.parametrize.cached``)."""
    return parametrize.cached()


class Mask(nn.Module):
    """Parametrization ``x -> x`` where ``mask`` is 1, exactly 0 where it is 0; ``mask`` is a
    buffer of 0/1 in ``x``'s dtype.

    ``NaN * 0`` is ``NaN``, and in float16 an optimizer can leave NaN in ``original`` where
    the gradient is always zero (Adam's ``eps=1e-8`` is 0 in float16, so its update there is
    0 / 0). So float16 weights, and weights on accelerators (where both forms cost the same),
    are masked by filling. On the CPU, filling costs several times a multiply, and float32
    and bfloat16 optimizers leave zero-gradient entries finite (and ``apply_masks`` zeroes
    them), so there the mask multiplies.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16 or x.device.type != "cpu":
            return x.masked_fill(self.mask == 0, 0)
        return x * self.mask

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        # Assigning to module.weight stores the value in `original` unchanged; the mask
        # still applies on read. Keeps `original` the same Parameter object.
        return x


def _split(name: str) -> tuple[str, str]:
    mname, _, pname = name.rpartition(".")
    return mname, pname


def _mask_param(module: nn.Module, pname: str) -> Mask | None:
    for p in parametrizations(module, pname):
        if isinstance(p, Mask):
            return p
    return None


def is_pruned(model: nn.Module) -> bool:
    """True if any parameter of ``model`` carries a prunekit mask."""
    return any(True for _ in _iter_masks(model))


def _iter_masks(model: nn.Module):
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname in list(module.parametrizations.keys()):
            m = _mask_param(module, pname)
            if m is not None:
                yield (f"{mname}.{pname}" if mname else pname), module, pname, m


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{param_name: mask}`` for every masked parameter (canonical names, e.g. ``"fc1.weight"``)."""
    check_module(model)
    return {name: m.mask for name, _, _, m in _iter_masks(model)}


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Register (or tighten) masks on ``model``, all or nothing.

    A parameter that already has a mask keeps every earlier zero: the new mask is the
    logical AND of old and new. The trainable parameter is zeroed where masked, so its
    saved values agree with the effective weight.

    Args:
        model: the module to mask in place.
        masks: ``{param_name: 0/1 tensor}``, shapes equal to the parameters'.

    Returns:
        ``model``.
    """
    check_module(model)
    modules = dict(model.named_modules())
    plan = []
    # Validate everything before touching anything: a failure leaves the model as it was.
    for name, mask in masks.items():
        mname, pname = _split(name)
        module = modules.get(mname)
        if module is None or not (hasattr(module, pname)):
            raise PruneError(f"mask for {name!r}: no such parameter in {type(model).__name__}")
        current = getattr(module, pname)
        if not isinstance(current, torch.Tensor):
            raise PruneError(f"mask for {name!r}: {pname!r} is not a tensor")
        if tuple(mask.shape) != tuple(current.shape):
            raise PruneError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter has {tuple(current.shape)}"
            )
        if parametrize.is_parametrized(module, pname) and _mask_param(module, pname) is None:
            # A mask after another parametrization cannot be folded into `original` on
            # commit (w -> f(w) * mask is not f(w * mask) in general).
            kinds = [type(p).__name__ for p in module.parametrizations[pname]]
            raise PruneError(
                f"{name!r} already has the parametrization {kinds}; prunekit cannot mask it exactly. "
                f"Remove it first, or exclude the weight with ignore=[{name!r}]"
            )
        plan.append((name, module, pname, current, mask))
    new = [name for name, module, pname, _, _ in plan if _mask_param(module, pname) is None]
    if new and isinstance(model, nn.parallel.DistributedDataParallel):
        raise PruneError(
            f"new masks on {new[:4]}{' ...' if len(new) > 4 else ''} under DistributedDataParallel: registering a "
            "mask gives the weight a new autograd accumulator, so DDP's gradient hooks would never fire. Prune "
            "before wrapping the model in DDP, or register all-ones masks (prunekit.masking.apply_masks) on every "
            "weight to prune before wrapping (a PruningCallback then tightens them)")
    for name, module, pname, current, mask in plan:
        # copy=True: the buffer never aliases the caller's tensor.
        m = mask.detach().to(device=current.device, dtype=current.dtype, copy=True)
        existing = _mask_param(module, pname)
        if existing is not None:
            existing.mask.mul_(m)
        else:
            parametrize.register_parametrization(module, pname, Mask(m), unsafe=True)
            _make_picklable(module)
            existing = _mask_param(module, pname)
        with torch.no_grad():
            module.parametrizations[pname].original.masked_fill_(existing.mask == 0, 0)
    return model


def commit(model: nn.Module) -> nn.Module:
    """Make masks permanent: remove prunekit parametrizations, keep the zeros.

    The parameter objects keep their identity (optimizers stay valid). Returns ``model``.
    """
    check_module(model)
    for _, module, pname, _ in list(_iter_masks(model)):
        plist = module.parametrizations[pname]
        if len(plist) == 1:
            parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
        else:
            # Other parametrizations stay: fold the mask into `original` and drop only ours.
            idx = next(i for i, p in enumerate(plist) if isinstance(p, Mask))
            with torch.no_grad():
                plist.original.masked_fill_(plist[idx].mask == 0, 0)
            del plist[idx]
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Drop the masks and restore the trainable values as they are (no zeros forced)."""
    check_module(model)
    for _, module, pname, _ in list(_iter_masks(model)):
        plist = module.parametrizations[pname]
        if len(plist) == 1:
            parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
        else:  # other parametrizations (the user's) stay: drop only ours
            del plist[next(i for i, p in enumerate(plist) if isinstance(p, Mask))]
    return model


def drop_mask(module: nn.Module, pname: str) -> None:
    """Remove a mask registered by :func:`apply_masks` (its one parametrization) from
    ``module.<pname>``, leaving the ``original`` values as the plain parameter."""
    parametrize.remove_parametrizations(module, pname, leave_parametrized=False)


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{canonical_name: tensor}`` of every parameter as the forward pass sees it (masked)."""
    check_module(model)
    out: dict[str, torch.Tensor] = {}
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, p in module.named_parameters(recurse=False):
            out[prefix + pname] = p.detach()
        if parametrize.is_parametrized(module):
            with torch.no_grad():
                for pname in module.parametrizations.keys():
                    out[prefix + pname] = getattr(module, pname).detach()
    # Parameters living inside ParametrizationList containers are represented by their
    # effective value above, not as "...parametrizations.weight.original".
    return {k: v for k, v in out.items() if not is_parametrization_key(k)}


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """Load a masked model's ``state_dict`` into ``model``, registering the masks it holds.

    ``model.load_state_dict`` alone fails on an unmasked model because the keys differ
    (``fc.parametrizations.weight.original`` vs ``fc.weight``). Returns what
    ``load_state_dict`` returns.
    """
    check_module(model)
    suffix = ".0.mask"
    masks = {}
    for key, value in state_dict.items():
        if ".parametrizations." in key and key.endswith(suffix):
            owner, _, rest = key.partition(".parametrizations.")
            pname = rest[: -len(suffix)]
            masks[f"{owner}.{pname}"] = value
        elif key.startswith("parametrizations.") and key.endswith(suffix):
            masks[key[len("parametrizations.") : -len(suffix)]] = value
    have = get_masks(model)
    apply_masks(model, {k: v for k, v in masks.items() if k not in have})
    return model.load_state_dict(state_dict, strict=strict)


def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Zero optimizer state (momentum, Adam moments) at masked positions.

    Not needed for correctness (the effective weight is zero whatever ``original`` does),
    but it keeps ``original`` itself at zero when pruning happens mid-training, so a later
    :func:`remove_masks` does not resurrect drifted values.
    """
    for _, module, pname, m in _iter_masks(model):
        orig = module.parametrizations[pname].original
        state = optimizer.state.get(orig)
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == orig.shape:
                value.mul_(m.mask.to(value.dtype))


# --- pickling -------------------------------------------------------------------------
# torch's parametrize injects a generated subclass whose __getstate__ raises, so
# `pickle.dumps(masked_model)` fails (pytorch#37322-style). We give that generated class a
# __reduce_ex__ that records the plain base class and rebuilds the parametrized class on load.


def _rebuild_parametrized(base: type, state: dict, names: list[str]) -> nn.Module:
    obj = base.__new__(base)
    obj.__dict__.update(state)
    parametrize._inject_new_class(obj)
    for n in names:
        parametrize._inject_property(obj, n)
    _make_picklable(obj)
    return obj


def _reduce_ex(self: nn.Module, protocol: int):
    base = type(self).__bases__[0]
    return (_rebuild_parametrized, (base, self.__dict__.copy(), list(self.parametrizations.keys())))


def _deepcopy(self: nn.Module, memo: dict):
    # torch's own __deepcopy__ for parametrized modules gives the copy the *same* generated
    # class; removing a parametrization from the copy (commit) then deletes the property
    # from that shared class and breaks the original. Each copy gets its own class.
    base = type(self).__bases__[0]
    obj = base.__new__(base)
    memo[id(self)] = obj
    obj.__dict__.update(copy.deepcopy(self.__dict__, memo))
    parametrize._inject_new_class(obj)
    for n in self.parametrizations.keys():
        parametrize._inject_property(obj, n)
    _make_picklable(obj)
    return obj


def _make_picklable(module: nn.Module) -> None:
    cls = type(module)
    if cls.__dict__.get("_prunekit_picklable"):
        return
    cls.__reduce_ex__ = _reduce_ex
    cls.__deepcopy__ = _deepcopy
    cls._prunekit_picklable = True


def get_masks_of(module: nn.Module, pname: str) -> torch.Tensor | None:
    """The mask registered on ``module.<pname>``, or None."""
    m = _mask_param(module, pname)
    return None if m is None else m.mask


def mask_zeros(model: nn.Module, ignore=()) -> dict[str, torch.Tensor]:
    """Register masks equal to ``weight != 0`` on every prunable weight that has zeros.

    Use it to fine-tune a committed or loaded sparse model while keeping its zeros.
    Returns the masks registered.
    """
    from .targets import find_targets

    with torch.no_grad():
        masks = {t.name: (t.weight != 0) for t in find_targets(model, ignore)}
    masks = {k: m for k, m in masks.items() if not bool(m.all())}
    apply_masks(model, masks)
    return masks
