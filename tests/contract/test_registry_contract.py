"""Contract tests generated from the registries: a new criterion, granularity or allocation
is tested the moment it is registered (timm-style)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.registry import available, create

F = nn.functional
CRITERIA = available("criterion")
GRANULARITIES = [g if g != "nm" else "2:4" for g in available("granularity")]
ALLOCATIONS = available("allocation")
# pk.prune(allocation="latency") spends a measured latency target, not a sparsity (it refuses a
# call without latency=): tests/unit/test_latency_allocation.py covers it end to end.
SPARSITY_ALLOCATIONS = [a for a in ALLOCATIONS if a != "latency"]


def _kwargs(digits_batches):
    return dict(data=digits_batches[:2], loss_fn=F.cross_entropy, example_inputs=digits_batches[0][0])


def _valid(criterion: str, granularity: str, allocation: str | None = None) -> bool:
    """Whether the combination is meant to prune (the others must be refused, see below)."""
    crit = create("criterion", criterion)
    gran = "nm" if ":" in granularity else granularity
    if crit.granularities is not None and gran not in crit.granularities:
        return False
    if allocation is not None and getattr(create("allocation", allocation), "per", "layer") == "row" and gran != "unstructured":
        return False
    return crit.level == "element" or granularity == "channel"


def test_head_granularity_needs_attention(convbn, digits_batches):
    with pytest.raises(ValueError, match="no attention heads"):
        pk.prune(convbn, 0.5, granularity="head", example_inputs=digits_batches[0][0])


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_contract(name, convbn, digits_batches):
    from conftest import clone_state, same_state

    crit = create("criterion", name)
    ignore = ["head"] if name == "bn_scale" else []
    state = clone_state(convbn)
    a = crit(convbn, ignore=ignore, **_kwargs(digits_batches))
    b = crit(convbn, ignore=ignore, **_kwargs(digits_batches))
    assert same_state(convbn, state)  # scoring never changes the model
    targets = {"features.0.weight": (8, 1, 3, 3), "features.3.weight": (16, 8, 3, 3), "head.weight": (10, 64)}
    expected = {k: v for k, v in targets.items() if not k.startswith("head") or not ignore}
    assert set(a) == set(expected)
    for k, shape in expected.items():
        s = a[k]
        want = shape if crit.level == "element" else (shape[0],)
        assert tuple(s.shape) == want, (name, k)
        assert s.dtype == torch.float32
        assert not torch.isnan(s).any()
        assert torch.equal(s, b[k])  # deterministic
        assert s.requires_grad is False
    assert isinstance(crit.get_config(), dict) and name == crit.name


COMBOS = [
    (c, g, a)
    for c, g, a in itertools.product(CRITERIA, GRANULARITIES, SPARSITY_ALLOCATIONS)
    if _valid(c, g, a) and (g != "2:4" or a == "global")  # N:M needs no allocation
]
REFUSED = [
    (c, g, a)
    for c, g, a in itertools.product(CRITERIA, GRANULARITIES, SPARSITY_ALLOCATIONS)
    if _valid(c, g) is not _valid(c, g, a) or (not _valid(c, g) and create("criterion", c).level == "element")
]


@pytest.mark.parametrize("criterion,granularity,allocation", REFUSED)
def test_unsupported_combinations_are_refused_before_any_change(criterion, granularity, allocation, convbn, digits_batches):
    from conftest import clone_state, same_state

    state = clone_state(convbn)
    sparsity = None if ":" in granularity else 0.5
    with pytest.raises(ValueError, match="granularity"):
        pk.prune(convbn, sparsity, criterion=criterion, granularity=granularity, allocation=allocation,
                 **_kwargs(digits_batches))
    assert same_state(convbn, state) and not pk.masks(convbn)


class _DigitsAttention(nn.Module):
    """8×8 digits as 8 tokens of 8 pixels, one hand-written 4-head attention layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))
        self.num_heads = 4
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        b = x.shape[0]
        h = self.embed(x.reshape(b, 8, 8))
        split = lambda t: t.view(b, 8, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        y = (q @ k.transpose(-2, -1) / 2).softmax(-1) @ v
        return self.out(self.o(y.transpose(1, 2).reshape(b, 8, -1)).mean(1))


@pytest.mark.parametrize("criterion,granularity,allocation", COMBOS)
def test_prune_contract(criterion, granularity, allocation, convbn, digits_batches):
    model = convbn if granularity != "head" else _DigitsAttention()
    kwargs = _kwargs(digits_batches)
    ids = {id(p) for p in model.parameters()}
    x = digits_batches[0][0]
    nm = ":" in granularity
    sparsity = None if nm else 0.5
    ignore = ["features.0"] if nm else []  # 1×3×3 inputs cannot hold a 2:4 pattern
    res = pk.prune(
        model, sparsity, criterion=criterion, granularity=granularity, allocation=allocation,
        ignore=ignore, **kwargs,
    )
    masks = pk.masks(model)
    assert masks and all(set(torch.unique(m).tolist()) <= {0.0, 1.0} for m in masks.values())
    for name, m in masks.items():
        w = model.get_submodule(name.rpartition(".")[0]).weight if name.endswith("weight") else None
        if w is not None:
            assert m.shape == w.shape and torch.all(w[m == 0] == 0)
    target = 0.5
    tol = {"channel": 0.1, "block": 0.1, "head": 0.25}.get(granularity, 0.02)  # 4 heads: steps of 25 %
    assert abs(res.sparsity - target) <= tol, (criterion, granularity, allocation, res.sparsity)
    assert {id(p) for p in model.parameters()} == ids
    assert torch.isfinite(model(x)).all()
    # Pickle/deepcopy survive any combination.
    assert torch.equal(copy.deepcopy(model)(x), model(x))


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_allocation_contract(name):
    from prunekit.allocation import Layer

    g = torch.Generator().manual_seed(0)
    layers = [Layer(f"l{i}", torch.rand(n, generator=g), 1, (n // 10, 10)) for i, n in enumerate((500, 2000, 60))]
    alloc = create("allocation", name)
    for sp in (0.0, 0.5, 0.9):
        keeps = alloc.select(layers, sp, 1)
        assert set(keeps) == {l.name for l in layers}
        pruned = sum(int((~keeps[l.name]).sum()) for l in layers)
        assert abs(pruned - sp * 2560) <= 3
        assert all(int(keeps[l.name].sum()) >= 1 for l in layers)
        for l in layers:  # within a layer (or each row, for per-row allocations), kept units outscore pruned ones
            rows = l.shape[0] if getattr(alloc, "per", "layer") == "row" else 1
            for k, s in zip(keeps[l.name].reshape(rows, -1), l.scores.reshape(rows, -1)):
                if k.any() and (~k).any():
                    assert float(s[k].min()) >= float(s[~k].max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_in_half_precision(name, dtype, convbn, digits_batches):
    """Every criterion prunes a half-precision model: masks in the weight's dtype, the
    reported sparsity is the measured one, outputs stay finite."""
    model = convbn.to(dtype)
    batches = [(x.to(dtype), y) for x, y in digits_batches[:2]]
    granularity = "unstructured" if create("criterion", name).level == "element" else "channel"
    res = pk.prune(model, 0.5, criterion=name, granularity=granularity, data=batches,
                   loss_fn=lambda out, y: F.cross_entropy(out.float(), y), example_inputs=batches[0][0],
                   ignore=["head"] if name == "bn_scale" else [])
    assert all(m.dtype == dtype for m in pk.masks(model).values())
    if granularity == "unstructured":
        assert res.sparsity == pytest.approx(pk.sparsity(model, ignore=[]), abs=1e-9)
    assert 0.3 < res.sparsity < 0.7
    with torch.no_grad():
        assert torch.isfinite(model(batches[0][0]).float()).all()
