"""`prunekit evaluate --data MODULE:FUNCTION`: the user's own test data."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli import app
from prunekit.datasets import load_digits
from prunekit.train import evaluate

FACTORY = '''
from prunekit.datasets import load_digits

def test_set():
    return load_digits("test", flatten=True)

def pair():
    d = load_digits("test", flatten=True)
    return d.tensors[0][:100], d.tensors[1][:100]

def broken():
    raise RuntimeError("no disk")

def wrong():
    return 42
'''


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    pk.prune(model, sparsity=0.5)
    pk.commit(model)
    pk.save(model, tmp_path / "model")
    (tmp_path / "mydata.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path, model


def test_evaluate_on_data_of_ones_own(folder):
    root, model = folder
    runner = CliRunner()
    test = load_digits("test", flatten=True)
    want = evaluate(model, test)
    res = runner.invoke(app, ["evaluate", "model", "--data", "mydata:test_set", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert f"mydata:test_set accuracy {want * 100:.2f} %" in res.output and "sparsity 50.00 %" in res.output
    pair = runner.invoke(app, ["evaluate", "model", "--data", "mydata:pair", "--threads", "1"])
    want_pair = evaluate(model, (test.tensors[0][:100], test.tensors[1][:100]))
    assert pair.exit_code == 0 and f"accuracy {want_pair * 100:.2f} %" in pair.output, pair.output


@pytest.mark.parametrize("value, message", [
    ("mydata:broken", "--data 'mydata:broken': broken() raised RuntimeError: no disk"),
    ("mydata:missing", "--data 'mydata:missing': 'mydata' has no function 'missing'"),
    ("nomodule:f", "--data 'nomodule:f': cannot import 'nomodule'"),
    ("mydata:wrong", "--data 'mydata:wrong': wrong() returned int; expected a Dataset"),
    ("imagenet", "--data: unknown data 'imagenet'; available: mnist, digits, or MODULE:FUNCTION"),
])
def test_bad_data_is_one_error_line(folder, value, message):
    root, _ = folder
    before = sorted(p.name for p in root.iterdir())
    res = CliRunner().invoke(app, ["evaluate", "model", "--data", value, "--threads", "1"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln and not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert sorted(p.name for p in root.iterdir() if p.name != "__pycache__") == [b for b in before if b != "__pycache__"]
