"""`prunekit analyze --report DIR`: the sensitivity curves in a self-contained report whose
table holds the numbers of sensitivity.json."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from prunekit import PruneError  # noqa: E402
from prunekit.cli import app  # noqa: E402
from prunekit.report.analyze import write_sensitivity_report  # noqa: E402
from prunekit.sensitivity import SensitivityReport  # noqa: E402

runner = CliRunner()


def test_analyze_report_holds_the_curves(tmp_path):
    out = tmp_path / "rep"
    res = runner.invoke(app, ["analyze", "mnistnet", "--samples", "200", "--sparsities", "0.5,0.9", "--threads", "1",
                              "--report", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "sensitivity.json").read_text())
    page = (out / "report.html").read_text(encoding="utf-8")
    sec = dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>\n', page, re.DOTALL))
    assert list(sec) == ["sensitivity", "settings"] and sec["sensitivity"].count("<img ") == 1
    for layer, points in data["curves"].items():
        cells = "".join(f"<td>{acc:.2%}</td>" for _, acc in points)
        assert f"<tr><td>{layer}</td><td>{data['sizes'][layer]}</td>{cells}</tr>" in sec["sensitivity"], layer
    assert "<td>source</td><td>mnistnet</td>" in sec["settings"] and "https://" not in page
    again = runner.invoke(app, ["analyze", "mnistnet", "--samples", "200", "--report", str(out)])
    assert again.exit_code == 2 and "already holds a report; pass --overwrite" in again.stderr


def test_a_report_without_curves_is_refused(tmp_path):
    empty = SensitivityReport(baseline=0.9, curves={}, sizes={}, criterion="magnitude", granularity="unstructured")
    with pytest.raises(PruneError, match="no curves"):
        write_sensitivity_report(tmp_path / "report.html", empty)
    assert not (tmp_path / "report.html").exists()
