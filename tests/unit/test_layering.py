"""The package keeps its layering (``tools/architecture.py``, read statically: no import).

Asserted: no import circle among module-level imports, no upward arrow (layers and rules in
the script's ``LAYERS`` / ``CORE_TIERS`` / ``FORBIDDEN``), no private name taken from another
prunekit module, and ``torch.nn.utils.parametrize`` used by ``masking.py`` alone.

``KNOWN`` lists the violations that remain, each in a file this change could not touch.
The list only shrinks: a new violation fails, and so does a listed one that is gone
(then delete its line).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    name = "prunekit_tools_architecture"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


arch = _load_tool()

#: (kind, what): the violations left, each with the file that holds it and the fix.
KNOWN: set[tuple[str, str]] = set()

KINDS = ("circle", "upward", "private", "parametrize")


def violations(data: dict) -> set[tuple[str, str]]:
    """Every violation as a ``(kind, what)`` pair that does not depend on line numbers."""
    out: set[tuple[str, str]] = set()
    for comp in data["circles_module_level"]:
        out.add(("circle", " <-> ".join(comp)))
    for u in data["upward"]:
        out.add(("upward", f"{u['src']} -> {u['dst']}"))
    for p in data["private"]:
        out.add(("private", f"{p['module']} uses {p['owner']}.{p['name']}"))
    for module in data["parametrize"]:
        if module != arch.PARAMETRIZE_OWNER:
            out.add(("parametrize", module))
    return out


@pytest.fixture(scope="module")
def found() -> set[tuple[str, str]]:
    return violations(arch.analyze(ROOT / "src" / "prunekit"))


@pytest.mark.parametrize("kind", KINDS)
def test_no_new_violation(found, kind):
    new = sorted(what for k, what in found - KNOWN if k == kind)
    assert not new, f"new {kind} violations (see `python tools/architecture.py`): {new}"


@pytest.mark.parametrize("kind", KINDS)
def test_known_violations_are_still_there(found, kind):
    gone = sorted(what for k, what in KNOWN - found if k == kind)
    assert not gone, f"fixed, so delete from KNOWN in {Path(__file__).name}: {gone}"


def test_the_tool_finds_each_kind(tmp_path):
    """A small package with one violation of each kind: the checks above are not vacuous."""
    pkg = tmp_path / "prunekit"
    (pkg / "llm").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "masking.py": "from torch.nn.utils import parametrize\n",
        "targets.py": "from .masking import parametrize\nimport prunekit.metrics as _m\n_m.x\n",
        "metrics.py": "from . import targets\nfrom .export import _private\n",
        "export.py": "from . import metrics\n\ndef f():\n    from .llm import tools\n",
        "train.py": "def g(m):\n    return m.parametrizations\n",
        "llm/__init__.py": "",
        "llm/tools.py": "from .. import targets\ntargets._hidden\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    data = arch.analyze(pkg)
    assert data["circles_module_level"] == [["prunekit.export", "prunekit.metrics", "prunekit.targets"]]
    # the lazy import export -> llm.tools closes llm.tools -> targets -> metrics -> export
    assert data["circles_with_lazy"] == [["prunekit.export", "prunekit.llm.tools", "prunekit.metrics", "prunekit.targets"]]
    lazy = [i for i in data["imports"] if i["src"] == "prunekit.export" and i["dst"] == "prunekit.llm.tools"]
    assert lazy and lazy[0]["lazy"]
    up = {(u["src"], u["dst"]) for u in data["upward"]}
    assert ("prunekit.export", "prunekit.llm.tools") in up  # core imports outer, even lazily
    assert ("prunekit.metrics", "prunekit.export") in up  # FORBIDDEN
    private = {(p["module"], p["owner"], p["name"]) for p in data["private"]}
    assert private == {("prunekit.metrics", "prunekit.export", "_private"),
                       ("prunekit.llm.tools", "prunekit.targets", "_hidden")}  # `import X as _m` is fine
    assert set(data["parametrize"]) == {"prunekit.masking", "prunekit.train"}
