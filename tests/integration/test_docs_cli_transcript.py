"""The digits transcript of docs/cli.md ("From training to a deployable file, step by
step") runs as written: its commands are read from the doc's code block, run in order in
an empty folder, and each exits 0 with its figures in units."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunekit.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEADING = "### A digits model: `prunekit run digits-quick`, then its saved folder"

#: what each command must print on stdout: its figures with their units
UNITS = {
    "run": ["%", "nonzero params"],
    "evaluate": ["test accuracy", "%"],
    "measure": [" ms", " µJ", " %", " B"],
    "export": ["bytes"],
    "inspect": ["channels"],
}


def digits_commands() -> list[str]:
    """The ``$ prunekit …`` lines of the first code block under :data:`HEADING`."""
    text = DOC.read_text(encoding="utf-8")
    assert HEADING in text, f"{DOC} has no section {HEADING!r}"
    block = re.search(r"```text\n(.*?)```", text.split(HEADING, 1)[1], re.DOTALL)
    assert block, f"no ```text block under {HEADING!r}"
    return [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]


def test_the_doc_block_holds_the_whole_sequence():
    cmds = digits_commands()
    assert all(c.startswith("prunekit ") for c in cmds), cmds
    verbs = [shlex.split(c)[1] for c in cmds]
    assert verbs[0] == "run" and {"evaluate", "measure", "export", "inspect"} <= set(verbs), verbs
    for c in cmds[1:]:  # the saved folder, with no --input-shape or --data
        assert "--input-shape" not in c and "--data" not in c, c


@pytest.mark.slow
def test_the_digits_transcript_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("zstandard")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for cmd in digits_commands():
        args = shlex.split(cmd)[1:]
        res = runner.invoke(app, args)  # exactly as written
        assert res.exit_code == 0, f"{cmd}: exit {res.exit_code}\n{res.output}"
        assert "error:" not in res.output, f"{cmd}:\n{res.output}"
        for unit in UNITS[args[0]]:
            assert unit in res.stdout, f"{cmd} printed no {unit!r}:\n{res.stdout}"
    assert (tmp_path / "dq" / "model" / "spec.json").is_file()
