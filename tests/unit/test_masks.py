"""Invariants of the mask lifecycle (DESIGN.md, examples 2-3)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import masking as M


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def test_parameter_identity_kept_by_prune_and_commit(mlp):
    ids = {n: id(p) for n, p in mlp.named_parameters()}
    pk.prune(mlp, 0.5)
    orig = mlp.net[0].parametrizations.weight.original
    assert id(orig) == ids["net.0.weight"]
    pk.commit(mlp)
    assert {n: id(p) for n, p in mlp.named_parameters()} == ids


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adam-wd", "adamw"],
)
def test_masked_weights_get_zero_grad_and_stay_zero(mlp, digits_batches, make_opt):
    opt = make_opt(mlp.parameters())
    # Warm the optimizer state first: pruning mid-training with non-zero momentum/moments.
    for x, y in digits_batches:
        opt.zero_grad()
        _loss(mlp, x, y).backward()
        opt.step()
    pk.prune(mlp, 0.8)
    masks = pk.masks(mlp)
    for _ in range(3):
        for x, y in digits_batches:
            opt.zero_grad()
            _loss(mlp, x, y).backward()
            for name, m in masks.items():
                module = mlp.get_submodule(name.rpartition(".")[0])
                grad = module.parametrizations.weight.original.grad
                assert torch.all(grad[m == 0] == 0)
            opt.step()
            for name, m in masks.items():
                w = mlp.get_submodule(name.rpartition(".")[0]).weight
                assert torch.all(w[m == 0] == 0)
    assert pk.sparsity(mlp) == pytest.approx(0.8, abs=1e-3)
    before = mlp(digits_batches[0][0])
    pk.commit(mlp)
    assert not M.is_pruned(mlp)
    assert torch.equal(mlp(digits_batches[0][0]), before)
    assert pk.sparsity(mlp) == pytest.approx(0.8, abs=1e-3)


def test_optimizer_built_before_pruning_still_trains_the_parameters(mlp, digits_batches):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.5)
    pk.prune(mlp, 0.5)
    w0 = mlp.net[0].weight.detach().clone()
    x, y = digits_batches[0]
    opt.zero_grad()
    _loss(mlp, x, y).backward()
    opt.step()
    w1 = mlp.net[0].weight.detach()
    alive = pk.masks(mlp)["net.0.weight"] == 1
    assert not torch.equal(w0[alive], w1[alive])


def test_second_pruning_keeps_every_earlier_zero(mlp):
    pk.prune(mlp, 0.5, criterion="random", seed=1)
    first = {k: v.clone() for k, v in pk.masks(mlp).items()}
    pk.prune(mlp, 0.7, criterion="magnitude")
    for k, m in pk.masks(mlp).items():
        assert torch.all(m[first[k] == 0] == 0)
    assert pk.sparsity(mlp) == pytest.approx(0.7, abs=1e-3)


def test_second_pruning_lower_target_keeps_zeros(mlp):
    pk.prune(mlp, 0.8)
    pk.prune(mlp, 0.3)
    assert pk.sparsity(mlp) == pytest.approx(0.8, abs=1e-3)


def test_deepcopy_and_pickle_of_masked_model(mlp, digits_batches):
    pk.prune(mlp, 0.6)
    x = digits_batches[0][0]
    y = mlp(x)
    for clone in (copy.deepcopy(mlp), pickle.loads(pickle.dumps(mlp))):
        assert torch.equal(clone(x), y)
        assert M.is_pruned(clone)
        assert {k: torch.equal(v, pk.masks(mlp)[k]) for k, v in pk.masks(clone).items()} == {
            k: True for k in pk.masks(mlp)
        }
        # The clone trains on its own and keeps its zeros.
        opt = torch.optim.SGD(clone.parameters(), lr=0.1)
        nn.functional.cross_entropy(clone(x), digits_batches[0][1]).backward()
        opt.step()
        assert pk.sparsity(clone) == pytest.approx(pk.sparsity(mlp))
    buf = io.BytesIO()
    torch.save(mlp, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y)


def test_state_dict_round_trip_into_fresh_model(mlp, digits_batches):
    from conftest import MLP

    pk.prune(mlp, 0.75)
    x = digits_batches[0][0]
    sd = mlp.state_dict()
    torch.manual_seed(123)
    fresh = MLP()
    M.load_state_dict(fresh, sd)
    assert torch.equal(fresh(x), mlp(x))
    assert pk.sparsity(fresh) == pytest.approx(0.75, abs=1e-3)
    # Loading into a model that is already masked works with plain load_state_dict too.
    fresh2 = MLP()
    pk.prune(fresh2, 0.1, criterion="random")
    fresh2.load_state_dict(sd)
    assert torch.equal(fresh2(x), mlp(x))


def test_apply_masks_is_all_or_nothing(mlp):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    bad = {"net.0.weight": torch.ones(48, 64), "net.2.weight": torch.ones(3, 3)}
    with pytest.raises(ValueError, match="net.2.weight"):
        M.apply_masks(mlp, bad)
    assert not M.is_pruned(mlp)
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())


def test_remove_masks_and_optimizer_state_masking(mlp, digits_batches):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    x, y = digits_batches[0]
    opt.zero_grad()
    nn.functional.cross_entropy(mlp(x), y).backward()
    opt.step()
    pk.prune(mlp, 0.5)
    M.mask_optimizer_state(opt, mlp)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(mlp(x), y).backward()
        opt.step()
    # With momentum cleared at masked positions the trainable values stay zero too.
    M.remove_masks(mlp)
    assert pk.sparsity(mlp) == pytest.approx(0.5, abs=1e-3)


def test_foreign_parametrization_is_left_dense_or_refused(mlp):
    from torch.nn.utils import parametrize

    class Shift(nn.Module):
        def forward(self, w):
            return w + 1.0

    parametrize.register_parametrization(mlp.net[0], "weight", Shift())
    res = pk.prune(mlp, 0.5)  # the shifted weight is left out, named, never masked wrongly
    assert set(pk.masks(mlp)) == {"net.2.weight", "net.4.weight"}
    assert any(k.name == "net.0.weight" and "Shift" in k.reason for k in res.coverage.skipped)
    # An explicit mask on it is refused and leaves the model as it was.
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ValueError, match=r"net\.0\.weight.*Shift.*ignore="):
        M.apply_masks(mlp, {"net.0.weight": torch.zeros(48, 64)})
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in before.items())


def test_tied_weights_share_one_mask_and_exact_sparsity():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(32, 64, bias=False)
            self.head = nn.Linear(32, 64, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(x) + self.emb(x)

    torch.manual_seed(0)
    m = Tied()
    with torch.no_grad():
        m.emb.weight.copy_((m.emb.weight * 8).round() / 8)  # many ties
    res = pk.prune(m, 0.5)
    assert res.sparsity == pytest.approx(0.5)
    assert pk.sparsity(m) == pytest.approx(0.5)
    masks = pk.masks(m)
    assert torch.equal(masks["emb.weight"], masks["head.weight"])
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 32)).pow(2).sum().backward()
        opt.step()
    assert pk.sparsity(m) == pytest.approx(0.5)
    assert torch.all(m.head.weight[masks["emb.weight"] == 0] == 0)


def test_weight_norm_layer_is_left_dense_and_named(mlp):
    from torch.nn.utils.parametrizations import weight_norm

    from prunekit.coverage import CoverageWarning
    from prunekit.targets import find_targets

    weight_norm(mlp.net[2])
    before = mlp.net[2].weight.detach().clone()
    with pytest.warns(CoverageWarning, match=r"net\.2\.weight.*_WeightNorm"):
        res = pk.prune(mlp, 0.5)
    assert "net.2.weight" not in pk.masks(mlp) and torch.equal(mlp.net[2].weight, before)
    (skip,) = [k for k in res.coverage.skipped if k.name == "net.2.weight"]
    assert "_WeightNorm" in skip.reason and not skip.by_choice
    assert res.sparsity == pytest.approx(0.5, abs=1e-3) and {l.name for l in res.layers} == {"net.0.weight", "net.4.weight"}
    with pytest.raises(ValueError, match=r"net\.2\.weight is parametrized.*ignore="):
        find_targets(mlp, skip_foreign=False)


def test_mask_zeros_freezes_existing_zeros(mlp, digits_batches):
    pk.prune(mlp, 0.7)
    pk.commit(mlp)
    registered = M.mask_zeros(mlp)
    assert set(registered) == {"net.0.weight", "net.2.weight", "net.4.weight"}
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for x, y in digits_batches:
        opt.zero_grad()
        nn.functional.cross_entropy(mlp(x), y).backward()
        opt.step()
    assert pk.sparsity(mlp) == pytest.approx(0.7, abs=1e-3)


def test_commit_on_a_deepcopy_leaves_the_original_working():
    # torch's deepcopy shares the generated parametrized class between copies; committing
    # the copy used to delete the `weight` property from the original's class too.
    import copy as _copy

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pk.prune(net, 0.5)
    x = torch.randn(5, 3)
    ref = net(x).detach()
    twin = pk.commit(_copy.deepcopy(net))
    assert type(twin[0]) is nn.Linear and pk.masks(net)
    torch.testing.assert_close(net(x), ref)
    torch.testing.assert_close(twin(x), ref)
    pk.commit(_copy.deepcopy(net))  # and again: the original still copies and commits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adam_never_turns_masked_weights_into_nan(dtype):
    """Adam's eps (1e-8) is 0 in float16: at masked positions (zero gradient) its update is
    0 / 0 = NaN in ``original``. The effective weight must stay exactly zero there, and
    commit must keep zeros, not NaN. (Kept weights with tiny gradients can overflow too in
    float16 with that eps: Adam's own limit, not the mask's.)"""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(dtype)
    pk.prune(net, 0.5)
    masks = {k: v.clone() for k, v in pk.masks(net).items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-8)
    x, y = torch.randn(8, 16, dtype=dtype), torch.randint(0, 4, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x).float(), y).backward()
        opt.step()
    for name, mask in masks.items():
        w = net.get_submodule(name.rpartition(".")[0]).weight
        assert torch.all(w[mask == 0] == 0), name  # NaN != 0: a multiplied mask fails here
    pk.commit(net)
    for name, mask in masks.items():
        assert torch.all(net.get_submodule(name.rpartition(".")[0]).weight[mask == 0] == 0), name


def test_parametrization_queries_other_modules_use(mlp):
    """The small public functions through which the rest of prunekit reads parametrizations."""
    from torch.nn.utils import parametrize

    import prunekit.export as export_module
    import prunekit.targets as targets_module

    fc0, fc2 = mlp.net[0], mlp.net[2]
    plain_weight = fc0.weight
    assert M.parametrized_names(fc0) == [] and M.parametrizations(fc0, "weight") == []
    assert M.original(fc0, "weight") is plain_weight and M.plain_class(fc0) is nn.Linear
    M.apply_masks(mlp, {"net.0.weight": torch.ones(48, 64)})
    assert M.parametrized_names(fc0) == ["weight"] and type(fc0) is not nn.Linear
    assert M.plain_class(fc0) is nn.Linear
    assert M.original(fc0, "weight") is plain_weight  # the trainable tensor keeps its identity
    assert [type(p) for p in M.parametrizations(fc0, "weight")] == [M.Mask]
    assert M.foreign_parametrizations(fc0, "weight") == []

    class Shift(nn.Module):
        def forward(self, w):
            return w + 1.0

    parametrize.register_parametrization(fc2, "weight", Shift())
    assert M.foreign_parametrizations(fc2, "weight") == ["Shift"]
    keys = [k for k in mlp.state_dict() if M.is_parametrization_key(k)]
    assert keys and all(".parametrizations." in k for k in keys)
    assert not M.is_parametrization_key("net.0.weight")
    with M.cached():
        assert fc0.weight is fc0.weight  # computed once inside the block
    # the names that moved into masking stay importable where they were
    assert targets_module.check_module is M.check_module
    assert targets_module.foreign_parametrizations is M.foreign_parametrizations
    assert export_module.effective_state_dict is M.effective_state_dict
    state = M.effective_state_dict(mlp)
    assert not any(M.is_parametrization_key(k) for k in state)
    torch.testing.assert_close(state["net.2.weight"], fc2.weight.detach())


def test_hook_based_weight_norm_is_left_dense_and_its_parameters_named(mlp):
    """The older torch.nn.utils.weight_norm recomputes ``weight`` from ``weight_g`` and
    ``weight_v`` in a hook: pruning leaves the layer dense and names those two parameters
    (it used to fail with a raw torch error)."""
    import warnings

    from torch.nn.utils import weight_norm

    from prunekit.coverage import CoverageWarning
    from prunekit.targets import find_targets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in torch, still widely used
        weight_norm(mlp.net[2])
    x = torch.randn(4, 64)
    before = mlp(x).detach()
    with pytest.warns(CoverageWarning, match=r"net\.2\.weight_g.*WeightNorm hook"):
        res = pk.prune(mlp, 0.5)
    skipped = {k.name: k for k in res.coverage.skipped}
    assert set(skipped) == {"net.2.weight_g", "net.2.weight_v"}
    assert sum(k.numel for k in skipped.values()) == mlp.net[2].weight_v.numel() + mlp.net[2].weight_g.numel()
    assert {l.name for l in res.layers} == {"net.0.weight", "net.4.weight"}
    assert res.coverage.total == sum(p.numel() for p in mlp.parameters())
    assert not torch.equal(mlp(x), before)  # the other layers are pruned; this one still runs
    with pytest.raises(ValueError, match=r"net\.2\.weight is recomputed .* WeightNorm hook.*ignore="):
        find_targets(mlp, skip_foreign=False)


def test_pruning_a_sparser_model_to_a_lower_sparsity_says_nothing_was_removed(mlp):
    pk.prune(mlp, 0.8)
    before = {k: v.clone() for k, v in pk.masks(mlp).items()}
    with pytest.warns(UserWarning, match=r"already [\d.]+% zeros .* more than the sparsity=0.5 .* nothing was removed"
                                         r".*prune a copy of the model taken before the first pruning"):
        res = pk.prune(mlp, 0.5)
    assert res.sparsity == pytest.approx(0.8, abs=1e-3)
    assert all(torch.equal(before[k], v) for k, v in pk.masks(mlp).items())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert pk.prune(mlp, 0.9).sparsity == pytest.approx(0.9, abs=1e-3)  # more zeros: no warning


def test_re_pruning_at_the_same_sparsity_is_quiet(mlp):
    """A schedule re-applies its target every step: no warning when nothing more is asked."""
    import warnings

    pk.prune(mlp, 0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert pk.prune(mlp, 0.6).sparsity == pytest.approx(0.6, abs=1e-3)


class _Double(nn.Module):
    def forward(self, w):
        return w * 2


def test_remove_masks_keeps_a_parametrization_the_user_added_after_the_mask():
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    pk.prune(model, 0.5)
    parametrize.register_parametrization(model[0], "weight", _Double())
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = model(x)
        M.remove_masks(model)
        assert parametrize.is_parametrized(model[0], "weight") and not pk.masks(model)
        assert [type(p) for p in model[0].parametrizations["weight"]] == [_Double]
        assert torch.equal(model(x), before)  # the zeros were already in `original`
