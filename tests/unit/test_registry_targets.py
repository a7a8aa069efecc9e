"""Registry behaviour and which parameters count as prunable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.registry import available, create, get, register
from prunekit.targets import find_targets


def test_available_lists_every_kind():
    assert {"magnitude", "hessian", "fpgm", "random"} <= set(available("criterion"))
    assert available("granularity") == ["block", "channel", "head", "nm", "unstructured"]
    assert available("allocation") == ["depth", "erk", "global", "lamp", "latency", "owl", "row", "uniform"]
    with pytest.raises(ValueError, match="unknown registry kind 'widget'"):
        available("widget")


def test_register_new_criterion_is_usable_by_name(mlp):
    @register("criterion", "_test_row_index")
    class RowIndex(pk.Criterion):
        """Prefers later output rows (a deliberately simple, checkable rule)."""

        def scores(self, ctx):
            return {
                t.name: torch.arange(t.weight.shape[0], dtype=torch.float32)[:, None].expand_as(t.weight).clone()
                for t in ctx.targets
            }

    try:
        res = pk.prune(mlp, 0.5, criterion="_test_row_index", granularity="channel", allocation="uniform")
        m = pk.masks(mlp)["net.0.weight"]
        assert torch.all(m[:24] == 0) and torch.all(m[24:] == 1)
        assert res.layers[0].pruned_units == 24
        with pytest.raises(ValueError, match="already registered"):
            register("criterion", "_test_row_index")(type("Other", (pk.Criterion,), {}))
    finally:
        from prunekit import registry

        registry._REGISTRIES["criterion"].pop("_test_row_index", None)


def test_get_and_create_errors():
    with pytest.raises(TypeError, match="criterion must be a name"):
        get("criterion", 3)
    assert create("criterion", "magnitude").p == 2.0
    inst = create("criterion", "magnitude")
    assert create("criterion", inst) is inst
    with pytest.raises(TypeError, match="Criterion instance"):
        create("criterion", object())


def test_find_targets_types_ignore_and_bias():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3), nn.Embedding(4, 2))
    assert [t.name for t in find_targets(m)] == ["0.weight", "3.weight", "4.weight"]
    assert [t.name for t in find_targets(m, ignore=["3"])] == ["0.weight", "4.weight"]
    assert [t.name for t in find_targets(m, ignore="0.*")] == ["3.weight", "4.weight"]
    assert [t.name for t in find_targets(m, include_bias=True)] == ["0.weight", "0.bias", "3.weight", "3.bias", "4.weight"]
    with pytest.raises(ValueError, match=r"\['7'\] match no prunable weight"):
        find_targets(m, ignore=["7"])
    with pytest.raises(TypeError, match="ignore entries"):
        find_targets(m, ignore=[3])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_targets("model")


def test_targets_see_through_masks(mlp):
    pk.prune(mlp, 0.5)
    t = find_targets(mlp)[0]
    assert t.original is mlp.net[0].parametrizations.weight.original
    assert torch.equal(t.weight, mlp.net[0].weight)
    assert t.numel == 48 * 64


def test_ignoring_one_name_of_a_tied_weight_leaves_the_tensor_alone():
    from conftest import TiedLM as Tied

    for ignored in ("emb.weight", "head.weight", "head"):
        torch.manual_seed(0)
        model = Tied()
        assert [t.name for t in find_targets(model, ignore=[ignored])] == ["lin.weight"]
        pk.prune(model, 0.5, ignore=[ignored])
        assert int((model.emb.weight == 0).sum()) == 0 and float((model.lin.weight == 0).float().mean()) == 0.5
    torch.manual_seed(0)
    model = Tied()
    report = pk.prune_layerwise(model, 0.3, lambda m: 1.0, max_drop=0.0, steps=(0.5,))
    removed = {l.name: l.removed for l in report.layers}
    assert removed == {"lin.weight": int((model.lin.weight == 0).sum()), "emb.weight": int((model.emb.weight == 0).sum())}
    assert sum(removed.values()) == round(pk.sparsity(model) * (256 + 800))  # the tied tensor counted once
