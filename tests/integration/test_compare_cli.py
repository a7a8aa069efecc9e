"""`prunekit compare` end to end on a small slice of real MNIST (typer's runner, same process)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.compare import DENSE, METHODS

runner = CliRunner()


def test_compare_smoke_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "cmp.json"
    res = runner.invoke(
        app,
        ["compare", "--model", "lenet300100", "--sparsity", "0.9", "--epochs", "2", "--seeds", "1",
         "--limit", "600", "--finetune-lr", "0.01", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "1 training + 1 fine-tuning" in res.output
    table = res.output[res.output.index("test acc %"):]
    for name in (DENSE, *METHODS):
        assert any(line.split()[:1] == [name] for line in table.splitlines()), name
    data = json.loads(out.read_text())
    assert data["train_examples"] == data["test_examples"] == 600
    assert data["recipe"]["sparsity"] == 0.9 and data["recipe"]["finetune_lr"] == 0.01
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == [DENSE, *METHODS]
    assert {r["epochs"] for r in rows.values()} == {2}
    for name in METHODS:
        assert rows[name]["sparsity"] == pytest.approx(0.9, abs=2e-3), name
    assert rows[DENSE]["sparsity"] < 0.01
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 for r in rows.values())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "dense,snip"], "unknown method 'snip'"),
        (["--epochs", "1"], "epochs must be an int >= 2, got 1"),
        (["--sparsity", "1.2"], "sparsity=1.2 is outside [0, 1)"),
        (["--allocation", "even"], "unknown allocation 'even'"),
        (["--model", "resnet"], "--model 'resnet' is not a zoo model"),
        (["--seeds", "0"], "--seeds must be an int >= 1, got 0"),
        (["--limit", "0"], "--limit must be an int >= 1, got 0"),
    ],
)
def test_compare_bad_input_fails_with_one_clear_line(args, needle, tmp_path):
    out = tmp_path / "never.json"
    res = runner.invoke(app, ["compare", "--limit", "50", "--json", str(out), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output.replace("\n", "")
    assert not out.exists()
