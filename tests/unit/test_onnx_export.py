"""ONNX export: parity in onnxruntime, masks folded, compacted shapes, attention, atomic writes."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import prunekit as pk  # noqa: E402
from prunekit.deploy import check_onnx, export_onnx  # noqa: E402
from prunekit.surgery.attention import PrunedMultiheadAttention  # noqa: E402
from conftest import clone_state, same_state  # noqa: E402


def run_onnx(path, *inputs: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})


def initializers(path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def assert_parity(model: nn.Module, path, x: torch.Tensor, atol: float = 1e-5) -> None:
    """The file matches the model on a batch size other than the one it was exported with."""
    with torch.no_grad():
        want = model.eval()(x)
    got = run_onnx(path, x)[0]
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=atol)


class AttnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y)


class Noisy(nn.Module):
    """Random noise in the graph: onnxruntime draws other numbers than PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_mlp_parity_and_model_unchanged(mlp, tmp_path):
    mlp.train()
    before = clone_state(mlp)
    x = torch.randn(4, 1, 8, 8)
    path = export_onnx(mlp, x, tmp_path / "mlp.onnx")
    assert path == tmp_path / "mlp.onnx" and path.stat().st_size > 0
    assert same_state(mlp, before) and mlp.training  # exported a copy, in eval mode
    assert_parity(mlp, path, torch.randn(7, 1, 8, 8))  # the batch dimension stays dynamic


def test_cnn_with_batchnorm_parity(convbn, tmp_path):
    x = torch.randn(3, 1, 8, 8)
    path = export_onnx(convbn, x, tmp_path / "cnn.onnx")
    assert_parity(convbn, path, torch.randn(5, 1, 8, 8))


def test_masked_model_exports_effective_weights(mlp, tmp_path):
    x = torch.randn(4, 1, 8, 8)
    pk.prune(mlp, 0.8)
    # Values under the mask that the effective weight hides: exporting `original` would show them.
    with torch.no_grad():
        for name, mask in pk.masks(mlp).items():
            module = mlp.get_submodule(name.rsplit(".", 1)[0])
            module.parametrizations.weight.original.add_(5.0 * (1 - mask))
    before = clone_state(mlp)
    path = export_onnx(mlp, x, tmp_path / "masked.onnx")
    assert same_state(mlp, before)
    assert set(pk.masks(mlp)) == {"net.0.weight", "net.2.weight", "net.4.weight"}  # still masked
    assert_parity(mlp, path, torch.randn(6, 1, 8, 8))
    zeros_in_file = sum(int((a == 0).sum()) for a in initializers(path).values() if a.ndim == 2)
    masked_zeros = sum(int((m == 0).sum()) for m in pk.masks(mlp).values())
    assert zeros_in_file >= masked_zeros > 0


def test_compacted_model_exports_smaller_shapes(convbn, tmp_path):
    x = torch.randn(4, 1, 8, 8)
    pk.prune(convbn, 0.5, granularity="channel", example_inputs=x)
    small = pk.compact(convbn, x)
    assert small.features[0].out_channels == 4
    path = export_onnx(small, x, tmp_path / "small.onnx")
    assert_parity(small, path, torch.randn(5, 1, 8, 8))
    conv_shapes = sorted(a.shape for a in initializers(path).values() if a.ndim == 4)
    # BN is folded into the convolutions by the exporter or kept: either way 4 and 8 filters.
    assert [s[0] for s in conv_shapes] == [4, 8]
    params_file = sum(a.size for a in initializers(path).values())
    params_dense = sum(p.numel() for p in convbn.parameters())
    assert params_file < params_dense


def test_pruned_multihead_attention_exports(tmp_path):
    torch.manual_seed(0)
    net = AttnNet().eval()
    x = torch.randn(2, 6, 16)
    pk.prune(net, 0.5, granularity="head", example_inputs=x)
    small = pk.compact(net, x)
    assert isinstance(small.attn, PrunedMultiheadAttention) and small.attn.num_heads == 2
    path = export_onnx(small, x, tmp_path / "attn.onnx")
    assert_parity(small, path, torch.randn(3, 6, 16))


def test_attention_weights_output_too(tmp_path):
    """PrunedMultiheadAttention's default need_weights=True path: two outputs, both checked."""
    torch.manual_seed(0)
    attn = PrunedMultiheadAttention(12, 2, 4, batch_first=True)
    nn.init.normal_(attn.in_proj_weight, std=0.3)

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x)

    x = torch.randn(2, 5, 12)
    path = export_onnx(Both(), x, tmp_path / "both.onnx")
    y, w = run_onnx(path, x)
    with torch.no_grad():
        ry, rw = attn(x, x, x)
    np.testing.assert_allclose(y, ry.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w, rw.numpy(), rtol=1e-4, atol=1e-5)
    assert w.shape == (2, 5, 5)


