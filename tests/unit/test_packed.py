"""The packed weight format: exact round trips, zeros stay zero, bad files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("zstandard")

import prunekit as pk  # noqa: E402
from prunekit.deploy.packed import _decode_relative, _encode_relative, decode, encode, kmeans_1d  # noqa: E402


def _sparse(shape, sparsity, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g).to(dtype)
    keep = torch.rand(shape, generator=g) >= sparsity
    return t * keep


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    seed=st.integers(0, 10_000),
)
def test_exact_round_trip(shape, sparsity, dtype, seed):
    tensors = {"w": _sparse(shape, sparsity, dtype, seed), "idx": torch.arange(7), "flag": torch.tensor([True, False])}
    back, _ = decode(encode(tensors))
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape
        assert torch.equal(back[k], t)  # bit-exact without quantization


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(64, 32), (16, 8, 3, 3), (300,), (10, 100)]),
    sparsity=st.sampled_from([0.0, 0.8, 0.97]),
    scheme=st.sampled_from(["fp16", "int8", "codebook", "codebook:2", "codebook:8"]),
    seed=st.integers(0, 1000),
)
def test_quantized_round_trip_keeps_zeros_and_is_stable(shape, sparsity, scheme, seed):
    t = _sparse(shape, sparsity, torch.float32, seed)
    back = decode(encode({"w": t}, scheme))[0]["w"]
    assert torch.all(back[t == 0] == 0)  # zeros stay zero
    half = decode(encode({"w": t.bfloat16()}, scheme))[0]["w"]
    assert half.dtype == torch.bfloat16 and torch.all(half[t.bfloat16() == 0] == 0)
    again = decode(encode({"w": back}, scheme))[0]["w"]
    if scheme in ("fp16", "int8"):
        assert torch.equal(again, back)  # quantized values survive a second round trip bit-exactly
    if scheme == "int8" and t.numel() >= 256:
        rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
        scale = rows.abs().amax(1, keepdim=True) / 127
        err = (back.reshape(rows.shape) - rows).abs()
        big = rows.abs() >= scale / 2  # rounded to the nearest step
        assert torch.all(err[big] <= (scale / 2).expand_as(rows)[big] + 1e-6)
        assert torch.all(err <= scale + 1e-6)  # a smaller kept weight keeps its sign at one step
        assert torch.equal(back != 0, t != 0)  # the zeros are exactly the input's
    if scheme.startswith("codebook") and t.numel() >= 256:
        bits = int(scheme.partition(":")[2] or 4)
        assert torch.unique(back[back != 0]).numel() <= 2**bits


def test_relative_indices_with_long_gaps():
    pos = np.array([0, 3, 300, 301, 1000, 5000])
    codes = _encode_relative(pos)
    assert codes.dtype == np.uint8 and np.array_equal(_decode_relative(codes), pos)


def test_kmeans_centroids_are_cluster_means():
    v = np.concatenate([np.full(50, -1.0), np.full(50, 2.0)]) + np.linspace(0, 0.01, 100)
    cent, idx = kmeans_1d(v, 2)
    assert np.allclose(np.sort(cent), [v[:50].mean(), v[50:].mean()], atol=1e-6)
    assert set(idx[:50]) == {0} and set(idx[50:]) == {1}


def test_corrupted_files_fail_clearly():
    blob = encode({"w": _sparse((32, 32), 0.9, torch.float32, 0)})
    with pytest.raises(ValueError, match="truncated"):
        decode(blob[:-5])
    bad = bytearray(blob)
    bad[-3] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        decode(bytes(bad))
    with pytest.raises(ValueError, match="magic"):
        decode(b"XX" + blob[2:])
    with pytest.raises(ValueError, match="quantize"):
        encode({"w": torch.ones(3)}, "int4")


def test_pk_save_packed_shrinks_and_loads(tmp_path):
    from prunekit import zoo

    model = zoo.create("lenet300100")
    pk.prune(model, 0.95)
    x = torch.randn(5, 784)
    pk.save(model, tmp_path / "dense")
    pk.save(model, tmp_path / "exact", format="packed")
    pk.save(model, tmp_path / "int8", format="packed", quantize="int8")
    exact = pk.load(tmp_path / "exact")
    assert torch.equal(exact(x), model(x))
    size = lambda p: sum(f.stat().st_size for f in p.iterdir() if f.name.startswith("model."))  # noqa: E731
    assert size(tmp_path / "dense") / size(tmp_path / "exact") > 15
    assert size(tmp_path / "dense") / size(tmp_path / "int8") > 40
    torch.testing.assert_close(pk.load(tmp_path / "int8")(x), model(x), rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="needs format='packed'"):
        pk.save(model, tmp_path / "x", quantize="int8")
    with pytest.raises(ValueError, match="format="):
        pk.save(model, tmp_path / "x", format="zip")
    assert not (tmp_path / "x").exists()
    (tmp_path / "int8" / "model.pkpack").write_bytes((tmp_path / "int8" / "model.pkpack").read_bytes()[:-10])
    with pytest.raises(ValueError, match="checksum"):
        pk.load(tmp_path / "int8")


def test_int8_keeps_every_kept_weight_nonzero_so_the_zeros_are_the_mask(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    pk.prune(model, 0.5)
    with torch.no_grad():  # one outlier per row: most kept weights fall below half an int8 step
        model[0].parametrizations.weight.original[:, 0] = 1000.0
    mask = pk.masks(model)["0.weight"].bool()
    out = pk.save(model, tmp_path / "q", format="packed", quantize="int8")
    loaded = pk.load(out, masks=True)
    assert torch.equal(pk.masks(loaded)["0.weight"].bool(), mask)
    w, ref = loaded.get_submodule("0").weight.detach(), model[0].weight.detach()
    assert torch.equal(w != 0, mask) and torch.equal(torch.sign(w), torch.sign(ref))
    step = ref.abs().amax(1, keepdim=True) / 127
    assert bool(((w - ref).abs() <= step + 1e-6).all())  # within one step
