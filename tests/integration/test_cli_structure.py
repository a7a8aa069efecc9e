"""`prunekit inspect` and `prunekit prune --compact` on the trained MNISTNet."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli import app

runner = CliRunner()


def test_inspect_lists_groups_and_changes_nothing():
    r = runner.invoke(app, ["inspect", "mnistnet", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [g["name"] for g in report["groups"]] == ["features.0", "features.3", "classifier.0"]
    flat = next(m for m in report["groups"][1]["members"] if m["param"] == "classifier.0.weight")
    assert flat["size"] == 64 * 7 * 7  # flatten: every channel feeds 49 input features
    assert report["unprunable"] == ["classifier.2.weight"]
    r = runner.invoke(app, ["inspect", "mnistnet", "--input-shape", "1,2,3"])
    assert r.exit_code == 2 and "(1, 2, 3)" in r.output


def test_prune_compact_saves_a_smaller_model_that_reloads(tmp_path):
    out = tmp_path / "small"
    r = runner.invoke(app, ["prune", "mnistnet", "--out", str(out), "--sparsity", "0.5", "--granularity", "channel",
                            "--allocation", "uniform", "--compact", "--calibration", "1"])
    assert r.exit_code == 0, r.output
    model = pk.load(out)
    assert model.features[0].out_channels == 16 and model.classifier[0].in_features == 32 * 49
    assert sum(p.numel() for p in model.parameters()) == 105_866
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    r = runner.invoke(app, ["prune", "mnistnet", "--out", str(tmp_path / "x"), "--sparsity", "0.5", "--compact"])
    assert r.exit_code == 2 and "--compact needs" in r.output
