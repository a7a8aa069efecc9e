"""Reading and writing recipe files: where a field is in the YAML, pydantic errors as one
``file:line: field: message`` line per problem, and atomic writes.

Shared by the classifier recipes (:mod:`prunekit.recipes`, which re-exports these names)
and the language-model recipes (:mod:`prunekit.llm.recipe`), so that neither imports the
other for them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def yaml_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of a YAML document where a field is, for error messages.

    Args:
        node: the document's root node (``yaml.compose``), or ``None``.
        loc: the field's path, as pydantic gives it in ``ValidationError.errors()["loc"]``
            (mapping keys and sequence indices; parts with no YAML node are skipped).

    Returns:
        The 1-based line of the deepest node found along ``loc`` (a missing key: the line of
        the mapping that lacks it), or ``None`` without a node.
    """
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
            if nxt is None:
                key_node = next((k for k, _ in node.value if k.value == key), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            continue  # pydantic's own loc parts (union tags) have no YAML node
        line = node.start_mark.line + 1
    return line


def explain_validation_error(err: ValidationError, node: yaml.Node, source: str) -> str:
    """A pydantic validation error as one ``source:line: field: message`` line per problem.

    Args:
        err: the error raised while validating the recipe.
        node: the recipe's root YAML node, to find each field's line.
        source: the file name shown before each line.

    Returns:
        The message, starting with ``invalid recipe:``.
    """
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(recipe)"
        where = yaml_line(node, loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        lines.append(f"{source}:{where}: {path}: {msg}")
    return "invalid recipe:\n" + "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place, with the
    mode a plain ``open`` would give it; on any error ``path`` is unchanged."""
    from .export import current_umask

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file renamed into place, with
    the mode a plain ``open`` would give it (mkstemp's own is 0600).

    Args:
        path: the file to write; its folder must exist.
        data: anything ``json.dump`` accepts.

    Returns:
        None. On any error the temporary file is removed and ``path`` is unchanged.
    """
    write_text_atomic(path, json.dumps(data, indent=2))


__all__ = ["explain_validation_error", "write_json_atomic", "write_text_atomic", "yaml_line"]
