"""`prunekit export`: a zoo model or a saved folder to ONNX, with the parity check printed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import prunekit as pk  # noqa: E402
from prunekit import zoo  # noqa: E402
from prunekit.cli import app  # noqa: E402

runner = CliRunner()


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_export_help_lists_options():
    res = runner.invoke(app, ["export", "--help"])
    assert res.exit_code == 0
    for option in ("--out", "--input-shape", "--opset"):
        assert option in res.output


def test_export_zoo_model(tmp_path):
    out = tmp_path / "lenet.onnx"
    res = runner.invoke(app, ["export", "lenet300100", "--out", str(out)])
    assert res.exit_code == 0, res.output
    size = out.stat().st_size
    assert f"({size:,} bytes)" in res.output
    assert "parity check" in res.output and "passed" in res.output and "[1, 1, 28, 28]" in res.output
    assert _run(out, torch.randn(3, 1, 28, 28)).shape == (3, 10)  # batch stays dynamic


def test_export_saved_pruned_folder_uses_its_input_shape(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("lenet300100", in_features=64, hidden=[32, 16])
    pk.prune(model, 0.9)
    pk.commit(model)
    folder = pk.save(model, tmp_path / "saved", metadata={"input_shape": [1, 1, 8, 8]})
    out = tmp_path / "small.onnx"
    res = runner.invoke(app, ["export", str(folder), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "[1, 1, 8, 8]" in res.output
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = pk.load(folder)(x).numpy()
    np.testing.assert_allclose(_run(out, x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--input-shape", "1,1,5,5"], "do not run through LeNet300100"),
        (["--input-shape", "1,0,28"], "must be positive integers"),
        (["--opset", "9"], "opset=9 is not supported"),
    ],
)
def test_export_errors_write_nothing(tmp_path, args, needle):
    out = tmp_path / "bad.onnx"
    res = runner.invoke(app, ["export", "lenet300100", "--out", str(out), *args])
    assert res.exit_code == 2
    assert needle in " ".join(res.output.split())
    assert not any(tmp_path.iterdir())


def test_export_unknown_source(tmp_path):
    res = runner.invoke(app, ["export", "resnet9000", "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "neither a saved folder nor a zoo model" in res.output


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(10, 8), torch.nn.Linear(6, 8)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


@pytest.mark.parametrize("kind", ["tokens", "two_inputs"])
def test_commands_build_the_inputs_the_spec_records(tmp_path, kind):
    """A token model (int64 inputs) and a two-input model: measure, inspect and export read
    the recorded shapes and dtypes (no flags), as `pk.measure` in Python does."""
    torch.manual_seed(0)
    if kind == "tokens":
        model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Flatten(), torch.nn.Linear(7 * 16, 4))
        x = (torch.randint(0, 50, (2, 7)),)
    else:
        model = _TwoInputs()
        x = (torch.randn(2, 10), torch.randn(2, 6))
    pk.prune(model, 0.5)
    folder = pk.save(model, tmp_path / kind, example_inputs=x if len(x) > 1 else x[0])
    expected = pk.measure(model, x if len(x) > 1 else x[0], latency=False)
    res = runner.invoke(app, ["measure", str(folder), "--json", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    got = __import__("json").loads(res.stdout)
    assert (got["params"], got["nonzero_params"], got["flops_dense"]) == (
        expected.params, expected.nonzero_params, expected.flops_dense)
    assert runner.invoke(app, ["inspect", str(folder)]).exit_code == 0
    res = runner.invoke(app, ["export", str(folder), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0 and "passed" in res.output, res.output
    res = runner.invoke(app, ["export", str(folder), "--format", "packed", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0 and "max abs difference of the outputs 0 " in res.output, res.output


@pytest.fixture()
def mlp_without_shape(tmp_path):
    """A saved MLP on 64 features whose spec records no input shape."""
    torch.manual_seed(0)
    return pk.save(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
                   tmp_path / "noshape")


@pytest.mark.parametrize("args", [["inspect"], ["export", "--out", "{tmp}/m.onnx"]])
def test_a_folder_that_records_no_input_shape_asks_for_one(mlp_without_shape, tmp_path, args):
    cmd = [args[0], str(mlp_without_shape)] + [a.format(tmp=tmp_path) for a in args[1:]]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 2
    assert f"SOURCE {str(mlp_without_shape)!r} does not record an input shape; pass --input-shape" in res.stderr
    assert not (tmp_path / "m.onnx").exists()
    ok = CliRunner().invoke(app, cmd + ["--input-shape", "1,64"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("shape", ["1,x", "1,,64", "2x", "1,-3"])
def test_an_input_shape_with_a_token_that_is_not_a_positive_integer_is_refused(mlp_without_shape, shape):
    res = CliRunner().invoke(app, ["inspect", str(mlp_without_shape), "--input-shape", shape])
    assert res.exit_code == 2 and f"--input-shape {shape!r} must be positive integers" in res.stderr


def test_an_onnx_export_whose_shape_does_not_fit_names_the_option(mlp_without_shape, tmp_path):
    res = CliRunner().invoke(app, ["export", str(mlp_without_shape), "--out", str(tmp_path / "m.onnx"),
                                   "--input-shape", "1,65"])
    assert res.exit_code == 2 and "--input-shape '1,65': inputs of shape (1, 65) do not run" in res.stderr
    assert not (tmp_path / "m.onnx").exists()
