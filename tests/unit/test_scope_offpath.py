"""``ignore=`` off the common path: None, container module names."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.regularizers import L1
from prunekit.sensitivity import sensitivity


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_ignore_none_means_no_ignores():
    a, b = _mlp(), _mlp()
    pk.prune(a, 0.5, ignore=None)
    pk.prune(b, 0.5)
    masks_a, masks_b = pk.masks(a), pk.masks(b)
    assert set(masks_a) == {"0.weight", "2.weight"} == set(masks_b)
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    assert pk.sparsity(a, ignore=None) == pytest.approx(0.5, abs=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = sensitivity(_mlp(), lambda m: 0.5, sparsities=(0.5,), ignore=None)
    assert list(rep.curves) == ["0.weight", "2.weight"]
    m = _mlp()
    lw = pk.prune_layerwise(m, 0.5, lambda m: 0.5, ignore=None)
    assert lw.final_sparsity == pytest.approx(0.5, abs=0.02) and pk.sparsity(m) == pytest.approx(0.5, abs=0.02)
    assert L1(1e-4, ignore=None).ignore == ()


@pytest.mark.parametrize("call", [
    lambda m: pk.prune(m, 0.5, ignore=3),
    lambda m: sensitivity(m, lambda _: 0.5, ignore=3),
    lambda m: pk.prune_layerwise(m, 0.5, lambda _: 0.5, ignore=3),
])
def test_ignore_of_a_wrong_type_is_named(call):
    m = _mlp()
    with pytest.raises(pk.PruneTypeError, match=r"ignore must be None, a name or a list of names/patterns, got 3"):
        call(m)
    assert pk.masks(m) == {}


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        self.md = nn.ModuleDict({"a": nn.ModuleList([nn.Linear(8, 8)])})
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.md["a"][0](self.enc(x)))


@pytest.mark.parametrize("name, left", [
    ("enc", {"enc.0.weight", "enc.1.weight"}),
    ("md", {"md.a.0.weight"}),
    ("md.a", {"md.a.0.weight"}),
    ("en?", {"enc.0.weight", "enc.1.weight"}),
])
def test_ignore_a_container_module_covers_every_weight_under_it(name, left):
    m = _Nested()
    res = pk.prune(m, 0.5, ignore=[name], keep_output_layer=False)
    every = {"enc.0.weight", "enc.1.weight", "md.a.0.weight", "head.weight"}
    assert set(pk.masks(m)) == every - left
    assert {l.name for l in res.layers} == every - left
    for w in left:
        assert torch.count_nonzero(m.get_parameter(w)) == 64
    assert {s.name for s in res.coverage.skipped if s.reason == "matched by ignore="} == left


def test_ignore_a_name_prefix_is_not_a_module():
    with pytest.raises(pk.PruneError, match=r"ignore patterns \['en'\] match no prunable weight"):
        pk.prune(_Nested(), 0.5, ignore=["en"])


def test_bnl1_ignore_a_container_module():
    from prunekit.regularizers import BNL1

    m = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.BatchNorm2d(4))
    assert BNL1(1.0, ignore=["0"]).penalty(m).item() == 4.0  # only the outer BatchNorm's 4 gammas


def _three():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 2))


@pytest.mark.parametrize("kwargs, reached, why", [
    (dict(granularity="block", block_shape=(64, 64)), 0.0,
     r"min_keep=1 keeps at least 1 block\(s\) of \(64, 64\) per layer \(2,112 of 2,112 weights\); "
     r"\['0\.weight', '1\.weight', '2\.weight'\] have no more units than that and stay whole"),
    (dict(max_sparsity=0.5), 0.5, r"max_sparsity=0\.5 caps every layer"),
    (dict(min_keep=100), 0.875, r"min_keep=100 keeps at least 100 weight\(s\) per layer \(264 of 2,112 weights\); "
     r"\['2\.weight'\] have no more units"),
])
def test_an_unreachable_sparsity_warns_naming_what_limits_it(kwargs, reached, why):
    with pytest.warns(UserWarning, match=r"asked for sparsity=0\.99, reached " + f"{reached:.2%}".replace(".", r"\.")
                      + " of the pruned layers' weights: " + why) as rec:
        res = pk.prune(_three(), 0.99, **kwargs)
    assert res.sparsity == pytest.approx(reached)
    assert sum("asked for sparsity" in str(w.message) for w in rec) == 1


@pytest.mark.parametrize("kwargs", [dict(), dict(allocation="row", min_keep=1), dict(granularity="block", block_shape=(4, 4)),
                                    dict(granularity="2:4")])
def test_a_reached_sparsity_does_not_warn(kwargs):
    sp = None if kwargs.get("granularity") == "2:4" else 0.9
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="asked for sparsity")
        res = pk.prune(_three(), sp, **kwargs)
    assert res.sparsity >= (sp or 0.5) - 0.05
