"""Each criterion computes what its formula says, checked against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import criteria as C

F = nn.functional


def test_magnitude_and_normalized(mlp):
    s = C.magnitude(mlp)
    assert set(s) == {"net.0.weight", "net.2.weight", "net.4.weight"}
    assert torch.equal(s["net.0.weight"], mlp.net[0].weight.detach().abs())
    n = C.normalized_magnitude(mlp)
    for k in s:
        assert torch.allclose(n[k], s[k] / s[k].max())
        assert float(n[k].max()) == 1.0


def test_magnitude_group_reduce_is_lp_norm():
    w = torch.tensor([[3.0, -4.0], [1.0, 0.0]])
    assert torch.allclose(C.Magnitude(p=2).reduce(w.abs(), (1,)), torch.tensor([5.0, 1.0]))
    assert torch.allclose(C.Magnitude(p=1).reduce(w.abs(), (1,)), torch.tensor([7.0, 1.0]))


def test_random_is_seeded_and_weighted_prefers_large(mlp):
    a, b = C.random(mlp, seed=3), C.random(mlp, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.0.weight"], C.random(mlp, seed=4)["net.0.weight"])
    # Weighted sampling keeps large weights more often than uniform sampling does.
    w = mlp.net[0].weight.detach().abs()
    kept_w, kept_u = [], []
    for seed in range(5):
        for weighted, acc in ((True, kept_w), (False, kept_u)):
            s = C.random(mlp, weighted=weighted, seed=seed)["net.0.weight"]
            top = s.flatten().topk(s.numel() // 4).indices
            acc.append(float(w.flatten()[top].mean()))
    assert sum(kept_w) / 5 > 1.2 * sum(kept_u) / 5


def _manual_grads(model, batches, fn):
    params = [model.net[0].weight, model.net[2].weight, model.net[4].weight]
    acc = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        for a, p, gi in zip(acc, params, g):
            a += fn(p.detach(), gi)
    return [a / len(batches) for a in acc]


def test_gradient_taylor_match_manual(mlp, digits_batches):
    kw = dict(data=digits_batches, loss_fn=F.cross_entropy)
    g = C.gradient(mlp, **kw)
    t = C.taylor(mlp, **kw)
    ng = C.normalized_gradient(mlp, **kw)
    mg = _manual_grads(mlp, digits_batches, lambda w, gr: gr.abs())
    mt = _manual_grads(mlp, digits_batches, lambda w, gr: (w * gr).abs())
    for i, k in enumerate(["net.0.weight", "net.2.weight", "net.4.weight"]):
        assert torch.allclose(g[k], mg[i], atol=1e-7)
        assert torch.allclose(t[k], mt[i], atol=1e-7)
        assert torch.allclose(ng[k], mg[i] / mg[i].norm(), atol=1e-6)
        assert float(ng[k].norm()) == pytest.approx(1.0, abs=1e-5)


def test_hessian_is_obd_with_per_sample_fisher(mlp, digits_batches):
    batches = digits_batches[:1]
    h = C.hessian(mlp, data=batches, loss_fn=F.cross_entropy)
    x, y = batches[0]
    w = mlp.net[4].weight
    fisher = torch.zeros_like(w)
    for i in range(x.shape[0]):
        (gi,) = torch.autograd.grad(F.cross_entropy(mlp(x[i : i + 1]), y[i : i + 1]), [w])
        fisher += gi.pow(2)
    fisher /= x.shape[0]
    assert torch.allclose(h["net.4.weight"], 0.5 * fisher * w.detach().pow(2), rtol=1e-4, atol=1e-10)


def test_criteria_do_not_change_model_state(mlp, digits_batches):
    from conftest import clone_state, same_state

    mlp.train()
    p = next(mlp.parameters())
    p.grad = torch.ones_like(p)
    state = clone_state(mlp)
    for name in ("gradient", "taylor", "hessian", "activation_entropy", "apoz"):
        from prunekit.registry import create

        create("criterion", name)(mlp, data=digits_batches, loss_fn=F.cross_entropy)
    assert same_state(mlp, state)
    assert mlp.training
    assert torch.equal(p.grad, torch.ones_like(p))


def test_apoz_counts_zeros_after_relu(mlp, digits_batches):
    s = C.apoz(mlp, data=digits_batches)
    x = torch.cat([b[0] for b in digits_batches])
    with torch.no_grad():
        act = torch.relu(mlp.net[0](torch.flatten(x, 1)))
    expected = 1 - (act == 0).float().mean(0)
    assert torch.allclose(s["net.0.weight"], expected, atol=1e-6)
    # The last layer has no activation after it: its raw outputs are never exactly zero.
    assert torch.all(s["net.4.weight"] == 1)


def test_activation_entropy_zero_for_constant_unit(mlp, digits_batches):
    with torch.no_grad():
        mlp.net[0].weight[5].zero_()
        mlp.net[0].bias[5] = -1.0  # always negative → ReLU output constantly 0
    s = C.activation_entropy(mlp, data=digits_batches, bins=16)
    e = s["net.0.weight"]
    assert e.shape == (48,)
    assert float(e[5]) == 0.0
    assert float(e.max()) <= math.log(16) + 1e-6
    assert float(e.max()) > 0.5


def test_entropy_of_uniform_values_is_log_bins():
    from prunekit.criteria.activation import entropy_per_channel

    v = torch.linspace(0, 1, 8000).unsqueeze(1)
    assert float(entropy_per_channel(v, 8)[0]) == pytest.approx(math.log(8), rel=1e-3)


def test_bn_scale_reads_following_batchnorm(convbn, digits_batches):
    s = C.bn_scale(convbn, example_inputs=digits_batches[0][0], ignore=["head"])
    assert torch.equal(s["features.0.weight"], convbn.features[1].weight.detach().abs())
    assert torch.equal(s["features.3.weight"], convbn.features[4].weight.detach().abs())


def test_bn_scale_without_batchnorm_names_the_layers(convbn, digits_batches):
    with pytest.raises(ValueError, match=r"head\.weight"):
        C.bn_scale(convbn, example_inputs=digits_batches[0][0])


def test_fpgm_sum_of_distances():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 1.0, 3.0]).reshape(3, 1, 1, 1))
    s = C.fpgm(nn.Sequential(conv))["0.weight"]
    assert torch.allclose(s, torch.tensor([4.0, 3.0, 5.0]))  # the middle filter is the median


@pytest.mark.parametrize("name", ["gradient", "taylor", "hessian", "normalized_gradient"])
def test_loss_criteria_require_data_and_loss(mlp, digits_batches, name):
    from prunekit.registry import create

    with pytest.raises(ValueError, match="needs data"):
        create("criterion", name)(mlp, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="needs a loss"):
        create("criterion", name)(mlp, data=digits_batches)


def test_non_scalar_loss_is_rejected(mlp, digits_batches):
    with pytest.raises(ValueError, match="scalar"):
        C.gradient(mlp, data=digits_batches, loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="none"))


def test_apoz_counts_every_call_of_a_reused_layer():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r, self.b = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.r(self.a(self.r(self.a(x)))))

    torch.manual_seed(0)
    m = Twice()
    x = torch.randn(32, 8)
    with torch.no_grad():
        h1 = torch.relu(m.a(x))
        h2 = torch.relu(m.a(h1))
    expected = 1 - torch.cat([h1, h2]).eq(0).float().mean(0)
    assert torch.allclose(C.apoz(m, example_inputs=x)["a.weight"], expected)


def test_bad_data_is_a_clear_error(mlp):
    x = torch.randn(10, 64)
    with pytest.raises(TypeError, match="iterable of"):
        pk.prune(mlp, 0.5, criterion="apoz", granularity="channel", data=x)
    with pytest.raises(TypeError, match="iterable of"):
        pk.prune(mlp, 0.5, criterion="apoz", granularity="channel", data=5)
    with pytest.raises(ValueError, match=r"'inputs'/'x' .* takes no 'input' \(it takes 'x'\)"):
        pk.prune(mlp, 0.5, criterion="apoz", granularity="channel", data=[{"input": x}])
    with pytest.raises(ValueError, match=r"needs an 'inputs' \(or 'x'\) key"):
        pk.prune(mlp, 0.5, criterion="apoz", granularity="channel", data=[{"labels": x}])
    assert not pk.masks(mlp)


def test_a_dict_batch_with_other_keys_is_the_models_keyword_arguments():
    """{"x": ..., "cond": ..., "labels": ...} calls model(x=..., cond=...): the conditioning
    branch is calibrated too, with the statistics of the inputs it gets."""
    class Cond(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.o = nn.Linear(8, 16), nn.Linear(3, 16), nn.Linear(16, 4)

        def forward(self, x, cond=None):
            h = self.a(x) + (self.b(cond) if cond is not None else 0)
            return self.o(torch.relu(h))

    torch.manual_seed(0)
    x, cond = torch.randn(32, 8), torch.randn(32, 3) * torch.tensor([1.0, 0.0, 5.0])
    model = Cond()
    w = model.b.weight.detach().clone()
    res = pk.prune(model, 0.5, criterion="wanda", allocation="row",
                   data=[{"x": x, "cond": cond, "labels": torch.zeros(32, dtype=torch.long)}])
    assert "b.weight" in [l.name for l in res.layers]
    # Wanda on b: |W| times the norm of each cond column, the top of each row kept
    mask = pk.masks(model)["b.weight"].bool()
    score = w.abs() * cond.norm(dim=0)
    for row, keep in zip(score, mask):
        assert set(row.topk(int(keep.sum())).indices.tolist()) == set(keep.nonzero().flatten().tolist())
    assert not mask[:, 1].any()  # the all-zero column is pruned first


def test_one_shot_iterator_keeps_all_batches(mlp, digits_batches):
    import copy

    twin = copy.deepcopy(mlp)
    pk.prune(mlp, 0.5, criterion="apoz", granularity="channel", data=iter(digits_batches))
    pk.prune(twin, 0.5, criterion="apoz", granularity="channel", data=digits_batches)
    assert all(torch.equal(pk.masks(mlp)[k], pk.masks(twin)[k]) for k in pk.masks(twin))
