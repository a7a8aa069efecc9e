"""Sparse execution: SparseLinear equals nn.Linear; sparsify decides from what it measured."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import SparseLinear, sparsify
from prunekit.deploy import sparse as sparse_mod

from conftest import MLP, clone_state, same_state


def sparse_linear(out_f: int, in_f: int, zeros: float, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        cut = lin.weight.abs().flatten().kthvalue(int(zeros * lin.weight.numel())).values
        lin.weight[lin.weight.abs() <= cut] = 0
    return lin


def pruned_mlp(sparsity: float = 0.9, **options) -> MLP:
    torch.manual_seed(0)
    model = MLP()
    pk.prune(model, sparsity, allocation="uniform", **options)
    return model


class FakeTimer:
    """Stands in for the timer: reports the given (dense, csr) ms and records what was timed.

    ``rule(width, batch)`` gives the times for a layer (or the whole model) by its output
    width and the batch it ran at.
    """

    def __init__(self, rule):
        self.rule = rule
        self.calls: list[tuple[int, int]] = []

    def __call__(self, dense, sparse, repeats, **kw):
        with torch.inference_mode():
            a, b = dense(), sparse()
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)  # both variants compute the same
        key = (a.shape[-1], a.shape[0])
        self.calls.append(key)
        return self.rule(*key)


@pytest.mark.parametrize("shape", [(5, 20), (3, 4, 20), (20,)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_linear(shape, bias):
    lin = sparse_linear(7, 20, 0.7, bias)
    layer = SparseLinear.from_linear(lin)
    assert layer.weight.layout == torch.sparse_csr and layer.nnz == int(torch.count_nonzero(lin.weight))
    x = torch.randn(*shape)
    want = lin(x)
    for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with ctx():
            got = layer(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.to_linear()(x), want, rtol=0, atol=0)


def test_sparse_linear_copies_saves_and_loads():
    layer = SparseLinear.from_linear(sparse_linear(6, 10, 0.8))
    x = torch.randn(3, 10)
    twin = copy.deepcopy(layer)
    assert twin.weight is not layer.weight and torch.equal(twin(x), layer(x))
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = SparseLinear.from_linear(sparse_linear(6, 10, 0.2))  # other nonzero count
    other.load_state_dict(torch.load(buf))
    assert other.nnz == layer.nnz and torch.equal(other(x), layer(x))


def test_forced_csr_outputs_equal_and_model_unchanged(monkeypatch):
    model = pruned_mlp(0.9)
    model.train()
    before = clone_state(model)
    timer = FakeTimer(lambda width, batch: (2.0, 1.0))
    monkeypatch.setattr(sparse_mod, "time_pair", timer)
    x = torch.randn(4, 1, 8, 8)
    report = sparsify(model, x, batch_size=256, repeats=3)
    assert report.replaced == ["net.0", "net.2", "net.4"]
    assert all(isinstance(report.model.get_submodule(n), SparseLinear) for n in report.replaced)
    for layer in report.layers:
        assert layer.decision == "csr" and "2.00× as fast" in layer.reason
        assert layer.dense_ms == {1: 2.0, 256: 2.0} and layer.speedup(256) == 2.0
    # the user's model: same tensors, masks and mode
    assert same_state(model, before) and model.training
    assert set(pk.masks(model)) == {"net.0.weight", "net.2.weight", "net.4.weight"}
    x2 = torch.randn(9, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(report.model(x2), model.eval()(x2), rtol=1e-4, atol=1e-5)
    assert report.model_dense_ms == 2.0 and report.model_sparse_ms == 1.0  # the whole model was timed too
    assert report.max_abs_diff < 1e-4


def test_forced_dense_keeps_every_layer(monkeypatch):
    model = pruned_mlp(0.9)
    monkeypatch.setattr(sparse_mod, "time_pair", FakeTimer(lambda width, batch: (1.0, 2.0)))
    report = sparsify(model, torch.randn(2, 1, 8, 8), batch_size=1, repeats=3)
    assert report.replaced == []
    assert all(type(m) is not SparseLinear for m in report.model.modules())
    assert all(l.decision == "dense" and "0.50× as fast" in l.reason and "needs >= 1.10×" in l.reason
               for l in report.layers)
    assert report.model_sparse_ms is None and "no layer replaced" in report.summary()


def test_decision_follows_measurement_per_layer_and_batch(monkeypatch):
    # CSR faster only for the 48-wide layer, and only at batch 256.
    rule = lambda width, batch: (3.0, 1.0) if (width == 48 and batch == 256) else (1.0, 1.5)  # noqa: E731
    model = pruned_mlp(0.9)
    x = torch.randn(2, 1, 8, 8)
    monkeypatch.setattr(sparse_mod, "time_pair", FakeTimer(rule))
    at_256 = sparsify(model, x, batch_size=256, repeats=3)
    assert at_256.replaced == ["net.0"]
    assert isinstance(at_256.model.net[2], nn.Linear) and isinstance(at_256.model.net[0], SparseLinear)
    at_1 = sparsify(model, x, batch_size=1, repeats=3)
    assert at_1.replaced == []
    # at batch 1 the 48-wide layer was measured slower: the reason quotes batch 1, not 256
    assert "at batch 1 (" in at_1.layers[0].reason and at_1.layers[0].csr_ms[256] == 1.0


def test_min_speedup_guards_against_noise(monkeypatch):
    model = pruned_mlp(0.9)
    monkeypatch.setattr(sparse_mod, "time_pair", FakeTimer(lambda width, batch: (1.05, 1.0)))
    x = torch.randn(2, 1, 8, 8)
    assert sparsify(model, x, batch_size=1, repeats=3).replaced == []
    assert len(sparsify(model, x, batch_size=1, repeats=3, min_speedup=1.0).replaced) == 3


def test_layers_below_min_sparsity_are_not_timed_or_touched(monkeypatch):
    model = pruned_mlp(0.9, ignore=["net.4.weight"])  # the output layer stays dense
    timer = FakeTimer(lambda width, batch: (2.0, 1.0))
    monkeypatch.setattr(sparse_mod, "time_pair", timer)
    report = sparsify(model, torch.randn(2, 1, 8, 8), batch_size=1, batch_sizes=(1, 8), repeats=3)
    last = report.layers[-1]
    assert last.name == "net.4" and last.decision == "dense" and last.sparsity < 0.5
    assert "below min_sparsity 50.0%" in last.reason and last.dense_ms == {} and last.csr_ms == {}
    assert type(report.model.net[4]) is nn.Linear
    layer_calls = timer.calls[:-1]  # the last call times the whole model
    assert sorted(layer_calls) == [(32, 1), (32, 8), (48, 1), (48, 8)]


def test_real_timings_back_every_decision():
    model = pruned_mlp(0.95)
    report = sparsify(model, torch.randn(2, 1, 8, 8), batch_size=16, batch_sizes=(1,), repeats=5)
    assert report.batch_sizes == (1, 16) and report.threads == torch.get_num_threads()
    for l in report.layers:
        assert set(l.dense_ms) == set(l.csr_ms) == {1, 16}
        assert all(v > 0 for v in [*l.dense_ms.values(), *l.csr_ms.values()])
        assert (l.decision == "csr") == (l.speedup(16) >= 1.1)
    text = report.summary()
    assert all(l.name in text for l in report.layers)


def test_unsupported_dtype_and_uncalled_layers_stay_dense():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    net = Attn()
    pk.prune(net, 0.9, allocation="uniform")
    rep = sparsify(net, torch.randn(2, 3, 8), batch_size=1, batch_sizes=(1,), repeats=2)
    by_name = {l.name: l for l in rep.layers}
    assert "not called as a module" in by_name["attn.out_proj"].reason  # MHA reads its weight directly
    half = nn.Sequential(sparse_linear(4, 16, 0.9)).to(torch.float16)
    rep = sparsify(half, torch.randn(2, 16, dtype=torch.float16), batch_size=1, batch_sizes=(1,), repeats=2)
    assert rep.layers[0].decision == "dense" and "CSR forward failed" in rep.layers[0].reason


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1; got 0"),
        ({"batch_size": 1, "batch_sizes": []}, "batch_sizes must be a non-empty sequence"),
        ({"batch_size": 1, "min_sparsity": 1.5}, "min_sparsity must be a number in [0, 1]; got 1.5"),
        ({"batch_size": 1, "repeats": "3"}, "repeats must be an integer >= 1; got '3'"),
        ({"batch_size": 1, "min_speedup": 0}, "min_speedup must be a number > 0 (1.0: any measured gain); got 0"),
    ],
)
def test_bad_arguments_are_named(mlp, kwargs, needle):
    before = clone_state(mlp)
    with pytest.raises(pk.PruneError) as err:
        sparsify(mlp, torch.randn(2, 1, 8, 8), **kwargs)
    assert needle in str(err.value)
    assert same_state(mlp, before)
