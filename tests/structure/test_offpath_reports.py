"""Channel pruning off the tested architectures: what is reported is what happened, and a
refusal leaves the model as it was.

A refused ``compact(inplace=True)`` no longer leaves a committed, half-shrunk model; a
compacted save loads into a bfloat16 instance in bfloat16; a grouped transposed conv counts
its output channels; the speed note does not call the inputs of pruned channels scattered
zeros; inspect lists a depthwise conv in its group, not among weights that must stay; a
model with a residual branch removed whole reloads without its class; a runtime that cannot
time the model's dtype is named in a ``PruneError``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit import masking


class _FixedReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16 * 64, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).reshape(-1, 16 * 64))  # a literal width


def test_a_refused_inplace_compaction_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model, x = _FixedReshape().eval(), torch.randn(4, 3, 8, 8)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    masks = {k: v.clone() for k, v in pk.masks(model).items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
    with pytest.raises(pk.PruneError, match="the model was left unchanged"):
        pk.compact(model, x, inplace=True)
    assert pk.masks(model).keys() == masks.keys() and all(torch.equal(pk.masks(model)[k], v) for k, v in masks.items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_an_inplace_compaction_that_passes_changes_the_model_itself():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(4, 3, 8, 8)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    with torch.no_grad():
        out = model(x)
    same = pk.compact(model, x, inplace=True)
    assert same is model and model[0].out_channels == 8 and not pk.masks(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-6)


def test_a_compacted_save_loads_into_a_bfloat16_instance_in_bfloat16(tmp_path):
    def net():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))

    torch.manual_seed(0)
    model, x = net().eval(), torch.randn(4, 3, 8, 8)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.compact(model, x)
    loaded = pk.load(pk.save(small, tmp_path / "s"), model=net().bfloat16()).eval()
    assert {t.dtype for t in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.bfloat16()).float(), small(x), rtol=3e-2, atol=3e-2)


def test_a_grouped_transposed_conv_counts_its_output_channels():
    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.t = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
            self.c3 = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c3(F.relu(self.t(F.relu(self.c1(x)))))

    torch.manual_seed(0)
    model, x = Dec().eval(), torch.randn(4, 3, 8, 8)
    res = pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    w = model.t.weight.detach().reshape(2, 8, 4, 3, 3)  # [groups, in/g, out/g, k, k]
    dead = (w == 0).all(4).all(3).all(1).reshape(-1)  # output channel g * 4 + j
    report = next(l for l in res.layers if l.name == "t.weight")
    assert (report.units, report.pruned_units) == (8, int(dead.sum())) and int(dead.sum()) > 0
    assert pk.compact(model, x).t.out_channels == 8 - int(dead.sum())


def test_the_inputs_of_pruned_channels_are_not_called_scattered_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(8, 64)
    pk.prune(model, 0.5, granularity="channel", allocation="uniform", example_inputs=x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        note = pk.measure(model, x, latency=False).speed_note
    assert "64 output channels are all zero" in note and "scattered" not in note
    assert sum(int((p == 0).sum()) for p in pk.compact(model, x).parameters()) == 0  # compact removed every zero
    pk.prune(model, 0.85)  # now unstructured zeros on top
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "scattered zeros" in pk.measure(model, x, latency=False).speed_note


def test_inspect_puts_a_depthwise_conv_in_its_group_not_among_weights_that_must_stay():
    class DS(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = nn.Conv1d(1, 16, 9, stride=2, padding=4)
            self.dw, self.pw, self.fc = nn.Conv1d(16, 16, 5, padding=2, groups=16), nn.Conv1d(16, 32, 1), nn.Linear(32, 5)

        def forward(self, x):
            return self.fc(F.relu(self.pw(self.dw(F.relu(self.c0(x))))).mean(-1))

    torch.manual_seed(0)
    model, x = DS().eval(), torch.randn(4, 1, 200)
    report = pk.inspect(model, x)
    assert "dw.weight" not in report.unprunable and report.unprunable == ["fc.weight"]
    assert any(m["param"] == "dw.weight" for g in report.groups for m in g["members"])


def test_a_model_with_a_residual_branch_removed_whole_reloads_without_its_class(tmp_path):
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.c1, self.c2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x):
            x = F.relu(self.stem(x))
            x = x + self.c2(F.relu(self.c1(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model, x = Res().eval(), torch.randn(4, 3, 8, 8)
    masking.apply_masks(model, {"c1.weight": torch.zeros(16, 16, 3, 3), "c1.bias": torch.zeros(16)})
    small = pk.compact(model, x)
    kinds = {type(m).__name__ for m in small.modules()}
    assert {"EmptyOutput", "ConstantOutput"} <= kinds
    back = pk.load(pk.save(small, tmp_path / "r"))
    y = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(y), small(y))


def test_a_runtime_without_kernels_for_the_dtype_is_named():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval().bfloat16()
    x = torch.randn(4, 3, 8, 8, dtype=torch.bfloat16)
    from prunekit.allocation.latency import LatencyAllocation

    with pytest.raises(pk.PruneError, match="cannot time .* in runtime='onnxruntime'"):
        pk.prune(model, granularity="channel", allocation=LatencyAllocation(0.5, runtime="onnxruntime", batch_size=4),
                 example_inputs=x)


@pytest.mark.slow
def test_a_float16_model_is_timed_layer_by_layer_in_onnxruntime_in_float16(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("PRUNEKIT_LATENCY_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval().half()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float16)
    from prunekit.allocation.latency import LatencyAllocation

    alloc = LatencyAllocation(0.7, runtime="onnxruntime", batch_size=4, repeats=3, max_iterations=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the target may not be reached on so small a model
        pk.prune(model, granularity="channel", example_inputs=x, allocation=alloc)
    # timed in float16, layer by layer and whole (the one-layer graphs were refused before);
    # how much is pruned depends on this machine's timings
    assert alloc.dense_ms_ > 0 and alloc.measured_ms_ > 0
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_latency_tables_time_layers_in_the_models_dtype(monkeypatch):
    from prunekit.latency import tables
    from prunekit.latency.tables import LatencyTable, LayerSpec

    seen = []
    real = tables.prepare

    def recording(layer, inputs, runtime, threads):
        seen.append((next(layer.parameters()).dtype, inputs[0].dtype))
        return real(layer, inputs, runtime, threads)

    monkeypatch.setattr(tables, "prepare", recording)
    spec = LayerSpec("linear", (), 64, 32)
    for dtype in (torch.float32, torch.bfloat16):
        assert LatencyTable("eager", 4, 1, repeats=2, cache=False, dtype=dtype).measure(spec, 64, 32) > 0
        assert seen[-1] == (dtype, dtype)
    keys = [LatencyTable("eager", 4, 1, cache=False, dtype=d).key for d in (torch.float32, torch.bfloat16)]
    assert "dtype" not in keys[0] and keys[1]["dtype"] == "bfloat16"  # separate on-disk tables


class _MeanOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.f = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)

    def forward(self, x):
        y = self.c(x)
        return self.f(y.mean(dim=(2, 3))) + y.mean(dim=1).mean()  # the model's own forward mixes channels


def test_a_refusal_names_the_model_for_ops_in_its_own_forward():
    model = _MeanOverChannels()
    with pytest.raises(pk.PruneError, match=r"\(<model>: mean: reduces over channels"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=torch.randn(2, 3, 8, 8))
    assert not pk.masks(model)


def test_a_channel_result_names_units_removed_and_counts_the_weight_zeros_apart():
    torch.manual_seed(0)
    model, x = _FixedReshape().eval(), torch.randn(4, 3, 8, 8)
    res = pk.prune(model, 0.3, granularity="channel", example_inputs=x, ignore=["fc.weight"])
    zeros = sum(int((getattr(m, "weight") == 0).sum()) for m in (model.c1, model.c2))
    assert res.weight_sparsity == pytest.approx(zeros / (model.c1.weight.numel() + model.c2.weight.numel()))
    assert res.weight_sparsity != pytest.approx(res.sparsity)  # units removed and zeros differ here
    assert f"coupled units removed: {res.sparsity:.2%}; zeros over the pruned layers' weights: " \
           f"{res.weight_sparsity:.2%}" in res.summary()


def test_inspect_calls_a_group_of_grouped_convs_units_and_counts_its_output_channels():
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, groups=4),
                          nn.ReLU(), nn.ConvTranspose2d(32, 8, 2, stride=2, groups=2), nn.ReLU(), nn.Conv2d(8, 3, 1))
    rep = pk.inspect(model, torch.randn(1, 4, 8, 8))
    group = rep.to_dict()["groups"][0]
    assert group["units"] == 2 and group["channels"] == 16 + 32 + 8
    assert f"group {group['name']}: 2 units (56 output channels)" in rep.summary()
    plain = pk.inspect(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), torch.randn(1, 4))
    assert ": 6 channels" in plain.summary()
