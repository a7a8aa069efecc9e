"""The residual stream is one channel group: channel pruning narrows transformers exactly.

Invariants, on ViTs, nn.TransformerEncoder/Decoder layers (pre- and post-norm) and a
hand-written Llama-style decoder: the stream's group spans the embedding (and the tied
head), positions, class token, every block's input and output projections and every norm;
the masked model differs from the dense one; the compacted model computes what the masked
one does (the norms keep the masked model's full-width statistics); every norm is left
with the width the result reported; the compacted model saves and loads back exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from archs import ViTish
from archs_width import LlamaishLM, RMSNormHand, Seq2SeqLM, TorchTransformerLM, ViTCls, randomize_norms
from torch import nn

import prunekit as pk
from prunekit.layers import PrunedLayerNorm, PrunedMultiheadAttention
from prunekit.surgery.replay import replay

MODELS = {
    "vit": (ViTish, lambda: torch.randn(4, 3, 8, 8)),
    "vit_cls_rmsnorm": (ViTCls, lambda: torch.randn(4, 3, 8, 8)),
    "encoder_prenorm_tied": (lambda: TorchTransformerLM(norm_first=True), lambda: torch.randint(0, 50, (4, 12))),
    "encoder_postnorm_tied": (lambda: TorchTransformerLM(norm_first=False), lambda: torch.randint(0, 50, (4, 12))),
    "llama_hand_rmsnorm": (LlamaishLM, lambda: torch.randint(0, 50, (4, 12))),
    "transformer_postnorm": (lambda: Seq2SeqLM(norm_first=False),
                             lambda: (torch.randint(0, 40, (4, 7)), torch.randint(0, 40, (4, 5)))),
    "transformer_prenorm": (lambda: Seq2SeqLM(norm_first=True),
                            lambda: (torch.randint(0, 40, (4, 7)), torch.randint(0, 40, (4, 5)))),
}
NORMS = (nn.LayerNorm, nn.RMSNorm, PrunedLayerNorm, RMSNormHand)


def _make(name: str):
    build, inputs = MODELS[name]
    torch.manual_seed(0)
    model = randomize_norms(build()).eval()
    return model, inputs()


def _run(model: nn.Module, x) -> torch.Tensor:
    with torch.no_grad():  # inference: where torch's fused transformer path would run
        return model(*x) if isinstance(x, tuple) else model(x)


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=tol * (1 + float(b.abs().max()))))


def _load_fresh(path, fresh: nn.Module) -> nn.Module:
    """What loading a compacted save into a fresh instance does: replay the recorded
    surgery (:func:`prunekit.surgery.replay.replay`), then load the saved weights."""
    spec = json.loads((path / "spec.json").read_text())
    tensors = safetensors.torch.load((path / "model.safetensors").read_bytes())
    replay(fresh, spec["surgery"], tensors, path)
    fresh.load_state_dict(tensors, strict=True)
    return fresh.eval()


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stream_narrows_exactly_as_reported(name, allocation, tmp_path):
    model, x = _make(name)
    dense, n_dense = _run(model, x), _n(model)
    width = {m.weight.shape[0] for m in model.modules() if isinstance(m, NORMS)}
    assert len(width) == 1
    width = width.pop()
    res = pk.prune(model, 0.3, granularity="channel", allocation=allocation, example_inputs=x)
    norm_weights = {n + ".weight" for n, m in model.named_modules() if isinstance(m, NORMS)}
    stream = [g for g in res.groups if norm_weights <= set(g.params)]
    assert len(stream) == 1 and stream[0].units == width and stream[0].pruned_units > 0
    assert res.sparsity == pytest.approx(sum(g.pruned_units for g in res.groups) / sum(g.units for g in res.groups))
    masked = _run(model, x)
    assert not _close(masked, dense, 1e-2)  # pruning changed the model
    small = pk.compact(model, x)
    got = _run(small, x)
    assert _close(got, masked)
    kept = width - stream[0].pruned_units  # what the result reported is what compaction left
    assert {m.weight.shape[0] for m in small.modules() if isinstance(m, NORMS)} == {kept}
    assert all(m.statistics_width == width for m in small.modules() if isinstance(m, PrunedLayerNorm))
    assert not any(type(m) is nn.LayerNorm for m in small.modules())  # replaced: full-width statistics
    assert _n(small) <= 0.75 * n_dense
    pk.save(small, tmp_path / "m")
    back = _load_fresh(tmp_path / "m", _make(name)[0])
    assert _n(back) == _n(small)
    torch.testing.assert_close(_run(back, x), got, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit", "vit_cls_rmsnorm"])
def test_compacted_vit_loads_from_the_file_alone(name, tmp_path):
    model, x = _make(name)
    pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    small = pk.compact(model, x)
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m").eval()  # rebuilt from the JSON graph: PrunedLayerNorm, nn.RMSNorm
    assert type(back).__name__ == "RebuiltModel"
    torch.testing.assert_close(_run(back, x), _run(small, x), rtol=0, atol=0)


def test_stream_members_and_head_dim():
    model, x = _make("encoder_prenorm_tied")
    report = pk.inspect(model, x)
    stream = next(g for g in report.groups if any(m["param"] == "norm.weight" for m in g["members"]))
    roles = {(m["param"], m["role"]) for m in stream["members"]}
    assert {("emb.weight", "out"), ("pos", "chan"), ("enc.layers.0.self_attn.in_proj_weight", "in"),
            ("enc.layers.0.self_attn.out_proj.weight", "out"), ("enc.layers.1.linear2.weight", "out"),
            ("enc.layers.1.linear1.weight", "in"), ("enc.layers.0.norm1.bias", "chan")} <= roles
    res = pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    small = pk.compact(model, x)
    kept = 32 - next(g for g in res.groups if "norm.weight" in g.params).pruned_units
    attn = small.enc.layers[0].self_attn
    assert type(attn) is PrunedMultiheadAttention and attn.embed_dim == kept < 32
    assert attn.head_dim == 8 and attn.in_proj_weight.shape == (3 * attn.num_heads * 8, kept)  # heads keep their size
    assert small.head.weight is small.emb.weight and small.emb.embedding_dim == kept  # still tied


def test_norm_compaction_reproduces_full_width_statistics():
    """PrunedLayerNorm is F.layer_norm over the full width with the removed channels at
    zero; a narrowed RMSNorm stays an RMSNorm with weight * sqrt(W/K) and eps * W/K."""
    torch.manual_seed(0)
    wide, keep = 12, torch.tensor([0, 2, 3, 7, 8, 11])
    w, b, x = torch.rand(wide) + 0.5, torch.rand(wide) - 0.5, torch.randn(5, 3, wide) + 0.3
    x[..., [i for i in range(wide) if i not in keep]] = 0  # what the masked stream holds
    ref = F.layer_norm(x, (wide,), w, b, 1e-5)[..., keep]
    ln = PrunedLayerNorm(len(keep), wide, 1e-5)
    with torch.no_grad():
        ln.weight.copy_(w[keep])
        ln.bias.copy_(b[keep])
    torch.testing.assert_close(ln(x[..., keep]), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ln.to(torch.bfloat16)(x[..., keep].bfloat16()).float(), ref, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(F.layer_norm(x[..., keep], (len(keep),), w[keep], b[keep], 1e-5), ref, atol=1e-3)
    k = len(keep)
    rms = F.rms_norm(x, (wide,), w, 1e-6)[..., keep]
    torch.testing.assert_close(F.rms_norm(x[..., keep], (k,), w[keep] * math.sqrt(wide / k), 1e-6 * wide / k), rms)


def test_rms_norm_keeps_its_class():
    model, x = _make("vit_cls_rmsnorm")
    res = pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    k = 32 - next(g for g in res.groups if "norm.weight" in g.params).pruned_units
    eps = {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.RMSNorm)}
    small = pk.compact(model, x)
    for n, m in small.named_modules():
        if isinstance(m, nn.RMSNorm):
            assert type(m) is nn.RMSNorm and m.normalized_shape == (k,)
            base = eps[n] if eps[n] is not None else torch.finfo(torch.float32).eps
            assert m.eps == pytest.approx(base * 32 / k)


class _OnePlus(nn.Module):
    """RMSNorm with ``(1 + weight)``, as Gemma writes it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.rand(dim) - 0.5), 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


