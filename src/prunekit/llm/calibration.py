"""Calibration text the model writes itself, and mixtures of calibration sets.

One-shot pruning fits the statistics of its calibration text: masks and (for SparseGPT)
weight updates chosen on the King James Bible serve the Bible well and other text less so.
A model's own samples are text of every kind it has learned, in the proportions it has
learned them; mixed into the user's calibration text they make the statistics less narrow
(self-calibration: Williams et al., 2025; Ji et al., 2024, "Beware of calibration data
for pruning large language models").

:func:`self_generated` samples ``n`` sequences of ``seqlen`` tokens from the model
(ancestral sampling from the beginning-of-sequence token with the key/value cache,
``temperature`` 1 by default, the end-of-sequence token excluded so every sequence is full
length; the model's own generation defaults do not apply), with a fixed seed.
:func:`mix` interleaves calibration sets row by row.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import validate as V
from ..errors import PruneError, PruneTypeError
from .blocks import check_tokens

__all__ = ["can_generate", "mix", "self_generated", "start_token_of"]


def can_generate(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model that generates text (a causal LM, not an encoder)."""
    check = getattr(model, "can_generate", None)
    return bool(check()) if callable(check) else False


def start_token_of(model: nn.Module) -> int | None:
    """The token the model's own text starts from: its config's ``bos_token_id`` (else
    ``decoder_start_token_id``, else ``eos_token_id``), the first that lies in the model's
    vocabulary; ``None`` when none does (a config kept from a larger vocabulary)."""
    config = getattr(model, "config", None)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None)
    for attr in ("bos_token_id", "decoder_start_token_id", "eos_token_id"):
        tid = getattr(config, attr, None)
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 and (not vocab or tid < vocab):
            return tid
    return None


def _start_token(model: nn.Module) -> int:
    tid = start_token_of(model)
    if tid is None:
        raise PruneError(
            f"{type(model).__name__}.config has no bos_token_id (nor decoder_start_token_id, eos_token_id) inside its vocabulary; "
            "self_generated needs a token to start from: pass start_token="
        )
    return tid


def _sample(model: nn.Module, prompt: torch.Tensor, new: int, temperature: float, eos: Any) -> torch.Tensor:
    """Ancestral sampling with the key/value cache: ``new`` tokens after ``prompt``.

    Written out rather than ``model.generate``, whose result also follows the model's own
    generation defaults (top-p, repetition penalties, ...); here every token is drawn from
    the model's distribution at ``temperature``, the end-of-sequence token excluded. The
    operations are those of ``generate(do_sample=True, top_k=0)`` with ``min_new_tokens``,
    so a model without generation defaults gives the same samples either way.
    """
    import inspect

    # transformers 5.25 calls the key/value cache `cache`; earlier versions `past_key_values`.
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = prompt
    out = model(input_ids=ids, use_cache=True)
    eos_ids = [eos] if isinstance(eos, int) else [t for t in (eos or []) if isinstance(t, int)]
    for step in range(new):
        logits = out.logits[:, -1, :].to(dtype=torch.float32)
        if temperature != 1.0:
            logits = logits / temperature
        if eos_ids:
            logits[:, eos_ids] = -float("inf")
        nxt = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
        ids = torch.cat([ids, nxt], dim=1)
        if step + 1 < new:
            cache = out["cache"] if "cache" in out else out["past_key_values"]
            out = model(input_ids=nxt, use_cache=True, **{key: cache})
    return ids


@torch.no_grad()
def self_generated(
    model: nn.Module,
    n: int,
    seqlen: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 8,
    start_token: int | None = None,
) -> torch.Tensor:
    """``[n, seqlen]`` token ids sampled from ``model`` itself.

    Args:
        model: a ``transformers`` causal language model (``generate`` is used); left
            unchanged (its training flag is restored).
        n: number of sequences.
        seqlen: tokens per sequence, the start token included.
        seed: with ``batch_size``, fixes the samples (the batches draw from one random
            stream, so another ``batch_size`` gives other samples); the global torch random
            state is restored afterwards.
        temperature: sampling temperature (1 = the model's own distribution).
        batch_size: sequences generated together.
        start_token: the first token of every sequence; default: the model's
            ``bos_token_id``.

    Returns:
        A LongTensor on the CPU.
    """
    n = V.integer("n", n, minimum=1)
    seqlen = V.integer("seqlen", seqlen, minimum=2, hint="the start token and one sampled token")
    batch_size = V.integer("batch_size", batch_size, minimum=1)
    temperature = V.number("temperature", temperature, lo=0.0, lo_open=True, hint="1 = the model's distribution")
    if not can_generate(model):
        raise PruneTypeError(f"{type(model).__name__} cannot generate text; self_generated needs a transformers causal LM")
    if start_token is not None:
        start_token = V.integer("start_token", start_token, minimum=0, hint="a token id")
    start = _start_token(model) if start_token is None else start_token
    device = next(model.parameters()).device
    eos: Any = getattr(getattr(model, "config", None), "eos_token_id", None)
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for b in range(0, n, batch_size):
                count = min(batch_size, n - b)
                prompt = torch.full((count, 1), start, dtype=torch.long, device=device)
                out = _sample(model, prompt, seqlen - 1, float(temperature), eos)
                rows.append(out[:, :seqlen].cpu())
    finally:
        model.train(was_training)
    ids = torch.cat(rows)
    if ids.shape != (n, seqlen):
        raise PruneError(f"generation returned {tuple(ids.shape)} token ids, expected ({n}, {seqlen})")
    return ids


def mix(*sets: torch.Tensor) -> torch.Tensor:
    """Calibration sets of one sequence length interleaved row by row: ``a0, b0, a1, b1, ...``.

    Rows of a longer set follow when a shorter one runs out. Interleaving puts every set in
    every calibration batch.
    """
    if not sets:
        raise PruneError("mix needs at least one calibration set")
    checked = [check_tokens(f"calibration set {i}", s) for i, s in enumerate(sets)]
    checked = [s.reshape(1, -1) if s.dim() == 1 else s for s in checked]
    lengths = {s.shape[1] for s in checked}
    if len(lengths) != 1:
        raise PruneError(f"calibration sets must share one sequence length; got {sorted(lengths)}")
    order: list[torch.Tensor] = []
    for i in range(max(s.shape[0] for s in checked)):
        order.extend(s[i] for s in checked if i < s.shape[0])
    return torch.stack(order).cpu()