def test_failed_check_leaves_no_file_and_keeps_the_old_one(tmp_path):
    old = tmp_path / "model.onnx"
    old.write_bytes(b"previous contents")
    with pytest.raises(pk.PruneError, match=r"parity check failed .* differs from PyTorch by up to \d") as err:
        export_onnx(Noisy(), torch.randn(2, 3), old)
    assert "was not written" in str(err.value)
    assert old.read_bytes() == b"previous contents"  # not replaced, not deleted
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_check_onnx_reports_a_mismatch_and_opset_is_written(tmp_path):
    x = torch.randn(2, 3)
    path = export_onnx(Noisy(), x, tmp_path / "noisy.onnx", check=False, opset=18, dynamic_batch=False)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3]  # static shapes
    result = check_onnx(path, Noisy(), x)
    assert not result.ok and result.max_abs_diff > 1e-3 and "output 0" in result.detail
    same = check_onnx(path, nn.Identity(), x, atol=1.0)  # rand in [0, 1): within atol 1
    assert same.ok and same.outputs == 1


@pytest.mark.parametrize("module", ["onnxruntime", "onnxscript"])
def test_missing_dependency_names_the_extra(mlp, tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(pk.PruneError, match=r"pip install prunekit\[export\]") as err:
        export_onnx(mlp, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    assert module in str(err.value)
    assert not any(tmp_path.iterdir())


def test_bad_arguments_are_named(mlp, tmp_path):
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(pk.PruneError, match=r"opset=12 is not supported.*18"):
        export_onnx(mlp, x, tmp_path / "m.onnx", opset=12)
    with pytest.raises(pk.PruneError, match="atol=-1"):
        export_onnx(mlp, x, tmp_path / "m.onnx", atol=-1)
    with pytest.raises(pk.PruneError, match="is a folder"):
        export_onnx(mlp, x, tmp_path)
    with pytest.raises(pk.PruneError, match=r"shape \(2, 1, 5, 5\) do not run through MLP"):
        export_onnx(mlp, torch.randn(2, 1, 5, 5), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_sparsified_model_exports_dense_weights(tmp_path):
    from prunekit.deploy import SparseLinear

    torch.manual_seed(0)
    lin = nn.Linear(12, 6)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.2] = 0
    net = nn.Sequential(SparseLinear.from_linear(lin), nn.ReLU(), nn.Linear(6, 2))
    path = export_onnx(net, torch.randn(3, 12), tmp_path / "sparse.onnx")
    assert isinstance(net[0], SparseLinear)  # the user's model keeps its CSR layer
    assert_parity(net, path, torch.randn(4, 12))


def test_unexportable_model_names_the_line(tmp_path):
    class ValueBranch(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # depends on the values: torch.export cannot capture it
                return x * 2
            return x

    with pytest.raises(pk.PruneError, match=r"could not export ValueBranch: .*in forward: if x.sum\(\) > 0"):
        export_onnx(ValueBranch(), torch.randn(2, 3), tmp_path / "v.onnx")
    assert not any(tmp_path.iterdir())


def test_int8_export_is_smaller_and_keeps_accuracy(tmp_path, digits_batches):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    import prunekit as pk
    from prunekit.deploy import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for x, y in digits_batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    pk.prune(model, 0.5)
    x = torch.cat([b[0] for b in digits_batches])
    y = torch.cat([b[1] for b in digits_batches])
    fp32 = export_onnx(model, x[:4], tmp_path / "f.onnx")
    int8 = export_onnx(model, x[:4], tmp_path / "q.onnx", quantize="int8")
    assert int8.stat().st_size < fp32.stat().st_size / 2.5
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    acc_q = float((np.argmax(out, 1) == y.numpy()).mean())
    acc = float((model(x).argmax(1) == y).float().mean())
    assert abs(acc_q - acc) < 0.02
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(model, x[:4], tmp_path / "z.onnx", quantize="int4")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_file_follows_the_umask(mlp, tmp_path, umask, mode):
    """The .onnx file gets the mode a plain ``open`` gives (not mkstemp's 0600), also when replaced."""
    path = tmp_path / "model.onnx"
    old = os.umask(umask)
    try:
        export_onnx(mlp, torch.randn(2, 1, 8, 8), path)
        export_onnx(mlp, torch.randn(2, 1, 8, 8), path)
    finally:
        os.umask(old)
    assert [(p.name, p.stat().st_mode & 0o777) for p in tmp_path.iterdir()] == [("model.onnx", mode)]
