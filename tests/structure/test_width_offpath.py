"""Residual-stream narrowing off the float32 / hand-written path.

Hugging Face decoders built from their configs and reloaded with ``from_pretrained``;
bfloat16 and float16 models (``pk.compact``'s check allows the format's rounding);
``pk.load(path, model=fresh)`` of a compacted ``nn.TransformerEncoder`` with dropout,
whose rebuilt modules must follow the fresh model's eval mode, dtype and device.
The reference is always the masked model the compaction came from.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from archs import ViTish
from archs_width import randomize_norms
from torch import nn

import prunekit as pk
from prunekit.errors import PruneError, PruneTypeError


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return (out.logits if hasattr(out, "logits") else out).float()


class DropoutLM(nn.Module):
    """nn.TransformerEncoder layers with dropout (inactive in eval mode) and an untied head."""

    def __init__(self, norm_first: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.2, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 50)

    def forward(self, idx):
        return self.head(self.enc(self.emb(idx)))


def _qwen2(tied: bool = False) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True])
def test_hf_decoder_reloaded_with_from_pretrained_narrows_exactly(tied, tmp_path):
    x = torch.randint(0, 64, (2, 10))
    _qwen2(tied).save_pretrained(tmp_path / "hf")
    model = type(_qwen2()).from_pretrained(tmp_path / "hf").eval()
    n_dense = _n(model)
    res = pk.prune(model, 0.3, granularity="channel", example_inputs=x)
    stream = next(g for g in res.groups if "model.norm.weight" in g.params)
    assert stream.units == 32 and stream.pruned_units > 0
    masked = _run(model, x)
    small = pk.compact(model, x)
    kept = 32 - stream.pruned_units  # the reported removal is what compaction did
    assert small.model.embed_tokens.weight.shape == (64, kept) and small.model.norm.weight.shape == (kept,)
    assert (small.lm_head.weight is small.model.embed_tokens.weight) == tied
    assert _n(small) < n_dense
    torch.testing.assert_close(_run(small, x), masked, rtol=0, atol=1e-5)
    pk.save(small, tmp_path / "pk")
    fresh = type(_qwen2()).from_pretrained(tmp_path / "hf").eval()
    back = pk.load(tmp_path / "pk", model=fresh)
    torch.testing.assert_close(_run(back, x), _run(small, x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_vit_compacts_with_the_rtol_the_refusal_names(dtype, monkeypatch):
    torch.manual_seed(0)
    model = randomize_norms(ViTish()).eval().to(dtype)
    x = torch.randn(4, 3, 8, 8).to(dtype)
    pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    masked = _run(model, x)
    rtol = 8 * torch.finfo(dtype).eps
    with pytest.raises(PruneError, match=f"rounding alone .* pass rtol={rtol:g} to accept"):
        pk.compact(model, x)  # float32's tolerance: refused, saying which one accepts the rounding
    small = pk.compact(model, x, rtol=rtol)
    assert all(p.dtype == dtype for p in small.parameters())
    assert _n(small) < _n(model)
    err = float((_run(small, x) - masked).abs().max())
    assert err <= 8 * torch.finfo(dtype).eps * float(masked.abs().max())
    # the check still refuses a compaction that is wrong by more than rounding
    surgery = importlib.import_module("prunekit.surgery.compact")
    real = surgery._compact_structure

    def broken(work, st, removed):
        record = real(work, st, removed)
        with torch.no_grad():
            work.head.weight.mul_(0.8)
        return record

    model2 = randomize_norms(ViTish()).eval().to(dtype)
    pk.prune(model2, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    monkeypatch.setattr(surgery, "_compact_structure", broken)
    with pytest.raises(PruneError, match="differs from the masked one") as info:
        pk.compact(model2, x, rtol=rtol)
    assert "rounding alone" not in str(info.value)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_into_fresh_instance_keeps_eval_mode_and_dtype(norm_first, dtype, tmp_path):
    x = torch.randint(0, 50, (4, 9))
    torch.manual_seed(0)
    model = DropoutLM(norm_first).eval().to(dtype)
    small = model
    for _ in range(2):  # two compactions: two surgery records to replay
        pk.prune(small, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
        small = pk.compact(small, x, rtol=8 * torch.finfo(dtype).eps if dtype != torch.float32 else 1e-4)
    assert small.emb.embedding_dim < 32
    pk.save(small, tmp_path / "m")
    torch.manual_seed(1)
    back = pk.load(tmp_path / "m", model=DropoutLM(norm_first).eval().to(dtype))
    assert not any(m.training for m in back.modules())  # replaced modules follow the model: dropout off
    assert all(p.dtype == dtype for p in back.parameters())
    torch.testing.assert_close(_run(back, x), _run(small, x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, error", [
    ({"rtol": -1.0}, PruneError), ({"atol": "small"}, PruneTypeError), ({"inplace": 1}, PruneTypeError),
    ({"check": "yes"}, PruneTypeError),
])
def test_compact_refuses_bad_options_and_leaves_the_model(kwargs, error):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=next(iter(kwargs))):
        pk.compact(model, x, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
