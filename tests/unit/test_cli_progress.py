"""Progress bars name the stage and show an ETA, on stderr only; nothing is drawn when
stderr is not a terminal."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import prunekit.progress as progress_mod
from prunekit.cli import app
from prunekit.progress import StageProgress, fit_with_progress

runner = CliRunner()
BAR = "━"


@pytest.fixture
def terminal(monkeypatch):
    """Draw the bars as on a terminal, into whatever sys.stderr is when they start."""
    monkeypatch.setattr(progress_mod, "console", lambda: Console(file=sys.stderr, force_terminal=True, width=160))


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_stage_names_itself_counts_fit_steps_and_shows_an_eta(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(progress_mod, "console", lambda: Console(file=buf, force_terminal=True, width=160))
    model = torch.nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    with StageProgress(title="all of it", total=4) as bars, bars.stage("stage 1/1 finetune", 4) as stage:
        from prunekit.train import fit

        fit(model, data, epochs=1, batch_size=10, progress=False, callbacks=[stage])
    assert stage.done == 4
    text = _plain(buf.getvalue())
    assert "stage 1/1 finetune" in text and "all of it" in text and "ETA" in text and "4/4" in text
    assert "loss " in text


def test_nothing_is_drawn_off_a_terminal(capsys):
    model = torch.nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
    fit_with_progress("training", model, data, epochs=1, batch_size=10)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_run_names_every_stage_on_stderr(terminal, tmp_path):
    res = runner.invoke(app, ["run", "digits-quick", "--out", str(tmp_path / "run"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    err = _plain(res.stderr)
    for name in ("run digits-quick", "stage 1/5 finetune 4 epochs", "stage 3/5 prune 80%", "stage 5/5 export packed"):
        assert name in err, name
    assert "ETA" in err
    assert BAR not in res.stdout and "ETA" not in res.stdout


def test_compare_names_method_and_phase_and_keeps_json_clean(terminal, tmp_path):
    out = tmp_path / "c.json"
    res = runner.invoke(app, ["compare", "--limit", "300", "--epochs", "2", "--methods", "oneshot", "--threads", "1",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    err = _plain(res.stderr)
    assert "compare: 2 methods × 1 seed" in err and "seed 0 · oneshot · fine-tuning 1 epoch" in err and "ETA" in err
    assert BAR not in res.stdout
    json.loads(out.read_text())  # the --json file is JSON only


def test_search_shows_its_runs(terminal, tmp_path):
    res = runner.invoke(app, ["search", "--criteria", "magnitude", "--sparsities", "0.5", "--folds", "2",
                              "--samples", "200", "--train-epochs", "0", "--finetune-epochs", "1",
                              "--results", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 0, res.output
    err = _plain(res.stderr)
    assert re.search(r"search: \d+ runs \(\d+ settings × 2 folds × 1 seed\)", err), err[-2000:]
    assert "ETA" in err and BAR not in res.stdout
