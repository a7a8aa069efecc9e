"""Contract tests for the two other registered kinds: every schedule and every regularizer,
generated from the registries (a new entry is tested the moment it is registered)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.registry import available, get

SCHEDULES = available("schedule")
REGULARIZERS = available("regularizer")


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_contract(name):
    cls = get("schedule", name)
    s = cls(0.8)
    assert s.name == name
    last = s.final_step
    values = [s.sparsity_at(t) for t in range(0, last + 50)]
    # Sparsity never decreases, stays within [0, target] and reaches the target at the end.
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= 0.8 + 1e-12 for v in values)
    assert s.sparsity_at(last) == pytest.approx(0.8) and values[-1] == pytest.approx(0.8)
    steps = s.pruning_steps()
    assert steps and steps[-1] == last
    assert all(s.should_prune(t) and s(t) == (True, s.sparsity_at(t)) for t in steps)
    # The configuration round-trips.
    assert cls.from_config(s.get_config()) == s
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="sparsity"):
            cls(bad)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_contract(name):
    cls = get("regularizer", name)
    reg = cls(strength=0.5)
    model = _model()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    before = copy.deepcopy(model.state_dict())
    p = reg.penalty(model)
    assert p.dim() == 0 and torch.isfinite(p) and float(p.detach()) > 0
    assert torch.allclose(reg(model), 0.5 * p)
    p.backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)  # it pulls on some weight
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # and changes none
    # Zero weights have zero penalty.
    zero = _model()
    with torch.no_grad():
        for q in zero.parameters():
            q.zero_()
    assert float(reg.penalty(zero).detach()) == 0.0
    # wrap adds strength * penalty to the loss.
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    loss = reg.wrap(nn.functional.cross_entropy, model)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(loss(out, y), nn.functional.cross_entropy(out, y) + 0.5 * reg.penalty(model))
    assert cls.from_config(reg.get_config()) == reg
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="strength"):
            cls(strength=bad)
