"""Foreign architectures × granularities: pruned exactly as reported, or refused clearly.

``.venv/bin/python tests/foreign/table.py`` prints the whole table (``-v``: every outcome).
"""

from __future__ import annotations

import pytest
import torch

from .archs import ARCHS
from .contract import check, pairs


@pytest.mark.parametrize("arch,granularity", pairs())
def test_contract(arch, granularity):
    outcome = check(arch, granularity)
    assert outcome.status in ("pruned", "refused")


@pytest.mark.parametrize("arch,granularity", pairs())
def test_contract_bfloat16(arch, granularity):
    """The same contract on the model cast to bfloat16 (save/reload is checked in float32)."""
    outcome = check(arch, granularity, dtype=torch.bfloat16)
    assert outcome.status in ("pruned", "refused")


def test_suite_is_wide():
    assert len(ARCHS) >= 25


def test_lstm_is_pruned_as_reported():
    """An LSTM classifier at 90 %: the recurrent matrices are in scope and really 90 % zero
    (they were once skipped while the report said 90 %)."""
    import prunekit as pk
    from .archs import build

    model, x = build("lstm_bidirectional")
    res = pk.prune(model, 0.9)
    weights = [getattr(model.rnn, n) for n in model.rnn._flat_weights_names if n.startswith("weight")]
    assert sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) > 0.8
    all_zero = sum(int((w == 0).sum()) for w in pk.masking.effective_weights(model).values() if w.dim() >= 2)
    all_numel = sum(w.numel() for w in pk.masking.effective_weights(model).values() if w.dim() >= 2)
    assert res.sparsity == pytest.approx(all_zero / all_numel, abs=1e-9)
    assert pk.sparsity(model) == pytest.approx(res.sparsity)
    assert not res.coverage.skipped


@pytest.mark.parametrize("arch", ["hf_llama", "hf_bert", "hf_vit", "tied_embedding_lm"])
def test_residual_stream_narrows(arch):
    """The hidden size (embedding, every norm, every projection) is one channel group:
    compaction narrows it, with the masked model's outputs."""
    import prunekit as pk
    from .archs import build
    from .contract import _close, _run

    model, x = build(arch)
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Conv2d)))
    wide = first.weight.shape[1] if isinstance(first, torch.nn.Embedding) else first.weight.shape[0]
    pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    small = pk.compact(model, x)
    first = next(m for m in small.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Conv2d)))
    narrow = first.weight.shape[1] if isinstance(first, torch.nn.Embedding) else first.weight.shape[0]
    assert narrow == wide - round(0.3 * wide)
    assert _close(_run(small, x), _run(model, x))
