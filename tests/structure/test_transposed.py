"""Transposed and 3-D convolutions, and layers whose channels the tracer keeps.

Reference: the masked model. The compacted model must compute what it computes, the
group report must count exactly the output channels the masks zeroed, and a save loaded
into a fresh instance must compute exactly what the compacted model computes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from archs import CONV_ARCHS, make
from torch import nn

import prunekit as pk
from prunekit.errors import PruneError
from prunekit.graph.groups import build

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _zero_out_channels(m: nn.Module) -> int:
    """Output channels of ``m`` that are exactly zero (weight and bias), measured on its
    effective (masked) weight."""
    w = m.weight.detach()
    if isinstance(m, _TRANSPOSED):  # (in, out / groups, *k): a channel is one column of one group
        g = m.groups
        alive = w.reshape(g, w.shape[0] // g, w.shape[1], -1).ne(0).any(3).any(1).reshape(-1)
    else:
        alive = w.reshape(w.shape[0], -1).ne(0).any(1)
    if m.bias is not None:
        alive = alive | m.bias.detach().ne(0)
    return int((~alive).sum())


def _producers(model: nn.Module, x: torch.Tensor) -> dict[str, list[nn.Module]]:
    """Group name -> the layers whose output channels the group removes."""
    st = build(model, x)
    modules = dict(model.named_modules())
    return {g.name: [modules[n] for n in dict.fromkeys(m.module for m in g.members if m.role == "out")]
            for g in st.groups}


def _check_attributes(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _TRANSPOSED):
            assert m.in_channels == m.weight.shape[0] and m.out_channels == m.weight.shape[1] * m.groups
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            assert m.out_channels == m.weight.shape[0] and m.in_channels == m.weight.shape[1] * m.groups
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0]
        elif isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", CONV_ARCHS)
def test_prune_compact_report_and_reload(name, ratio, tmp_path):
    model, x = make(name)
    n_dense = sum(p.numel() for p in model.parameters())
    res = pk.prune(model, ratio, granularity="channel", example_inputs=x)
    masked = model(x).detach()
    # the report counts exactly the output channels the masks zeroed, group by group
    producers = _producers(model, x)
    assert res.groups and sum(g.pruned_units for g in res.groups) > 0
    for g in res.groups:
        for layer in producers[g.name]:
            per_unit = _out_channels(layer) // g.units
            assert _zero_out_channels(layer) == g.pruned_units * per_unit, (g, layer)
    assert res.sparsity == pytest.approx(sum(g.pruned_units for g in res.groups) / sum(g.units for g in res.groups))
    small = pk.compact(model, x)
    scale = float(masked.abs().max())
    torch.testing.assert_close(small(x), masked, rtol=0, atol=1e-5 * max(1.0, scale))
    assert sum(p.numel() for p in small.parameters()) < n_dense
    _check_attributes(small)
    for g in res.groups:  # every zeroed channel is gone; every other one is still there
        for layer in producers[g.name]:
            new = dict(small.named_modules())[next(n for n, m in model.named_modules() if m is layer)]
            assert _out_channels(new) == _out_channels(layer) - _zero_out_channels(layer)
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m", model=make(name)[0]).eval()
    assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)
    _check_attributes(back)


@pytest.mark.parametrize("name", CONV_ARCHS)
def test_channel_counts_match_zeroed_output_channels(name):
    model, x = make(name)
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    st = build(model, x)
    from prunekit import masking

    removed = st.removed_units(masking.effective_weights(model))
    modules = dict(model.named_modules())
    assert removed
    for g in st.groups:
        layers = [modules[n] for n in dict.fromkeys(m.module for m in g.members if m.role == "out")]
        total, gone = st.channel_counts(g, removed)
        assert total == sum(_out_channels(m) for m in layers)
        assert gone == sum(_zero_out_channels(m) for m in layers)


def test_autoencoder_channels_removed_is_the_measured_fraction():
    model, x = make("conv_autoencoder")
    res = pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    producers = _producers(model, x)
    layers = [m for g in res.groups for m in producers[g.name]]
    assert any(isinstance(m, nn.ConvTranspose2d) for m in layers) and len(layers) == 4
    measured = sum(_zero_out_channels(m) for m in layers) / sum(_out_channels(m) for m in layers)
    assert res.sparsity == pytest.approx(measured)
    assert f"output channels ({measured:.2%})" in res.summary()
    assert sum(g.pruned_channels for g in res.groups) / sum(g.channels for g in res.groups) == pytest.approx(measured)


def test_transposed_channel_criteria_and_unpruned_output_layer():
    model, x = make("conv_autoencoder")
    res = pk.prune(model, 0.5, criterion="fpgm", granularity="channel", allocation="uniform", example_inputs=x)
    assert {g.name for g in res.groups} == {"e1", "e2", "d1", "d2"}
    small = pk.compact(model, x)
    assert small.out.out_channels == 3 and small.d1.out_channels == 8 and small.d2.in_channels == 8 + 8
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_grouped_and_depthwise_transposed_lose_whole_groups():
    model, x = make("grouped_transposed")
    report = pk.inspect(model, x)
    (group,) = report.groups
    assert group["units"] == 4 and group["constraints"]["g: input channels per transposed-conv group"] == 4
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    small = pk.compact(model, x)
    assert (small.g.in_channels, small.g.out_channels, small.g.groups) == (8, 12, 2)
    assert small.dw.groups == small.dw.in_channels == 12 and small.dw.out_channels == 24  # still depthwise
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_constant_inputs_of_a_transposed_conv_are_kept():
    class Net(nn.Module):  # a removed sigmoid channel holds 0.5: not foldable through a transposed conv
        def __init__(self):
            super().__init__()
            self.c1, self.d = nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.out(torch.relu(self.d(torch.sigmoid(self.c1(x)))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 6, 6)
    report = pk.inspect(model, x)
    assert [g["name"] for g in report.groups] == ["d"]
    assert any(k["where"] == "d" and "0.5" in k["reason"] for k in report.kept)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.compact(model, x)
    assert small.c1.out_channels == 8 and small.d.out_channels == 2
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


class _CellNet(nn.Module):
    """Embedding -> Conv1d -> a recurrent cell stepped by hand -> Linear: only the
    embedding width, the first conv and the hidden linear layer may lose channels (whole
    recurrent layers are pruned: see test_recurrent.py)."""

    def __init__(self, cell: type[nn.RNNCellBase]) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 12)
        self.c1, self.b1 = nn.Conv1d(12, 24, 3, padding=1), nn.BatchNorm1d(24)
        self.c2 = nn.Conv1d(24, 16, 3, padding=1)
        self.cell = cell(16, 20)
        self.fc1, self.fc2 = nn.Linear(20, 32), nn.Linear(32, 4)

    def forward(self, idx):
        h = self.emb(idx).transpose(1, 2)
        h = F.relu(self.b1(self.c1(h)))
        h = F.relu(self.c2(h)).transpose(1, 2)
        state = None
        for t in range(h.shape[1]):
            state = self.cell(h[:, t], state)
        y = state[0] if isinstance(state, tuple) else state
        return self.fc2(F.relu(self.fc1(y)))


@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell])
def test_recurrent_cells_keep_their_channels_and_embeddings_narrow(cell, tmp_path):
    torch.manual_seed(0)
    model, idx = _CellNet(cell).eval(), torch.randint(0, 30, (4, 9))
    report = pk.inspect(model, idx)
    assert [g["name"] for g in report.groups] == ["emb", "c1", "fc1"]
    kept = {(k["where"], k["op"]) for k in report.kept}
    assert ("cell", cell.__name__) in kept and not any(where == "emb" for where, _ in kept)
    assert "c2.weight" in report.unprunable  # it feeds the recurrent cell
    before = {k: v.shape for k, v in model.cell.state_dict().items()}
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=idx)
    small = pk.compact(model, idx)
    assert (small.c1.out_channels, small.fc1.out_features) == (12, 16)
    assert small.emb.embedding_dim == small.c1.in_channels == 6 and small.c2.out_channels == 16
    assert {k: v.shape for k, v in small.cell.state_dict().items()} == before
    torch.testing.assert_close(small(idx), model(idx), rtol=0, atol=1e-5)
    pk.save(small, tmp_path / "s")
    back = pk.load(tmp_path / "s", model=_CellNet(cell)).eval()
    torch.testing.assert_close(back(idx), small(idx), rtol=0, atol=0)


def test_module_with_parameters_no_traced_op_reads_keeps_its_channels():
    class Hidden(nn.Module):  # computes outside torch's function dispatch: invisible to the tracer
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.rand(8) + 0.5)

        def forward(self, x):
            with torch._C.DisableTorchFunction():
                return x * self.scale.view(1, -1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.hidden, self.c2 = nn.Conv1d(3, 8, 3), Hidden(), nn.Conv1d(8, 6, 3)
            self.c3 = nn.Conv1d(6, 2, 1)

        def forward(self, x):
            return self.c3(torch.relu(self.c2(torch.relu(self.hidden(self.c1(x))))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 10)
    report = pk.inspect(model, x)
    assert [g["name"] for g in report.groups] == ["c2"]
    assert any(k["where"] == "hidden" and "Hidden" in k["reason"] for k in report.kept)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.compact(model, x)
    assert small.c1.out_channels == 8 and small.c2.out_channels == 3
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_contraction_with_a_parameter_follows_the_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.proj, self.out = nn.Linear(6, 16), nn.Parameter(torch.randn(16, 5)), nn.Linear(5, 2)

        def forward(self, x):
            return self.out(torch.relu(torch.relu(self.fc(x)) @ self.proj))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(4, 6)
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    small = pk.compact(model, x)
    assert small.proj.shape == (8, 5) and small.fc.out_features == 8
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_fixed_size_reshape_over_pruned_channels_is_refused_clearly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.d = nn.Linear(6, 32 * 4), nn.ConvTranspose1d(32, 2, 4, 2, 1)

        def forward(self, z):
            return self.d(torch.relu(self.fc(z)).view(-1, 32, 4))  # 32 cannot shrink

    torch.manual_seed(0)
    model, z = Net().eval(), torch.randn(4, 6)
    pk.prune(model, 0.5, granularity="channel", example_inputs=z)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruneError, match=r"view\(b, -1, 4\)"):
        pk.compact(model, z)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("sizes", [(16, 4), (-1, 4)])
def test_unflatten_into_channels(sizes):
    """``nn.Unflatten`` with every size given cannot shrink: the linear layer feeding it
    keeps its neurons. With ``-1`` the split follows the pruned channels."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Unflatten(1, sizes), nn.ReLU(),
        nn.ConvTranspose1d(16, 12, 4, stride=2, padding=1), nn.BatchNorm1d(12), nn.ReLU(),
        nn.ConvTranspose1d(12, 2, 4, stride=2, padding=1),
    ).eval()
    z = torch.randn(3, 8)
    report = pk.inspect(model, z)
    fixed = -1 not in sizes
    assert any(k["op"] == "unflatten" for k in report.kept) == fixed
    assert ("0" in [g["name"] for g in report.groups]) == (not fixed)
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=z)
    small = pk.compact(model, z)
    assert small[0].out_features == (64 if fixed else 32) and small[3].out_channels == 6
    torch.testing.assert_close(small(z), model(z), rtol=0, atol=1e-5)
