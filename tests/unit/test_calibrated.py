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


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_prune_rows_equals_a_stable_sort_of_each_row(sparsity):
    """prune_rows cuts each row at its k-th score (kthvalue) when every row loses the same
    count: the same mask as taking the first k of a stable sort, ties to earlier columns."""
    gen = torch.Generator().manual_seed(0)
    s = (torch.rand(64, 40, generator=gen) * 4).floor()  # four values: ties everywhere
    s[5] = 1.0  # a row of one value
    s[9, :3] = float("inf")  # protected weights
    for scores in (s, torch.cat([s, torch.full((1, 40), float("-inf"))])):  # a row already pruned: counts differ
        k = round(40 * sparsity)
        order = torch.sort(scores, dim=1, stable=True).indices
        count = torch.full((scores.shape[0],), k)
        count[9] = min(k, 37)
        if scores.shape[0] > 64:
            count[64] = 40
        want = torch.ones_like(scores, dtype=torch.bool)
        want.scatter_(1, order, torch.arange(40).expand_as(scores) >= count.unsqueeze(1))
        assert torch.equal(prune_rows(scores, sparsity), want)


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


def _reference_sweep(W: torch.Tensor, H: torch.Tensor, sparsity: float, nm=None, blocksize: int = 128,
                     percdamp: float = 0.01):
    """The SparseGPT reference implementation's loop (IST-DASLab/sparsegpt, ``fasterprune``),
    transcribed column by column, with dead columns pruned first as ours does."""
    W = W.clone().float()
    rows, cols = W.shape
    H = H.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    free = (~dead).float()
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1), torch.zeros(rows, i2 - i1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            k = int(rows * i2 * sparsity + 1e-9) - int(rows * i1 * sparsity + 1e-9)
            tmp = W1**2 / d1.reshape(1, -1) ** 2 * free[i1:i2]
            mask1.view(-1)[torch.topk(tmp.reshape(-1), k, largest=False).indices] = True
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                tmp = W1[:, i:i + nm[1]] ** 2 / d1[i:i + nm[1]].reshape(1, -1) ** 2 * free[i1 + i:i1 + i + nm[1]]
                mask1.scatter_(1, i + torch.topk(tmp, nm[1] - nm[0], dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2], pruned[:, i1:i2] = Q1, mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[pruned] = 0.0
    return W, ~pruned


@pytest.mark.parametrize("rows,cols,sparsity,nm,blocksize", [
    (40, 300, 0.5, None, 128), (300, 40, 0.9, None, 128), (24, 200, 0.5, (2, 4), 128),
    (24, 200, 0.5, (4, 8), 64), (33, 130, 0.7, None, 32), (16, 96, 0.5, (8, 32), 96),
])
def test_sparsegpt_sweep_equals_the_reference_loop(rows, cols, sparsity, nm, blocksize):
    """Our sweep nests the reference's lazy updates once more (for speed); it must choose the
    same masks and the same updated weights, up to float rounding."""
    gen = torch.Generator().manual_seed(rows * cols)
    x = torch.randn(4 * cols, cols, generator=gen) @ (torch.eye(cols) + 0.2 * torch.randn(cols, cols, generator=gen))
    x[:, :3] = 0  # dead columns
    H = 2 * x.t() @ x / x.shape[0]
    W = torch.randn(rows, cols, generator=gen)
    ref, ref_keep = _reference_sweep(W, H, sparsity, nm, blocksize)
    got, keep = C.sparsegpt_sweep(W, H, sparsity, nm, blocksize)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    assert torch.equal(got == 0, ~keep | (W == 0))


def test_sparsegpt_sweep_removes_the_exact_count_when_many_scores_tie():
    """With most weights already zero, the cut falls inside a tie (all zeros score 0): each
    block still removes exactly its share, only zeros, and the kept weights are the nonzeros."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 64, generator=gen)
    W = torch.randn(32, 64, generator=gen) * (torch.rand(32, 64, generator=gen) < 0.1)
    new, keep = C.sparsegpt_sweep(W, 2 * x.t() @ x / 400, 0.5, blocksize=16)
    assert int((~keep).sum()) == 32 * 64 // 2
    for i1 in range(0, 64, 16):
        assert int((~keep[:, i1:i1 + 16]).sum()) == 32 * 16 // 2
    assert bool((W[~keep] == 0).all()) and bool(keep[W != 0].all())
