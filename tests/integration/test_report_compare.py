"""`prunekit compare --report DIR`: a self-contained report.html whose names and numbers
are those of the JSON, and one-line errors for a bad --report before any training."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from prunekit import PruneError  # noqa: E402
from prunekit.cli import app  # noqa: E402
from prunekit.report.compare import method_summary, write_compare_report  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    res = runner.invoke(app, ["compare", "--limit", "400", "--epochs", "2", "--methods", "oneshot,l1", "--seeds", "2",
                              "--threads", "1", "--json", str(root / "c.json"), "--report", str(root / "rep")])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.stdout
    return root


def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>\n', text, re.DOTALL))


def test_the_report_holds_every_method_with_the_numbers_of_the_json(compared):
    payload = json.loads((compared / "c.json").read_text())
    assert json.loads((compared / "rep" / "compare.json").read_text()) == payload
    page = (compared / "rep" / "report.html").read_text(encoding="utf-8")
    sec = _sections(page)
    assert list(sec) == ["methods", "cost", "settings", "runs"]
    summary = method_summary(payload["rows"])
    assert [m["method"] for m in summary] == ["dense", "oneshot", "l1"]
    dense = summary[0]
    for m in summary:
        row = re.search(rf"<tr><td>{m['method']}</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>",
                        sec["methods"])
        assert row, m["method"]
        assert row.group(1) == f"{m['accuracy']:.2%} ± {100 * m['std']:.2f}"
        assert row.group(2) == ("—" if m is dense else f"{100 * (m['accuracy'] - dense['accuracy']):+.2f}")
        assert row.group(3) == f"{m['sparsity']:.2%}" and row.group(4) == f"{round(m['nonzero_params']):,}"
    for r in payload["rows"]:  # every run, per seed
        assert f"<tr><td>{r['method']}</td><td>{r['seed']}</td><td>{r['accuracy']:.2%}</td>" in sec["runs"]
        assert r["nonzero_params"] > 0 and r["flops_effective"] > 0
    ratio = dense["nonzero_params"] / summary[1]["nonzero_params"]
    assert f"<td>{ratio:.1f}×</td>" in sec["cost"]
    assert sec["methods"].count("<img ") == sec["cost"].count("<img ") == 1
    assert "<td>target sparsity</td><td>99.00%</td>" in sec["settings"] and "<td>torch</td>" in sec["settings"]
    assert "http://" not in page and "https://" not in page and "<script" not in page
    md = (compared / "rep" / "report.md").read_text(encoding="utf-8")
    assert "## Accuracy per method" in md and "| oneshot |" in md and "data:image" not in md


@pytest.mark.parametrize("setup,needle", [
    ("file", "is a file; give a folder path"),
    ("foreign", "holds files that are not a prunekit report (notes.txt)"),
    ("earlier", "already holds a report; pass --overwrite"),
])
def test_a_bad_report_folder_is_refused_before_training(tmp_path, setup, needle):
    target = tmp_path / "rep"
    if setup == "file":
        target.write_text("x")
    else:
        target.mkdir()
        (target / ("notes.txt" if setup == "foreign" else "report.html")).write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = runner.invoke(app, ["compare", "--limit", "50", "--epochs", "2", "--report", str(target)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --report {str(target)!r}") and needle in lines[0], res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_bad_rows_name_the_value_and_write_nothing(tmp_path):
    path = tmp_path / "r" / "report.html"
    with pytest.raises(PruneError, match=r"rows\[1\]\['accuracy'\]=1.5 is not a number in \[0, 1\]"):
        write_compare_report(path, [{"method": "dense", "accuracy": 0.9, "sparsity": 0.0},
                                    {"method": "oneshot", "accuracy": 1.5, "sparsity": 0.9}])
    with pytest.raises(PruneError, match=r"rows\[0\] lacks \['sparsity'\]"):
        write_compare_report(path, [{"method": "dense", "accuracy": 0.9}])
    assert not (tmp_path / "r").exists()


def test_rows_without_costs_give_a_report_without_the_trade_off(tmp_path):
    path = write_compare_report(tmp_path / "report.html", [{"method": "dense", "accuracy": 0.9, "sparsity": 0.0},
                                                          {"method": "gradual", "accuracy": 0.88, "sparsity": 0.9}],
                                machine={"date": "today"})
    sec = _sections(path.read_text(encoding="utf-8"))
    assert list(sec) == ["methods", "settings"] and "<td>-2.00</td>" in sec["methods"]
