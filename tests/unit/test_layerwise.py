"""prune_layerwise: top-down layer-wise pruning under an accuracy budget."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PruneError
from prunekit.layerwise import LayerwiseReport, prune_layerwise
from prunekit.targets import find_targets
from prunekit.train import evaluate, fit


@pytest.fixture(scope="module")
def trained():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, (x[tr], y[tr]), epochs=5, lr=1e-2, batch_size=64, seed=0, progress=False)
    held = (x[te], y[te])
    return model, lambda m: evaluate(m, held)


@pytest.fixture
def model(trained):
    return copy.deepcopy(trained[0])


@pytest.fixture
def evaluate_fn(trained):
    return trained[1]


def test_easy_target_output_side_first_and_stops(model, evaluate_fn):
    names = [t.name for t in find_targets(model)]
    rep = prune_layerwise(model, 0.3, evaluate_fn, max_drop=0.05)
    assert isinstance(rep, LayerwiseReport)
    assert rep.baseline_accuracy > 0.85
    visited = [r.name for r in rep.layers]
    assert visited == list(reversed(names))[: len(visited)]  # output side first
    assert rep.reached_target and rep.final_sparsity >= 0.3
    assert rep.final_sparsity == pytest.approx(pk.sparsity(model))
    for r in rep.layers:
        assert r.accuracy >= rep.baseline_accuracy - 0.05
    assert rep.final_accuracy >= rep.baseline_accuracy - 0.05
    # The target was reached only at the last visited layer: no layer touched after it.
    spars = {t.name: 1 - float(torch.count_nonzero(t.weight)) / t.numel for t in find_targets(model)}
    for n in names:
        if n not in visited:
            assert spars[n] == 0.0
    total = sum(t.numel for t in find_targets(model))
    zeros_before_last = sum(r.removed for r in rep.layers[:-1])
    assert zeros_before_last / total < 0.3
    assert rep.layers[-1].removed > 0
    s = rep.summary()
    assert visited[0] in s and "reached" in s


def test_impossible_budget(model, evaluate_fn):
    rep = prune_layerwise(model, 0.99, evaluate_fn, max_drop=0.0, steps=(0.5, 0.9, 0.99))
    assert not rep.reached_target
    assert rep.final_sparsity < 0.99
    assert len(rep.layers) == len(find_targets(model))  # every layer tried
    assert rep.final_accuracy >= rep.baseline_accuracy
    for r in rep.layers:
        assert r.accuracy >= rep.baseline_accuracy
    assert "NOT reached" in rep.summary()


def test_keeps_earlier_masks(model, evaluate_fn):
    pk.prune(model, 0.2, allocation="uniform")
    old = {k: v.clone() for k, v in pk.masks(model).items()}
    rep = prune_layerwise(model, 0.6, evaluate_fn, max_drop=0.05)
    new = pk.masks(model)
    for k, m in old.items():
        assert bool(((m == 0) <= (new[k] == 0)).all())  # every earlier zero stays zero
    assert rep.final_sparsity >= 0.2


def test_already_at_target_touches_nothing(model, evaluate_fn):
    pk.prune(model, 0.5)
    rep = prune_layerwise(model, 0.4, evaluate_fn)
    assert rep.layers == [] and rep.reached_target


def test_ignore(model, evaluate_fn):
    rep = prune_layerwise(model, 0.2, evaluate_fn, max_drop=0.05, ignore=["4"])
    assert "4.weight" not in [r.name for r in rep.layers]
    assert bool((model[4].weight != 0).all())


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(target_sparsity=1.0), "1.0"),
        (dict(target_sparsity=-0.1), "-0.1"),
        (dict(max_drop=-0.01), "-0.01"),
        (dict(steps=(0.9, 0.5)), "increasing"),
        (dict(steps=(0.5, 1.0)), "1.0"),
        (dict(steps=(0.0, 0.5)), "0.0"),
        (dict(steps=()), "empty"),
        (dict(evaluate_fn=0.9), "callable"),
    ],
)
def test_bad_arguments(model, evaluate_fn, kwargs, word):
    args = dict(target_sparsity=0.5, evaluate_fn=evaluate_fn) | kwargs
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruneError, match=word.replace(".", r"\.")):
        prune_layerwise(model, args.pop("target_sparsity"), args.pop("evaluate_fn"), **args)
    assert not pk.masks(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_allocation_layerwise_points_to_prune_layerwise():
    import pytest as _pytest
    from torch import nn as _nn

    import prunekit as _pk

    with _pytest.raises(ValueError, match="pk.prune_layerwise"):
        _pk.prune(_nn.Sequential(_nn.Linear(4, 4)), 0.5, allocation="layerwise")


def _failing(evaluate_fn, at, how):
    calls = [0]

    def ev(m):
        calls[0] += 1
        if calls[0] == at:
            if how == "nan":
                return float("nan")
            raise RuntimeError("metric server down")
        return evaluate_fn(m)
    return ev


@pytest.mark.parametrize("pre_pruned", [False, True])
@pytest.mark.parametrize("how, cause", [("nan", "PruneError: evaluate_fn must return a finite accuracy, got nan"),
                                        ("raise", "RuntimeError: metric server down")])
def test_failure_part_way_puts_the_model_back(trained, model, pre_pruned, how, cause):
    if pre_pruned:
        pk.prune(model, 0.3, allocation="uniform")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {k: v.clone() for k, v in pk.masks(model).items()}
    classes = [type(m) for m in model.modules()]
    params = [id(p) for p in model.parameters()]
    before = pk.sparsity(model)
    # call 1 is the baseline; calls 2.. are trials: by call 9 the output layer was pruned for real
    with pytest.raises(PruneError, match=r"prune_layerwise stopped at layer '2\.weight' \(" + cause.replace(".", r"\.")
                       + r"\); the model was put back as it was, masks and weights, undoing the pruning of \['4\.weight'\]"):
        prune_layerwise(model, 0.8, _failing(trained[1], 9, how), max_drop=0.05)
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)
    assert pk.masks(model).keys() == masks.keys() and all(torch.equal(pk.masks(model)[k], masks[k]) for k in masks)
    assert [type(m) for m in model.modules()] == classes and [id(p) for p in model.parameters()] == params
    assert pk.sparsity(model) == before
    prune_layerwise(model, 0.8, trained[1], max_drop=0.05)  # and it still prunes afterwards
    assert pk.sparsity(model) > before
