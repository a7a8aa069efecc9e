"""`prunekit run`, `prunekit analyze`, `prunekit search` and `prunekit measure --advise`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunekit.cli import app

pytest.importorskip("zstandard")
runner = CliRunner()


def test_run_builtin_recipe_twice_same_metrics(tmp_path):
    a = runner.invoke(app, ["run", "digits-quick", "--out", str(tmp_path / "a")])
    b = runner.invoke(app, ["run", "digits-quick", "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma == mb and ma["after"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert "digits-quick: accuracy" in a.output
    # The saved model describes itself: evaluate and measure need no flags.
    model = str(tmp_path / "a" / "model")
    ev = runner.invoke(app, ["evaluate", model])
    assert ev.exit_code == 0 and f"digits test accuracy {ma['after']['accuracy'] * 100:.2f} %" in ev.output, ev.output
    me = runner.invoke(app, ["measure", model, "--json"])
    assert me.exit_code == 0 and json.loads(me.stdout)["params"] == ma["after"]["params"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {zoo: nope}\ndata: {name: digits}\nstages: [{prune: {sparsity: 2}}]\n")
    r = runner.invoke(app, ["run", str(bad)])
    assert r.exit_code == 2 and "bad.yaml:2" in r.output and "bad.yaml:4" in r.output


def test_analyze_and_search(tmp_path):
    out = tmp_path / "sens.json"
    r = runner.invoke(app, ["analyze", "lenet300100", "--data", "mnist", "--sparsities", "0.5,0.9",
                            "--samples", "300", "--out", str(out)])
    assert r.exit_code == 0, r.output
    curves = json.loads(out.read_text())["curves"]
    assert set(curves) == {"classifier.0.weight", "classifier.2.weight", "classifier.4.weight"}
    assert all(len(c) == 2 for c in curves.values())
    runs = tmp_path / "runs.jsonl"
    args = ["search", "--data", "digits", "--criteria", "magnitude", "--sparsities", "0.5", "--folds", "2",
            "--train-epochs", "1", "--finetune-epochs", "0", "--samples", "400", "--results", str(runs)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    n = len(runs.read_text().splitlines())
    assert n == 6  # dense reference + magnitude + random baseline, 2 folds each
    r = runner.invoke(app, args)  # resume: nothing left to run
    assert r.exit_code == 0 and len(runs.read_text().splitlines()) == n


def test_run_overwrite_keeps_the_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = runner.invoke(app, ["run", "digits-quick", "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    for _ in range(2):  # beside the user's file, then over the earlier run
        r = runner.invoke(app, ["run", "digits-quick", "--out", str(out), "--overwrite"])
        assert r.exit_code == 0, r.output
        names = sorted(p.name for p in out.iterdir())
        assert {"notes.txt", "model", "metrics.json", "recipe.yaml"} <= set(names)
        assert not [n for n in names if n.startswith(".")]  # nothing set aside is left
        assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder beside it
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
