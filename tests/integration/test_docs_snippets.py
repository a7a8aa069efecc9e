"""Every ```python block of README.md and docs/*.md runs as written.

A file's blocks build on each other (a later block uses the ``model`` or ``test`` of an
earlier one), so each file runs as one script in a fresh subprocess: its blocks in order,
in one namespace, in an empty folder, with the caches the test session set up (see
tests/conftest.py; the subprocess inherits them). Each block is compiled under the doc's
own path and line numbers, so a failure reads ``File "docs/quickstart.md", line 83``.

Blocks that are not meant to run are not ```python: API signatures are plain ``` blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: files whose python blocks another test runs already (with checks of what they write)
RUN_ELSEWHERE = {"docs/report.md": "tests/integration/test_report_docs.py"}

#: files whose snippets load a language model (SmolLM2-135M or MiniLM)
LLM = ("docs/llm",)

#: Blocks of files this project's docs work may not change that do not run as written:
#: file -> (line the failure is raised at, text of the error, why). The test expects exactly
#: that failure and reports it as XFAIL with the reason (shown by ``pytest -ra``); once the
#: doc is fixed the test fails until the entry is removed.
KNOWN_BROKEN: dict[str, tuple[int, str, str]] = {}

#: files too slow for every `make test` (the whole file must stay within ~4 minutes on 2
#: busy cores): run only with PRUNEKIT_TEST_SLOW_DOCS=1; the skip says so under `pytest -ra`
SLOW_DOCS: dict[str, str] = {}
RUN_SLOW_DOCS = os.environ.get("PRUNEKIT_TEST_SLOW_DOCS") == "1"

#: per file, the seconds one run may take before it counts as a failure
TIMEOUT = 900

BLOCK = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(doc: Path) -> list[tuple[int, str]]:
    """(line of the block's first code line, code) for every ```python block of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def rel(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


def script(doc: Path) -> str:
    """One script that runs the blocks of ``doc`` in order in one namespace, each compiled
    under the doc's path with its own line numbers."""
    return (
        "import sys\n"
        f"for _doc_line_, _doc_code_ in {blocks(doc)!r}:\n"
        f"    exec(compile('\\n' * (_doc_line_ - 1) + _doc_code_, {str(doc)!r}, 'exec'))\n"
        f"    print(f'--- ran {rel(doc)}:{{_doc_line_}}', flush=True)\n"
    )


def cases():
    for doc in DOCS:
        if not blocks(doc) or rel(doc) in RUN_ELSEWHERE:
            continue
        marks = [pytest.mark.slow] if rel(doc).startswith(LLM) else []
        yield pytest.param(doc, id=rel(doc), marks=marks)


def run_cases():
    for param in cases():
        (doc,) = param.values
        why = SLOW_DOCS.get(rel(doc))
        skip = pytest.mark.skipif(bool(why) and not RUN_SLOW_DOCS,
                                  reason=f"{rel(doc)}: {why}; set PRUNEKIT_TEST_SLOW_DOCS=1 to run it")
        yield pytest.param(doc, id=param.id, marks=[*param.marks, skip])


def test_every_doc_with_python_is_collected():
    with_python = {rel(d) for d in DOCS if blocks(d)}
    collected = {p.id for p in cases()}
    assert with_python == collected | (with_python & set(RUN_ELSEWHERE)), with_python - collected
    assert {"README.md", "docs/quickstart.md", "docs/api.md"} <= collected


@pytest.mark.parametrize("doc", list(cases()))
def test_no_placeholder_in_a_python_block(doc):
    """A literal ``...`` (pseudo-code) or a signature is not a runnable example."""
    for line, code in blocks(doc):
        for i, text in enumerate(code.splitlines()):
            stripped = text.split("#", 1)[0]
            assert "..." not in stripped, f"{rel(doc)}:{line + i}: placeholder '...' in a python block"


@pytest.mark.slow  # a subprocess that imports torch and runs a whole doc: 5-130 s each
@pytest.mark.parametrize("doc", list(run_cases()))
def test_the_python_blocks_of_the_doc_run(doc, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-c", script(doc)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    ran = re.findall(r"^--- ran (\S+)$", proc.stdout, re.M)
    if rel(doc) in KNOWN_BROKEN:
        line, error, why = KNOWN_BROKEN[rel(doc)]
        if proc.returncode == 0:
            pytest.fail(f"{rel(doc)} runs now: remove it from KNOWN_BROKEN ({why})")
        where = f'File "{doc}", line {line}'
        assert where in proc.stderr and error in proc.stderr, (
            f"{rel(doc)} fails, but not as KNOWN_BROKEN says ({where}: {error}):\n{proc.stderr[-4000:]}")
        pytest.xfail(why)
    assert proc.returncode == 0, (
        f"{rel(doc)}: exit {proc.returncode} after {len(ran)} of {len(blocks(doc))} blocks "
        f"({', '.join(ran) or 'none'} ran)\n{proc.stderr[-4000:]}"
    )
    assert len(ran) == len(blocks(doc))
