"""Coupled channel pruning and compaction on a zoo of architectures.

Invariants: the compacted model computes what the masked model computes; every compacted
shape equals the number of indices the masks left alive; save -> load into a fresh,
unpruned instance gives the same outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from archs import ARCHS, make
from torch import nn

import prunekit as pk
from prunekit.surgery import compact

TOL = dict(rtol=1e-4, atol=1e-5)


def _alive(mask: torch.Tensor, dim: int) -> int:
    per = mask.movedim(dim, 0).reshape(mask.shape[dim], -1)
    return int(per.ne(0).any(1).sum())


@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_compact_equals_masked_and_shapes_match_masks(name, ratio, tmp_path):
    model, x = make(name)
    dense_out = model(x).detach()
    res = pk.prune(model, ratio, granularity="channel", allocation="uniform", example_inputs=x)
    assert res.groups and sum(g.pruned_units for g in res.groups) > 0
    assert res.sparsity == pytest.approx(ratio, abs=0.1)
    masks = pk.masks(model)
    masked_out = model(x).detach()
    assert not torch.allclose(masked_out, dense_out)  # pruning did change the model
    small = compact(model, x)
    assert small is not model
    torch.testing.assert_close(small(x), masked_out, **TOL)
    # shapes: each masked dimension shrank to exactly the indices the masks kept alive
    params = dict(small.named_parameters())
    for pname, mask in masks.items():
        new = params[pname]
        assert new.shape[0] == _alive(mask, 0), pname
        if mask.dim() >= 2 and name != "regression_mlp":  # sigmoid inputs are folded, not masked
            assert new.shape[1] == _alive(mask, 1), pname
    n_small = sum(p.numel() for p in small.parameters())
    n_alive = sum(int(torch.count_nonzero(p)) for p in pk.commit(copy.deepcopy(model)).parameters())
    assert n_small < sum(p.numel() for p in model.parameters())
    if name != "regression_mlp":  # there, removed inputs are folded into biases, not masked
        assert n_small >= n_alive  # nothing alive was dropped
    # module attributes agree with the new tensors (the model ran above; check them too)
    for m in small.modules():
        if isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            assert m.out_channels == m.weight.shape[0] and m.in_channels == m.weight.shape[1] * m.groups
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            assert m.in_channels == m.weight.shape[0] and m.out_channels == m.weight.shape[1] * m.groups
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0]
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels == m.weight.shape[0] and m.num_channels % m.num_groups == 0
    # save -> load into a fresh, unpruned instance replays the surgery
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m", model=make(name)[0]).eval()
    torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)


def test_group_norm_prunes_whole_groups():
    model, x = make("group_norm")
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    small = compact(model, x)
    assert small.g1.num_channels // small.g1.num_groups == 4  # 32 channels / 8 groups
    assert small.g2.num_channels // small.g2.num_groups == 8


def test_depthwise_and_residual_partners_stay_coupled():
    model, x = make("mobilenetv2")
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    small = compact(model, x)
    blk = small.blocks[0].conv
    hid = blk[0].out_channels
    assert blk[3].groups == blk[3].in_channels == blk[3].out_channels == hid  # still depthwise
    # the residual block's input and output widths are one group: equal after surgery
    assert small.blocks[0].conv[6].out_channels == small.stem[0].out_channels


def test_hybrid_structured_then_unstructured_keeps_masks():
    model, x = make("resnet_basic")
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = compact(model, x)
    pk.prune(small, 0.5)  # unstructured on what remains
    ref = small(x).detach()
    again = compact(small, x)  # nothing more to remove: masks stay, outputs too
    assert pk.masks(again) and pk.sparsity(again) == pytest.approx(pk.sparsity(small))
    torch.testing.assert_close(again(x), ref, **TOL)


def test_max_sparsity_caps_every_group():
    model, x = make("resnet_bottleneck")
    res = pk.prune(model, 0.6, granularity="channel", allocation="global", max_sparsity=0.75, example_inputs=x)
    for g in res.groups:
        assert g.pruned_units <= 0.75 * g.units + 1e-9, g


def test_data_criterion_and_shared_module():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = torch.relu(self.b(h))
            h = torch.relu(self.b(h))  # the same layer twice: its in and out widths are coupled
            return self.out(h)

    torch.manual_seed(0)
    model, x = Shared(), torch.randn(16, 6)
    y = torch.randint(0, 2, (16,))
    res = pk.prune(model, 0.5, criterion="taylor", granularity="channel", data=[(x, y)],
                   loss_fn=nn.functional.cross_entropy)
    assert len(res.groups) == 1  # a's outputs, b's inputs and b's outputs are one group
    small = compact(model, x)
    assert small.b.in_features == small.b.out_features == small.a.out_features < 12
    torch.testing.assert_close(small(x), model(x), **TOL)


def test_inspect_lists_heads_the_residual_stream_and_why_channels_stay():
    model, x = make("vit")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = pk.inspect(model, x)
    ops = {k["op"] for k in report.kept}
    assert ops == {"output"}
    names = [g["name"] for g in report.groups]
    assert names == ["patch+blocks.0.attn.proj+blocks.0.fc2+blocks.1.attn.proj+blocks.1.fc2",
                     "blocks.0.attn.q+blocks.0.attn.k+blocks.0.attn.v", "blocks.0.fc1",
                     "blocks.1.attn.q+blocks.1.attn.k+blocks.1.attn.v", "blocks.1.fc1"]
    stream = {m["param"] for m in report.groups[0]["members"]}
    assert {"pos", "blocks.0.ln1.weight", "norm.bias", "head.weight"} <= stream  # the residual stream
    assert report.groups[1]["units"] == 4  # whole heads
    assert report.unprunable == ["head.weight"]
    text = report.summary()
    assert "attention heads" in text and "chan   blocks.1.ln2.weight" in text
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # a dry run


def test_head_granularity_prunes_whole_heads_and_updates_num_heads(tmp_path):
    model, x = make("vit")
    res = pk.prune(model, 0.5, granularity="head", allocation="uniform", example_inputs=x)
    assert [g.units for g in res.groups] == [4, 4] and all(g.pruned_units == 2 for g in res.groups)
    assert not any("fc1" in g.name for g in res.groups)  # only attention
    small = compact(model, x)
    for blk in small.blocks:
        attn = blk["attn"]
        assert attn.num_heads == 2 and attn.q.out_features == attn.k.out_features == 2 * attn.head_dim
        assert attn.proj.in_features == 2 * attn.head_dim and blk["fc1"].out_features == 64
    torch.testing.assert_close(small(x), model(x), **TOL)
    pk.save(small, tmp_path / "v")
    back = pk.load(tmp_path / "v", model=make("vit")[0]).eval()
    assert back.blocks[0]["attn"].num_heads == 2
    torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)


def test_sdpa_heads():
    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.o, self.n_heads = nn.Linear(12, 36), nn.Linear(12, 3), 3

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, 4).permute(2, 0, 3, 1, 4)
            y = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.o(y.transpose(1, 2).reshape(b, t, -1)).sum(1)

    torch.manual_seed(0)
    model, x = SDPA().eval(), torch.randn(2, 5, 12)
    pk.prune(model, 0.34, granularity="head", allocation="uniform", example_inputs=x)
    small = compact(model, x)
    assert small.n_heads == 2 and small.qkv.out_features == 24
    torch.testing.assert_close(small(x), model(x), **TOL)


def test_errors_leave_the_model_alone(tmp_path):
    model, x = make("plain_cnn")
    with pytest.raises(ValueError, match="example_inputs"):
        compact(model, None)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = compact(model, x)
    pk.save(small, tmp_path / "s")
    wrong = make("resnet_basic")[0]
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(ValueError, match="surgery|does not fit"):
        pk.load(tmp_path / "s", model=wrong)
    after = wrong.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_channel_without_inputs_warns_and_falls_back(mlp):
    with pytest.warns(UserWarning, match="example_inputs"):
        pk.prune(mlp, 0.5, granularity="channel")


def test_embedding_width_is_pruned():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc1, self.fc2 = nn.Embedding(20, 16), nn.Linear(16, 12), nn.Linear(12, 3)

        def forward(self, idx):
            return self.fc2(torch.relu(self.fc1(torch.relu(self.emb(idx)).mean(1))))

    torch.manual_seed(0)
    model, idx = Bag().eval(), torch.randint(0, 20, (4, 7))
    assert not any(k["where"] == "emb" for k in pk.inspect(model, idx).kept)
    res = pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=idx)
    assert [(g.name, g.pruned_units) for g in res.groups] == [("emb", 8), ("fc1", 6)]
    small = compact(model, idx)
    assert small.emb.embedding_dim == small.fc1.in_features == 8 and small.fc1.out_features == 6
    torch.testing.assert_close(small(idx), model(idx), **TOL)


@pytest.mark.parametrize("batch_first", [False, True])
def test_pruned_multihead_attention_matches_torch(batch_first):
    from prunekit.surgery.attention import PrunedMultiheadAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    twin = PrunedMultiheadAttention.from_module(copy.deepcopy(mha), 4, 4).eval()
    q = torch.randn(3, 5, 16)  # (L, N, E) or (N, L, E)
    kv = torch.randn(3, 7, 16) if batch_first else torch.randn(6, 5, 16)
    n, s = (3, 7) if batch_first else (5, 6)
    pad = torch.zeros(n, s, dtype=torch.bool)
    pad[0, -2:] = True
    tgt = q.shape[1] if batch_first else q.shape[0]
    causal = torch.ones(tgt, s, dtype=torch.bool).triu(1)
    for kwargs in (dict(need_weights=False), dict(need_weights=True), dict(need_weights=True, average_attn_weights=False),
                   dict(key_padding_mask=pad, need_weights=False), dict(attn_mask=causal, key_padding_mask=pad)):
        ref, ref_w = mha(q, kv, kv, **kwargs)
        got, got_w = twin(q, kv, kv, **kwargs)
        torch.testing.assert_close(got, ref, **TOL)
        if ref_w is not None:
            torch.testing.assert_close(got_w, ref_w, **TOL)


def test_multihead_attention_heads_and_need_weights():
    model, x = make("multihead_attention")
    res = pk.prune(model, 0.5, granularity="head", allocation="uniform", example_inputs=x)
    assert [(g.units, g.pruned_units) for g in res.groups] == [(4, 2)]
    small = compact(model, x)
    assert small.mha.num_heads == 2 and small.mha.in_proj_weight.shape == (3 * 2 * 8, 32)
    torch.testing.assert_close(small(x), model(x), **TOL)

    class Weights(nn.Module):  # returns the head-averaged weights: heads must stay
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    m, x = Weights().eval(), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="no attention heads"):
        pk.prune(m, 0.5, granularity="head", example_inputs=x)
    assert any("need_weights" in k["reason"] for k in pk.inspect(m, x).kept)


def test_transformer_encoder_runs_pruned_attention_outside_the_fused_path(tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(2, 5, 16)
    res = pk.prune(model, 0.5, granularity="head", allocation="uniform", example_inputs=x)
    assert [(g.units, g.pruned_units) for g in res.groups] == [(4, 2), (4, 2)]
    small = compact(model, x)
    assert all(blk.self_attn.num_heads == 2 for blk in small.layers)
    with torch.no_grad():  # inference mode is where the fused fast path would run
        torch.testing.assert_close(small(x), model(x), **TOL)
    pk.save(small, tmp_path / "t")
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    back = pk.load(tmp_path / "t", model=nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)


def test_load_rebuilds_pruned_attention_without_its_class(tmp_path):
    """The architecture spec names PrunedMultiheadAttention and builds it back, with fewer
    heads, from the file alone; the compacted model pickles (the class now lives in
    prunekit.layers, still importable from prunekit.surgery.attention)."""
    import pickle

    import prunekit.layers
    from prunekit.surgery.attention import PrunedMultiheadAttention

    assert PrunedMultiheadAttention is prunekit.layers.PrunedMultiheadAttention

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.mha(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 5, 16)
    pk.prune(model, 0.5, granularity="head", allocation="uniform", example_inputs=x)
    small = compact(model, x)
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m").eval()
    assert type(back.mha) is PrunedMultiheadAttention and back.mha.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)
        again = pickle.loads(pickle.dumps(small.mha))
        torch.testing.assert_close(again(x, x, x)[0], small.mha(x, x, x)[0], rtol=0, atol=0)


def test_prune_hybrid_in_one_call():
    model, x = make("resnet_basic")
    res = pk.prune_hybrid(model, 0.5, 0.8, example_inputs=x)
    small = res.model
    assert small is not model and res.channels.groups and res.weights.sparsity == pytest.approx(0.8, abs=0.01)
    assert small.layer1[0].conv1.out_channels == 8  # half of 16
    assert pk.sparsity(small) == pytest.approx(0.8, abs=0.01)
    masked_ref = pk.commit(copy.deepcopy(small))(x)
    torch.testing.assert_close(small(x), masked_ref, **TOL)


def test_prune_hybrid_checks_both_steps_before_touching_the_model_and_gives_reconnect_to_the_second():
    model, x = make("resnet_basic")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PruneError, match="criterion 'bn_scale' scores whole channels"):
        pk.prune_hybrid(model, 0.5, 0.8, example_inputs=x, criterion="bn_scale")
    assert not pk.masks(model) and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    res = pk.prune_hybrid(model, 0.5, 0.8, example_inputs=x, reconnect=True)
    assert res.weights.config["reconnect"] and not res.channels.config.get("reconnect")
    assert pk.sparsity(res.model) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_load_rebuilds_any_fx_traceable_model_without_its_class(name, tmp_path):
    model, x = make(name)
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    small = compact(model, x)
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m").eval()  # no instance given: rebuilt from the JSON graph
    assert type(back).__name__ == "RebuiltModel"
    torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in small.parameters())


def test_architecture_spec_refuses_what_it_cannot_name(tmp_path):
    import json

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.cell = nn.Linear(4, 4), nn.GRUCell(4, 4)  # a layer type the spec does not describe

        def forward(self, x):
            return self.cell(self.fc(x))

    pk.save(Net(), tmp_path / "n")
    spec = json.loads((tmp_path / "n" / "spec.json").read_text())
    assert "architecture" not in spec and "GRUCell" in spec["architecture_note"]
    with pytest.raises(ValueError, match="model="):
        pk.load(tmp_path / "n")
    # a spec naming a function outside the allowlist is refused, never imported
    model, x = make("plain_cnn")
    pk.save(model, tmp_path / "p")
    spec = json.loads((tmp_path / "p" / "spec.json").read_text())
    spec["architecture"]["nodes"][2]["op"] = "call_function"
    spec["architecture"]["nodes"][2]["target"] = "os.system"
    (tmp_path / "p" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="not allowed"):
        pk.load(tmp_path / "p")
