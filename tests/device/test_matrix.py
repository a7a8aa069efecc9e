"""The device matrix: the main flows on every device present, in every dtype it supports.

Rows: ``cpu`` in float32 and bfloat16 always; ``cuda`` in float32, bfloat16 and float16 when
a GPU is present (``torch.cuda.is_available()``). Each flow checks what it reports against
what happened: masks live on the weight's device in its dtype, zeros are exact, reported
sparsity is measured sparsity, a compacted model computes what the masked one did, a saved
model reloads to the same outputs, training keeps the zeros and the numbers finite.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import zoo

F = nn.functional
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.float32, torch.bfloat16, torch.float16]}
ROWS = [pytest.param(d, t, id=f"{d}-{str(t).removeprefix('torch.')}") for d in DEVICES for t in DTYPES[d]]
#: output tolerance of a dtype (relative to the output's scale)
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _batches(digits_batches, device, dtype, n=2):
    return [(x.to(device, dtype), y.to(device)) for x, y in digits_batches[:n]]


def _loss(out, y):
    return F.cross_entropy(out.float(), y)


def _param(model: nn.Module, name: str) -> torch.Tensor:
    """The effective tensor ``name`` (a masked weight is no longer an ``nn.Parameter``)."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module), attr)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = float(b.float().abs().max().clamp_min(1.0))
    return bool(((a.float() - b.float()).abs().max() / scale) <= TOL[dtype])


@pytest.mark.parametrize("device,dtype", ROWS)
@pytest.mark.parametrize("criterion,granularity", [
    ("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"), ("sparsegpt", "2:4"),
    ("taylor", "unstructured"), ("hessian", "unstructured"), ("apoz", "channel"), ("fpgm", "channel"),
])
def test_prune_on_every_device_and_dtype(device, dtype, criterion, granularity, convbn, digits_batches):
    model = convbn.to(device, dtype)
    data = _batches(digits_batches, device, dtype)
    x = data[0][0]
    nm = ":" in granularity
    res = pk.prune(model, None if nm else 0.5, criterion=criterion, granularity=granularity, data=data, loss_fn=_loss,
                   example_inputs=x, ignore=["features.0"] if nm else [])
    masks = pk.masks(model)
    assert masks
    for name, m in masks.items():
        p = _param(model, name)
        assert m.device == p.device and m.dtype == p.dtype, name
        assert torch.all(p[m == 0] == 0)
    if granularity == "unstructured" or nm:
        assert res.sparsity == pytest.approx(pk.sparsity(model, ignore=["features.0"] if nm else []), abs=1e-9)
    assert 0.3 < res.sparsity < 0.7
    with torch.no_grad():
        assert torch.isfinite(model(x).float()).all()


@pytest.mark.parametrize("device,dtype", ROWS)
def test_channels_compact_save_load(device, dtype, digits_batches, tmp_path):
    torch.manual_seed(0)
    model = zoo.create("mnistnet").to(device, dtype).eval()
    x = torch.randn(8, 1, 28, 28, device=device, dtype=dtype)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    with torch.no_grad():
        masked = model(x)
    small = pk.compact(model, x)
    assert all(p.device.type == device and p.dtype == dtype for p in small.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in zoo.create("mnistnet").parameters())
    with torch.no_grad():
        out = small(x)
    assert _close(out, masked, dtype)
    for fmt in ("safetensors", "packed"):  # the packed file once read bfloat16 back as float32
        pk.save(small, tmp_path / fmt, example_inputs=x, format=fmt)
        back = pk.load(tmp_path / fmt).to(device).eval()
        assert all(p.dtype == dtype for p in back.parameters()), fmt
        with torch.no_grad():
            assert torch.equal(back(x), out), fmt


@pytest.mark.parametrize("device,dtype", ROWS)
def test_fine_tuning_keeps_zeros_and_finite_weights(device, dtype, mlp, digits_batches):
    """Adam on a masked model in half precision: the zeros stay exact and nothing becomes
    NaN (a weight computed as ``original * mask`` would keep a NaN of ``original``)."""
    from prunekit.train import fit

    model = mlp.to(device, dtype)
    data = [(x.reshape(x.shape[0], -1), y) for x, y in _batches(digits_batches, device, dtype, 4)]
    pk.prune(model, 0.8, data=data)
    zeros = {n: m == 0 for n, m in pk.masks(model).items()}
    xs = torch.cat([x for x, _ in data])
    ys = torch.cat([y for _, y in data])
    fit(model, torch.utils.data.TensorDataset(xs, ys), epochs=2, lr=1e-2, batch_size=32, loss_fn=_loss, progress=False)
    for name, z in zeros.items():
        p = _param(model, name)
        assert torch.isfinite(p).all(), name
        assert torch.all(p[z] == 0), name
    assert pk.sparsity(model) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("device,dtype", ROWS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_llm_oneshot_on_every_device_and_dtype(device, dtype, method):
    pytest.importorskip("transformers")
    from llm_fixtures import tiny_llama, token_ids

    from prunekit.llm import perplexity, prune_llm

    model = tiny_llama().to(device, dtype)
    calib = token_ids(4, 32, vocab=model.config.vocab_size, seed=0).to(device)
    report = prune_llm(model, calib, method=method, sparsity=0.5, reconstruct=0, self_calibration=0.0)
    assert report.overall_sparsity == pytest.approx(0.5, abs=1e-3)
    for layer in model.model.layers:
        w = layer.mlp.down_proj.weight
        assert w.device.type == device and w.dtype == dtype
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    ppl = perplexity(model, token_ids(2, 32, vocab=model.config.vocab_size, seed=1).to(device), seqlen=32)
    assert ppl == ppl and ppl < float("inf")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_input_statistics_are_float32_products_of_half_precision_inputs(dtype):
    from prunekit.criteria.inputs import InputStatistics

    torch.manual_seed(0)
    x = (torch.randn(64, 8) * 300).to(dtype)  # squares above float16's 65,504
    stats = InputStatistics(gram=True)
    stats.add("w", x[:32])
    stats.add("w", x[32:])
    ref = x.double()
    assert torch.isfinite(stats.squares["w"]).all() and torch.isfinite(stats.grams["w"]).all()
    # Equal to the float64 sums of the same (rounded) inputs, to float32 rounding.
    assert torch.allclose(stats.squares["w"][0], (ref * ref).sum(0), rtol=1e-6)
    assert torch.allclose(stats.grams["w"][0], ref.t() @ ref, rtol=1e-5, atol=1e-2)
    assert stats.rows["w"] == 64
