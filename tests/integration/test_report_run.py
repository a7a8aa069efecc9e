"""The report of `prunekit run digits-quick`: every section, the sizes of the files as on
disk, and a Markdown snippet that runs as written from the run folder."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")
pytest.importorskip("zstandard")  # the packed export

from prunekit import PruneError  # noqa: E402
from prunekit.cli import app  # noqa: E402
from prunekit.report import complete_run_report  # noqa: E402

runner = CliRunner()
SNIPPET_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "digits"
    r = runner.invoke(app, ["run", "digits-quick", "--out", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    return out


def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>\n', text, re.DOTALL))


def test_every_section_of_a_run_report(run):
    text = (run / "report.html").read_text(encoding="utf-8")
    sec = _sections(text)
    assert list(sec) == ["summary", "stages", "cost", "files", "usage", "layers", "energy", "settings"]
    metrics = json.loads((run / "metrics.json").read_text())
    # one row per stage, after the model the run started from
    names = re.findall(r"<tr><td>([^<]*)</td><td>[\d.]+%</td>", sec["stages"])
    assert names == ["start (untrained)"] + [f"{i}. {s['stage']}" for i, s in enumerate(metrics["stages"], 1)]
    for s in metrics["stages"]:
        assert f"<td>{s['accuracy']:.2%}</td>" in sec["stages"]
    before, after = metrics["before_pruning"], metrics["after"]
    assert f"<td>before pruning (dense)</td><td>{before['accuracy']:.2%}</td><td>{before['nonzero_params']:,}</td>" \
        in sec["cost"]
    assert f"<td>this model</td><td>{after['accuracy']:.2%}</td><td>{after['nonzero_params']:,}</td>" in sec["cost"]
    assert sec["stages"].count("<img ") == sec["cost"].count("<img ") == 1
    assert "<img " not in sec["energy"]  # scattered zeros stored densely: a table, no plot
    for needle in ("<td>recipe</td><td>digits-quick</td>", "<td>stage 3</td><td>prune: sparsity=0.8,",
                   "<td>prunekit</td>", "<td>torch</td>", "<td>load average (1, 5, 15 min)</td>",
                   "<td>threads (torch)</td><td>1</td>"):
        assert needle in sec["settings"], needle
    # the command as typed: nothing added (the thread count has its own row), nothing dropped
    typed = html.escape(shlex.join(["prunekit", "run", "digits-quick", "--out", str(run), "--threads", "1"]))
    assert f"<td>command</td><td>{typed}</td>" in sec["settings"]
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_the_report_states_the_sizes_of_the_files_on_disk(run):
    md = (run / "report.md").read_text(encoding="utf-8")
    table = md[md.index("## Files written"):md.index("## Use the saved model")]
    stated = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"^\| (model/\S+) \| ([\d,]+) \|", table, re.M)}
    on_disk = {f"model/{f.name}": os.path.getsize(f) for f in (run / "model").iterdir() if f.is_file()}
    assert stated == on_disk and len(stated) >= 2
    html_sizes = re.findall(r"<tr><td>(model/[^<]+)</td><td>([\d,]+)</td>", _sections(
        (run / "report.html").read_text(encoding="utf-8"))["files"])
    assert {n: int(b.replace(",", "")) for n, b in html_sizes} == on_disk


def test_every_python_snippet_of_the_markdown_runs_from_the_run_folder(run):
    md = (run / "report.md").read_text(encoding="utf-8")
    snippets = re.findall(r"^```python\n(.*?)^```$", md, re.M | re.S)
    assert snippets, "report.md has no python snippet"
    after = json.loads((run / "metrics.json").read_text())["after"]["accuracy"]
    for code in snippets:
        assert "..." not in code
        proc = subprocess.run([sys.executable, "-c", code], cwd=run, capture_output=True, text=True,
                              timeout=SNIPPET_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "output shape: (1, 10)" in proc.stdout
        assert f"test accuracy: {after:.2%}" in proc.stdout  # the packed save loads the same weights


def test_completing_again_changes_only_the_machine(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    complete_run_report(copy, command="again")
    a, b = (run / "report.md").read_text(encoding="utf-8"), (copy / "report.md").read_text(encoding="utf-8")
    cut = lambda md: md[:md.index("## Settings and machine")]  # noqa: E731
    assert cut(a) == cut(b) and b.count("## Accuracy per stage") == 1
    (copy / "metrics.json").write_text("{}")
    with pytest.raises(PruneError, match=r"metrics\.json' is not what prunekit run writes"):
        complete_run_report(copy)
