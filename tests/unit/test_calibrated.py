"""Wanda, RIA and SparseGPT as core criteria: their scores against direct computations, the
core pipeline against the block-by-block LLM functions, and SparseGPT's weight update
against its purpose (a smaller output error on the calibration data)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import criteria as C
from prunekit.allocation import prune_rows
from prunekit.criteria.inputs import columns
from prunekit.errors import PruneError
from prunekit.llm.oneshot import prune_linear

F = nn.functional


def _inputs_of(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each Linear/Conv module receives, by module name."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, i, n=n: seen.setdefault(n, i[0].detach()))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv2d(6, 8, 3, padding=1, groups=2), (2, 6, 7, 9)),
    (nn.Conv2d(4, 5, (3, 2), stride=2, dilation=(1, 2), padding="valid"), (3, 4, 9, 9)),
    (nn.Conv1d(4, 6, 3, padding="same", padding_mode="reflect", dilation=2), (2, 4, 11)),
    (nn.Conv3d(2, 3, 2, padding=1), (1, 2, 4, 4, 4)),
    (nn.Linear(5, 3), (2, 4, 5)),
], ids=["conv2d-groups", "conv2d-stride-dilation", "conv1d-same-reflect", "conv3d", "linear"])
def test_columns_times_weight_is_the_layer_output(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    cols = columns(conv, x)
    w = conv.weight.detach().reshape(conv.weight.shape[0], -1)
    per = w.shape[0] // cols.shape[0]
    out = torch.cat([cols[g] @ w[g * per : (g + 1) * per].t() for g in range(cols.shape[0])], dim=1) + conv.bias
    y = conv(x).detach()
    ref = y.reshape(-1, y.shape[-1]) if isinstance(conv, nn.Linear) else y.movedim(1, -1).reshape(-1, y.shape[1])
    assert torch.allclose(out, ref, atol=1e-5)


def test_wanda_and_ria_scores_match_their_formulas(mlp, digits_batches):
    data = digits_batches[:2]
    wanda = C.wanda(mlp, data=data)
    ria = C.ria(mlp, data=data)
    xs = [_inputs_of(mlp, x) for x, _ in data]
    for i in (0, 2, 4):
        name = f"net.{i}"
        x = torch.cat([seen[name].reshape(-1, seen[name].shape[-1]) for seen in xs])
        w = mlp.net[i].weight.detach().abs()
        norm = x.pow(2).sum(0).sqrt()
        assert torch.allclose(wanda[f"{name}.weight"], w * norm, rtol=1e-5)
        relative = w / w.sum(0, keepdim=True) + w / w.sum(1, keepdim=True)
        assert torch.allclose(ria[f"{name}.weight"], relative * norm.sqrt(), rtol=1e-5)


def test_wanda_on_a_1x1_conv_equals_wanda_on_the_same_linear():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(6, 4, 1))
    lin = nn.Sequential(nn.Linear(6, 4))
    with torch.no_grad():
        lin[0].weight.copy_(conv[0].weight.reshape(4, 6))
        lin[0].bias.copy_(conv[0].bias)
    x = torch.randn(8, 6, 5, 5)
    a = C.wanda(conv, data=[(x, None)])["0.weight"].reshape(4, 6)
    b = C.wanda(lin, data=[(x.movedim(1, -1), None)])["0.weight"]
    assert torch.allclose(a, b, rtol=1e-5)


def test_row_allocation_gives_every_row_the_same_count_and_matches_the_llm_driver():
    torch.manual_seed(0)
    layer = nn.Linear(32, 12)
    x = torch.randn(64, 32) * torch.linspace(0.1, 3.0, 32)
    core = nn.Sequential(copy.deepcopy(layer))
    pk.prune(core, 0.5, criterion="wanda", allocation="row", data=[(x, None)])
    keep = pk.masks(core)["0.weight"].bool()
    assert (keep.sum(1) == 16).all()
    ref = copy.deepcopy(layer)
    assert torch.equal(prune_linear(ref, x, method="wanda", sparsity=0.5), keep)


def test_prune_rows_counts_forced_and_protected():
    s = torch.tensor([[3.0, float("-inf"), float("-inf"), 1.0], [float("inf"), 0.0, 2.0, 1.0]])
    keep = prune_rows(s, 0.25)  # one per row, but row 0 has two pruned already
    assert keep.tolist() == [[True, False, False, True], [True, False, True, True]]


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_core_sparsegpt_equals_the_llm_sweep(granularity):
    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    x = torch.randn(256, 64) @ torch.randn(64, 64) * 0.3  # correlated inputs: updates matter
    core = nn.Sequential(copy.deepcopy(layer))
    pk.prune(core, None if granularity == "2:4" else 0.5, criterion="sparsegpt", granularity=granularity,
             data=[(x[:128], None), (x[128:], None)])
    ref = copy.deepcopy(layer)
    keep = prune_linear(ref, x, method="sparsegpt", sparsity=0.5, pattern="2:4" if granularity == "2:4" else None)
    assert torch.equal(pk.masks(core)["0.weight"].bool(), keep)
    assert torch.allclose(core[0].weight, ref.weight, atol=1e-5)


def test_sparsegpt_update_lowers_the_output_error(mlp, digits_batches):
    """The sweep's point: on the calibration inputs, the layers' outputs move less than with
    the same count chosen by magnitude (every layer) or Wanda (in total) without an update."""
    data = digits_batches
    x = torch.cat([b[0] for b in data])
    dense_in = _inputs_of(mlp, x)
    errors = {}
    for crit in ("magnitude", "wanda", "sparsegpt"):
        m = copy.deepcopy(mlp)
        res = pk.prune(m, 0.6, criterion=crit, data=data, ignore=["net.4"])
        assert res.sparsity == pytest.approx(0.6, abs=1e-3)
        errors[crit] = [
            float(((dense_in[f"net.{i}"] @ (m.net[i].weight - mlp.net[i].weight).detach().t()) ** 2).mean())
            for i in (0, 2)
        ]
        for i in (0, 2):  # pruned weights are exact zeros
            mask = pk.masks(m)[f"net.{i}.weight"]
            assert torch.all(m.net[i].weight[mask == 0] == 0)
    assert all(s < w for s, w in zip(errors["sparsegpt"], errors["magnitude"])), errors
    assert sum(errors["sparsegpt"]) < 0.8 * sum(errors["wanda"]), errors


def test_sparsegpt_keeps_earlier_zeros_and_works_in_bfloat16(mlp, digits_batches):
    m = copy.deepcopy(mlp).to(torch.bfloat16)
    data = [(x.to(torch.bfloat16), y) for x, y in digits_batches[:2]]
    pk.prune(m, 0.5, criterion="sparsegpt", data=data)
    first = {k: v.clone() for k, v in pk.masks(m).items()}
    res = pk.prune(m, 0.75, criterion="sparsegpt", data=data)
    assert res.sparsity == pytest.approx(0.75, abs=0.01)
    for k, mask in pk.masks(m).items():
        assert torch.all(mask[first[k] == 0] == 0)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    with torch.no_grad():
        assert torch.isfinite(m(data[0][0]).float()).all()


def test_bad_options_leave_the_model_untouched(mlp, digits_batches):
    from conftest import clone_state, same_state

    state = clone_state(mlp)
    for kwargs, match in [
        (dict(criterion=C.SparseGPT(blocksize=6), granularity="2:4"), "multiple of M=4"),
        (dict(criterion=C.SparseGPT(blocksize=0)), "sparsegpt blocksize must be an integer >= 1"),
        (dict(criterion=C.SparseGPT(shrink=2.0)), r"sparsegpt shrink must be a number in \[0, 1\]"),
        (dict(criterion="sparsegpt", granularity="channel"), "works with granularity"),
        (dict(criterion="wanda", allocation="row", granularity="channel"), "needs granularity 'unstructured'"),
    ]:
        with pytest.raises(PruneError, match=match):
            pk.prune(mlp, 0.5 if kwargs.get("granularity") != "2:4" else None, data=digits_batches[:1], **kwargs)
        assert same_state(mlp, state) and not pk.masks(mlp)


def test_calibrated_criteria_refuse_layers_without_input_columns(digits_batches):
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 8)
            self.emb = nn.Embedding(10, 4)  # a lookup table: it has no input columns

        def forward(self, x):
            return self.lin(x.flatten(1))

    model = WithTable()
    with pytest.raises(PruneError, match="emb.weight .*Embedding.*ignore="):
        C.wanda(model, data=digits_batches[:1])
    assert set(C.wanda(model, data=digits_batches[:1], ignore=["emb"])) == {"lin.weight"}
