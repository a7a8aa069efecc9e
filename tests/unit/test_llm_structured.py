"""Structured removal of attention heads and MLP neurons (prunekit.llm.structured) on tiny random models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from llm_fixtures import tiny_bert, tiny_llama, token_ids  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.errors import PruneError, PruneTypeError  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.structured import StructuredReport, prune_structured  # noqa: E402

VOCAB = 96
HIDDEN = 64
HEADS = 8
KV = 2
HEAD_DIM = 8
NEURONS = 128
SEQLEN = 16


def _llama(**overrides: object) -> nn.Module:
    return tiny_llama(**{"vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": NEURONS,
                         "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HEAD_DIM, **overrides})


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    return _llama()


@pytest.fixture(scope="module")
def dense64(dense) -> nn.Module:
    """Exactness is checked in float64: float32 matmuls of different widths round differently (~1e-5)."""
    return copy.deepcopy(dense).double()


def _same(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got, want, atol=1e-10, rtol=0)


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return token_ids(6, SEQLEN, vocab=VOCAB, seed=1)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return token_ids(3, SEQLEN, vocab=VOCAB, seed=2)


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    return {k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict()


def _unchanged(model: nn.Module, snap: tuple[dict[str, torch.Tensor], dict[str, object]]) -> bool:
    state, cfg = snap
    now = model.state_dict()
    return (
        now.keys() == state.keys()
        and all(torch.equal(now[k], v) for k, v in state.items())
        and model.config.to_dict() == cfg
    )


@torch.no_grad()
def _masked_equivalent(dense: nn.Module, report: StructuredReport, heads: int, head_dim: int, neurons: int) -> nn.Module:
    """The dense model with the removed heads' o_proj columns and removed neurons' down_proj columns zeroed."""
    ref = copy.deepcopy(dense)
    for layer, lr in zip(ref.model.layers, report.layers):
        for h in set(range(heads)) - set(lr.kept_heads):
            layer.self_attn.o_proj.weight[:, h * head_dim : (h + 1) * head_dim] = 0
        gone = sorted(set(range(neurons)) - set(lr.kept_neurons))
        layer.mlp.down_proj.weight[:, gone] = 0
    return ref


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ------------------------------------------------------------------------ exactness


@pytest.mark.parametrize(
    "gqa, heads, neurons, criterion",
    [
        ("groups", 0.5, 0.0, "wanda"),
        ("queries", 0.5, 0.0, "wanda"),
        ("queries", 0.75, 0.0, "magnitude"),
        ("groups", 0.0, 0.25, "wanda"),
        ("groups", 0.5, 0.25, "magnitude"),
        ("groups", 0.5, 0.5, "wanda"),
        ("queries", 0.5, 0.25, "wanda"),
    ],
)
def test_pruned_model_equals_masked_original(dense64, calib, probe, gqa, heads, neurons, criterion):
    dense = dense64
    model = copy.deepcopy(dense)
    report = prune_structured(model, calib, heads=heads, neurons=neurons, criterion=criterion, gqa=gqa)
    ref = _masked_equivalent(dense, report, HEADS, HEAD_DIM, NEURONS)
    with torch.no_grad():
        got, want = model(probe).logits, ref(probe).logits
    assert got.dtype == torch.float64 and _same(got, want)
    # and the removal did change the model
    with torch.no_grad():
        assert not torch.allclose(got, dense(probe).logits, atol=1e-3)
    for lr in report.layers:
        assert lr.heads == (HEADS, round(HEADS * (1 - heads)))
        assert lr.neurons == (NEURONS, round(NEURONS * (1 - neurons)))
        assert len(lr.kept_heads) == lr.heads[1] and len(lr.kept_neurons) == lr.neurons[1]
        assert lr.kept_heads == sorted(lr.kept_heads) and lr.kept_neurons == sorted(lr.kept_neurons)
    assert report.heads_removed == heads and report.neurons_removed == neurons


def test_gqa_modes_keep_the_grouping(dense, calib):
    groups = prune_structured(copy.deepcopy(dense), calib, heads=0.5, gqa="groups")
    per_group = HEADS // KV
    for lr in groups.layers:
        assert lr.kv_heads == (KV, 1) and len(lr.kept_kv_heads) == 1
        g = lr.kept_kv_heads[0]
        assert lr.kept_heads == list(range(g * per_group, (g + 1) * per_group))  # the whole group goes or stays
    queries = prune_structured(copy.deepcopy(dense), calib, heads=0.5, gqa="queries")
    for lr in queries.layers:
        assert lr.kv_heads == (KV, KV) and lr.kept_kv_heads == list(range(KV))
        assert [sum(h // per_group == g for h in lr.kept_heads) for g in range(KV)] == [2, 2]  # same count per group


# ----------------------------------------------------------------------- selection


def _magnitude_reference(layer: nn.Module, gqa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Head (or group) and neuron scores computed slice by slice: L2 norm of everything a unit removes."""
    a, m = layer.self_attn, layer.mlp
    d, group = HEAD_DIM, HEADS // KV

    def head_sq(h: int) -> float:
        q = a.q_proj.weight[h * d : (h + 1) * d]
        o = a.o_proj.weight[:, h * d : (h + 1) * d]
        return float(q.pow(2).sum() + o.pow(2).sum())

    if gqa == "queries":
        heads = torch.tensor([math.sqrt(head_sq(h)) for h in range(HEADS)])
    else:
        heads = torch.tensor(
            [
                math.sqrt(
                    sum(head_sq(h) for h in range(g * group, (g + 1) * group))
                    + float(a.k_proj.weight[g * d : (g + 1) * d].pow(2).sum())
                    + float(a.v_proj.weight[g * d : (g + 1) * d].pow(2).sum())
                )
                for g in range(KV)
            ]
        )
    neurons = torch.tensor(
        [
            float(torch.cat([m.gate_proj.weight[j], m.up_proj.weight[j], m.down_proj.weight[:, j]]).norm())
            for j in range(NEURONS)
        ]
    )
    return heads, neurons


