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
