#!/usr/bin/env python3
"""Print the code map of ``src/prunekit`` and the ways it breaks its own layering.

Usage::

    python tools/architecture.py [--root src/prunekit] [--json out.json]

Everything is read statically with :mod:`ast`; nothing of the package is imported (so the
script runs without torch). Sections:

1. modules and their line counts, by package, and the files over :data:`MAX_LINES` lines;
2. the internal import graph (``lazy`` marks an import inside a function, ``type`` one under
   ``if TYPE_CHECKING:``), and the import circles: strongly connected components of more
   than one module, once over module-level imports only (what really runs at import time)
   and once over module-level and function-level imports together;
3. upward arrows: an import whose target sits in a higher layer than its importer
   (:data:`LAYERS`), plus the extra rules of :data:`FORBIDDEN`;
4. private names crossing module lines: ``from X import _name`` and ``X._name`` where ``X``
   is another prunekit module (a module alias such as ``import X as _x`` is fine);
5. modules that use ``torch.nn.utils.parametrize`` (imports it, or reads the
   ``.parametrizations`` container, or calls ``is_parametrized``): only
   :data:`PARAMETRIZE_OWNER` may;
6. hand-written validators, a rough count per file (see :func:`count_validators`).

The functions return plain data so that ``tests/unit/test_layering.py`` can assert on them.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE = "prunekit"
MAX_LINES = 400

#: The layers, lowest first. A module's layer is the one that names it exactly, else the
#: highest one with a pattern (``fnmatch``) matching its dotted name, else core (layer 0).
#: A module may import its own layer and the layers below. The core itself is stratified
#: by :data:`CORE_TIERS`.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "core", (
        # everything no pattern below matches (targets, masking, criteria, graph, surgery, api,
        # export, train, ...), and, by name:
        "prunekit.deploy.packed",  # the packed weight format that pk.save / pk.load read and write
    )),
    (1, "outer", (
        # uses the core to do one job; the core never imports it (docs/architecture.md)
        "prunekit.llm", "prunekit.llm.*",
        "prunekit.adapters", "prunekit.adapters.*",
        "prunekit.report", "prunekit.report.*",
        "prunekit.deploy", "prunekit.deploy.*",
        "prunekit.search", "prunekit.compare", "prunekit.recipes", "prunekit.recipe_io",
        "prunekit.layerwise", "prunekit.sensitivity",
        # parts split out of the modules above (each re-exported by its parent)
        "prunekit.compare_recipe", "prunekit.recipe_schema", "prunekit.sensitivity_allocation",
    )),
    (2, "facade", (
        # the public names: the package root (re-exports from core and outer, loaded on
        # first use) and the framework shims that re-export the adapters
        "prunekit", "prunekit.keras", "prunekit.sklearn",
    )),
    (3, "cli", ("prunekit.cli", "prunekit.cli_*", "prunekit.cli.*")),
]

#: Inside the core: a module may import its own tier and the tiers below ("core module
#: imports an outer module" counts as upward). First match counts; unmatched core modules
#: are in the top tier (workflow).
CORE_TIERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "foundation", (
        # no model workflow: errors, option checks, names, what is prunable, masks (and the state
        # dicts under them), coverage, the layer classes pruning leaves in a model, the packed
        # weight format, the k-lowest cut
        "prunekit.errors", "prunekit.validate", "prunekit.registry", "prunekit.targets", "prunekit.masking",
        "prunekit.state_dicts",
        "prunekit.coverage", "prunekit.layers", "prunekit.deploy.packed", "prunekit.ranking",
    )),
    (1, "mechanics", (
        # scoring, choosing and cutting units: no workflow (api, training, saving) above them
        "prunekit.criteria", "prunekit.criteria.*", "prunekit.granularity", "prunekit.granularity.*",
        "prunekit.allocation", "prunekit.allocation.*", "prunekit.selection", "prunekit.graph", "prunekit.graph.*",
        "prunekit.surgery", "prunekit.surgery.*", "prunekit.metrics", "prunekit.metrics.*",
        "prunekit.metrics_*",  # the parts of metrics: metrics_count, _energy, _timing, _table
    )),
    # api, schedules, callbacks, regularizers, train, progress, export, distributed, zoo, datasets
    (2, "workflow", ("*",)),
]

#: (importer pattern, imported pattern, why): imports that are refused whatever the layers say.
FORBIDDEN: list[tuple[str, str, str]] = [
    ("prunekit.graph.*", "prunekit.surgery*", "the tracer describes the model; surgery acts on it"),
    ("prunekit.graph", "prunekit.surgery*", "the tracer describes the model; surgery acts on it"),
    ("prunekit.metrics*", "prunekit.export*", "measuring does not need the file format"),
    ("prunekit.deploy.advisor", "prunekit.export*", "the advisor reads effective weights from masking"),
]

#: The one module that may touch ``torch.nn.utils.parametrize``.
PARAMETRIZE_OWNER = "prunekit.masking"


# --- reading ------------------------------------------------------------------------------


@dataclass
class Module:
    name: str
    path: str
    lines: int
    is_package: bool
    tree: ast.Module = field(repr=False, compare=False)


@dataclass(frozen=True)
class Import:
    src: str
    dst: str
    line: int
    lazy: bool  # inside a function: runs when called, not at import
    type_only: bool  # under ``if TYPE_CHECKING:``: never runs
    names: tuple[str, ...] = ()  # ``from X import a, b``: the names taken from the target


def find_root(root: str | Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    here = Path(__file__).resolve().parent.parent / "src" / PACKAGE
    return here if here.is_dir() else Path("src") / PACKAGE


def load_modules(root: str | Path | None = None) -> dict[str, Module]:
    """``{dotted name: Module}`` for every ``.py`` file under ``root`` (the package folder)."""
    root = find_root(root)
    out: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        parts = [PACKAGE, *rel.with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        text = path.read_text(encoding="utf-8")
        out[".".join(parts)] = Module(
            ".".join(parts), str(rel), len(text.splitlines()), is_package, ast.parse(text, str(path))
        )
    return out


def package_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _base(mod: Module, level: int, module: str | None) -> str:
    """The absolute name ``from <level dots><module> import ...`` refers to."""
    if level == 0:
        return module or ""
    parts = mod.name.split(".")
    if not mod.is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    base = ".".join(parts)
    return f"{base}.{module}" if module else base


def _known(name: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules``."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Walker(ast.NodeVisitor):
    """Visits a module, knowing whether a node is inside a function or a TYPE_CHECKING block."""

    def __init__(self) -> None:
        self.depth = 0
        self.type_only = 0

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for n in node.body:
                self.visit(n)
            self.type_only -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)


def imports_of(mod: Module, modules: dict[str, Module]) -> list[Import]:
    """The internal imports of ``mod`` (targets resolved to the most specific module)."""
    found: list[Import] = []

    class V(_Walker):
        def add(self, dst: str | None, line: int, names: tuple[str, ...] = ()) -> None:
            if dst is not None and dst != mod.name:
                found.append(Import(mod.name, dst, line, self.depth > 0, self.type_only > 0, names))

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    self.add(_known(alias.name, modules), node.lineno)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = _base(mod, node.level, node.module)
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                return
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    self.add(sub, node.lineno)
                else:
                    self.add(_known(base, modules), node.lineno, (alias.name,))

    V().visit(mod.tree)
    return found


def import_graph(modules: dict[str, Module]) -> list[Import]:
    """Every internal import, one entry per (importer, imported, line)."""
    out: list[Import] = []
    for mod in modules.values():
        merged: dict[tuple[str, int], Import] = {}
        for imp in imports_of(mod, modules):
            key = (imp.dst, imp.line)
            old = merged.get(key)
            merged[key] = imp if old is None else Import(
                imp.src, imp.dst, imp.line, imp.lazy, imp.type_only, old.names + imp.names)
        out.extend(merged.values())
    return out


# --- circles --------------------------------------------------------------------------------


def _scc(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))
    return out


def circles(modules: dict[str, Module], graph: list[Import], lazy: bool) -> list[list[str]]:
    """Import circles (components of more than one module). ``lazy=False``: module-level
    imports only; ``lazy=True``: function-level imports count too. TYPE_CHECKING imports
    never count (they do not run)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in graph:
        if imp.type_only or (imp.lazy and not lazy):
            continue
        edges[imp.src].add(imp.dst)
    comps = [c for c in _scc(sorted(modules), edges) if len(c) > 1]
    return sorted(comps)


