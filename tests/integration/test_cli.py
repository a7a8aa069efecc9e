"""The `prunekit` command line, driven through typer's runner (same process, real data)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["demo"], ["prune"], ["train"], ["evaluate"], ["measure"], ["list"]])
def test_help_everywhere(cmd):
    res = runner.invoke(app, cmd + ["--help"])
    assert res.exit_code == 0
    assert "Usage" in res.output


def test_list_shows_registries():
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0
    for name in ("magnitude", "hessian", "activation_entropy", "lamp", "erk", "channel", "mnistnet"):
        assert name in res.output


def test_prune_then_measure_saved_model(tmp_path):
    out = tmp_path / "lenet"
    res = runner.invoke(app, ["prune", "lenet300100", "--out", str(out), "--sparsity", "0.9", "--allocation", "lamp"])
    assert res.exit_code == 0, res.output
    assert "sparsity over pruned layers: 90.00 %" in res.output
    assert "235,200" in res.output  # classifier.0.weight: counts with thousands separators
    assert "note: lenet300100 has no trained weights" in " ".join(res.output.split())
    assert "accuracy on the mnist test set (10,000 images):" in " ".join(res.output.split())
    spec = json.loads((out / "spec.json").read_text())
    assert spec["zoo"]["name"] == "lenet300100"
    assert spec["metadata"]["data"] == {"name": "mnist", "flatten": False}
    res = runner.invoke(app, ["measure", str(out), "--json", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # warnings go to stderr; stdout is JSON only
    assert data["params"] == 266_610
    assert data["zero_fraction_all"] == pytest.approx(1 - data["nonzero_params"] / data["params"])
    assert data["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert data["flops_effective"] < 0.2 * data["flops_dense"]


def test_prune_over_an_earlier_save_needs_overwrite(tmp_path):
    out = tmp_path / "p"
    args = ["prune", "lenet300100", "--out", str(out), "--sparsity", "0.5", "--threads", "1"]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "model.safetensors").read_bytes()
    res = runner.invoke(app, args[:-4] + ["--sparsity", "0.8"])
    assert res.exit_code == 2 and "pass --overwrite" in res.stderr
    assert (out / "model.safetensors").read_bytes() == first
    res = runner.invoke(app, args[:-4] + ["--sparsity", "0.8", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


@pytest.mark.slow
def test_prune_to_a_measured_latency_target(tmp_path):
    out = tmp_path / "fast"
    res = runner.invoke(app, ["prune", "mnistnet", "--out", str(out), "--granularity", "channel", "--latency", "0.7",
                              "--latency-batch", "8", "--compact"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("latency (eager, batch 8): dense"))
    spec = json.loads((out / "spec.json").read_text())["metadata"]
    lat = spec["latency"]
    assert lat["target"] == 0.7 and lat["runtime"] == "eager" and lat["batch_size"] == 8
    assert f"pruned {lat['measured_ms']:.3f} ms" in line and lat["measured_allocations"] >= 1
    assert line.endswith("meets it") or "misses it" in line  # a busy machine may miss; it must say which
    model = pk.load(out)  # compacted: fewer parameters than the dense MNISTNet
    assert sum(p.numel() for p in model.parameters()) < 421_642


def test_prune_with_data_criterion_and_nm(tmp_path):
    res = runner.invoke(
        app, ["prune", "lenet300100", "--out", str(tmp_path / "t"), "--criterion", "taylor",
              "--granularity", "2:4", "--calibration", "2"],
    )
    assert res.exit_code == 0, res.output
    assert "50.00 %" in res.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["prune", "lenet300100", "--out", "X", "--sparsity", "1.5"], "outside [0, 1)"),
        (["prune", "lenet300100", "--out", "X", "--sparsity", "0.5", "--criterion", "nope"], "unknown criterion 'nope'"),
        (["prune", "resnet9000", "--out", "X", "--sparsity", "0.5"], "neither a saved folder nor a zoo model"),
        (["measure", "/nonexistent/folder"], "/nonexistent/folder"),
        (["demo", "--model", "vgg"], "not available for the demo"),
    ],
)
def test_bad_input_exits_2_with_message(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert needle in " ".join(res.output.split())
    assert not (tmp_path / "X").exists()


@pytest.mark.slow
def test_demo_small_run(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--train-samples", "2000", "--sparsity", "0.8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "Dense test accuracy: 99.05%" in text
    for row in ("nonzero params", "FLOPs effective", "latency b1", "size compressed", "energy (est.)"):
        assert row in text
    spec = json.loads((out / "spec.json").read_text())
    assert spec["metadata"]["test_accuracy"] > 0.97


@pytest.mark.slow
def test_prune_then_finetune_keeps_zeros(tmp_path):
    pruned, tuned = tmp_path / "p", tmp_path / "t"
    res = runner.invoke(app, ["prune", "mnistnet", "--out", str(pruned), "--sparsity", "0.9", "--allocation", "lamp"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", str(pruned), "--out", str(tuned), "--epochs", "1", "--lr", "1e-4"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "sparsity 90.00 %" in text
    acc = float(text.split("test accuracy ")[1].split(" %")[0])
    assert acc > 98.0
    res = runner.invoke(app, ["evaluate", str(tuned)])
    assert res.exit_code == 0 and f"test accuracy {acc:.2f} %" in " ".join(res.output.split())


def test_demo_replaces_only_its_own_earlier_save(tmp_path):
    import prunekit as pk
    import prunekit.cli.output as co
    from prunekit import zoo
    from prunekit.cli.common import CliError

    pk.save(zoo.create("lenet300100", hidden=[8, 8]), tmp_path / "demo", metadata={"demo": "mnistnet"})
    pk.save(zoo.create("lenet300100", hidden=[8, 8]), tmp_path / "other")
    co.check_save_out("--out", tmp_path / "demo", overwrite=False, own_demo=True)  # no error
    for path, kwargs in ((tmp_path / "other", {"own_demo": True}), (tmp_path / "demo", {})):
        with pytest.raises(CliError, match="pass --overwrite"):
            co.check_save_out("--out", path, overwrite=False, **kwargs)


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"prunekit {version('prunekit')}"


def test_measure_accepts_a_zoo_name():
    res = runner.invoke(app, ["measure", "mnistnet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["params"] == 421_642


def _accuracies(output: str) -> tuple[float, float]:
    """The two figures of prune's line 'accuracy on the ... test set (...): A % before, B % after (...)'."""
    line = " ".join(output.split()).split("accuracy on the ")[1]
    before, after = line.split("): ", 1)[1].split(" before, ")
    return float(before.split(" %")[0]), float(after.split(" %")[0])


