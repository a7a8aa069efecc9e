"""Perplexity of a causal language model on a token stream."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import validate as V
from ..errors import PruneError
from .blocks import check_tokens


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: torch.Tensor, *, seqlen: int, stride: int | None = None) -> float:
    """Perplexity of a causal language model on a token stream: ``exp`` of the mean NLL.

    The stream (``token_ids`` flattened) is cut into windows of ``seqlen`` tokens. With
    ``stride=None`` (or ``stride == seqlen``) windows do not overlap and each predicts its
    own tokens 2..seqlen. A smaller ``stride`` slides the window by ``stride`` tokens and
    scores only the tokens not scored before, giving them longer context. A trailing
    remainder shorter than a window is not used.

    Args:
        model: returns ``.logits`` (``[batch, seqlen, vocab]``) for ``model(input_ids=...)``.
        token_ids: LongTensor of token ids, 1-D or ``[n, L]`` (rows are concatenated).
        seqlen: window length, at least 2.
        stride: window step, ``1 <= stride <= seqlen``; ``None`` means ``seqlen``.

    Returns:
        The perplexity, a float.
    """
    check = getattr(model, "can_generate", None)
    if callable(check) and not check():  # a transformers model that is no causal LM (BERT's MLM head, an encoder)
        raise PruneError(f"perplexity needs a causal language model; {type(model).__name__} does not generate "
                         "text (a masked LM sees the tokens it predicts). For encoders use "
                         "prunekit.llm.evaluate.embedding_fidelity")
    ids = check_tokens("token_ids", token_ids, model).reshape(-1)
    seqlen = V.integer("seqlen", seqlen, minimum=2)
    if seqlen > ids.numel():
        raise PruneError(f"seqlen {seqlen!r} is longer than the {ids.numel()} tokens given")
    stride = seqlen if stride is None else stride
    stride = V.integer("stride", stride, minimum=1, maximum=seqlen)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for i, begin in enumerate(range(0, ids.numel() - seqlen + 1, stride)):
            window = ids[begin : begin + seqlen].to(device).unsqueeze(0)
            logits = model(input_ids=window, use_cache=False).logits[0, :-1].float()
            target = window[0, 1:]
            # First window: every prediction; later ones: only the tokens past the previous window.
            first = 0 if i == 0 else max(0, seqlen - 1 - stride)
            lp = torch.log_softmax(logits[first:], dim=-1)
            nll -= float(lp.gather(1, target[first:].unsqueeze(1)).sum())
            count += target.numel() - first
    finally:
        model.train(was_training)
    return float(math.exp(nll / count))
