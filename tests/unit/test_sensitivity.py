"""Sensitivity analysis on a trained digits MLP, and the allocation built from it."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import MLP, clone_state, same_state

import prunekit as pk
from prunekit import datasets, train
from prunekit.allocation import Layer
from prunekit.sensitivity import SensitivityAllocation, SensitivityReport, sensitivity

NAMES = ["net.0.weight", "net.2.weight", "net.4.weight"]
SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits("train"), datasets.load_digits("test")


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = MLP()
    train.fit(model, digits[0], epochs=8, lr=3e-3, batch_size=64, seed=0, progress=False)
    return model


@pytest.fixture(scope="module")
def evaluate(digits):
    return lambda m: train.evaluate(m, digits[1])


@pytest.fixture(scope="module")
def report(trained, evaluate, digits):
    return sensitivity(trained, evaluate, sparsities=SPARSITIES, example_inputs=digits[1][:8][0])


def _zeros(model) -> dict[str, int]:
    return {n: int((model.get_submodule(n.rpartition(".")[0]).weight == 0).sum()) for n in NAMES}


def test_curves_measure_each_layer_alone(report, trained, evaluate):
    assert report.baseline == evaluate(trained) > 0.9
    assert list(report.curves) == NAMES
    assert report.sizes == {"net.0.weight": 64 * 48, "net.2.weight": 48 * 32, "net.4.weight": 32 * 10}
    for name, pts in report.curves.items():
        assert [s for s, _ in pts] == list(SPARSITIES)
        acc = dict(pts)
        assert acc[0.3] >= report.baseline - 0.02, name  # light pruning of one layer costs little
        assert acc[0.95] < acc[0.3] and acc[0.95] < report.baseline, name  # heavy pruning hurts
    # The 320-weight output layer is far more sensitive than the 3072-weight first layer.
    first, last = dict(report.curves["net.0.weight"]), dict(report.curves["net.4.weight"])
    assert last[0.8] < first[0.8] - 0.15 and last[0.9] < first[0.9] - 0.3
    assert report.ranking()[0] == "net.4.weight"
    assert report.accuracy("net.4.weight", 0.85) == pytest.approx((last[0.8] + last[0.9]) / 2)
    assert report.accuracy("net.4.weight", 0.0) == report.baseline


def test_flops_per_layer_are_the_layer_macs(report):
    # A Linear(a, b) at batch 1 is a*b MACs = 2*a*b FLOPs; all of it scales with sparsity.
    assert report.flops == {"net.0.weight": 2 * 3072, "net.2.weight": 2 * 1536, "net.4.weight": 2 * 320}
    assert report.flops_modules == {"net.0.weight": {"net.0": 6144.0}, "net.2.weight": {"net.2": 3072.0},
                                    "net.4.weight": {"net.4": 640.0}}


def test_user_model_is_never_changed(trained, digits):
    state = clone_state(trained)
    trained.train()
    seen = []

    def evaluate(m):
        seen.append(m)
        return train.evaluate(m, digits[1])

    rep = sensitivity(trained, evaluate, sparsities=(0.5, 0.9))
    assert same_state(trained, state) and pk.masks(trained) == {} and trained.training
    assert len(seen) == 1 + 3 * 2 and all(m is not trained for m in seen)
    assert [len(v) for v in rep.curves.values()] == [2, 2, 2]
    trained.eval()


def test_summary_and_dict_round_trip(report):
    text = report.summary()
    assert "net.4.weight" in text and "95%" in text and "most sensitive: net.4.weight" in text
    again = SensitivityReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_allocation_meets_the_budget_and_spares_the_sensitive_layer(report, trained, evaluate, target):
    model = copy.deepcopy(trained)
    res = pk.prune(model, target, allocation=SensitivityAllocation(report))
    total = sum(report.sizes.values())
    zeros = _zeros(model)
    assert abs(sum(zeros.values()) - target * total) <= 1  # whole weights: as exact as they can be
    assert res.sparsity == pytest.approx(target, abs=1 / total)
    assert zeros["net.4.weight"] / 320 < target  # uniform would give the output layer `target`
    if target == 0.8:  # and the model is much better for it
        uniform = copy.deepcopy(trained)
        pk.prune(uniform, target, allocation="uniform")
        assert evaluate(model) > evaluate(uniform) + 0.1


def test_flops_budget_removes_that_fraction_of_flops(report, trained, digits):
    x = digits[1][:8][0]
    model = copy.deepcopy(trained)
    pk.prune(model, 0.7, allocation=SensitivityAllocation(report, budget="flops"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scattered-zeros speed note
        before, after = pk.measure(trained, x, latency=False), pk.measure(model, x, latency=False)
    removed = before.flops_effective - after.flops_effective
    assert abs(removed - 0.7 * before.flops_dense) <= 2 * 3  # half a weight (2 FLOPs) per layer, rounded


def test_channel_sensitivity_uses_coupled_groups(convbn, digits_batches):
    x = digits_batches[0][0]
    state = clone_state(convbn)
    ev = lambda m: train.evaluate(m, digits_batches)  # noqa: E731
    rep = sensitivity(convbn, ev, sparsities=(0.25, 0.5), granularity="channel", example_inputs=x)
    assert same_state(convbn, state) and pk.masks(convbn) == {}
    assert rep.sizes == {"features.0": 8, "features.3": 16}  # channels; the output layer is kept
    assert set(rep.flops_modules["features.0"]) == {"features.0", "features.3"}  # outputs and next inputs
    res = pk.prune(convbn, 0.5, granularity="channel", example_inputs=x, allocation=SensitivityAllocation(rep))
    assert sum(g.pruned_units for g in res.groups) == 12


def test_allocation_keeps_best_units_and_earlier_removals():
    g = torch.Generator().manual_seed(0)
    layers = [Layer(f"l{i}", torch.rand(n, generator=g), 1, (n // 10, 10)) for i, n in enumerate((500, 2000, 60))]
    layers[0].scores[:7] = float("-inf")  # removed earlier
    rep = SensitivityReport(
        baseline=0.9, sizes={l.name: l.numel for l in layers}, criterion="magnitude", granularity="unstructured",
        curves={"l0": [(0.5, 0.89), (0.9, 0.5)], "l1": [(0.5, 0.9), (0.9, 0.88)], "l2": [(0.5, 0.6), (0.9, 0.1)]},
    )
    alloc = SensitivityAllocation(rep)
    for sp in (0.0, 0.5, 0.9, 0.99):
        keeps = alloc.select(layers, sp, 1)
        pruned = {l.name: int((~keeps[l.name]).sum()) for l in layers}
        assert abs(sum(pruned.values()) - max(sp * 2560, 7)) <= 1, sp
        assert not keeps["l0"][:7].any()
        for l in layers:
            k = keeps[l.name]
            assert int(k.sum()) >= 1
            if k.any() and (~k).any():
                assert float(l.scores[k].min()) >= float(l.scores[~k].max())
        if sp == 0.5:  # the flat curve (l1) takes the budget; the steep one (l2) is spared
            assert pruned["l2"] == 0 and pruned["l1"] > 1000


def _tiny_report() -> SensitivityReport:
    return SensitivityReport(0.9, {"net.0.weight": [(0.5, 0.8)]}, {"net.0.weight": 3072}, "magnitude", "unstructured")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sparsities=(0.5, 1.2)), r"\[1\.2\] are outside \(0, 1\)"),
        (dict(sparsities=(0.7, 0.5)), r"\(0\.7, 0\.5\) must be strictly increasing"),
        (dict(sparsities=()), "empty"),
        (dict(sparsities="0.5"), "'0.5' must be a sequence"),
        (dict(granularity="2:4"),
         r"granularity must be one of 'unstructured', 'block', 'channel', 'head' \(for sensitivity analysis\); got '2:4'$"),
        (dict(granularity="channel"), "granularity='channel' needs example_inputs="),
    ],
)
def test_bad_sensitivity_arguments(mlp, kwargs, match):
    state = clone_state(mlp)
    with pytest.raises(pk.PruneError, match=match):
        sensitivity(mlp, lambda m: 0.5, **kwargs)
    assert same_state(mlp, state)


def test_bad_evaluate_fn(mlp):
    with pytest.raises(pk.PruneTypeError, match="evaluate_fn must be callable.*got int"):
        sensitivity(mlp, 3)
    with pytest.raises(pk.PruneError, match="finite accuracy, got nan"):
        sensitivity(mlp, lambda m: float("nan"))


def test_bad_allocation_arguments(mlp):
    with pytest.raises(pk.PruneError, match=r"budget must be one of 'params', 'flops', 'latency'; got 'energy'$"):
        SensitivityAllocation(_tiny_report(), budget="energy")
    with pytest.raises(pk.PruneTypeError, match="report must be a SensitivityReport.*got dict"):
        SensitivityAllocation({"curves": {}})
    with pytest.raises(pk.PruneError, match="budget='flops' needs FLOPs per layer.*example_inputs"):
        SensitivityAllocation(_tiny_report(), budget="flops")
    state = clone_state(mlp)
    with pytest.raises(pk.PruneError, match=r"no curve for \['net\.2\.weight', 'net\.4\.weight'\]"):
        pk.prune(mlp, 0.5, allocation=SensitivityAllocation(_tiny_report()))
    with pytest.raises(pk.PruneError, match="allocation 'sensitivity' needs a sparsity, not a threshold"):
        pk.prune(mlp, threshold=0.5, allocation=SensitivityAllocation(_tiny_report()), ignore=["net.2", "net.4"])
    assert same_state(mlp, state) and pk.masks(mlp) == {}
    for granularity, shown in (("block", "'block'"), ("2:4", "an N:M pattern")):  # curves of single weights
        with pytest.raises(pk.PruneError, match=f"measured with granularity='unstructured', and this pruning uses {shown}"):
            pk.prune(mlp, allocation=SensitivityAllocation(_tiny_report()), ignore=["net.2", "net.4"],
                     granularity=granularity, **({} if ":" in granularity else {"sparsity": 0.5}))
    assert same_state(mlp, state) and pk.masks(mlp) == {}
    with pytest.raises(pk.PruneError, match="a sensitivity report dict needs"):
        SensitivityReport.from_dict({"baseline": 0.9})


class _LSTMNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = torch.nn.LSTM(8, 16, batch_first=True), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


class _AttnNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.head = torch.nn.MultiheadAttention(8, 2, batch_first=True), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0][:, -1])


def test_flops_of_recurrent_and_attention_layers():
    # Their weights are not called `.weight`: FLOPs are priced at the density over all of a
    # module's prunable weights (weight_ih/weight_hh; in_proj + out_proj, the scores and
    # weighted values reading no weight). Batch 1, 5 steps, 2 FLOPs per MAC.
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lstm = sensitivity(_LSTMNet(), lambda m: float(m(x).mean()), sparsities=(0.5,), example_inputs=x)
        attn = sensitivity(_AttnNet(), lambda m: float(m(x).mean()), sparsities=(0.5,), example_inputs=x)
    dense = 2 * 5 * (64 * 8 + 64 * 16)  # 15360
    assert lstm.flops == {"lstm.weight_ih_l0": 2 * 5 * 64 * 8, "lstm.weight_hh_l0": 2 * 5 * 64 * 16,
                          "head.weight": 2 * 64}
    assert lstm.flops_modules["lstm.weight_hh_l0"] == {"lstm": dense}
    core = 4 * 5 * 5 * 8  # q·kᵀ and weights·v: 800, never scaled by an unstructured mask
    assert attn.flops == {"attn.in_proj_weight": 2 * 5 * 24 * 8, "attn.out_proj.weight": 2 * 5 * 8 * 8,
                          "head.weight": 2 * 32}
    assert attn.flops_modules["attn.out_proj.weight"] == {"attn": 2 * 5 * 32 * 8 + core}


def test_an_already_pruned_model_warns_once_and_leaves_out_points_it_cannot_measure(mlp):
    """Layers 60 % pruned cannot be measured at 30 % or 50 % (pruning only adds zeros): those
    points are left out of the curves, with one warning that names them, instead of one
    "nothing was removed" warning per internal copy and curve points labelled 30 % and 50 %
    that hold the 60 %-pruned layer's accuracy."""
    import warnings

    pk.prune(mlp, 0.6, allocation="uniform")
    x = torch.randn(32, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = sensitivity(mlp, lambda m: float(m(x).detach().softmax(-1).max(-1).values.mean()), sparsities=(0.3, 0.5, 0.9))
    messages = [str(w.message) for w in caught]
    assert not any("nothing was removed" in m for m in messages)
    ours = [m for m in messages if "already holds masks" in m]
    assert len(ours) == 1 and "0.3, 0.5 not measured" in ours[0]
    pruned = {n for n, c in rep.curves.items() if [s for s, _ in c] == [0.9]}
    assert pruned and pruned == {n for n in rep.curves if f"{n} is " in ours[0]}
    for row in rep.summary().splitlines()[1:]:  # the table shows one accuracy, at 90 %, for each pruned layer
        if row.split()[0] in pruned:
            assert sum(cell.endswith("%") for cell in row.split()[2:]) == 1
