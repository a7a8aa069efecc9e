"""Every registered name reaches the user: the API reference lists it, and the option lists
that the CLI and the LLM recipes accept are the registry's own (not copies that drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.registry import KINDS, available

ROOT = Path(__file__).resolve().parents[2]
API = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", KINDS)
def test_every_registered_name_is_in_the_api_reference(kind):
    missing = [n for n in available(kind) if f"`{n}`" not in API]
    assert not missing, f"{kind} names registered but not in docs/api.md: {missing}"


@pytest.mark.parametrize("kind", ["criterion", "allocation"])
def test_the_concepts_page_names_every_criterion_and_allocation(kind):
    text = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert not [n for n in available(kind) if f"`{n}`" not in text]


def test_cli_allocation_help_lists_every_allocation():
    from typer.testing import CliRunner

    from prunekit.cli import app

    out = CliRunner().invoke(app, ["prune", "--help"], terminal_width=400).output
    assert all(n in out for n in available("allocation")), out


def test_llm_methods_are_the_local_criteria():
    from prunekit.llm.oneshot import METHODS
    from prunekit.llm.recipe import OneshotStage
    from prunekit.registry import get

    assert set(METHODS) == {n for n in available("criterion") if get("criterion", n).statistics is not None}
    assert {"magnitude", "wanda", "ria", "sparsegpt"} <= set(METHODS)
    for m in METHODS:
        assert OneshotStage(method=m).method == m
    with pytest.raises(ValueError, match="'hessian' is not one of"):
        OneshotStage(method="hessian")
