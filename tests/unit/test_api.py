"""pk.prune / Pruner: results, the reference masks, errors that leave the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from conftest import MLP, clone_state, same_state

F = nn.functional


def test_magnitude_global_equals_torch_global_unstructured():
    torch.manual_seed(0)
    ours = MLP((64, 100, 50, 10))
    ref = copy.deepcopy(ours)
    pk.prune(ours, 0.9, criterion="magnitude", allocation="global", min_keep=0)
    params = [(ref.net[i], "weight") for i in (0, 2, 4)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.9)
    for i in (0, 2, 4):
        assert torch.equal(pk.masks(ours)[f"net.{i}.weight"], ref.net[i].weight_mask)
    x = torch.randn(8, 64)
    assert torch.equal(ours(x), ref(x))


def test_magnitude_uniform_equals_torch_l1_unstructured(mlp):
    ref = copy.deepcopy(mlp)
    pk.prune(mlp, 0.6, allocation="uniform", min_keep=0)
    for i in (0, 2, 4):
        torch_prune.l1_unstructured(ref.net[i], "weight", amount=0.6)
        assert torch.equal(pk.masks(mlp)[f"net.{i}.weight"], ref.net[i].weight_mask)


def test_channel_uniform_equals_torch_ln_structured(mlp):
    ref = copy.deepcopy(mlp)
    pk.prune(mlp, 0.5, granularity="channel", allocation="uniform", criterion="magnitude", min_keep=0)
    for i in (0, 2):
        torch_prune.ln_structured(ref.net[i], "weight", amount=0.5, n=2, dim=0)
        assert torch.equal(pk.masks(mlp)[f"net.{i}.weight"], ref.net[i].weight_mask)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 40), min_size=2, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    allocation=st.sampled_from(["global", "lamp"]),
    seed=st.integers(0, 10_000),
)
def test_exact_achieved_sparsity(sizes, sparsity, allocation, seed):
    torch.manual_seed(seed)
    m = MLP(tuple(sizes) + (3,))
    total = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))
    n_layers = len(sizes)
    res = pk.prune(m, sparsity, allocation=allocation, min_keep=0)
    zeros = round(pk.sparsity(m) * total)
    assert zeros == round(sparsity * total)
    assert res.sparsity == pytest.approx(pk.sparsity(m))
    assert n_layers == len(res.layers)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 30), min_size=1, max_size=3), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 999))
def test_uniform_per_layer_exact(sizes, sparsity, seed):
    torch.manual_seed(seed)
    m = MLP(tuple(sizes) + (4,))
    res = pk.prune(m, sparsity, allocation="uniform", min_keep=0)
    for layer in res.layers:
        assert round(layer.sparsity * layer.units) == round(sparsity * layer.units)


def test_pruner_object_and_functional_twin_agree(mlp):
    twin = copy.deepcopy(mlp)
    pruner = pk.Pruner(0.8, allocation="lamp", keep_scores=True)
    assert not hasattr(pruner, "masks_")  # construction holds no logic
    pruner.fit(mlp)
    pk.prune(twin, 0.8, allocation="lamp")
    assert all(torch.equal(pruner.masks_[k], pk.masks(twin)[k]) for k in pruner.masks_)
    assert set(pruner.scores_) == set(pruner.targets_)
    assert pruner.report_.sparsity == pytest.approx(0.8, abs=1e-3)
    sd = pruner.state_dict()
    assert sd["params"]["sparsity"] == 0.8 and set(sd["masks"]) == set(pruner.masks_)
    assert "sparsity over pruned layers" in pruner.report_.summary()


def test_prune_rejects_unknown_option(mlp):
    with pytest.raises(TypeError, match="spars"):
        pk.prune(mlp, 0.5, sparsty=0.3)


# --- errors: each names the bad value and leaves the model exactly as it was ---------


def _bad_calls(digits_batches):
    x = digits_batches[0][0]
    return [
        (dict(sparsity=1.0), ValueError, r"sparsity must be a number in \[0, 1\); got 1\.0"),
        (dict(sparsity=-0.1), ValueError, r"sparsity must be a number in \[0, 1\); got -0\.1"),
        (dict(sparsity=float("nan")), ValueError, r"sparsity must be a number in \[0, 1\); got nan"),
        (dict(sparsity="0.5"), TypeError, r"sparsity must be a number in \[0, 1\); got '0\.5'"),
        (dict(sparsity=True), TypeError, r"sparsity must be a number in \[0, 1\); got True"),
        (dict(), ValueError, "give sparsity"),
        (dict(sparsity=0.5, threshold=0.1), ValueError, "not both"),
        (dict(sparsity=0.5, criterion="magnitud"), ValueError, r"unknown criterion 'magnitud'; available: .*'magnitude'"),
        (dict(sparsity=0.5, granularity="rows"), ValueError, r"unknown granularity 'rows'; available"),
        (dict(sparsity=0.5, allocation="greedy"), ValueError, r"unknown allocation 'greedy'; available: .*'lamp'"),
        (dict(sparsity=0.5, criterion=42), TypeError, "criterion must be"),
        (dict(granularity="5:4"), ValueError, "N:M"),
        (dict(sparsity=0.5, criterion="taylor"), ValueError, "needs data"),
        (dict(sparsity=0.5, criterion="taylor", data=digits_batches), ValueError, "needs a loss"),
        (dict(sparsity=0.5, criterion="apoz"), ValueError, "granularity='channel'"),
        (dict(sparsity=0.5, example_inputs=torch.randn(2, 3)), ValueError, r"example_inputs of shape \(2, 3\)"),
        (dict(sparsity=0.5, example_inputs=[1, 2]), TypeError, "example_inputs must be"),
        (dict(sparsity=0.5, ignore=["net.9"]), ValueError, "match no prunable weight"),
        (dict(sparsity=0.5, ignore=["net.*"]), ValueError, "no prunable parameters"),
        (dict(sparsity=0.5, min_keep=-1), ValueError, "min_keep"),
        (dict(sparsity=0.5, max_batches=0), ValueError, r"max_batches must be an integer >= 1 \(or None: all batches\); got 0"),
        (
            dict(sparsity=0.5, criterion="gradient", data=digits_batches, loss_fn=lambda o, y: o.sum() * float("nan")),
            ValueError,
            "loss_fn returned nan",
        ),
        (dict(sparsity=0.5, criterion="bn_scale", granularity="channel", example_inputs=x), ValueError, "BatchNorm"),
    ]


def test_errors_name_the_value_and_leave_model_untouched(mlp, digits_batches):
    pk.prune(mlp, 0.3)  # already-masked models must be left as they were too
    for kwargs, exc, pattern in _bad_calls(digits_batches):
        state = clone_state(mlp)
        masks_before = {k: v.clone() for k, v in pk.masks(mlp).items()}
        with pytest.raises(exc, match=pattern):
            pk.prune(mlp, **kwargs)
        assert same_state(mlp, state), kwargs
        assert pk.masks(mlp).keys() == masks_before.keys()
        assert all(torch.equal(pk.masks(mlp)[k], v) for k, v in masks_before.items())


def test_errors_are_prunekit_errors(mlp):
    with pytest.raises(pk.PruneError):
        pk.prune(mlp, 2.0)
    with pytest.raises(pk.PruneTypeError):
        pk.prune(mlp, "x")


def test_non_module_and_nan_weights(mlp):
    with pytest.raises(TypeError, match="torch.nn.Module, got list"):
        pk.prune([1, 2], 0.5)
    with torch.no_grad():
        mlp.net[2].weight[0, 0] = float("nan")
    state = clone_state(mlp)
    with pytest.raises(ValueError, match=r"net\.2\.weight has 1 NaN/Inf"):
        pk.prune(mlp, 0.5)
    assert not pk.masks(mlp)
    assert all(
        torch.equal(v, state[k]) or (torch.isnan(v).any() and torch.equal(torch.nan_to_num(v), torch.nan_to_num(state[k])))
        for k, v in mlp.state_dict().items()
    )


def test_no_prunable_parameters():
    with pytest.raises(ValueError, match="no prunable parameters"):
        pk.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.5)


def test_sparsity_helper_counts_masked_and_committed(mlp):
    assert pk.sparsity(mlp) == 0.0
    pk.prune(mlp, 0.25)
    s = pk.sparsity(mlp)
    pk.commit(mlp)
    assert pk.sparsity(mlp) == s == pytest.approx(0.25, abs=1e-3)


def test_head_granularity_without_attention_names_what_is_traced():
    """The error lists every attention form the tracer follows, nn.MultiheadAttention included."""
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ValueError) as err:
        pk.prune(net, 0.5, granularity="head", example_inputs=torch.randn(2, 8))
    msg = str(err.value)
    assert "found no attention heads" in msg and "nn.MultiheadAttention" in msg and "not supported" not in msg
    assert not pk.masks(net)


def test_result_repr_is_short(mlp):
    """A result's repr names what was done, not every mask (masks are in .masks)."""
    res = pk.prune(mlp, 0.5)
    assert len(repr(res)) < 300 and "sparsity=0.5" in repr(res) and "tensor" not in repr(res)
