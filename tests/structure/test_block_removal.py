"""Whole residual branches removed: which groups may lose every unit, and the compacted model
that results (EmptyOutput / ConstantOutput / Identity in place of the layers left with no
channels).

Invariants, on every architecture of the structure suite: a group found removable, removed,
gives a model that compacts to the masked model's outputs, still depends on its input,
trains (the constant left behind is a learnable bias), runs traced, and reloads from a
file into a fresh instance; a group not found removable is a bottleneck or fails one of
those. Then the latency allocation's use of it.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from archs import ARCHS, make
from torch.utils.flop_counter import FlopCounterMode

import prunekit as pk
from prunekit import masking
from prunekit.allocation.latency import LatencyAllocation
from prunekit.graph.groups import build
from prunekit.layers import ConstantOutput, EmptyOutput
from prunekit.latency.verify import removable_groups
from prunekit.surgery import compact

TOL = dict(rtol=1e-4, atol=1e-5)

#: What removal finds: the inner groups of residual / concatenated / gated branches, nothing in a chain.
EXPECTED = {
    "plain_cnn": [], "regression_mlp": [], "conv1d": [], "group_norm": [],
    "resnet_basic": ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1"],
    "mobilenetv2": ["blocks.0.conv.0", "blocks.2.conv.0"],
}


def _without(model, st, group):
    m = copy.deepcopy(model)
    shapes = {n: tuple(v.shape) for n, v in m.state_dict().items()}
    masking.apply_masks(m, st.masks_for(set(group.units), shapes))
    return m


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_a_removable_group_removed_compacts_exactly_trains_and_reloads(name, tmp_path):
    model, x = make(name)
    st = build(model, x)
    flags = removable_groups(model, st, x)
    found = [g.name for g, ok in zip(st.groups, flags) if ok]
    if name in EXPECTED:
        assert found == EXPECTED[name]
    assert all(len(g.units) for g in st.groups)  # nothing was removed from the model itself
    for group, ok in zip(st.groups, flags):
        if not ok:
            continue
        masked = _without(model, st, group)
        with torch.no_grad():
            ref = masked(x)
        small = compact(masked, x)
        with torch.no_grad():
            got = small(x)
        assert torch.allclose(got, ref, **TOL)
        assert (got - got[:1]).abs().amax() > 1e-6  # the input still reaches the outputs
        assert any(isinstance(m, (EmptyOutput, ConstantOutput)) for m in small.modules()) or name == "multihead_attention"
        for grad in (False, True):  # FLOP counting (module hooks on every output) with and without autograd
            with FlopCounterMode(display=False) as fc, torch.set_grad_enabled(grad):
                small(x[:1])
            assert fc.get_total_flops() > 0
        traced = torch.jit.trace(copy.deepcopy(small).eval(), x)
        assert torch.allclose(traced(x), ref, **TOL)
        trained = copy.deepcopy(small).train()  # (a training forward moves BatchNorm statistics)
        trained(x).float().pow(2).mean().backward()  # the constants left behind learn
        for m in trained.modules():
            if isinstance(m, ConstantOutput):
                assert m.bias.grad is not None and m.bias.requires_grad
        pk.save(small, tmp_path / group.name)
        back = pk.load(tmp_path / group.name, model=make(name)[0]).eval()
        with torch.no_grad():
            assert torch.allclose(back(x), ref, **TOL)


def test_identical_samples_find_nothing_removable():
    model, x = make("resnet_basic")
    same = x[:1].repeat(4, 1, 1, 1)
    assert not any(removable_groups(model, build(model, same), same))


def test_latency_budget_on_a_resnet_removes_blocks_and_the_result_compacts():
    model, x = make("resnet_basic")
    alloc = LatencyAllocation(0.005, objective="flops", round_to=1)  # MACs: the blocks go last
    with pytest.warns(UserWarning, match="whole, residual blocks"):
        pk.prune(model, allocation=alloc, granularity="channel", example_inputs=x)
    assert alloc.removed_groups_ and set(alloc.removed_groups_) <= set(EXPECTED["resnet_basic"])
    with torch.no_grad():
        ref = model(x)
    small = pk.compact(model, x)
    with torch.no_grad():
        assert torch.allclose(small(x), ref, **TOL)
    off = LatencyAllocation(0.005, objective="flops", round_to=1, blocks=False)
    model2, _ = make("resnet_basic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # below the per-group cap, without blocks to remove
        pk.prune(model2, allocation=off, granularity="channel", example_inputs=x)
    assert off.removed_groups_ == []


def test_a_bfloat16_model_finds_the_same_blocks_and_compacts():
    model, x = make("resnet_basic")
    model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    st = build(model, x)
    flags = removable_groups(model, st, x)
    assert [g.name for g, ok in zip(st.groups, flags) if ok] == EXPECTED["resnet_basic"]
    masked = _without(model, st, st.groups[flags.index(True)])
    small = compact(masked, x, rtol=0.0625)
    assert small(x).dtype == torch.bfloat16
    assert torch.allclose(small(x).float(), masked(x).float(), rtol=0.0625, atol=1e-2)


class _TwoBranches(torch.nn.Module):
    """y = f(x) + g(x): no identity path, so one branch may go, not both."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.b1, self.b2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.a2(torch.relu(self.a1(x))) + self.b2(torch.relu(self.b1(x))))


