"""What an LLM pruning call covers: the linear layers of the transformer blocks.

Weights outside the blocks (embeddings, the LM head) are left dense by design and listed as
the caller's choice; any other weight inside a block that is not a linear layer is listed
as unsupported, and warned about when it is a significant share of the model.
"""

from __future__ import annotations

from torch import nn

from ..coverage import Coverage, Skipped, total_params, unsupported_weights

__all__ = ["block_coverage"]


def block_coverage(model: nn.Module, linears: list[tuple[str, nn.Module]], blocks: list[str], what: str,
                   stacklevel: int = 4) -> Coverage:
    """The :class:`~prunekit.coverage.Coverage` of a call that pruned ``linears``.

    Args:
        model: the model after pruning.
        linears: ``(module name, module)`` of every linear layer in scope.
        blocks: module names of the transformer blocks.
        what: the call's name, for the reasons and the warning (``"prune_llm"``).
        stacklevel: of the warning, counted from this function.
    """
    pruned = {f"{n}.weight" for n, _ in linears}
    skipped = []
    for k in unsupported_weights(model, pruned):
        inside = any(k.name.startswith(b + ".") for b in blocks)
        reason = (
            f"inside a transformer block but not a linear layer; {what} prunes nn.Linear and GPT-2 Conv1D only"
            if inside else f"outside the transformer blocks (embeddings, LM head); {what} leaves these dense"
        )
        skipped.append(Skipped(k.name, k.numel, reason, by_choice=not inside))
    cov = Coverage(sum(m.weight.numel() for _, m in linears), total_params(model), tuple(skipped))
    cov.warn(what, stacklevel=stacklevel + 1)
    return cov
