"""Granularities shape the masks; allocations split the budget; both checked exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.allocation import ERK, LAMP, Layer, kth_smallest, prune_k_global, prune_lowest
from prunekit.granularity import NM, Block, make


def test_nm_keeps_n_largest_of_every_m(mlp):
    before = mlp.net[0].weight.detach().abs().clone()
    pk.prune(mlp, granularity="2:4")
    w = mlp.net[0].weight.detach()
    groups = w.reshape(w.shape[0], -1, 4)
    assert torch.all((groups != 0).sum(-1) == 2)
    # The survivors are the two largest magnitudes of each group.
    b = before.reshape(w.shape[0], -1, 4)
    top2 = torch.zeros_like(b, dtype=torch.bool).scatter_(-1, b.topk(2, dim=-1).indices, True)
    assert torch.equal(groups != 0, top2)


def test_nm_matches_brute_force():
    lin = nn.Linear(8, 3)
    ref = lin.weight.detach().abs().clone()
    pk.prune(nn.Sequential(lin), granularity="1:4")
    mask = lin.parametrizations.weight[0].mask
    for r in range(3):
        for g in range(2):
            block = ref[r, 4 * g : 4 * g + 4]
            keep = mask[r, 4 * g : 4 * g + 4]
            assert keep.sum() == 1 and keep[block.argmax()] == 1


def test_nm_non_fitting_layer_is_left_dense_with_warning():
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"0\.weight"):
        res = pk.prune(m, granularity="2:4")
    assert res.skipped == ["0.weight"]
    assert not torch.any(m[0].weight == 0)


@pytest.mark.parametrize("bad", ["3:2", "0:4", "a:b", "2:4:8", "2:"])
def test_invalid_nm_strings(bad, mlp):
    with pytest.raises(ValueError, match="N:M|granularity"):
        pk.prune(mlp, granularity=bad)


def test_nm_with_conflicting_sparsity(mlp):
    with pytest.raises(ValueError, match="conflicts"):
        pk.prune(mlp, 0.9, granularity="2:4")
    pk.prune(mlp, 0.5, granularity="2:4")  # consistent value is fine
    assert pk.sparsity(mlp) == pytest.approx(0.5)


def test_channel_masks_whole_rows_and_bias_keeps_output_layer(mlp, digits_batches):
    x = digits_batches[0][0]
    res = pk.prune(mlp, 0.5, granularity="channel", example_inputs=x)
    out_layer = next(l for l in res.layers if l.name == "net.4.weight")
    assert out_layer.pruned_units == 0  # its units are the model's outputs
    m = pk.masks(mlp)
    dead0 = m["net.0.bias"] == 0
    for name, dead_in in (("net.0", None), ("net.2", dead0), ("net.4", m["net.2.bias"] == 0)):
        w = m[f"{name}.weight"]
        if dead_in is not None:  # coupled: the next layer's inputs from removed neurons are masked
            assert torch.all(w[:, dead_in] == 0)
            w = w[:, ~dead_in]
        rows = w.reshape(w.shape[0], -1)
        assert torch.all((rows == 0).all(1) | (rows == 1).all(1))
        if name != "net.4":
            assert torch.equal(m[f"{name}.bias"], rows[:, 0])
    # A removed neuron outputs exactly zero before the activation.
    with torch.no_grad():
        out0 = mlp.net[0](torch.flatten(x, 1))
    assert dead0.any() and torch.all(out0[:, dead0] == 0)


def test_channel_conv_filters(convbn, digits_batches):
    pk.prune(convbn, 0.5, granularity="channel", criterion="fpgm", allocation="uniform", example_inputs=digits_batches[0][0])
    masks = pk.masks(convbn)
    m = masks["features.3.weight"]
    dead_in = (masks["features.0.weight"].reshape(m.shape[1], -1) == 0).all(1)
    assert torch.all(m[:, dead_in] == 0)  # inputs from removed filters are masked with them
    per = m[:, ~dead_in].reshape(16, -1)
    assert torch.all((per == 0).all(1) | (per == 1).all(1))
    assert int((per == 0).all(1).sum()) == 8  # uniform filters per layer ⇒ exactly half


def test_block_masks_are_blocks():
    lin = nn.Linear(8, 8)
    pk.prune(nn.Sequential(lin), 0.5, granularity="block", block_shape=(2, 4))
    m = lin.parametrizations.weight[0].mask
    blocks = m.reshape(4, 2, 2, 4)
    s = blocks.sum(dim=(1, 3))
    assert torch.all((s == 0) | (s == 8))
    assert float((m == 0).float().mean()) == 0.5


def test_block_edge_blocks_smaller():
    g = Block((4, 4))
    lin = nn.Linear(6, 5)
    from prunekit.targets import find_targets

    t = find_targets(nn.Sequential(lin))[0]
    sizes = g.unit_size(t)
    assert sizes.tolist() == [16, 8, 4, 2]
    assert int(sizes.sum()) == 30


def test_make_rejects_bad_types():
    with pytest.raises(TypeError):
        make(3)
    with pytest.raises(ValueError, match="block shape"):
        make(Block((0, 2)))
    assert isinstance(make("4:8"), NM)


# --- allocation ----------------------------------------------------------------------


def test_prune_lowest_hits_nearest_budget():
    s = torch.tensor([5.0, 1.0, 3.0, 2.0])
    keep = prune_lowest(s, torch.tensor([1, 1, 1, 1]), 2)
    assert keep.tolist() == [True, False, True, False]
    keep = prune_lowest(s, torch.tensor([10, 10, 10, 10]), 14)  # 1 unit (10) is closer than 2 (20)
    assert keep.tolist() == [True, False, True, True]


@pytest.mark.parametrize("n,k", [(10, 1), (1000, 500), (5000, 4999), (20000, 7)])
def test_kth_smallest_matches_sort(n, k):
    g = torch.Generator().manual_seed(n)
    chunks = [torch.randn(n // 3 + i, generator=g) for i in range(3)]
    ref = torch.sort(torch.cat(chunks)).values[k - 1]
    assert kth_smallest(chunks, k, bins=16, gather_below=64) == float(ref)


def test_prune_k_global_exact_with_ties():
    chunks = [torch.zeros(10), torch.zeros(5), torch.ones(5)]
    keeps = prune_k_global(chunks, 12)
    assert sum(int((~k).sum()) for k in keeps) == 12
    assert (~keeps[0]).all() and int((~keeps[1]).sum()) == 2  # earlier chunk first on ties


def test_lamp_scores_formula():
    layer = Layer("a", torch.tensor([1.0, 2.0, 3.0]), 1, (3,))
    expect = torch.tensor([1 / 14, 4 / 13, 9 / 9])
    assert torch.allclose(LAMP().transform(layer), expect)


def test_erk_densities_meet_budget_and_favor_small_layers():
    layers = [Layer("big", torch.rand(1000 * 1000), 1, (1000, 1000)), Layer("small", torch.rand(100 * 10), 1, (10, 100))]
    d = ERK().densities(layers, 0.9)
    kept = d["big"] * 1e6 + d["small"] * 1e3
    assert kept == pytest.approx(0.1 * (1e6 + 1e3), rel=1e-6)
    assert d["small"] > d["big"]
    assert all(0 < v <= 1 for v in d.values())


def test_global_never_empties_a_layer_unless_asked():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 20))
    with torch.no_grad():
        m[1].weight.mul_(1e-3)  # every weight of layer 1 is smaller than any of layer 0
    m2 = copy.deepcopy(m)
    pk.prune(m, 0.6)
    assert int((m[1].weight != 0).sum()) >= 1
    assert pk.sparsity(m) == pytest.approx(0.6)
    pk.prune(m2, 0.6, min_keep=0)
    assert int((m2[1].weight != 0).sum()) == 0


def test_uniform_gives_same_sparsity_per_layer(mlp):
    res = pk.prune(mlp, 0.7, allocation="uniform")
    for l in res.layers:
        assert l.sparsity == pytest.approx(0.7, abs=1 / l.units)


def test_lamp_keeps_small_layers_denser_than_global():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 10))
    with torch.no_grad():
        m[2].weight.mul_(0.3)
    g, l = copy.deepcopy(m), copy.deepcopy(m)
    rg = pk.prune(g, 0.95, allocation="global")
    rl = pk.prune(l, 0.95, allocation="lamp")
    assert rl.layers[1].sparsity < rg.layers[1].sparsity
    assert rl.sparsity == pytest.approx(0.95) and rg.sparsity == pytest.approx(0.95)


def test_threshold_mode(mlp):
    w = {n: p.detach().abs() for n, p in mlp.named_parameters() if n.endswith("weight")}
    res = pk.prune(mlp, threshold=0.3, min_keep=0)
    for name, a in w.items():
        expected = (a / a.max()) > 0.3
        assert torch.equal(pk.masks(mlp)[name].bool(), expected)
    assert 0 < res.sparsity < 1
    with pytest.raises(ValueError, match="threshold"):
        pk.prune(mlp, threshold=0.3, allocation="erk")
    with pytest.raises(ValueError, match="threshold"):
        pk.prune(mlp, threshold=1.5)


def test_kth_smallest_bracket_path_with_forced_and_protected():
    g = torch.Generator().manual_seed(7)
    chunks = [torch.rand(3000, generator=g) for _ in range(3)]
    chunks[0][:50] = float("-inf")  # already pruned
    chunks[2][-5:] = float("inf")  # protected
    flat = torch.cat(chunks)
    for k in (10, 50, 51, 2000, 8995):
        ref = float(torch.sort(flat).values[k - 1])
        assert kth_smallest(chunks, k, gather_below=100) == ref
    keeps = prune_k_global(chunks, 4000)
    assert sum(int((~k).sum()) for k in keeps) == 4000
    assert not keeps[0][:50].any() and keeps[2][-5:].all()


def test_channel_output_layer_found_behind_functional_ops_and_dicts():
    F = nn.functional

    class LS(nn.Module):
        def __init__(self, as_dict):
            super().__init__()
            self.fc1, self.fc2, self.as_dict = nn.Linear(8, 16), nn.Linear(16, 4), as_dict

        def forward(self, x):
            out = F.log_softmax(self.fc2(F.relu(self.fc1(x))), 1)
            return {"logits": out} if self.as_dict else out

    for as_dict in (False, True):
        res = pk.prune(LS(as_dict), 0.5, granularity="channel", example_inputs=torch.randn(4, 8))
        assert [g.name for g in res.groups] == ["fc1"]
        assert {l.name: l.pruned_units for l in res.layers}["fc2.weight"] == 0


def test_lamp_with_negative_scores_keeps_ranking():
    layer = Layer("a", torch.tensor([-10.0, -1.0, -0.1]), 1, (3,))
    t = LAMP().transform(layer)
    assert t[0] < t[1] < t[2]


def test_zero_size_layer_is_skipped():
    m = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 3), nn.Linear(3, 2))
    res = pk.prune(m, 0.5)
    assert [l.name for l in res.layers] == ["2.weight"]


def test_nm_validates_other_arguments(mlp):
    with pytest.raises(ValueError, match="unknown allocation"):
        pk.prune(mlp, granularity="2:4", allocation="bogus")
    with pytest.raises(ValueError, match="max_batches"):
        pk.prune(mlp, granularity="2:4", max_batches=0)
    with pytest.raises(ValueError, match="block_shape"):
        pk.prune(mlp, 0.5, block_shape=(2, 2))


class _HeadFirst(nn.Module):
    """The output layer declared before the layer that feeds it."""

    def __init__(self, traceable: bool = True):
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.body = nn.Linear(16, 32)
        self.traceable = traceable

    def forward(self, x):
        if not self.traceable and x.sum() > 1e9:  # data-dependent branch: torch.fx cannot trace it
            x = -x
        return torch.log_softmax(self.head(torch.relu(self.body(x))), dim=1)


def test_without_inputs_the_output_layer_is_the_one_the_output_comes_from():
    torch.manual_seed(0)
    model = _HeadFirst()
    with pytest.warns(UserWarning, match="without example_inputs"):
        res = pk.prune(model, 0.5, granularity="channel", allocation="uniform")
    assert [l.name for l in res.layers] == ["body.weight"]
    assert [s.name for s in res.coverage.skipped] == ["head.weight"]
    assert "head.weight" not in pk.masks(model)  # all ten classes keep their outputs
    # A model torch.fx cannot trace: the last declared layer is kept, and the warning says so.
    with pytest.warns(UserWarning, match=r"could not be traced .* the last layer declared \(body.weight\)"):
        pk.prune(_HeadFirst(traceable=False), 0.5, granularity="channel", allocation="uniform")


def _weighted(sp, sizes):
    return sum(s * w for s, w in zip(sp, sizes)) / sum(sizes)


@pytest.mark.parametrize("fn, args, sparsity, lam", [
    ("owl", ([0.0, 10.0], [10000, 100]), 0.5, 0.08),
    ("owl", ([1.0, 3.0, 2.0, 0.5], [10, 10, 30, 50]), 0.5, 0.1),
    ("owl", ([5.0, 0.0, 1.0], [7, 9000, 30]), 0.3, 0.2),
    ("depth", ([100, 10000],), 0.5, 0.05),
    ("depth", ([100, 10000],), 0.05, 0.05),
    ("depth", ([10000, 50, 50, 10000, 3],), 0.7, 0.25),
])
def test_owl_and_depth_stay_in_the_band_and_meet_the_total(fn, args, sparsity, lam):
    from prunekit.allocation import depth_sparsities, owl_sparsities

    sp = owl_sparsities(*args, sparsity, lam) if fn == "owl" else depth_sparsities(*args, sparsity, lam)
    sizes = args[-1]
    lam = min(lam, sparsity, 1 - sparsity)
    assert all(sparsity - lam - 1e-12 <= s <= sparsity + lam + 1e-12 for s in sp)
    assert _weighted(sp, sizes) == pytest.approx(sparsity, abs=1e-12)
    if fn == "depth":
        assert sp == sorted(sp)  # still a ramp, first to last
    else:
        order = sorted(range(len(sp)), key=lambda i: args[0][i])
        assert [sp[i] for i in order] == sorted(sp, reverse=True)


def test_owl_and_depth_values():
    from prunekit.allocation import depth_sparsities, owl_sparsities

    # the small layer with the most outliers at the band's floor, the large one carrying the rest
    assert owl_sparsities([0.0, 10.0], [10000, 100], 0.5, 0.08) == pytest.approx([0.5008, 0.42])
    assert depth_sparsities([100, 10000], 0.5, 0.05) == pytest.approx([0.45, 0.5005])
    assert depth_sparsities([100, 10000], 0.05, 0.05) == pytest.approx([0.0, 0.0505])
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 1000), nn.Linear(1000, 10))
    res = pk.prune(m, 0.5, allocation=pk.allocation.Depth(lam=0.05))
    assert res.layers[0].sparsity == pytest.approx(0.45, abs=0.01)
    assert [l.sparsity for l in res.layers] == sorted(l.sparsity for l in res.layers)
    assert res.sparsity == pytest.approx(0.5, abs=1e-3)


def test_nm_on_conv_transpose_runs_along_its_inputs():
    from prunekit.targets import rows_per_output

    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(8, 4, 1)  # weight [in 8, out 4, 1, 1]
    pk.prune(nn.Sequential(ct), granularity="2:4")
    per_out = (ct.weight.detach()[:, :, 0, 0].T != 0).reshape(4, 2, 4).sum(-1)  # [out, 4 consecutive inputs]
    assert per_out.tolist() == [[2, 2]] * 4
    grouped = nn.ConvTranspose2d(8, 6, 3, groups=2)  # rows of (in / groups) × 3 × 3 = 36
    dense = grouped.weight.detach().clone()
    pk.prune(nn.Sequential(grouped), granularity="2:4")
    rows = rows_per_output(grouped, grouped.weight.detach())
    best = rows_per_output(grouped, dense).abs().reshape(6, -1, 4).topk(2, -1).indices
    want = torch.zeros(6, 9, 4, dtype=torch.bool).scatter_(-1, best, True).reshape(6, 36)
    assert torch.equal(rows != 0, want)  # the 2 largest of every 4 consecutive inputs of each output channel


def test_nm_leaves_a_conv_transpose_with_too_few_inputs_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 1))  # in × kernel: 3, then 8
    with pytest.warns(UserWarning, match=r"input size of \['0\.weight'\] is not a multiple of 4; left dense"):
        res = pk.prune(model, granularity="2:4")
    assert [l.name for l in res.layers] == ["1.weight"] and res.skipped == ["0.weight"]
    assert torch.count_nonzero(model[0].weight) == 24
    assert "input size 3 is not a multiple of 4" in res.coverage.skipped[0].reason


def test_blocks_of_a_conv_transpose_lie_on_out_by_in():
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(4, 8, 1)  # (out, in) view is [8, 4]: a (8, 1) block is one input across every output
    res = pk.prune(nn.Sequential(ct), 0.5, granularity="block", block_shape=(8, 1), allocation="uniform")
    w = ct.weight.detach()[:, :, 0, 0]  # stored [in, out]
    assert ((w != 0).all(1) | (w == 0).all(1)).all() and int((w == 0).all(1).sum()) == 2
    assert res.sparsity == 0.5