class _L1Norm(nn.Module):
    """Looks like a norm, is none of those prunekit knows: divides by the mean |x|."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.rand(dim) + 0.5), 1e-6

    def forward(self, x):
        return x / (x.abs().mean(-1, keepdim=True) + self.eps) * self.weight


class _Net(nn.Module):
    def __init__(self, norm: type[nn.Module]) -> None:
        super().__init__()
        self.emb, self.norm = nn.Embedding(30, 16), norm(16)
        self.fc1, self.fc2, self.head = nn.Linear(16, 24), nn.Linear(24, 16), nn.Linear(16, 5)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(self.norm(x)).mean(1)


def test_hand_written_norms_recognised_or_refused():
    torch.manual_seed(0)
    idx = torch.randint(0, 30, (4, 6))
    model = _Net(_OnePlus).eval()
    masked_dense = _run(model, idx)
    res = pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=idx)
    assert any("norm.weight" in g.params and g.pruned_units == 8 for g in res.groups)
    small = pk.compact(model, idx)
    assert type(small.norm) is _OnePlus and small.norm.weight.shape == (8,) and small.norm.eps == pytest.approx(2e-6)
    assert _close(_run(small, idx), _run(model, idx)) and not _close(_run(model, idx), masked_dense, 1e-2)

    torch.manual_seed(0)
    model = _Net(_L1Norm).eval()
    notes = [k["reason"] for k in pk.inspect(model, idx).kept]
    assert any("_L1Norm looks like a normalization" in r for r in notes), notes
    res = pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=idx)
    assert not any("norm.weight" in g.params for g in res.groups)  # its stream is kept, not mis-pruned
    small = pk.compact(model, idx)
    assert small.emb.embedding_dim == 16 and small.fc1.out_features == 12
    assert _close(_run(small, idx), _run(model, idx))


def test_embedding_with_max_norm_keeps_its_width():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(20, 8, max_norm=1.0), nn.Linear(8, 3)

        def forward(self, idx):
            return self.fc(self.emb(idx).mean(1))

    model, idx = Net().eval(), torch.randint(0, 20, (3, 4))
    assert any("max_norm" in k["reason"] for k in pk.inspect(model, idx).kept)
    with pytest.raises(ValueError, match="no channel group"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=idx)


@pytest.mark.parametrize("name", ["vit", "encoder_postnorm_tied"])
def test_a_compacted_model_narrows_again(name):
    """PrunedLayerNorm and PrunedMultiheadAttention are traced like the layers they replace."""
    model, x = _make(name)
    pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    once = pk.compact(model, x)
    width = {m.weight.shape[0] for m in once.modules() if isinstance(m, NORMS)}
    reference = _run(once, x)
    pk.prune(once, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    masked = _run(once, x)
    assert not _close(masked, reference, 1e-2)
    twice = pk.compact(once, x)
    assert {m.weight.shape[0] for m in twice.modules() if isinstance(m, NORMS)} == {w - round(0.3 * w) for w in width}
    assert all(m.statistics_width == 32 for m in twice.modules() if isinstance(m, PrunedLayerNorm))
    assert _close(_run(twice, x), masked)


def test_a_buffer_added_to_the_stream_keeps_it():
    """A fixed positional table (a buffer, never masked) would make removed channels
    non-zero: the stream is kept, the rest is pruned exactly."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.norm = nn.Embedding(30, 16), nn.LayerNorm(16)
            self.register_buffer("pe", torch.randn(1, 20, 16))
            self.fc1, self.fc2, self.head = nn.Linear(16, 24), nn.Linear(24, 16), nn.Linear(16, 5)

        def forward(self, idx):
            x = self.emb(idx) + self.pe[:, : idx.shape[1]]
            x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
            return self.head(x).mean(1)

    torch.manual_seed(0)
    model, idx = Net().eval(), torch.randint(0, 30, (4, 6))
    res = pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=idx)
    assert [g.name for g in res.groups] == ["fc1"]
    small = pk.compact(model, idx)
    assert small.emb.embedding_dim == 16 and small.fc1.out_features == 12
    assert _close(_run(small, idx), _run(model, idx))


