"""`prunekit compare` end to end on a small slice of real MNIST, and the tables of
`prunekit compare` and `prunekit search` (typer's runner, same process)."""

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
    # 600 images are 5 optimizer steps per epoch, fewer than the ramp's frequency (25), and
    # 1 fine-tuning epoch is a single iterative round: one `warning:` line each, before training.
    warned = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2, res.output
    assert warned[0].startswith("warning: 'gradual' and 'combined' degenerate to one-shot pruning: the training "
                                "phase has 5 optimizer steps")
    assert "fewer than gradual_frequency=25" in warned[0] and "gradual_frequency <= 1" in warned[0]
    assert warned[1].startswith("warning: 'iterative' degenerates to one-shot pruning") and "epochs >= 4" in warned[1]
    assert res.output.index("warning:") < res.output.index("[seed 0]")
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
    assert data["warnings"] == [w[len("warning: "):] for w in warned]


def test_compare_always_shows_the_dense_row_and_takes_the_ramp_frequency(tmp_path):
    out = tmp_path / "cmp.json"
    res = runner.invoke(
        app,
        ["compare", "--methods", "oneshot,gradual", "--sparsity", "0.9", "--epochs", "4", "--limit", "600",
         "--gradual-frequency", "2", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.output  # 2 training epochs of 5 steps, every 2 steps: a real ramp
    table = res.output[res.output.index("test acc %"):].splitlines()
    assert [line.split()[0] for line in table[1:4]] == [DENSE, "oneshot", "gradual"]
    assert "Δ dense pt" in table[0]
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == [DENSE, "oneshot", "gradual"]
    assert data["rows"][0]["sparsity"] < 0.01 and data["recipe"]["gradual_frequency"] == 2
    assert data["warnings"] == []


def test_search_table_is_aligned_with_dense_row_warning_and_footer(tmp_path):
    runs = tmp_path / "runs.jsonl"
    res = runner.invoke(
        app,
        ["search", "--data", "digits", "--criteria", "magnitude", "--sparsities", "0.5,0.995",
         "--schedules", "oneshot,gradual", "--folds", "2", "--train-epochs", "1", "--finetune-epochs", "1",
         "--samples", "200", "--results", str(runs)],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and warned[0].startswith("warning: gradual schedule Gradual(")
    assert "Use finetune_epochs >= 3" in warned[0]
    head = next(i for i, line in enumerate(lines) if line.startswith("criterion"))
    table = lines[head : head + 1 + 1 + 8]  # header, dense, 2 criteria x 2 sparsities x 2 schedules
    assert table[1].split()[0] == "dense"
    assert len({line.index("±") for line in table[1:]}) == 1
    assert all(len(line) < 100 for line in table)  # no wrapped lines
    assert any(line.startswith("  Only settings clearly above chance") for line in lines)
    recorded = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sum(r["key"] == "dense" for r in recorded) == 2


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
