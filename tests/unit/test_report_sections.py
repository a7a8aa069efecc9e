"""The report's newer sections: accuracy per stage, accuracy against cost with the dense
point, energy as a table (a plot only when it shows a difference), settings and machine,
and sections added to a written report."""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings

import pytest
import torch

pytest.importorskip("matplotlib")

from conftest import MLP  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import train  # noqa: E402
from prunekit.report import environment, usage_snippet, write_report  # noqa: E402
from prunekit.report.html import add_sections  # noqa: E402
from prunekit.report.sections import usage  # noqa: E402

STAGES = [{"stage": "start (untrained)", "accuracy": 0.12}, {"stage": "finetune", "accuracy": 0.95, "loss": 0.2},
          {"stage": "prune", "accuracy": 0.80, "sparsity": 0.8}, {"stage": "finetune", "accuracy": 0.94, "loss": 0.4}]
MACHINE = {"date": "2030-01-02T03:04:05+00:00", "prunekit": "9.9", "load average (1, 5, 15 min)": "0.10, 0.20, 0.30"}


def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>\n', text, re.DOTALL))


@pytest.fixture(scope="module")
def measured(digits_batches):
    torch.manual_seed(0)
    dense = MLP()
    model = copy.deepcopy(dense)
    result = pk.prune(model, 0.8)
    x = digits_batches[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = pk.measure(dense, x, latency=False), pk.measure(model, x, latency=False)
    ev = lambda m: train.evaluate(m, digits_batches)  # noqa: E731
    return dict(before=before, after=after, result=result, before_acc=ev(dense), after_acc=ev(model))


def test_stages_plot_and_table(measured, tmp_path):
    path = write_report(tmp_path / "r.html", **measured, stages=STAGES, machine=MACHINE)
    text = path.read_text(encoding="utf-8")
    sec = _sections(text)
    assert list(sec)[:3] == ["summary", "stages", "cost"]
    assert sec["stages"].count("<img ") == 1
    for row in ("<td>start (untrained)</td><td>12.00%</td><td>–</td>",
                "<td>2. prune</td><td>80.00%</td><td>-15.00 pt</td><td>sparsity 80.00%</td>",
                "<td>3. finetune</td><td>94.00%</td><td>+14.00 pt</td><td>last training loss 0.4</td>"):
        assert row in sec["stages"]
    md = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "| 2. prune | 80.00% | -15.00 pt | sparsity 80.00% |" in md


def test_cost_section_has_the_dense_point_and_the_runs(measured, tmp_path):
    b, a = measured["before"], measured["after"]
    rows = [{"method": "lamp", "sparsity": 0.5, "accuracy": 0.9, "nonzero_params": 2500, "macs": 2400.0}]
    path = write_report(tmp_path / "r.html", **measured, tradeoff=rows, machine=MACHINE)
    sec = _sections(path.read_text(encoding="utf-8"))["cost"]
    assert sec.count("<img ") == 1
    assert f"<td>before pruning (dense)</td><td>{measured['before_acc']:.2%}</td><td>{b.nonzero_params:,}</td>" in sec
    assert f"<td>this model</td><td>{measured['after_acc']:.2%}</td><td>{a.nonzero_params:,}</td>" in sec
    assert "<td>lamp</td><td>90.00%</td><td>2,500</td><td>2.40k</td>" in sec
    # One point is not a trade-off: no section without the dense accuracy.
    path = write_report(tmp_path / "one.html", before=b, after=a, after_acc=0.9, machine=MACHINE)
    assert "cost" not in _sections(path.read_text(encoding="utf-8"))


def test_energy_is_a_table_and_a_plot_only_when_it_differs(measured, tmp_path):
    b, a = measured["before"], measured["after"]
    assert b.energy_uj / a.energy_uj < 1.1  # unstructured zeros stored densely: almost no change
    sec = _sections(write_report(tmp_path / "same.html", before=b, after=a, machine=MACHINE).read_text())["energy"]
    assert "<img " not in sec and "No plot" in sec and f"<td>{a.energy_uj:.4g}</td>" in sec
    smaller = dataclasses.replace(a, memory_uj=a.memory_uj / 3, energy_uj=a.compute_uj + a.memory_uj / 3)
    sec = _sections(write_report(tmp_path / "diff.html", before=b, after=smaller, machine=MACHINE).read_text())["energy"]
    assert sec.count("<img ") == 1 and "No plot" not in sec
    assert f"<td>{b.energy_uj / smaller.energy_uj:.1f}×</td>" in sec


def test_settings_and_machine(measured, tmp_path):
    settings = {"recipe": "demo", "seed": 3, "stage 1": {"prune": {"sparsity": 0.8, "ignore": []}}}
    path = write_report(tmp_path / "r.html", **measured, settings=settings, machine=MACHINE)
    sec = _sections(path.read_text(encoding="utf-8"))["settings"]
    assert '<table class="kv">' in sec and "<td>seed</td><td>3</td>" in sec
    assert "<td>stage 1</td><td>prune={sparsity=0.8}</td>" in sec  # empty values left out
    assert "<td>date</td><td>2030-01-02T03:04:05+00:00</td>" in sec and "Latency was not timed" in sec
    env = environment()
    for key in ("date", "prunekit", "torch", "Python", "CPU", "CPU capability (torch)", "cores available",
                "threads (torch)", "load average (1, 5, 15 min)"):
        assert env[key], key
    assert env["prunekit"] == pk.__version__ and env["torch"] == torch.__version__
    default = _sections(write_report(tmp_path / "d.html", **measured).read_text(encoding="utf-8"))["settings"]
    assert f"<td>torch</td><td>{torch.__version__}</td>" in default


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(stages=[{"stage": "prune", "accuracy": "x"}]), r"stages\[0\]\['accuracy'\]='x' is not a finite number"),
        (dict(stages=[{"stage": "", "accuracy": 0.5}]), r"stages\[0\]\['stage'\]='' must be a non-empty string"),
        (dict(stages=[{"stage": "prune", "accuracy": 0.5, "sparsity": 2}]), r"stages\[0\]\['sparsity'\]=2"),
        (dict(stages=[]), r"stages=\[\] has no rows"),
        (dict(settings=["seed", 0]), r"settings must be a dict with str keys or None, got \['seed', 0\]"),
        (dict(machine={"cores": 2}), r"machine\['cores'\]=2 must be a str"),
        (dict(tradeoff=[{"method": "a", "sparsity": 0.5, "accuracy": 0.9, "macs": 0}]), r"\['macs'\]=0 must be a positive"),
    ],
)
def test_bad_new_arguments_name_the_value_and_write_nothing(measured, tmp_path, change, match):
    with pytest.raises(pk.PruneError, match=match):
        write_report(tmp_path / "r.html", **measured, **change)
    assert list(tmp_path.iterdir()) == []


