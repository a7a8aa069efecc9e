"""Recipes: validation errors name the field and the line; runs reproduce."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("zstandard")

from prunekit.recipes import Recipe, builtin, load_recipe, run_recipe  # noqa: E402

GOOD = """\
name: t
seed: 0
model: {zoo: lenet300100, kwargs: {in_features: 64, hidden: [32]}}
data: {name: digits, flatten: true, batch_size: 64}
stages:
  - finetune: {epochs: 1, lr: 0.003}
  - prune: {sparsity: 0.5}
"""

# (the recipe, the field path the error must name, its line)
BAD = [
    (GOOD.replace("seed: 0", "seed: -1"), "seed", 2),
    (GOOD.replace("zoo: lenet300100", "zoo: lenet9"), "model", 3),
    (GOOD.replace("name: digits", "name: cifar"), "data.name", 4),
    (GOOD.replace("batch_size: 64}", "batch_size: 0}"), "data.batch_size", 4),
    (GOOD.replace("epochs: 1,", "epochs: -2,"), "stages.0.finetune.epochs", 6),
    (GOOD.replace("lr: 0.003", "lr: fast"), "stages.0.finetune.lr", 6),
    (GOOD.replace("sparsity: 0.5", "sparsity: 1.5"), "stages.1.prune.sparsity", 7),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, criterion: magnitud"), "stages.1.prune.criterion", 7),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, alocation: lamp"), "stages.1.prune.alocation", 7),
    (GOOD.replace("- prune:", "- prun:"), "stages.1", 7),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, granularity: '5:4'"), "stages.1.prune.granularity", 7),
    (GOOD + "  - export: {format: safetensors, quantize: int8}\n", "stages.2.export", 8),
    (GOOD + "  - export: {format: packed, quantize: int3}\n", "stages.2.export", 8),
    (GOOD.replace("name: t\n", ""), "name", None),
    (GOOD.replace("model: {zoo: lenet300100, kwargs: {in_features: 64, hidden: [32]}}", "model: {}"), "model", 3),
    (GOOD + "extra_key: 1\n", "extra_key", 8),
    # what the run itself would refuse, refused before anything runs, with the line
    (GOOD.replace("sparsity: 0.5", "criterion: magnitude"), "give sparsity= (fraction of weights to remove)", 7),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.5, threshold: 0.1"), "not both", 7),
    (GOOD.replace("sparsity: 0.5", "sparsity: 0.9, granularity: '2:4'"), "conflicts with N:M 2:4", 7),
    (GOOD.replace("lr: 0.003", "lr: .inf"), "stages.0.finetune.lr", 6),
    (GOOD.replace("stages:\n", "stages:\n  - export: {format: packed}\n"), "it can only be the last stage", 6),
]


@pytest.mark.parametrize("text,field,line", BAD)
def test_malformed_recipes_name_field_and_line(text, field, line):
    with pytest.raises(ValueError) as e:
        Recipe.from_yaml(text, "r.yaml")
    msg = str(e.value)
    assert field in msg, msg
    if line is not None:
        assert f"r.yaml:{line}:" in msg, msg


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(ValueError, match="not valid YAML"):
        Recipe.from_yaml("a: [1, 2", "x.yaml")
    with pytest.raises(ValueError, match="mapping"):
        Recipe.from_yaml("- 1\n- 2\n", "x.yaml")
    with pytest.raises(ValueError, match="neither a file nor a built-in"):
        load_recipe("no-such-recipe")


def test_round_trip_and_builtins():
    r = Recipe.from_yaml(GOOD)
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert {"digits-quick", "mnistnet-channels", "mnistnet-sparse"} <= set(builtin())
    for name in builtin():
        assert load_recipe(name).name == name


def test_run_reproduces_and_writes_outputs(tmp_path):
    r = load_recipe("digits-quick")
    a = run_recipe(r, tmp_path / "a")
    b = run_recipe(Recipe.from_yaml(r.to_yaml()), tmp_path / "b")
    assert a == b  # same recipe, same seed: the same metrics
    assert a["after"]["sparsity"] == pytest.approx(0.8, abs=0.01) and a["after"]["accuracy"] > 0.85
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == json.loads(json.dumps(a))
    assert (tmp_path / "a" / "model" / "model.pkpack").is_file()
    assert Recipe.from_yaml((tmp_path / "a" / "recipe.yaml").read_text()) == r
    packed = tmp_path / "a" / "model" / "model.pkpack"
    assert a["files"]["model/model.pkpack"] == packed.stat().st_size < a["after"]["size_bytes"]
    if a["report"]:  # matplotlib installed: the HTML report and its Markdown twin
        html = (tmp_path / "a" / "report.html").read_text()
        assert "data:image/png;base64," in html and (tmp_path / "a" / "report.md").is_file()
        # The report states the size of the file on disk, not of the model as safetensors.
        md = (tmp_path / "a" / "report.md").read_text()
        assert f"| model/model.pkpack | {packed.stat().st_size:,} |" in md
        # The same complete report as `prunekit run`: stages, snippet, settings and machine.
        for section in ("stages", "cost", "files", "usage", "layers", "energy", "settings"):
            assert f'<section id="{section}">' in html, section
        assert "<td>recipe</td><td>digits-quick</td>" in html and "<td>command</td>" not in html


def test_run_recipe_shows_the_command_it_is_given(tmp_path):
    pytest.importorskip("matplotlib")
    m = run_recipe(Recipe.from_yaml(GOOD), tmp_path, command="python train.py --fast")
    assert m["report"] == "report.html"
    html = (tmp_path / "report.html").read_text()
    assert "<td>command</td><td>python train.py --fast</td>" in html
    assert html.count('<section id="stages">') == 1 and "start (untrained)" in html


@pytest.mark.parametrize("schedule", ["gradual", "iterative"])
def test_pruning_during_training_stages(schedule, tmp_path):
    text = GOOD.replace("- prune: {sparsity: 0.5}", f"- prune: {{sparsity: 0.9, schedule: {schedule}, epochs: 2, lr: 0.003}}")
    m = run_recipe(Recipe.from_yaml(text), tmp_path)
    assert m["after"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert m["after"]["accuracy"] > 0.6
    with pytest.raises(ValueError, match="epochs >= 1"):
        Recipe.from_yaml(GOOD.replace("- prune: {sparsity: 0.5}", f"- prune: {{sparsity: 0.5, schedule: {schedule}}}"))


def test_metrics_json_gets_the_mode_open_would_give(tmp_path):
    from prunekit.recipes import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_quantized_export_reports_the_accuracy_of_the_saved_model(tmp_path):
    import prunekit as pk
    from prunekit import datasets
    from prunekit.train import evaluate

    text = GOOD + "  - export: {format: packed, quantize: 'codebook:1'}\n"
    metrics = run_recipe(Recipe.from_yaml(text), tmp_path / "q", progress=False)
    saved = pk.load(tmp_path / "q" / "model")
    test = datasets.load_digits("test", flatten=True)
    acc = evaluate(saved, test)
    assert metrics["after"]["accuracy"] == pytest.approx(acc, abs=1e-9) == metrics["stages"][-1]["accuracy"]
    assert metrics["after"]["accuracy_before_quantization"] != metrics["after"]["accuracy"]  # 1 bit moves it
