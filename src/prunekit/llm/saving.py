"""Saving pruned language models exactly.

A masked weight is stored by ``torch.nn.utils.parametrize`` under
``...parametrizations.weight.original`` plus a mask buffer; ``transformers``' stock
``from_pretrained`` does not know these keys and would initialize those layers at random.
So every prunekit LLM path leaves a model whose ``save_pretrained`` writes plain weights:

* by default the masks are committed (the zeros stay, the parametrizations go);
* with ``keep_masks=True`` (to fine-tune with the masks enforced) the model's
  ``save_pretrained`` is guarded: it commits, saves, and registers the same masks again, so
  the saved folder is exact and the model in memory keeps training under its masks.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import validate as V
from ..masking import apply_masks, commit, get_masks

__all__ = ["finish", "guard_save"]


class _CommittedSave:
    """``model.save_pretrained`` for a masked model: commit, save, restore the masks.

    An object rather than a closure so that ``copy.deepcopy(model)`` gives the copy a guard
    of its own (deepcopy maps ``self.model`` to the copy) and the model still pickles.
    """

    def __init__(self, model: nn.Module, save: Any) -> None:
        self.model = model
        self.save = save  # the class's own save_pretrained, unbound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        masks = {k: v.clone() for k, v in get_masks(self.model).items()}
        if not masks:
            return self.save(self.model, *args, **kwargs)
        commit(self.model)
        try:
            return self.save(self.model, *args, **kwargs)
        finally:
            apply_masks(self.model, masks)


def guard_save(model: nn.Module) -> nn.Module:
    """Make ``model.save_pretrained`` write plain (committed) weights while masks stay on
    the model in memory. No-op for models without ``save_pretrained``. Returns ``model``."""
    save = getattr(type(model), "save_pretrained", None)
    if save is not None and not isinstance(model.__dict__.get("save_pretrained"), _CommittedSave):
        model.__dict__["save_pretrained"] = _CommittedSave(model, save)
    return model


def finish(model: nn.Module, keep_masks: bool) -> None:
    """End of an LLM pruning call: commit the masks, or keep them behind a guarded save."""
    V.boolean("keep_masks", keep_masks)
    if keep_masks:
        guard_save(model)
    else:
        commit(model)