# --- layers -----------------------------------------------------------------------------------


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def layer_of(name: str) -> tuple[int, str]:
    """``(layer number, layer name)`` of a dotted module name."""
    for number, lname, patterns in LAYERS:
        if name in patterns:
            return number, lname
    for number, lname, patterns in reversed(LAYERS):
        if _match(name, patterns):
            return number, lname
    return LAYERS[0][0], LAYERS[0][1]


def tier_of(name: str) -> tuple[int, str]:
    """``(tier, tier name)`` inside the core (only meaningful for core modules)."""
    for number, tname, patterns in CORE_TIERS:
        if _match(name, patterns):
            return number, tname
    return CORE_TIERS[-1][0], CORE_TIERS[-1][1]


def upward(graph: list[Import]) -> list[dict]:
    """Imports against the layering: to a higher layer, to a higher core tier, or listed in
    :data:`FORBIDDEN`. Function-level and TYPE_CHECKING imports count too (a lazy import
    is still a dependency). Reading a package's dunder metadata (``from .. import
    __version__``) is not: the package's ``__init__`` runs before any module in it."""
    out = []
    for imp in graph:
        if imp.names and all(n.startswith("__") and n.endswith("__") for n in imp.names) \
                and imp.src.startswith(imp.dst + "."):
            continue
        (ls, lsn), (ld, ldn) = layer_of(imp.src), layer_of(imp.dst)
        why = None
        if ld > ls:
            why = f"{lsn} imports {ldn}"
        elif ls == ld == 0:
            (ts, tsn), (td, tdn) = tier_of(imp.src), tier_of(imp.dst)
            if td > ts:
                why = f"core {tsn} imports core {tdn}"
        for a, b, reason in FORBIDDEN:
            if fnmatch.fnmatchcase(imp.src, a) and fnmatch.fnmatchcase(imp.dst, b):
                why = f"forbidden: {reason}"
        if why:
            out.append({**asdict(imp), "why": why})
    return out