def _top_sorted(scores: torch.Tensor, keep: int) -> list[int]:
    return sorted(scores.topk(keep).indices.tolist())


@pytest.mark.parametrize("gqa", ["groups", "queries"])
def test_magnitude_keeps_top_scoring_units(dense, gqa):
    model = copy.deepcopy(dense)
    report = prune_structured(model, heads=0.5, neurons=0.25, criterion="magnitude", gqa=gqa)
    assert report.calibration_tokens == 0
    group = HEADS // KV
    with torch.no_grad():
        for layer, lr in zip(dense.model.layers, report.layers):
            heads, neurons = _magnitude_reference(layer, gqa)
            assert lr.kept_neurons == _top_sorted(neurons, NEURONS * 3 // 4)
            if gqa == "groups":
                assert lr.kept_kv_heads == _top_sorted(heads, KV // 2)
            else:
                want = [g * group + i for g in range(KV) for i in _top_sorted(heads[g * group : (g + 1) * group], group // 2)]
                assert lr.kept_heads == want


@torch.no_grad()
def _wanda_reference(model: nn.Module, layer_index: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query-head and per-neuron Wanda scores of one block, from input norms captured by hooks in a full forward."""
    layer = model.model.layers[layer_index]
    seen: dict[str, list[torch.Tensor]] = {"o": [], "down": []}
    hooks = [
        layer.self_attn.o_proj.register_forward_hook(lambda m, i, o: seen["o"].append(i[0].reshape(-1, i[0].shape[-1]))),
        layer.mlp.down_proj.register_forward_hook(lambda m, i, o: seen["down"].append(i[0].reshape(-1, i[0].shape[-1]))),
    ]
    model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    x_o, x_down = torch.cat(seen["o"]), torch.cat(seen["down"])
    wo = layer.self_attn.o_proj.weight.abs() * x_o.norm(dim=0)  # |W_ij| * ||X_j||
    wd = layer.mlp.down_proj.weight.abs() * x_down.norm(dim=0)
    heads = torch.stack([wo[:, h * HEAD_DIM : (h + 1) * HEAD_DIM].sum() for h in range(wo.shape[1] // HEAD_DIM)])
    return heads, wd.sum(0)


def test_wanda_keeps_top_scoring_units_block_by_block(dense, calib):
    model = copy.deepcopy(dense)
    report = prune_structured(model, calib, heads=0.5, neurons=0.25, criterion="wanda", gqa="groups")
    assert report.calibration_tokens == calib.numel()
    group = HEADS // KV

    # Block 0 sees the dense model's activations.
    heads, neurons = _wanda_reference(dense, 0, calib)
    assert report.layers[0].kept_kv_heads == _top_sorted(heads.reshape(KV, group).sum(1), 1)
    assert report.layers[0].kept_neurons == _top_sorted(neurons, NEURONS * 3 // 4)

    # Block 1 sees the outputs of the already pruned block 0 (sequential, like Wanda).
    hybrid = copy.deepcopy(dense)
    hybrid.model.layers[0] = copy.deepcopy(model.model.layers[0])
    heads, neurons = _wanda_reference(hybrid, 1, calib)
    assert report.layers[1].kept_kv_heads == _top_sorted(heads.reshape(KV, group).sum(1), 1)
    assert report.layers[1].kept_neurons == _top_sorted(neurons, NEURONS * 3 // 4)
    # ... which differs from what the dense block 1 would have chosen
    _, dense_neurons = _wanda_reference(dense, 1, calib)
    assert report.layers[1].kept_neurons != _top_sorted(dense_neurons, NEURONS * 3 // 4)


def test_wanda_queries_mode_ranks_heads_within_each_group(dense, calib):
    report = prune_structured(copy.deepcopy(dense), calib, heads=0.75, criterion="wanda", gqa="queries")
    heads, _ = _wanda_reference(dense, 0, calib)
    group = HEADS // KV
    want = [g * group + int(heads[g * group : (g + 1) * group].argmax()) for g in range(KV)]
    assert report.layers[0].kept_heads == want and report.heads_removed == 0.75


# -------------------------------------------------------------- config, parameters, I/O


@pytest.mark.parametrize(
    "gqa, bias, heads_after, kv_after",
    [("groups", False, 4, 1), ("queries", False, 4, 2), ("groups", True, 4, 1), ("queries", True, 4, 2)],
)
def test_config_shapes_and_parameter_count(gqa, bias, heads_after, kv_after):
    dense = _llama(attention_bias=bias, mlp_bias=bias)
    model = copy.deepcopy(dense)
    report = prune_structured(model, heads=0.5, neurons=0.25, criterion="magnitude", gqa=gqa)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (heads_after, kv_after, HEAD_DIM, 96)
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        assert a.q_proj.weight.shape == (heads_after * HEAD_DIM, HIDDEN)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (kv_after * HEAD_DIM, HIDDEN)
        assert a.o_proj.weight.shape == (HIDDEN, heads_after * HEAD_DIM)
        assert (a.q_proj.out_features, a.o_proj.in_features, a.k_proj.out_features) == (heads_after * HEAD_DIM, heads_after * HEAD_DIM, kv_after * HEAD_DIM)
        assert a.num_key_value_groups == heads_after // kv_after and a.head_dim == HEAD_DIM
        assert m.gate_proj.weight.shape == m.up_proj.weight.shape == (96, HIDDEN)
        assert m.down_proj.weight.shape == (HIDDEN, 96) and m.intermediate_size == 96
        if bias:
            assert a.q_proj.bias.shape == (heads_after * HEAD_DIM,) and a.k_proj.bias.shape == (kv_after * HEAD_DIM,)
            assert m.gate_proj.bias.shape == (96,) and m.down_proj.bias.shape == (HIDDEN,)
    # Formula: a query head takes q rows + o columns (+ q bias); a kv head k and v rows (+ biases);
    # a neuron a gate row, an up row and a down column (+ gate and up biases).
    b = int(bias)
    per_q = 2 * HIDDEN * HEAD_DIM + b * HEAD_DIM
    per_kv = 2 * (HIDDEN * HEAD_DIM + b * HEAD_DIM)
    per_neuron = 3 * HIDDEN + 2 * b
    removed = 2 * ((HEADS - heads_after) * per_q + (KV - kv_after) * per_kv + 32 * per_neuron)
    assert report.parameters_before == _params(dense)
    assert report.parameters_after == _params(model) == _params(dense) - removed


def test_biases_are_sliced_with_their_units(calib, probe):
    dense = _llama(attention_bias=True, mlp_bias=True).double()
    with torch.no_grad():  # non-zero biases, so a misaligned slice would show
        for p in dense.parameters():
            if p.dim() == 1 and p.shape != (HIDDEN,):
                p.uniform_(-0.5, 0.5)
    model = copy.deepcopy(dense)
    report = prune_structured(model, calib, heads=0.5, neurons=0.5, gqa="groups")
    ref = _masked_equivalent(dense, report, HEADS, HEAD_DIM, NEURONS)
    with torch.no_grad():
        assert _same(model(probe).logits, ref(probe).logits)


@pytest.mark.parametrize("gqa", ["groups", "queries"])
def test_save_pretrained_round_trip_and_generate(dense, calib, probe, tmp_path, gqa):
    model = copy.deepcopy(dense)
    report = prune_structured(model, calib, heads=0.5, neurons=0.25, gqa=gqa)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.num_attention_heads == 4 and loaded.config.head_dim == HEAD_DIM
    assert _params(loaded) == report.parameters_after
    with torch.no_grad():
        assert torch.equal(loaded(probe).logits, model(probe).logits)

    prompt = probe[:1, :5]
    out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 11) and torch.equal(out[:, :5], prompt)
    ref = _masked_equivalent(dense, report, HEADS, HEAD_DIM, NEURONS)
    assert torch.equal(out, ref.generate(prompt, max_new_tokens=6, do_sample=False))
    assert torch.equal(out, loaded.generate(prompt, max_new_tokens=6, do_sample=False))


def test_head_count_rounds_down_to_what_the_config_accepts():
    # 16 heads in 8 KV groups, hidden 64: LlamaConfig needs 64 % heads == 0, so 14, 12 and 10 heads are out.
    dense = _llama(num_attention_heads=16, num_key_value_heads=8, head_dim=4)
    model = copy.deepcopy(dense)
    report = prune_structured(model, heads=0.7, criterion="magnitude", gqa="groups")  # 5 groups asked, 4 allowed
    assert report.heads_requested == 0.7 and report.heads_removed == 0.5
    assert model.config.num_attention_heads == 8 and model.config.num_key_value_heads == 4
    assert all(lr.heads == (16, 8) and lr.kv_heads == (8, 4) for lr in report.layers)


def test_training_mode_restored_and_summary(dense, calib):
    model = copy.deepcopy(dense).train()
    report = prune_structured(model, calib, heads=0.5, neurons=0.5)
    assert model.training
    text = report.summary()
    assert "heads per block    8 -> 4 (kv 2 -> 1)" in text and "neurons per block  128 -> 64" in text
    assert "model.layers.1" in text and f"{report.parameters_after:,}" in text
    assert report.seconds > 0 and all(lr.seconds > 0 for lr in report.layers)


def test_qwen2_with_qkv_bias(calib, probe, tmp_path):
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=NEURONS, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    dense = transformers.Qwen2ForCausalLM(cfg).eval().double()
    model = copy.deepcopy(dense)
    report = prune_structured(model, calib, heads=0.5, neurons=0.25, gqa="groups")
    ref = _masked_equivalent(dense, report, HEADS, HIDDEN // HEADS, NEURONS)
    with torch.no_grad():
        assert _same(model(probe).logits, ref(probe).logits)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(probe).logits, model(probe).logits)


def test_bert_neurons_and_heads_refused(calib, probe, tmp_path):
    dense = tiny_bert(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=NEURONS, initializer_range=0.02).double()
    model = copy.deepcopy(dense)
    report = prune_structured(model, calib, neurons=0.5)
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for layer, lr in zip(ref.encoder.layer, report.layers):
            layer.output.dense.weight[:, sorted(set(range(NEURONS)) - set(lr.kept_neurons))] = 0
        assert _same(model(probe).last_hidden_state, ref(probe).last_hidden_state)
    assert model.config.intermediate_size == 64 and model.encoder.layer[0].intermediate.dense.out_features == 64
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(probe).last_hidden_state, model(probe).last_hidden_state)

    snap = _snapshot(model)
    with pytest.raises(PruneError, match=r"heads=0\.5: BertModel derives its head size"):
        prune_structured(model, calib, heads=0.5)
    assert _unchanged(model, snap)


# ------------------------------------------------------------------------------ errors


# (id, keyword arguments, exception, message pattern); "calibration" names a variant of the fixture.
BAD = [
    ("heads=1", {"heads": 1.0}, PruneError, r"heads must be a number in \[0, 1\) \(the fraction of units to remove per block\); got 1\.0$"),
    ("heads<0", {"heads": -0.1}, PruneError, r"heads must be a number in \[0, 1\) \(the fraction of units to remove per block\); got -0\.1$"),
    ("heads-str", {"heads": "a"}, PruneTypeError, r"heads must be a number in \[0, 1\) .*; got 'a'$"),
    ("heads-bool", {"heads": True}, PruneTypeError, r"heads must be a number in \[0, 1\) .*; got True$"),
    ("neurons=1", {"neurons": 1.0}, PruneError, r"neurons must be a number in \[0, 1\) \(the fraction of units to remove per block\); got 1\.0$"),
    ("nothing", {}, PruneError, r"heads=0 and neurons=0 remove nothing"),
    ("no-group", {"heads": 0.1}, PruneError,
     r"heads=0\.1 removes no KV group: this model has 2 KV groups per layer, so heads must be a multiple of 1/2"),
    ("no-query", {"heads": 0.2, "gqa": "queries"}, PruneError,
     r"heads=0\.2 removes no query head per KV group: this model has 4 query heads per KV group, "
     r"so with gqa='queries' heads must be a multiple of 1/4"),
    ("config-rejects", {"heads": 0.25, "gqa": "queries"}, PruneError,
     r"heads=0\.25 would leave 6 attention heads per layer, which LlamaConfig rejects .*not a multiple.*; "
     r"fractions it accepts here: 1/2, 3/4"),
    ("no-neuron", {"neurons": 0.001}, PruneError, r"neurons=0\.001 removes no MLP neuron: this model has 128"),
    ("criterion", {"heads": 0.5, "criterion": "random"}, PruneError,
     r"criterion must be one of 'magnitude', 'wanda'; got 'random'"),
    ("gqa", {"heads": 0.5, "gqa": "kv"}, PruneError, r"gqa must be one of 'groups', 'queries'; got 'kv'"),
    ("batch", {"heads": 0.5, "batch_size": 0}, PruneError, r"batch_size must be an integer >= 1; got 0"),
    ("no-calibration", {"heads": 0.5, "calibration": "none"}, PruneError, r"criterion='wanda' needs calibration token ids"),
    ("float-calibration", {"heads": 0.5, "calibration": "float"}, PruneTypeError, r"calibration must be a LongTensor"),
    ("token-range", {"heads": 0.5, "calibration": "shifted"}, PruneError,
     r"calibration holds token ids in \[\d+, \d+\], outside the model's vocabulary \[0, 95\]"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_arguments_raise_and_leave_model_unchanged(dense, calib, kwargs, exc, pattern):
    kwargs = dict(kwargs)
    variant = kwargs.pop("calibration", "ok")
    ids = {"ok": calib, "none": None, "float": calib.float(), "shifted": calib + VOCAB}[variant]
    model = copy.deepcopy(dense)
    snap = _snapshot(model)
    with pytest.raises(exc, match=pattern):
        prune_structured(model, ids, **kwargs)
    assert _unchanged(model, snap)


def test_queries_mode_without_grouped_query_attention():
    model = _llama(num_key_value_heads=HEADS)  # plain multi-head attention: one query head per KV group
    snap = _snapshot(model)
    with pytest.raises(PruneError, match=r"1 query head per KV group.*use gqa='groups' to remove whole heads"):
        prune_structured(model, heads=0.5, criterion="magnitude", gqa="queries")
    assert _unchanged(model, snap)
    report = prune_structured(model, heads=0.5, criterion="magnitude", gqa="groups")
    assert report.layers[0].heads == (8, 4) and report.layers[0].kv_heads == (8, 4)
    assert model.config.num_key_value_heads == 4 and model.model.layers[0].self_attn.num_key_value_groups == 1


def test_not_a_transformers_model():
    seq = nn.Sequential(nn.Linear(4, 4))
    before = {k: v.clone() for k, v in seq.state_dict().items()}
    with pytest.raises(PruneTypeError, match=r"Sequential has no stack of transformer blocks"):
        prune_structured(seq, heads=0.5, criterion="magnitude")
    assert all(torch.equal(v, before[k]) for k, v in seq.state_dict().items())
    with pytest.raises(PruneTypeError, match=r"model must be a transformers nn.Module; got str"):
        prune_structured("llama", heads=0.5, criterion="magnitude")

    class Blocks(nn.Module):  # a stack of blocks, but not of any supported layout
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(PruneTypeError, match=r"Blocks's blocks have neither Llama-style linears"):
        prune_structured(Blocks(), heads=0.5, criterion="magnitude")


def test_llama_shaped_module_without_config():
    dense = _llama()

    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = copy.deepcopy(dense.model.layers)

    bare = Bare()
    with pytest.raises(PruneTypeError, match=r"Bare has no transformers config with num_attention_heads and intermediate_size"):
        prune_structured(bare, heads=0.5, criterion="magnitude")


def test_masked_model_is_refused_until_committed(dense64, calib, probe):
    model = copy.deepcopy(dense64)
    prune_llm(model, None, method="magnitude", sparsity=0.5, keep_masks=True)
    snap = _snapshot(model)
    with pytest.raises(PruneError, match=r"call prunekit\.commit\(model\) first"):
        prune_structured(model, calib, heads=0.5, neurons=0.25)
    assert _unchanged(model, snap)
    pk.commit(model)
    sparse = copy.deepcopy(model)
    report = prune_structured(model, calib, heads=0.5, neurons=0.25)
    ref = _masked_equivalent(sparse, report, HEADS, HEAD_DIM, NEURONS)
    with torch.no_grad():
        assert _same(model(probe).logits, ref(probe).logits)
