"""Width and depth pruning of transformers models to a shape or a budget (prunekit.llm.shrink)."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llm_fixtures import tiny_bert, tiny_llama, token_ids  # noqa: E402

from prunekit.errors import PruneError, PruneTypeError  # noqa: E402
from prunekit.llm import Shape, apply_shape, score, shrink  # noqa: E402
from prunekit.llm.budget import candidates, macs, parameters, parse_count  # noqa: E402
from prunekit.llm.config_update import architecture  # noqa: E402
from prunekit.llm.shrink import biases, count_parameters, heldout_loss  # noqa: E402

IDS = token_ids(4, 16, vocab=96, seed=0)


def _qwen2(**kw):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                   sliding_window=4, max_window_layers=2, **kw)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _mistral():
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=None)
    return transformers.MistralForCausalLM(cfg).eval()


def _out(model, ids=IDS):
    with torch.no_grad():
        o = model(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


CASES = {
    "llama": (lambda: tiny_llama(num_hidden_layers=3), Shape(24, 4, 2, 40, 2), "AutoModelForCausalLM", "activation"),
    "llama-tied-groups": (lambda: tiny_llama(num_hidden_layers=3, tie_word_embeddings=True), Shape(24, 2, 1, 40, 2),
                          "AutoModelForCausalLM", "taylor"),
    "llama-queries": (lambda: tiny_llama(num_hidden_layers=3), Shape(24, 2, 2, 40, 3), "AutoModelForCausalLM",
                      "activation"),
    "qwen2-sliding": (_qwen2, Shape(24, 4, 2, 48, 2), "AutoModelForCausalLM", "activation"),
    "mistral": (_mistral, Shape(16, 4, 2, 48, 2), "AutoModelForCausalLM", "taylor"),
    "bert": (lambda: tiny_bert(num_hidden_layers=3), Shape(24, 4, 4, 40, 2), "AutoModel", "activation"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_shape_gives_stock_model_exact_after_reload(case, tmp_path):
    build, shape, auto, crit = CASES[case]
    model = build()
    arch = architecture(model, "bert" if case == "bert" else "llama")
    b = biases(model, arch)
    imp = score(model, IDS, importance=crit)
    kept = apply_shape(model, shape, imp)
    assert len(kept) == shape.layers
    assert count_parameters(model) == parameters(arch, shape, b)  # the budget's count is the real one
    c = model.config
    assert (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers) == (
        shape.hidden, shape.heads, shape.intermediate, shape.layers)
    ref = _out(model)
    assert ref.shape[-1] == (96 if auto == "AutoModelForCausalLM" else shape.hidden)
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, auto).from_pretrained(tmp_path).eval()  # no prunekit code involved
    assert type(loaded) is type(model)
    assert torch.equal(_out(loaded), ref)


def test_full_shape_is_identity_and_qwen2_layer_types_follow_kept_blocks():
    model = _qwen2()
    dense = copy.deepcopy(model)
    imp = score(model, IDS)
    apply_shape(model, Shape(32, 4, 2, 64, 4), imp)
    assert torch.equal(_out(model), _out(dense))
    types = list(dense.config.layer_types)
    kept = apply_shape(model, Shape(32, 4, 2, 64, 2), imp)
    assert model.config.layer_types == [types[i] for i in kept]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_depth_removes_the_block_that_does_nothing_and_cache_decoding_matches():
    model = tiny_llama(num_hidden_layers=4)
    with torch.no_grad():  # block 2 adds nothing to the residual stream: influence 0
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    dense = copy.deepcopy(model)
    imp = score(model, IDS)
    assert imp.influence[2] == pytest.approx(0.0, abs=1e-9) and min(imp.influence[:2] + imp.influence[3:]) > 1e-3
    kept = apply_shape(model, Shape(32, 4, 2, 64, 3), imp)
    assert kept == [0, 1, 3]
    torch.testing.assert_close(_out(model), _out(dense), rtol=1e-5, atol=1e-5)  # removing it changes nothing
    prompt = IDS[:1, :5]
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)  # the KV-cache slots follow the renumbered blocks


def test_activation_importance_matches_reference_statistics():
    model = tiny_llama()
    imp = score(model, IDS)
    seen = {}
    h = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    with torch.no_grad():
        model(input_ids=IDS)
    h.remove()
    torch.testing.assert_close(imp.neurons[1], seen["x"].abs().reshape(-1, 64).mean(0))
    assert imp.tokens == IDS.numel()


def test_taylor_neuron_score_matches_autograd():
    model = tiny_llama()
    imp = score(model, IDS[:2], importance="taylor", batch_size=2)
    ref = copy.deepcopy(model)
    loss = ref(input_ids=IDS[:2], labels=IDS[:2]).loss
    mlp = ref.model.layers[0].mlp
    ws = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    grads = torch.autograd.grad(loss, ws)
    expect = ((ws[0] * grads[0]).sum(1) + (ws[1] * grads[1]).sum(1) + (ws[2] * grads[2]).sum(0)).abs()
    torch.testing.assert_close(imp.neurons[0], expect.detach(), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_budget_candidates_meet_the_budget_and_are_largest():
    model = tiny_llama(num_hidden_layers=4)
    arch = architecture(model, "llama")
    b = biases(model, arch)
    cost = lambda s: parameters(arch, s, b)  # noqa: E731
    target = int(0.75 * cost(Shape(32, 4, 2, 64, 4)))
    shapes = candidates(arch, cost, target)
    assert [s.mode for s in shapes] == ["width", "depth", "mixed"]
    for s in shapes:
        assert cost(s) <= target
    depth = shapes[1]
    assert cost(Shape(32, 4, 2, 64, depth.layers + 1)) > target
    assert macs(arch, shapes[0], b, 16) < macs(arch, Shape(32, 4, 2, 64, 4), b, 16)
    with pytest.raises(PruneError, match="already meets"):
        candidates(arch, cost, 10**9)


@pytest.mark.parametrize("text,value", [("100M", 100_000_000), ("2.5k", 2500), ("1e6", 1_000_000), (7, 7)])
def test_parse_count(text, value):
    assert parse_count("params", text) == value


@pytest.mark.parametrize("bad", ["lots", "-5M", "0", True, "1.5X"])
def test_parse_count_rejects(bad):
    with pytest.raises(PruneError, match="params"):
        parse_count("params", bad)


def test_shrink_meets_budget_picks_best_and_leaves_input_unchanged():
    model = tiny_llama(num_hidden_layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = int(0.7 * count_parameters(model))
    heldout = token_ids(4, 16, vocab=96, seed=5)
    small, rep = shrink(model, IDS, params=target, heldout=heldout, distill_tokens=2048, search_tokens=256,
                        lr=1e-3, batch_size=4)
    assert count_parameters(small) <= target and rep.chosen["params"] == count_parameters(small)
    assert len(rep.candidates) == 3
    best = min(rep.candidates, key=lambda r: r["heldout_loss"])
    assert rep.chosen["shape"] == best["shape"]
    assert rep.chosen["heldout_loss"] == pytest.approx(heldout_loss(small, heldout))
    assert rep.distill_tokens >= 2048
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_distillation_schedule_and_temperature_reach_the_training():
    model = tiny_llama(num_hidden_layers=4)
    target = int(0.7 * count_parameters(model))
    run = lambda **kw: shrink(model, IDS, params=target, modes=("depth",), distill_tokens=1024, lr=1e-3,  # noqa: E731
                              batch_size=4, **kw)[0].state_dict()
    base = run()
    assert all(torch.equal(base[k], v) for k, v in run().items())  # deterministic
    for other in (run(schedule="constant"), run(temperature=2.0)):
        assert not all(torch.equal(base[k], v) for k, v in other.items())


def test_shrink_rejects_bad_input_without_touching_model():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match="exactly one budget"):
        shrink(model, IDS)
    with pytest.raises(PruneError, match="modes"):
        shrink(model, IDS, params=1000, modes=("sideways",))
    with pytest.raises(PruneError, match="heldout"):
        shrink(model, IDS, params=int(0.8 * count_parameters(model)))
    with pytest.raises(PruneError, match="vocabulary"):
        shrink(model, IDS + 500, params=int(0.8 * count_parameters(model)), modes=("depth",))
    with pytest.raises(PruneTypeError, match="causal LM"):
        shrink(tiny_bert(), IDS, params=1000, modes=("depth",))
    with pytest.raises(PruneError, match="schedule"):
        shrink(model, IDS, params=1000, modes=("depth",), schedule="linear")
    with pytest.raises(PruneError, match="temperature"):
        shrink(model, IDS, params=1000, modes=("depth",), temperature=0)
    with pytest.raises(PruneError, match="not a multiple of heads"):
        apply_shape(model, Shape(30, 4, 2, 64, 2), score(model, IDS))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shrink_to_a_mac_budget():
    model = tiny_llama(num_hidden_layers=4)
    arch = architecture(model, "llama")
    b = biases(model, arch)
    dense_macs = macs(arch, Shape(32, 4, 2, 64, 4), b, 16)
    small, rep = shrink(model, IDS, macs_budget=int(0.6 * dense_macs), seqlen=16, modes=("depth",))
    assert rep.budget == {"macs": int(0.6 * dense_macs)}
    assert rep.chosen["macs"] <= 0.6 * dense_macs and small.config.num_hidden_layers == rep.chosen["shape"]["layers"]
    assert rep.chosen["macs"] == macs(arch, Shape(**{**rep.chosen["shape"], "mode": "depth"}), b, 16)


def test_mac_count_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_llama(num_hidden_layers=3, attn_implementation="eager")  # attention as counted matmuls
    arch = architecture(model, "llama")
    b = biases(model, arch)
    apply_shape(model, Shape(24, 2, 1, 40, 2), score(model, IDS))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=IDS[:1])
    assert macs(arch, Shape(24, 2, 1, 40, 2), b, 16) == counter.get_total_flops() // 2


def test_latency_budget_keeps_the_largest_shape_that_runs_in_time(monkeypatch):
    import sys

    lb, sh = sys.modules["prunekit.llm.latency_budget"], sys.modules["prunekit.llm.shrink"]

    # a deterministic clock: one "second" per million parameters
    fake = lambda m, *a, **k: count_parameters(m) / 1e6  # noqa: E731
    monkeypatch.setattr(lb, "prefill_seconds", fake)
    monkeypatch.setattr(sh, "prefill_seconds", fake)
    model = tiny_llama(num_hidden_layers=4)
    target = 0.7 * count_parameters(model) / 1e6
    heldout = token_ids(2, 16, vocab=96, seed=5)
    small, rep = shrink(model, IDS, latency=target, heldout=heldout, batch_size=4)
    assert rep.budget == {"latency_s": target} and rep.dense["latency_s"] == count_parameters(model) / 1e6
    assert fake(small) <= target and rep.chosen["latency_s"] == fake(small)
    assert {c["shape"]["mode"] for c in rep.candidates} == {"width", "depth", "mixed"}
    assert all(t["seconds"] > target for t in rep.latency_trials if t["shape"]["layers"] == 4
               and t["shape"]["hidden"] == 32)  # the dense shape never fits
    with pytest.raises(PruneError, match="already runs"):
        shrink(model, IDS, latency=1e9, modes=("depth",))
