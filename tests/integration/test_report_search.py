"""`prunekit search --report DIR`: a self-contained report.html whose names and numbers are
those of search.json (every setting, the dense baseline, the Pareto front), and one-line
errors for a bad --report before any work."""

from __future__ import annotations

import html
import json
import re

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from prunekit import PruneError  # noqa: E402
from prunekit.cli import app  # noqa: E402
from prunekit.report.search import setting_columns, write_search_report  # noqa: E402

runner = CliRunner()
ARGS = ["search", "--samples", "200", "--folds", "2", "--train-epochs", "1", "--finetune-epochs", "1",
        "--criteria", "magnitude,taylor", "--sparsities", "0.5,0.9"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    res = runner.invoke(app, [*ARGS, "--results", str(root / "runs.jsonl"), "--report", str(root / "rep")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stdout and "report.html" in res.stdout
    return root


def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>\n', text, re.DOTALL))


def _rows(section: str) -> list[list[str]]:
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr)] for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def _macs(r):
    v = r["flops_effective"] / 2  # effective MACs = FLOPs ÷ 2
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.2f}k" if v >= 1e3 else f"{v:,.0f}"


def _acc(r):
    return f"{r['accuracy_mean']:.2%} ± {100 * r['accuracy_std']:.2f}"


def test_the_report_holds_every_setting_with_the_numbers_of_the_json(searched):
    payload = json.loads((searched / "rep" / "search.json").read_text())
    rows, dense, front = payload["rows"], payload["dense"], payload["pareto"]
    assert dense is not None and len(rows) == 6  # (magnitude, taylor, random) × 2 sparsities
    assert {r["setting"]["criterion"] for r in rows} == {"magnitude", "taylor", "random"}
    page = (searched / "rep" / "report.html").read_text(encoding="utf-8")
    sec = _sections(page)
    assert list(sec) == ["tradeoff", "settings-table", "settings"]
    options = setting_columns(rows)
    assert options[0] == "criterion"
    expected = [["dense", *["–"] * (len(options) - 1), _acc(dense), "–", f"{dense['nonzero_params']:,}",
                 _macs(dense), str(dense["runs"]), "reference"]]
    for r in rows:  # best mean accuracy first, as in the JSON
        mark = "Pareto front" if r["key"] in front else ("" if r["above_chance"] else "at chance")
        expected.append([*(str(r["setting"][o]) for o in options), _acc(r),
                         f"{100 * (r['accuracy_mean'] - dense['accuracy_mean']):+.2f}", f"{r['nonzero_params']:,}",
                         _macs(r), str(r["runs"]), mark])
    assert _rows(sec["settings-table"]) == expected
    by_key = {r["key"]: r for r in rows}
    front_rows = _rows(sec["tradeoff"]) if front else []
    assert [c[0] for c in front_rows] == front  # fewest parameters first, as in the JSON
    for cells in front_rows:
        r = by_key[cells[0]]
        assert cells[1:] == [_acc(r), f"{100 * (r['accuracy_mean'] - dense['accuracy_mean']):+.2f}",
                             f"{r['nonzero_params']:,}", f"{dense['nonzero_params'] / r['nonzero_params']:.1f}×"]
    assert f"{len(front)} of {len(rows)} settings" in sec["tradeoff"] or not front
    assert f"chance {payload['chance']:.2%}" in sec["tradeoff"]
    assert sec["tradeoff"].count("<img ") == 1 and page.count("<img ") == 1
    assert "<td>folds</td><td>2</td>" in sec["settings"] and "<td>torch</td>" in sec["settings"]
    assert "http://" not in page and "https://" not in page and "<script" not in page
    md = (searched / "rep" / "report.md").read_text(encoding="utf-8")
    assert "## Every setting" in md and f"| {_acc(dense)} |" in md and "data:image" not in md


def test_rerunning_the_search_resumes_and_replaces_its_report(searched):
    before = json.loads((searched / "rep" / "search.json").read_text())
    res = runner.invoke(app, [*ARGS, "--results", str(searched / "runs.jsonl"), "--report", str(searched / "rep")])
    assert res.exit_code == 0, res.output
    after = json.loads((searched / "rep" / "search.json").read_text())
    assert after["rows"] == before["rows"] and after["pareto"] == before["pareto"]  # nothing retrained
    assert sorted(p.name for p in (searched / "rep").iterdir()) == ["report.html", "report.md", "search.json"]


@pytest.mark.parametrize("setup,needle", [
    ("file", "is a file; give a folder path"),
    ("foreign", "holds files that are not a prunekit search report (notes.txt)"),
    ("compare", "holds files that are not a prunekit search report (compare.json)"),
    ("no-json", "holds files that are not a prunekit search report (report.html)"),
])
def test_a_bad_report_folder_is_refused_before_any_work(tmp_path, setup, needle):
    target = tmp_path / "rep"
    if setup == "file":
        target.write_text("x")
    else:
        target.mkdir()
        names = {"foreign": ["notes.txt"], "compare": ["report.html", "compare.json"], "no-json": ["report.html"]}
        for name in names[setup]:
            (target / name).write_text("mine")
    before = sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*"))
    res = runner.invoke(app, [*ARGS, "--results", str(tmp_path / "out" / "runs.jsonl"), "--report", str(target)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --report {str(target)!r}") and needle in lines[0], res.stderr
    assert res.stdout == ""
    assert sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*")) == before


def test_results_inside_the_report_folder_are_refused(tmp_path):
    res = runner.invoke(app, [*ARGS, "--results", str(tmp_path / "rep" / "runs.jsonl"), "--report", str(tmp_path / "rep")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds --results" in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_results_give_a_named_error_and_write_nothing(tmp_path, searched):
    payload = json.loads((searched / "rep" / "search.json").read_text())
    bad = {**payload, "rows": [{**payload["rows"][0], "accuracy_mean": 1.5}]}
    with pytest.raises(PruneError, match=r"rows\[0\]\['accuracy_mean'\]=1.5 is not a number in \[0, 1\]"):
        write_search_report(tmp_path / "r" / "report.html", bad)
    with pytest.raises(PruneError, match="pareto.*not in rows"):
        write_search_report(tmp_path / "r" / "report.html", {**payload, "pareto": ["nope"]})
    assert not (tmp_path / "r").exists()


def test_a_search_result_object_gives_the_same_tables_as_its_dict(tmp_path, searched):
    from prunekit.search import SearchResult

    payload = json.loads((searched / "rep" / "search.json").read_text())
    by_key = {r["key"]: r for r in payload["rows"]}
    res = SearchResult(payload["rows"], [by_key[k] for k in payload["pareto"]], payload["runs"],
                       dense=payload["dense"], chance=payload["chance"], floor=payload["floor"])
    assert res.to_dict() == {k: payload[k] for k in ("rows", "pareto", "dense", "chance", "floor", "runs")}
    machine = {"date": "today"}
    a = write_search_report(tmp_path / "a.html", res, machine=machine)
    b = write_search_report(tmp_path / "b.html", res.to_dict(), machine=machine)
    assert _sections(a.read_text())["settings-table"] == _sections(b.read_text())["settings-table"]