def test_added_sections_go_in_order_and_replace_their_namesakes(measured, tmp_path):
    path = write_report(tmp_path / "r.html", **measured, machine=MACHINE)
    before_md = path.with_suffix(".md").read_text(encoding="utf-8")
    first = usage("print('one')\n")
    add_sections(path, [first])
    add_sections(path, [usage("print('two')\n")])  # replaces the first, does not add a second
    text, md = path.read_text(encoding="utf-8"), path.with_suffix(".md").read_text(encoding="utf-8")
    assert list(_sections(text)) == ["summary", "cost", "usage", "layers", "energy", "settings"]
    assert "print(&#x27;two&#x27;)" in text and "one" not in _sections(text)["usage"]
    assert md.count("## Use the saved model") == 1 and "```python\nprint('two')\n```" in md
    # everything else is as it was
    assert md.replace(md[md.index("## Use the saved model"):md.index("## Sparsity per layer")], "") == before_md
    (tmp_path / "other.html").write_text("<html><body>not ours</body></html>")
    (tmp_path / "other.md").write_text("# not ours\n")
    with pytest.raises(pk.PruneError, match=r"other\.html' is not a report prunekit wrote"):
        add_sections(tmp_path / "other.html", [first])


def test_usage_snippets_compile_for_factories_and_dtypes():
    spec = {"metadata": {"input_shape": [1, 16], "input_dtype": "torch.int64"}}
    recipe = {"seed": 2, "model": {"factory": "mypkg.models:make", "kwargs": {"width": 8}},
              "data": {"factory": "mypkg.data:load", "test_samples": 100}}
    code = usage_snippet(spec, recipe, 0.5)
    compile(code, "snippet", "exec")
    assert "from mypkg.models import make as make_model" in code
    assert "model=make_model(**{'width': 8})" in code and "dtype=torch.int64" in code
    assert "from prunekit import datasets, train" in code and "seed=2" in code
    plain = usage_snippet({"zoo": {"name": "mnistnet"}, "metadata": {"input_shape": [1, 1, 28, 28]}}, {}, None)
    compile(plain, "snippet", "exec")
    assert "pk.load('model')" in plain and "evaluate" not in plain


def test_group_tables_count_units_and_channels_under_their_own_names():
    """Through a grouped conv one unit is several channels: the tables name both, and their
    channel columns add up to the zeroed output channels."""
    from prunekit.cli.format import prune_tables
    from prunekit.report.sections import layers

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 4, 8, 8)
    res = pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    zeroed = sum(int((m.weight.flatten(1) == 0).all(1).sum()) for m in (model.c1, model.c2))
    (group,) = res.groups
    assert (group.units, group.pruned_units, group.channels, group.pruned_channels) == (4, 2, 16, zeroed) and zeroed == 8
    assert f"{group.name:<5}         4        2       16        8" in res.summary()
    assert "| units | removed units | output channels | removed channels |" in layers(res)[3]
    assert "| c1+c2 | 4 | 2 | 16 | 8 |" in layers(res)[3]
    table = prune_tables(res, "t")[-1]
    assert [c.header for c in table.columns] == ["group", "units", "pruned", "pruned share", "output channels",
                                                 "pruned channels"]
