"""Blocks of different attention types (Gemma 2's sliding and full layers) are calibrated
with their own masks: what prune_llm and prune_structured feed each block equals what the
model's own forward pass gives it."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunekit.llm import prune_llm, prune_structured  # noqa: E402


def _gemma2():
    torch.manual_seed(0)
    config = transformers.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                                       sliding_window=4)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    return transformers.Gemma2ForCausalLM(config).eval()


def _real_input(model, pruned, ids, name):
    """What block 1's ``name`` linear receives in the model's own forward pass, block 0 as
    ``pruned`` left it and block 1 dense."""
    hybrid = copy.deepcopy(pruned)
    hybrid.model.layers[1].load_state_dict(model.model.layers[1].state_dict())
    seen = []
    lin = hybrid.model.layers[1].get_submodule(name)
    handle = lin.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        hybrid(input_ids=ids, use_cache=False)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def test_each_block_is_calibrated_with_its_own_attention_mask():
    model = _gemma2()
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    pruned = copy.deepcopy(model)
    seen = []
    o = pruned.model.layers[1].self_attn.o_proj
    handle = o.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    prune_llm(pruned, ids, method="wanda", sparsity=0.5, reconstruct=0, self_calibration=0, batch_size=4)
    handle.remove()
    real = _real_input(model, pruned, ids, "self_attn.o_proj")
    assert torch.allclose(torch.cat(seen).reshape(-1, real.shape[-1]), real, atol=1e-5)
    # and so the mask is Wanda's on those activations: per row, the half with the lowest |W| * ||x||
    w = model.model.layers[1].self_attn.o_proj.weight
    score = w.abs() * real.norm(dim=0)
    expected = torch.ones_like(w, dtype=torch.bool)
    expected.scatter_(1, score.argsort(dim=1)[:, : w.shape[1] // 2], False)
    assert torch.equal(pruned.model.layers[1].self_attn.o_proj.weight != 0, expected)


def test_structured_removal_reads_each_block_with_its_own_mask():
    model = _gemma2()
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    norms = []
    small = copy.deepcopy(model)
    down = small.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda mod, args: norms.append(args[0].detach().clone()))
    report = prune_structured(small, ids, neurons=0.25, batch_size=4)
    handle.remove()
    # block 0 lost its neurons before block 1 read: the reference runs the shrunk block 0, dense block 1
    reference = copy.deepcopy(small)
    reference.model.layers[1] = copy.deepcopy(model.model.layers[1])
    real = _real_input(model, reference, ids, "mlp.down_proj")
    assert torch.allclose(norms[0].reshape(-1, real.shape[-1]), real, atol=1e-5)
    assert report.layers[1].neurons == (128, 96)