def test_prune_reports_accuracy_of_the_trained_mnistnet(tmp_path):
    out = tmp_path / "m"
    res = runner.invoke(app, ["prune", "mnistnet", "--out", str(out), "--sparsity", "0.5", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "note:" not in res.output  # mnistnet is pretrained
    before, after = _accuracies(res.output)
    assert before == 99.05 and 97.0 < after <= 99.5
    spec = json.loads((out / "spec.json").read_text())
    assert spec["metadata"]["test_accuracy"] == pytest.approx(after / 100, abs=5e-5)
    res = runner.invoke(app, ["evaluate", str(out)])  # the same figure, no flag needed
    assert res.exit_code == 0 and f"mnist test accuracy {after:.2f} %" in res.output


def _digits_folder(path):
    """A small MLP trained briefly on digits, saved with its data set recorded."""
    import prunekit as pk
    from prunekit.datasets import load_digits
    from prunekit.train import fit
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, load_digits("train", flatten=True), epochs=5, lr=3e-3, seed=0, progress=False)
    pk.save(model, path, metadata={"input_shape": [1, 64], "data": {"name": "digits", "flatten": True}})
    return model


def test_prune_calibrates_and_evaluates_on_the_recorded_data_set(tmp_path):
    src, out = tmp_path / "digits", tmp_path / "p"
    _digits_folder(src)
    res = runner.invoke(app, ["prune", str(src), "--out", str(out), "--sparsity", "0.5", "--criterion", "taylor",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "accuracy on the digits test set (450 images):" in " ".join(res.output.split())
    before, after = _accuracies(res.output)
    assert before > 80 and after > 50
    meta = json.loads((out / "spec.json").read_text())["metadata"]
    assert meta["data"] == {"name": "digits", "flatten": True} and meta["input_shape"] == [1, 64]
    res = runner.invoke(app, ["evaluate", str(out)])
    assert res.exit_code == 0 and f"digits test accuracy {after:.2f} %" in res.output


def test_prune_says_why_there_is_no_accuracy(tmp_path):
    import prunekit as pk
    from prunekit import zoo

    src, out = tmp_path / "old", tmp_path / "p"
    pk.save(zoo.create("lenet300100"), src, metadata={"input_shape": [1, 1, 28, 28]})  # no data set recorded
    res = runner.invoke(app, ["prune", str(src), "--out", str(out), "--sparsity", "0.5", "--threads", "1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"no accuracy shown: SOURCE '{src}' does not record its data set" in text
    assert "accuracy on the" not in text


def test_prune_threshold_block_shape_and_ignore(tmp_path):
    res = runner.invoke(app, ["prune", "lenet300100", "--out", str(tmp_path / "t"), "--threshold", "0.3",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "t" / "spec.json").read_text())["metadata"]["pruned"]
    assert cfg["threshold"] == 0.3 and cfg["sparsity"] is None
    res = runner.invoke(app, ["prune", "lenet300100", "--out", str(tmp_path / "b"), "--sparsity", "0.5",
                              "--granularity", "block", "--block-shape", "2x8", "--threads", "1"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "b" / "spec.json").read_text())["metadata"]["pruned"]
    assert cfg["block_shape"] == "(2, 8)" and cfg["granularity"] == "block"  # the config records reprs
    res = runner.invoke(app, ["prune", "lenet300100", "--out", str(tmp_path / "i"), "--sparsity", "0.5",
                              "--ignore", "classifier.4", "--ignore", "classifier.2.weight", "--threads", "1"])
    assert res.exit_code == 0, res.output
    import prunekit as pk

    model = pk.load(tmp_path / "i")
    assert bool((model.classifier[4].weight != 0).all()) and bool((model.classifier[2].weight != 0).all())
    assert float((model.classifier[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