# --- private names ----------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_crossings(modules: dict[str, Module]) -> list[dict]:
    """``from X import _name`` and ``X._name`` where X is another prunekit module and
    ``_name`` is not itself a module. (``obj._attr`` on objects is not traced.)"""
    out = []
    for mod in modules.values():
        aliases: dict[str, str] = {}  # local name -> prunekit module it is bound to
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                        if a.asname:
                            aliases[a.asname] = a.name
                        else:
                            aliases[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = _base(mod, node.level, node.module)
                if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in modules:
                        aliases[a.asname or a.name] = sub
                    elif _private(a.name) and base != mod.name:
                        out.append({"module": mod.name, "path": mod.path, "line": node.lineno,
                                    "owner": base, "name": a.name, "kind": "from-import"})
        for node in ast.walk(mod.tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            # resolve the dotted chain under the attribute: X, X.y, X.y.z
            chain, v = [], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if not (isinstance(v, ast.Name) and v.id in aliases):
                continue
            owner = ".".join([aliases[v.id], *reversed(chain)])
            if owner in modules and owner != mod.name:
                out.append({"module": mod.name, "path": mod.path, "line": node.lineno,
                            "owner": owner, "name": node.attr, "kind": "attribute"})
    return sorted(out, key=lambda d: (d["module"], d["line"], d["name"]))


# --- parametrize ------------------------------------------------------------------------------


def parametrize_uses(modules: dict[str, Module]) -> dict[str, list[str]]:
    """``{module: ["line: what", ...]}`` for modules that use ``torch.nn.utils.parametrize``:
    import it (any form), name ``...utils.parametrize``, read ``.parametrizations`` or call
    ``is_parametrized`` / ``register_parametrization`` / ``remove_parametrizations``.
    Mentions in strings and docstrings do not count."""
    api_names = {"parametrizations", "is_parametrized", "register_parametrization", "remove_parametrizations"}
    out: dict[str, list[str]] = {}
    for mod in modules.values():
        hits = []
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("torch.nn.utils.parametrize"):
                    hits.append(f"{node.lineno}: from {node.module} import ...")
                elif node.module == "torch.nn.utils" and any(a.name == "parametrize" for a in node.names):
                    hits.append(f"{node.lineno}: from torch.nn.utils import parametrize")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("torch.nn.utils.parametrize"):
                        hits.append(f"{node.lineno}: import {a.name}")
            elif isinstance(node, ast.Attribute):
                owner = node.value
                if node.attr == "parametrize" and (
                    (isinstance(owner, ast.Attribute) and owner.attr == "utils")
                    or (isinstance(owner, ast.Name) and owner.id == "utils")
                ):
                    hits.append(f"{node.lineno}: ...utils.parametrize")
                elif node.attr in api_names:
                    hits.append(f"{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Name) and node.id in api_names - {"parametrizations"}:
                hits.append(f"{node.lineno}: {node.id}")
        if hits:
            out[mod.name] = sorted(set(hits), key=lambda s: (int(s.split(":")[0]), s))
    return dict(sorted(out.items()))


# --- validators -------------------------------------------------------------------------------


def _isinstance_types(call: ast.AST) -> set[str] | None:
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "isinstance"
            and len(call.args) == 2):
        return None
    t = call.args[1]
    elts = t.elts if isinstance(t, ast.Tuple) else [t]
    names = set()
    for e in elts:
        if isinstance(e, ast.Name):
            names.add(e.id)
        elif isinstance(e, ast.Attribute):
            names.add(e.attr)
    return names


def count_validators(mod: Module) -> dict[str, int]:
    """A rough count of hand-written argument checks in one file.

    * ``numeric``: expressions that test ``isinstance(x, bool)`` together with an
      ``isinstance(x, (int, float, ...))`` (the "a bool is not a number" idiom), each
      boolean expression counted once;
    * ``raising``: ``if`` statements whose test calls ``isinstance`` and whose body raises
      (a type check written by hand). The two overlap.
    """
    numeric = raising = 0
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.BoolOp):
            kinds = [_isinstance_types(n.operand if isinstance(n, ast.UnaryOp) else n) for n in node.values]
            kinds = [k for k in kinds if k]
            if any(k == {"bool"} for k in kinds) and any(k & {"int", "float", "Real", "Integral", "Number"} for k in kinds):
                numeric += 1
        if isinstance(node, ast.If):
            calls = [n for n in ast.walk(node.test) if _isinstance_types(n) is not None]
            if calls and any(isinstance(s, ast.Raise) for s in node.body):
                raising += 1
    return {"numeric": numeric, "raising": raising}


# --- report -----------------------------------------------------------------------------------


def analyze(root: str | Path | None = None) -> dict:
    """Everything the report prints, as plain data."""
    modules = load_modules(root)
    graph = import_graph(modules)
    validators = {m.path: count_validators(m) for m in modules.values()}
    return {
        "modules": {n: {"path": m.path, "lines": m.lines, "layer": layer_of(n)[1],
                        **({"tier": tier_of(n)[1]} if layer_of(n)[0] == 0 else {})}
                    for n, m in sorted(modules.items())},
        "large": sorted(((m.path, m.lines) for m in modules.values() if m.lines > MAX_LINES), key=lambda x: -x[1]),
        "imports": [asdict(i) for i in sorted(graph, key=lambda i: (i.src, i.dst, i.line))],
        "circles_module_level": circles(modules, graph, lazy=False),
        "circles_with_lazy": circles(modules, graph, lazy=True),
        "upward": upward(graph),
        "private": private_crossings(modules),
        "parametrize": parametrize_uses(modules),
        "validators": {p: v for p, v in sorted(validators.items()) if v["numeric"] or v["raising"]},
    }


def render(data: dict) -> str:
    out: list[str] = []
    w = out.append
    mods = data["modules"]
    w(f"== 1. modules: {len(mods)}, {sum(m['lines'] for m in mods.values())} lines")
    by_pkg: dict[str, list[str]] = defaultdict(list)
    for n, m in mods.items():
        by_pkg[n if m["path"].endswith("__init__.py") else package_of(n)].append(n)
    for pkg in sorted(by_pkg):
        w(f"  [{pkg}]")
        for n in sorted(by_pkg[pkg]):
            m = mods[n]
            layer = m["layer"] + (f"/{m['tier']}" if "tier" in m else "")
            w(f"    {m['lines']:5d}  {m['path']:<34} {layer}")
    w(f"  files over {MAX_LINES} lines: {len(data['large'])}")
    for path, lines in data["large"]:
        w(f"    {lines:5d}  {path}")

    w("")
    w(f"== 2. internal imports: {len(data['imports'])} (lazy = inside a function, type = TYPE_CHECKING only)")
    by_src: dict[str, list[dict]] = defaultdict(list)
    for i in data["imports"]:
        by_src[i["src"]].append(i)
    for src in sorted(by_src):
        targets: dict[str, set[str]] = defaultdict(set)
        for i in by_src[src]:
            targets[i["dst"]].add("type" if i["type_only"] else "lazy" if i["lazy"] else "top")
        parts = []
        for dst in sorted(targets):
            kinds = targets[dst]
            tag = "" if "top" in kinds else f" ({'/'.join(sorted(kinds))})"
            parts.append(dst.removeprefix(PACKAGE + ".") + tag)
        w(f"  {src.removeprefix(PACKAGE + '.') or PACKAGE} -> {', '.join(parts)}")
    for key, title in (("circles_module_level", "module-level imports"),
                       ("circles_with_lazy", "module-level and function-level imports")):
        w(f"  import circles over {title}: {len(data[key])}")
        for comp in data[key]:
            w("    " + " <-> ".join(c.removeprefix(PACKAGE + ".") for c in comp))

    w("")
    w(f"== 3. upward arrows: {len(data['upward'])}")
    w("  layers: " + "; ".join(f"{n} {name}" for n, name, _ in LAYERS)
      + " | core tiers: " + "; ".join(f"{n} {name}" for n, name, _ in CORE_TIERS))
    for u in data["upward"]:
        kind = " (type)" if u["type_only"] else " (lazy)" if u["lazy"] else ""
        w(f"    {u['src']}:{u['line']} -> {u['dst']}{kind}   [{u['why']}]")

    w("")
    w(f"== 4. private names crossing modules: {len(data['private'])}")
    for p in data["private"]:
        w(f"    {p['path']}:{p['line']}  {p['owner'].removeprefix(PACKAGE + '.')}.{p['name']}  ({p['kind']})")

    w("")
    users = data["parametrize"]
    bad = [m for m in users if m != PARAMETRIZE_OWNER]
    w(f"== 5. modules using torch.nn.utils.parametrize: {len(users)} ({len(bad)} besides {PARAMETRIZE_OWNER})")
    for m, hits in users.items():
        w(f"    {m}{'' if m == PARAMETRIZE_OWNER else '  VIOLATION'}: {len(hits)} uses, lines "
          + ", ".join(h.split(":")[0] for h in hits))

    w("")
    v = data["validators"]
    w(f"== 6. hand-written validators: {sum(x['numeric'] for x in v.values())} bool-vs-number checks, "
      f"{sum(x['raising'] for x in v.values())} isinstance-then-raise checks, in {len(v)} files")
    for path, x in sorted(v.items(), key=lambda kv: (-kv[1]["raising"] - kv[1]["numeric"], kv[0])):
        w(f"    {x['numeric']:3d} {x['raising']:3d}  {path}")

    w("")
    w("== summary")
    for line in summary_lines(data):
        w("  " + line)
    return "\n".join(out) + "\n"


def summary(data: dict) -> dict[str, int]:
    return {
        "modules": len(data["modules"]),
        "lines": sum(m["lines"] for m in data["modules"].values()),
        "files_over_400": len(data["large"]),
        "circles_module_level": len(data["circles_module_level"]),
        "circles_with_lazy": len(data["circles_with_lazy"]),
        "upward_arrows": len(data["upward"]),
        "private_crossings": len(data["private"]),
        "parametrize_users_besides_masking": len([m for m in data["parametrize"] if m != PARAMETRIZE_OWNER]),
        "validators_numeric": sum(x["numeric"] for x in data["validators"].values()),
        "validators_raising": sum(x["raising"] for x in data["validators"].values()),
    }


def summary_lines(data: dict) -> list[str]:
    return [f"{k}: {v}" for k, v in summary(data).items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="the package folder (default: src/prunekit next to this script)")
    ap.add_argument("--json", default=None, help="also write everything as JSON here")
    args = ap.parse_args(argv)
    data = analyze(args.root)
    sys.stdout.write(render(data))
    if args.json:
        Path(args.json).write_text(json.dumps({**data, "summary": summary(data)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