@pytest.mark.parametrize("name", ["encoder_prenorm_tied", "encoder_postnorm_tied", "transformer_prenorm"])
def test_compacted_transformer_still_scripts(name):
    """A model that torch.jit.script compiles dense still compiles after compaction, which
    swaps in PrunedLayerNorm and PrunedMultiheadAttention, and computes the same."""
    model, x = _make(name)
    args = x if isinstance(x, tuple) else (x,)
    torch.jit.script(model)  # the dense model scripts: the swapped-in layers must too
    pk.prune(model, 0.3, granularity="channel", allocation="uniform", example_inputs=x)
    small = pk.compact(model, x)
    assert any(isinstance(m, PrunedLayerNorm) for m in small.modules())
    assert any(isinstance(m, PrunedMultiheadAttention) for m in small.modules())
    scripted = torch.jit.script(small)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*args), small(*args), rtol=1e-5, atol=1e-6)
    for kwargs in ({}, {"need_weights": False}, {"attn_mask": torch.ones(3, 3, dtype=torch.bool).triu(1)}):
        attn = next(m for m in small.modules() if isinstance(m, PrunedMultiheadAttention))
        q = torch.randn(3, 3, attn.embed_dim)  # batch = length: either layout
        got, ref = torch.jit.script(attn)(q, q, q, **kwargs), attn(q, q, q, **kwargs)
        torch.testing.assert_close(got[0], ref[0])
