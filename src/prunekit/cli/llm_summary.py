"""The summary ``prunekit llm prune`` and ``prunekit run`` print after an llm run: a
before/after table of its metrics and a line of its stages (also importable from
:mod:`prunekit.cli.llm`).

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prunekit.cli.common import console

__all__ = ["llm_summary", "text_name"]


def _fmt_ppl(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.3f}"


def text_name(text: str) -> str:
    """An evaluation domain's name, or a text file's name without its folder."""
    return Path(text).name


def llm_summary(m: dict[str, Any], title: str) -> None:
    """Print a short before/after table of an llm run's metrics, and its stages."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    t.add_row("parameters", f"{m['params']['before']:,}", f"{m['params']['after']:,}")
    lw = m["linear_weights"]
    t.add_row("block linear weights, nonzero", f"{lw['nonzero_before']:,}", f"{lw['nonzero_after']:,}")
    if lw["before"]:
        t.add_row("sparsity of block linears", f"{1 - lw['nonzero_before'] / lw['before']:.2%}",
                  f"{m['sparsity']['linear']:.2%}")
    else:
        t.add_row("sparsity of block linears", "–", "–")
    if m.get("perplexity"):
        ev = m["evaluation"]
        by_text = m.get("perplexity_by_text") or {}
        if len(by_text) > 1:  # one row per evaluation text
            for text, ppl in by_text.items():
                t.add_row(f"perplexity, {text_name(text)} ({ev['windows']}x{ev['seqlen']} tokens)",
                          _fmt_ppl(ppl["dense"]), _fmt_ppl(ppl["pruned"]))
        else:
            t.add_row(f"perplexity ({ev['windows']}x{ev['seqlen']} tokens)", _fmt_ppl(m["perplexity"]["dense"]),
                      _fmt_ppl(m["perplexity"]["pruned"]))
    console.print(t)
    parts = []
    for st in m["stages"]:
        if st["stage"] == "structured":
            parts.append(f"structured {st['criterion']} heads -{st['heads_removed']:.0%} neurons -{st['neurons_removed']:.0%}")
        elif st["stage"] in ("shrink", "distill"):
            parts.append(f"{st['stage']}: {st['summary']}")
        else:
            pat = f" {st['pattern']}" if st.get("pattern") else ""
            alloc = st["settings"].get("allocation")
            parts.append(f"{st['method']}{pat} {st['overall_sparsity']:.1%}" + (f" ({alloc})" if alloc else ""))
    console.print(f"stages: {'; '.join(parts) or 'none (dense copy)'} · total {m['timings']['total_s']:.1f} s · "
                  f"threads {m.get('torch_threads')}", highlight=False, soft_wrap=True)
