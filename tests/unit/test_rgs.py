"""Wanda++'s regional gradient score: the core criterion ``rgs`` and ``prune_llm(method="rgs")``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import rgs
from prunekit.criteria.calibrated import rgs_scores


def test_rgs_scores_are_wanda_plus_the_weighted_gradient():
    W = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    squares = torch.tensor([[4.0, 9.0]])  # norms 2, 3
    G = torch.tensor([[0.1, 0.0], [0.2, 0.3]])
    expected = (10 * G + torch.tensor([[2.0, 3.0]])) * W.abs()
    assert torch.allclose(rgs_scores(W, squares, G, 10.0), expected)
    assert torch.allclose(rgs_scores(W, squares, G, 0.0), W.abs() * torch.tensor([[2.0, 3.0]]))  # alpha 0: Wanda


def test_core_rgs_gradient_is_the_rms_of_per_sample_gradients(digits_batches):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    batches = digits_batches[:2]
    alpha = 3.0
    got = rgs(net, alpha=alpha, data=batches)
    # reference: one sample at a time, d||net(x)|| / dW, root mean square; Wanda's norms
    x = torch.cat([b[0] for b in batches])
    grads = {n: torch.zeros_like(p) for n, p in net.named_parameters() if n.endswith("weight")}
    for i in range(x.shape[0]):
        net.zero_grad()
        torch.linalg.vector_norm(net(x[i : i + 1])).backward()
        for n, p in net.named_parameters():
            if n in grads:
                grads[n] += p.grad ** 2
    feats = {"1.weight": x.flatten(1), "3.weight": torch.relu(net[1](x.flatten(1)))}
    for name, g in grads.items():
        G = (g / x.shape[0]).sqrt()
        norms = feats[name].norm(dim=0)
        W = dict(net.named_parameters())[name].detach()
        assert torch.allclose(got[name], (alpha * G + norms) * W.abs(), rtol=1e-4, atol=1e-6), name


def test_core_prune_with_rgs_leaves_no_gradient_state(digits_batches):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    flags = [p.requires_grad for p in net.parameters()]
    res = pk.prune(net, 0.5, criterion="rgs", allocation="row", data=digits_batches)
    assert res.sparsity == pytest.approx(0.5)
    assert all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == flags
    with pytest.raises(ValueError, match="rgs alpha"):
        pk.prune(copy.deepcopy(net), 0.5, criterion=pk.criteria.RGS(alpha=-1.0), data=digits_batches)


# ------------------------------------------------------------------------------ prune_llm

transformers = pytest.importorskip("transformers")

from prunekit.llm import prune_linear, prune_llm  # noqa: E402
from prunekit.llm.linears import regional_gradients  # noqa: E402


def _models():
    from llm_fixtures import tiny_llama

    yield "llama", tiny_llama(hidden_size=64, intermediate_size=128, vocab_size=100)
    torch.manual_seed(0)
    yield "gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100, bos_token_id=0, eos_token_id=0)).eval()
    torch.manual_seed(0)
    yield "qwen2", transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).eval()


@pytest.mark.parametrize("name,model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_block_gradient_per_window_matches_running_each_window_alone(name, model):
    """The driver splits captured batches into windows; its gradients must equal those of the
    first block run on each window on its own (captured with batch size 1)."""
    from prunekit.llm.blocks import capture_first_inputs, transformer_blocks
    from prunekit.llm.blockwise import block_linears

    calib = torch.randint(0, 100, (5, 16), generator=torch.Generator().manual_seed(3))
    layer = transformer_blocks(model)[0]
    prefix = {id(m): n for n, m in model.named_modules()}[id(layer)]
    linears = block_linears(layer, prefix)
    batched = regional_gradients(layer, linears, capture_first_inputs(model, layer, calib, batch_size=3))
    alone = regional_gradients(layer, linears, capture_first_inputs(model, layer, calib, batch_size=1))
    assert batched.keys() == alone.keys()
    for k in batched:
        assert torch.allclose(batched[k], alone[k], rtol=1e-3, atol=1e-6), (name, k)
        assert float(batched[k].abs().sum()) > 0, (name, k)
    assert all(p.grad is None for p in model.parameters())


def test_prune_llm_rgs_differs_from_wanda():
    from llm_fixtures import tiny_llama

    model = tiny_llama(hidden_size=64, intermediate_size=128, vocab_size=100)
    calib = torch.randint(0, 100, (6, 32), generator=torch.Generator().manual_seed(1))
    kw = dict(self_calibration=0.0, reconstruct=0, keep_masks=True, batch_size=4)
    masks = {}
    for method in ("wanda", "rgs"):
        m = copy.deepcopy(model)
        report = prune_llm(m, calib, method=method, **kw)
        assert report.overall_sparsity == pytest.approx(0.5)
        masks[method] = pk.masks(m)
    assert any(not torch.equal(masks["wanda"][k], masks["rgs"][k]) for k in masks["wanda"])


def test_prune_linear_rgs_uses_the_layer_as_region():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(40, 16)
    keep = prune_linear(layer, x, method="rgs", sparsity=0.5)
    assert torch.equal(keep.sum(1), torch.full((8,), 8))
    assert all(p.grad is None and p.requires_grad for p in layer.parameters())
