"""prune_llm and prune_structured on architectures off the Llama path: blocks of different
attention types (Gemma 2's sliding and full layers) are calibrated with their own masks,
BLOOM's ALiBi bias is split with its windows, a config without a start token, and a failure
half-way that leaves a consistent model and says what it changed."""

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


def test_a_model_without_a_start_token_calibrates_on_its_windows_by_default():
    """prune_llm's default writes half the windows with the model, from its bos token: a
    config with none falls back to the given windows and says so; asking for model-written
    windows explicitly names the option that works."""
    from prunekit.errors import PruneError

    torch.manual_seed(0)
    config = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    model = transformers.Qwen2ForCausalLM(config).eval()
    assert config.bos_token_id is None and config.eos_token_id is None
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"calibrating on the given windows alone \(self_calibration=0\)"):
        report = prune_llm(copy.deepcopy(model), ids, sparsity=0.5, reconstruct=0)
    assert report.generated_windows == 0 and report.self_calibration == 0
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruneError, match=r"self_calibration=0.5: .* no bos_token_id .* use self_calibration=0"):
        prune_llm(model, ids, sparsity=0.5, self_calibration=0.5)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _bloom():
    torch.manual_seed(0)
    config = transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=256)
    return transformers.BloomForCausalLM(config).eval()


def test_bloom_alibi_is_split_with_its_windows():
    """BLOOM passes an ALiBi bias of batch × heads rows: reconstruction and Wanda++'s
    per-window gradients cut it with the windows (they crashed with a raw torch error)."""
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    for kwargs in ({"method": "wanda", "reconstruct": 1, "self_calibration": 0},
                   {"method": "rgs", "reconstruct": 0, "self_calibration": 0}):
        model = _bloom()
        report = prune_llm(model, ids, sparsity=0.5, batch_size=4, **kwargs)
        assert report.overall_sparsity == pytest.approx(0.5, abs=1e-3)
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_failure_half_way_commits_what_was_pruned_and_says_so(monkeypatch):
    import prunekit.llm.blockwise as bw
    from prunekit.errors import PruneError
    from prunekit.masking import get_masks

    real, calls = bw.prune_matrix, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 7:  # block 0's seven linears, then block 1 fails
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(bw, "prune_matrix", failing)
    model = _gemma2()
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    with pytest.raises(PruneError, match=r"after pruning 7 linears \(model.layers.0\).*reload it.*simulated"):
        prune_llm(model, ids, method="wanda", sparsity=0.5, reconstruct=0, self_calibration=0)
    assert get_masks(model) == {}  # committed: save_pretrained writes the model's own keys
    q0, q1 = model.model.layers[0].self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight
    assert float((q0 == 0).float().mean()) == pytest.approx(0.5, abs=1e-3) and not (q1 == 0).any()


def test_perplexity_refuses_a_masked_language_model():
    from prunekit.errors import PruneError
    from prunekit.llm import perplexity

    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    with pytest.raises(PruneError, match="needs a causal language model; BertForMaskedLM does not generate"):
        perplexity(transformers.BertForMaskedLM(config).eval(), torch.randint(0, 100, (64,)), seqlen=16)


def test_gemma2_pruned_from_disk_equals_pruned_in_memory(tmp_path):
    """Disk offload loads one block at a time: recording the arguments of a later block's
    type must not run the blocks before it (their weights are not loaded)."""
    from safetensors.torch import load_file

    from prunekit.llm.offload import prune_offloaded

    torch.manual_seed(0)
    config = transformers.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                                       sliding_window=4)
    model = transformers.Gemma2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "src")
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    options = dict(method="wanda", sparsity=0.5, reconstruct=0, self_calibration=0, batch_size=4)
    prune_llm(model, ids, **options)
    prune_offloaded(tmp_path / "src", tmp_path / "out", ids, offload="disk", **options)
    got = {k: v for f in (tmp_path / "out").glob("*.safetensors") for k, v in load_file(f).items()}
    ref = model.state_dict()
    assert got and all(torch.equal(v, ref[k]) for k, v in got.items() if k in ref)
