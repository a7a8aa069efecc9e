"""`prunekit compare` end to end on a small slice of real MNIST, and the tables of
`prunekit compare` and `prunekit search` (typer's runner, same process): tables on stdout,
`warning:` lines on stderr, `--json FILE` written atomically."""

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
    assert "1 training + 1 fine-tuning" in res.stdout
    # 600 images are 5 optimizer steps per epoch, fewer than the ramp's frequency (25), and
    # 1 fine-tuning epoch is a single iterative round: one `warning:` line each on stderr, before training.
    warned = res.stderr.splitlines()
    assert len(warned) == 2 and all(w.startswith("warning: ") for w in warned), res.stderr
    assert "warning" not in res.stdout  # the table and progress lines stay on stdout
    assert warned[0].startswith("warning: 'gradual' and 'combined' degenerate to one-shot pruning: the training "
                                "phase has 5 optimizer steps")
    assert "fewer than gradual_frequency=25" in warned[0] and "gradual_frequency <= 1" in warned[0]
    assert warned[1].startswith("warning: 'iterative' degenerates to one-shot pruning") and "epochs >= 4" in warned[1]
    assert res.output.index("warning:") < res.output.index("[seed 0]")
    table = res.stdout[res.stdout.index("test acc %"):]
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
    assert [p.name for p in tmp_path.iterdir()] == ["cmp.json"]  # written in one rename, nothing else left
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_compare_json_needs_overwrite_to_replace_a_file(tmp_path):
    out = tmp_path / "sub" / "cmp.json"
    args = ["compare", "--methods", "dense", "--epochs", "2", "--limit", "100", "--json", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    first = json.loads(out.read_text())
    assert [r["method"] for r in first["rows"]] == [DENSE]
    out.write_text("mine\n")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr == f"error: --json {str(out)!r} already exists; pass --overwrite to replace it\n"
    assert out.read_text() == "mine\n"
    res = runner.invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["rows"][0]["method"] == DENSE
    assert [p.name for p in out.parent.iterdir()] == ["cmp.json"]


def test_compare_always_shows_the_dense_row_and_takes_the_ramp_frequency(tmp_path):
    out = tmp_path / "cmp.json"
    res = runner.invoke(
        app,
        ["compare", "--methods", "oneshot,gradual", "--sparsity", "0.9", "--epochs", "4", "--limit", "600",
         "--gradual-frequency", "2", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.output  # 2 training epochs of 5 steps, every 2 steps: a real ramp
    table = res.stdout[res.stdout.index("test acc %"):].splitlines()
    assert [line.split()[0] for line in table[1:4]] == [DENSE, "oneshot", "gradual"]
    assert "Δ dense pt" in table[0]
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == [DENSE, "oneshot", "gradual"]
    assert data["rows"][0]["sparsity"] < 0.01 and data["recipe"]["gradual_frequency"] == 2
    assert data["warnings"] == []


def test_search_table_is_aligned_with_dense_row_warning_and_footer(tmp_path):
    runs = tmp_path / "runs.jsonl"
    args = ["search", "--data", "digits", "--criteria", "magnitude", "--sparsities", "0.5,0.995",
            "--schedules", "oneshot,gradual", "--folds", "2", "--train-epochs", "1", "--finetune-epochs", "1",
            "--samples", "200", "--results", str(runs)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    warned = res.stderr.splitlines()  # on stderr; the table stays on stdout
    assert len(warned) == 1 and warned[0].startswith("warning: gradual schedule Gradual("), res.stderr
    assert "Use finetune_epochs >= 3" in warned[0] and "warning" not in res.stdout
    head = next(i for i, line in enumerate(lines) if line.startswith("criterion"))
    table = lines[head : head + 1 + 1 + 8]  # header, dense, 2 criteria x 2 sparsities x 2 schedules
    assert table[1].split()[0] == "dense"
    assert len({line.index("±") for line in table[1:]}) == 1
    assert all(len(line) < 100 for line in table)  # no wrapped lines
    assert any(line.startswith("  Only settings clearly above chance") for line in lines)
    recorded = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sum(r["key"] == "dense" for r in recorded) == 2
    # the same command again resumes: every run is in the file, nothing is appended
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert [json.loads(line) for line in runs.read_text().splitlines()] == recorded


@pytest.mark.parametrize(("error", "code", "message"), [
    ("PruneError", 2, "error: boom\n"),
    ("KeyboardInterrupt", 130, "error: interrupted; the runs finished so far stay in the --results file "
                               "(run the same command to resume)\n"),
])
def test_search_removes_the_folders_it_created_when_it_fails(tmp_path, monkeypatch, error, code, message):
    import prunekit.search
    from prunekit import PruneError

    results = tmp_path / "a" / "b" / "runs.jsonl"

    def failing_search(*args, **kwargs):
        assert results.parent.is_dir()  # created for the results file, then the search fails
        raise PruneError("boom") if error == "PruneError" else KeyboardInterrupt

    monkeypatch.setattr(prunekit.search, "search", failing_search)
    res = runner.invoke(app, ["search", "--samples", "60", "--results", str(results)])
    assert res.exit_code == code and res.stderr == message and res.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "dense,snip"], "--methods: unknown method 'snip'; available: dense, oneshot"),
        (["--methods", ","], "--methods: ',' names no method"),
        (["--epochs", "1"], "--epochs: 1 is too small (expected an integer >= 2"),
        (["--train-epochs", "7"], "--train-epochs: 7 leaves no fine-tuning in --epochs 7; use 1 .. 6"),
        (["--sparsity", "1.2"], "--sparsity: 1.2 is outside [0, 1)"),
        (["--allocation", "even"], "--allocation: unknown allocation 'even'"),
        (["--model", "resnet"], "--model: unknown zoo model 'resnet'; available: "),
        (["--seeds", "0"], "--seeds: 0 is too small"),
        (["--limit", "0"], "--limit: 0 is too small"),
        (["--lr", "0"], "--lr: 0.0 is not allowed (expected a number > 0"),
        (["--gradual-frequency", "0"], "--gradual-frequency: 0 is too small"),
    ],
)
def test_compare_bad_input_fails_with_one_clear_line(args, needle, tmp_path):
    out = tmp_path / "never.json"
    res = runner.invoke(app, ["compare", "--limit", "50", "--json", str(out), *args])
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert needle in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []
