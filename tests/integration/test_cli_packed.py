"""`prunekit prune --format packed` and `prunekit export --format packed`: the packed file
is written, loads back with the same outputs, and bad values are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("zstandard")

import prunekit as pk  # noqa: E402
from prunekit import zoo  # noqa: E402
from prunekit.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small MNIST MLP saved as safetensors (seeded, so both prunes start from it)."""
    torch.manual_seed(0)
    model = zoo.create("lenet300100", hidden=[32, 16])
    return pk.save(model, tmp_path_factory.mktemp("base") / "mlp", metadata={"input_shape": [1, 1, 28, 28]})


def _outputs(folder, x):
    model = pk.load(folder).eval()
    with torch.no_grad():
        return model(x)


def test_prune_writes_the_packed_format_that_loads_back_exactly(base, tmp_path):
    args = ["prune", str(base), "--sparsity", "0.8", "--threads", "1"]
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert runner.invoke(app, args + ["--out", str(plain)]).exit_code == 0
    res = runner.invoke(app, args + ["--out", str(packed), "--format", "packed"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in packed.iterdir()) == ["model.pkpack", "spec.json"]
    size = (packed / "model.pkpack").stat().st_size
    assert f"model.pkpack {size:,} bytes" in res.output and "max abs difference of the outputs 0 " in res.output
    assert size < (plain / "model.safetensors").stat().st_size / 2  # 80 % zeros left out
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(_outputs(packed, x), _outputs(plain, x))
    assert json.loads((packed / "spec.json").read_text())["weights"] == "model.pkpack"


def test_prune_packed_int8_is_smaller_and_close(base, tmp_path):
    out = tmp_path / "q"
    res = runner.invoke(app, ["prune", str(base), "--sparsity", "0.5", "--out", str(out), "--format", "packed",
                              "--quantize", "int8", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "int8 quantized" in res.output
    assert json.loads((out / "spec.json").read_text())["quantize"] == "int8"


def test_export_packed_keeps_the_spec_and_the_outputs(base, tmp_path):
    out = tmp_path / "exported"
    res = runner.invoke(app, ["export", str(base), "--out", str(out), "--format", "packed"])
    assert res.exit_code == 0, res.output
    assert (out / "model.pkpack").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "spec.json").read_text())["metadata"]["input_shape"] == [1, 1, 28, 28]
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(_outputs(out, x), _outputs(base, x))
    again = runner.invoke(app, ["export", str(base), "--out", str(out), "--format", "packed"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("args,needle", [
    (["prune", "lenet300100", "--sparsity", "0.5", "--format", "zip"],
     "--format: unknown format 'zip'; available: safetensors, packed"),
    (["prune", "lenet300100", "--sparsity", "0.5", "--format", "packed", "--quantize", "int3"],
     "--quantize: unknown scheme 'int3'; available: none, fp16, int8, codebook"),
    (["prune", "lenet300100", "--sparsity", "0.5", "--quantize", "int8"],
     "--quantize 'int8' needs --format packed (got --format safetensors)"),
    (["export", "lenet300100", "--format", "tflite"], "--format: unknown format 'tflite'; available: onnx, packed"),
    (["export", "lenet300100", "--format", "packed", "--quantize", "codebook:9"], "unknown scheme 'codebook:9'"),
    (["export", "lenet300100", "--format", "packed", "--int8"], "--int8 is for --format onnx"),
])
def test_bad_values_are_one_line_errors_and_write_nothing(tmp_path, args, needle):
    out = tmp_path / "new" / "out"
    res = runner.invoke(app, args + ["--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "new").exists()


def test_prune_with_quantize_records_the_accuracy_of_the_values_saved(tmp_path):
    from prunekit import datasets
    from prunekit.train import fit

    torch.manual_seed(0)
    model = zoo.create("lenet300100", in_features=64, hidden=[32])
    fit(model, datasets.load_digits("train", flatten=True), epochs=5, lr=3e-3, seed=0, progress=False)
    source = pk.save(model, tmp_path / "digits", metadata={"input_shape": [1, 64],
                                                           "data": {"name": "digits", "flatten": True}})
    out = tmp_path / "q"
    res = runner.invoke(app, ["prune", str(source), "--sparsity", "0.5", "--out", str(out),
                              "--format", "packed", "--quantize", "codebook:1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "spec.json").read_text())["metadata"]
    evaluated = runner.invoke(app, ["evaluate", str(out)])
    assert f"{100 * meta['test_accuracy']:.2f} %" in evaluated.output  # the file's own accuracy
    assert meta["test_accuracy_before_quantization"] != meta["test_accuracy"]
    assert "with the codebook:1 values saved" in res.output


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), h


def test_export_packed_of_a_tuple_output_model_compares_every_output(tmp_path):
    torch.manual_seed(0)
    src = pk.save(_TwoOutputs(), tmp_path / "src", example_inputs=torch.randn(1, 8))
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(src), "--out", str(out), "--format", "packed"])
    assert res.exit_code == 0, res.output
    assert "max abs difference of the outputs 0 " in res.output
    x = torch.randn(3, 8)
    (a1, h1), (a2, h2) = _outputs(out, x), _outputs(src, x)
    assert torch.equal(a1, a2) and torch.equal(h1, h2)


def test_a_packed_export_that_fails_its_load_back_check_leaves_no_folder(base, tmp_path, monkeypatch):
    from prunekit.cli import packed

    def broken(model, folder, inputs):
        raise pk.PruneError("loaded back differently")

    monkeypatch.setattr(packed, "check_loads_back", broken)
    out = tmp_path / "never"
    res = runner.invoke(app, ["export", str(base), "--out", str(out), "--format", "packed"])
    assert res.exit_code == 2 and "loaded back differently" in res.stderr
    assert not out.exists()
