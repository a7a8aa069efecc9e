"""Every Python snippet of docs/report.md runs as written, in a fresh folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

DOC = Path(__file__).resolve().parents[2] / "docs" / "report.md"


def test_every_python_snippet_of_the_report_doc_runs(tmp_path):
    snippets = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.M | re.S)
    assert snippets
    for i, code in enumerate(snippets):
        assert "..." not in code, f"snippet {i} has a literal '...'"
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"snippet {i}:\n{proc.stderr[-3000:]}"
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    for section in ("summary", "cost", "layers", "energy", "sensitivity", "tradeoff", "pareto", "settings"):
        assert f'<section id="{section}">' in html, section
    assert (tmp_path / "out" / "report.md").is_file()
