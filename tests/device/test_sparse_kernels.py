"""Sparse kernels on every device: the 2:4 semi-structured form (CUDA) beside CSR.

On the CPU: the 2:4 pattern check, clear refusals, and ``sparsify`` saying that the 2:4
kernels were not timed. On CUDA (float16, bfloat16): :class:`SemiStructuredLinear` computes
what ``nn.Linear`` does, saves as a dense weight and reloads, and ``sparsify`` times every
2:4 layer on both sparse kernels and takes what it measured.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import SemiStructuredLinear, SparseLinear, sparsify
from prunekit.deploy.sparse_linear import follows_two_four
from prunekit.errors import PruneError

CUDA = torch.cuda.is_available()
TOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


def two_four_mlp(widths=(256, 512, 256), device="cpu", dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(device, dtype)
    pk.prune(model, None, granularity="2:4")
    return pk.commit(model)


def test_two_four_pattern_is_read_from_the_weight():
    model = two_four_mlp()
    assert all(follows_two_four(m.weight) for m in model if isinstance(m, nn.Linear))
    w = model[0].weight.detach().clone()
    w[0, :4] = 1.0  # four nonzeros in one group of four
    assert not follows_two_four(w)
    assert not follows_two_four(torch.zeros(8, 6))  # in_features not divisible by 4
    unstructured = nn.Linear(64, 32)
    pk.prune(unstructured, 0.5)
    assert not follows_two_four(pk.commit(unstructured).weight)


def test_semi_structured_refusals_name_the_requirement():
    lin = two_four_mlp()[0]
    if not CUDA:
        with pytest.raises(PruneError, match="CUDA tensor of float16 or bfloat16"):
            SemiStructuredLinear.from_linear(lin)
    dense = nn.Linear(64, 32)
    with pytest.raises(PruneError, match="does not follow 2:4"):
        SemiStructuredLinear.from_linear(dense)


def test_sparsify_on_the_cpu_says_the_two_four_kernels_were_not_timed():
    model = two_four_mlp((64, 128, 32))
    report = sparsify(model, torch.randn(4, 64), batch_size=8, batch_sizes=(8,), repeats=3)
    for layer in report.layers:
        assert "2:4 semi-structured kernels need CUDA: not timed on the CPU" in layer.reason
        assert layer.semi_ms == {} and layer.decision in ("csr", "dense") and set(layer.csr_ms) == {8}


@pytest.mark.skipif(not CUDA, reason="the 2:4 semi-structured kernels need CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["cuda-float16", "cuda-bfloat16"])
def test_semi_structured_linear_equals_linear_and_round_trips(dtype):
    lin = two_four_mlp(device="cuda", dtype=dtype)[0]
    layer = SemiStructuredLinear.from_linear(lin)
    x = torch.randn(3, 70, 256, device="cuda", dtype=dtype)  # 210 tokens: not a multiple of the tile
    with torch.inference_mode():
        ref, got = lin(x), layer(x)
    scale = float(ref.float().abs().max().clamp_min(1.0))
    assert got.shape == ref.shape and float((got.float() - ref.float()).abs().max()) <= TOL[dtype] * scale
    assert layer.nnz == int(torch.count_nonzero(lin.weight))
    state = layer.state_dict()
    assert torch.equal(state["weight"], lin.weight.detach()) and state["weight"].layout == torch.strided
    plain = nn.Linear(256, 512, device="cuda", dtype=dtype)
    plain.load_state_dict(state)  # a checkpoint of the sparse layer loads into nn.Linear
    fresh = SemiStructuredLinear.from_linear(two_four_mlp(device="cuda", dtype=dtype)[0])
    fresh.load_state_dict(state)
    twin = copy.deepcopy(layer)
    with torch.inference_mode():
        assert torch.equal(fresh(x), got) and torch.equal(twin(x), got) and torch.equal(plain(x), ref)


@pytest.mark.skipif(not CUDA, reason="the 2:4 semi-structured kernels need CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["cuda-float16", "cuda-bfloat16"])
def test_sparsify_times_both_sparse_kernels_and_takes_the_measured_best(dtype):
    model = two_four_mlp((1024, 4096, 1024), device="cuda", dtype=dtype)
    x = torch.randn(2, 1024, device="cuda", dtype=dtype)
    report = sparsify(model, x, batch_size=8192, batch_sizes=(16, 8192), repeats=10, min_speedup=1.0)
    for layer in report.layers:
        assert set(layer.semi_ms) == set(layer.semi_dense_ms) == {16, 8192}, layer.reason
        gains = {"2:4": layer.semi_speedup(8192), "csr": layer.speedup(8192)}
        gains = {k: v for k, v in gains.items() if v is not None}
        best = max(gains, key=gains.get)
        assert layer.decision == (best if gains[best] >= 1.0 else "dense"), layer.reason
        kind = {"2:4": SemiStructuredLinear, "csr": SparseLinear, "dense": nn.Linear}[layer.decision]
        assert type(report.model.get_submodule(layer.name)) is kind
    y = torch.randn(64, 1024, device="cuda", dtype=dtype)
    with torch.inference_mode():
        ref, got = model(y), report.model(y)
    scale = float(ref.float().abs().max().clamp_min(1.0))
    assert float((got.float() - ref.float()).abs().max()) <= TOL[dtype] * scale