def test_branches_that_are_the_only_paths_are_not_all_removable():
    torch.manual_seed(0)
    model, x = _TwoBranches().eval(), torch.randn(4, 8)
    st = build(model, x)
    flags = removable_groups(model, st, x)
    names = {g.name: ok for g, ok in zip(st.groups, flags)}
    assert sum(names[n] for n in ("a1", "b1")) == 1  # either branch alone, never both


def test_the_stand_in_layers_script_and_take_in_place_ops():
    for layer in (torch.nn.Linear(5, 3), torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), torch.nn.Conv1d(2, 3, 3, padding="same")):
        geometry = EmptyOutput.geometry(layer)
        x = torch.randn(2, 5) if isinstance(layer, torch.nn.Linear) else torch.randn(2, 2, *([9] * len(layer.kernel_size)))
        want = layer(x).shape
        empty, const = EmptyOutput(**geometry), ConstantOutput(3, **geometry)
        for m in (empty, const, torch.jit.script(empty), torch.jit.script(const)):
            y = m(x)
            assert y.shape[:1] == want[:1] and y.shape[2:] == want[2:]
        y = const(x)
        y += 1.0  # in place, as `out += shortcut` does
        assert y.shape == want and torch.equal(y, torch.ones(want))


class _SequentialBranch(torch.nn.Module):
    """x + branch(x), the branch an nn.Sequential (conv → BN → ReLU → conv → BN), and the
    same branch written with its own forward (whose order compaction cannot read)."""

    def __init__(self, sequential: bool = True):
        super().__init__()
        conv, bn = torch.nn.Conv2d, torch.nn.BatchNorm2d
        layers = [conv(4, 6, 3, padding=1, bias=False), bn(6), torch.nn.ReLU(), conv(6, 4, 3, padding=1), bn(4)]
        self.stem = torch.nn.Sequential(conv(1, 4, 3, padding=1), bn(4), torch.nn.ReLU())
        self.branch = torch.nn.Sequential(*layers) if sequential else torch.nn.ModuleList(layers)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        y = x
        for layer in self.branch:
            y = layer(y)
        return self.head(torch.relu(x + y).mean((2, 3)))


@pytest.mark.parametrize("sequential", [True, False])
def test_a_batchnorm_after_a_removed_branch_is_folded_into_its_constant(sequential, tmp_path):
    torch.manual_seed(0)
    model, x = _SequentialBranch(sequential), torch.randn(6, 1, 8, 8)
    model.train()
    for _ in range(3):  # running statistics away from 0 and 1, so that folding them matters
        model(x * 3 + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    model.eval()
    st = build(model, x)
    flags = removable_groups(model, st, x)
    assert [g.name for g, ok in zip(st.groups, flags) if ok] == ["branch.0"]
    masked = _without(model, st, st.groups[flags.index(True)])
    with torch.no_grad():
        ref = masked(x)
    small = compact(masked, x)
    norms = [n for n, m in small.branch.named_children() if isinstance(m, torch.nn.BatchNorm2d)]
    # in an nn.Sequential the last BatchNorm follows the constant and is folded into it;
    # elsewhere the order of the children says nothing about the data flow: it stays
    assert norms == ([] if sequential else ["4"])
    assert isinstance(small.branch[3], ConstantOutput) and isinstance(small.branch[4], (torch.nn.Identity, torch.nn.BatchNorm2d))
    with torch.no_grad():
        assert torch.allclose(small(x), ref, **TOL)
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m", model=_SequentialBranch(sequential)).eval()
    assert [type(m).__name__ for m in back.branch] == [type(m).__name__ for m in small.branch]
    with torch.no_grad():
        assert torch.allclose(back(x), ref, **TOL)
    trained = copy.deepcopy(small).train()  # the folded constant learns
    trained(x).pow(2).mean().backward()
    assert trained.branch[3].bias.grad is not None and trained.branch[3].bias.grad.abs().sum() > 0
