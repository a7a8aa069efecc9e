"""A dry run: what channel pruning could remove, what is coupled, and what must stay."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..targets import check_module, find_targets
from .groups import build


@dataclass
class InspectReport:
    """What :func:`inspect` found. ``summary()`` is a readable table; ``to_dict()`` is JSON-ready."""

    model: str
    groups: list[dict[str, Any]]
    kept: list[dict[str, str]]
    unprunable: list[str]  # prunable weights no group can shrink (their outputs are kept)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "groups": self.groups, "kept": self.kept, "unprunable": self.unprunable}

    def summary(self, count: Callable[[int], str] = str) -> str:
        """The groups, members and constraints as text; ``count`` formats channel and entry counts."""
        lines = [f"{self.model}: {len(self.groups)} prunable channel groups"]
        for g in self.groups:
            outs = g.get("channels", 0)
            what = f"{count(g['units'])} channels" if outs in (0, g["units"]) else \
                f"{count(g['units'])} units ({count(outs)} output channels)"  # residual partners, conv groups
            lines.append(f"  group {g['name']}: {what}")
            for m in g["members"]:
                lines.append(f"    {m['role']:<6} {m['param']} (dim {m['dim']}, {count(m['size'])} entries)")
            for k, v in g.get("constraints", {}).items():
                lines.append(f"    constraint: {k} = {v}")
        if self.unprunable:
            lines.append("weights whose output channels must stay: " + ", ".join(self.unprunable))
        if self.kept:
            lines.append("why some channels stay:")
            for n in self.kept:
                lines.append(f"  {n['where']}: {n['op']}: {n['reason']}")
        return "\n".join(lines)


def inspect(model: nn.Module, example_inputs: Any) -> InspectReport:
    """Trace ``model`` and list its prunable channel groups, their coupling and sizes, and
    every op or module that keeps channels (and why), without changing anything.

    Example:
        >>> print(pk.inspect(model, x).summary())
    """
    check_module(model)
    st = build(model, example_inputs)
    facts: dict[str, dict[str, Any]] = {}
    for (kind, mname), value in st.graph.extra.items():
        facts.setdefault(mname, {})[kind] = value
    groups = []
    for g in st.groups:
        d = g.describe()
        d["channels"] = st.channel_counts(g, set())[0]  # the producing layers' output channels
        cons = {}
        for m in g.members:
            f = facts.get(m.module, {})
            if "group_norm" in f:
                cons[f"{m.module}: GroupNorm channels per group"] = f["group_norm"]
            if "grouped" in f:
                cons[f"{m.module}: output channels per conv group"] = f["grouped"]
            if "depthwise" in f:
                cons[f"{m.module}: depthwise multiplier"] = f["depthwise"]
            if "recurrent" in f:
                r = f["recurrent"]
                cons[f"{m.module}: hidden units (each spans {r['layers']} layer(s) x {r['directions']} "
                     "direction(s); hidden_size is updated)"] = r["hidden"]
            if "norm" in f:
                n = f["norm"]
                how = ("weight and eps rescaled" if n["kind"] != "layer" else
                       "narrows" if n["class"] == "PrunedLayerNorm" else "becomes PrunedLayerNorm")
                cons[f"{m.module}: {n['class']} statistics over the full width ({how} when compacted)"] = n["width"]
            if f.get("transposed", (1,))[0] > 1:
                cons[f"{m.module}: input channels per transposed-conv group"] = f["transposed"][1]
        for (kind, where), ids in st.graph.extra.items():
            if kind == "heads" and any(int(st.roots[i]) in set(g.units) for i in ids.reshape(-1).tolist()):
                cons[f"{where}: attention heads (whole heads only; num_heads is updated)"] = int(ids.numel())
        if cons:
            d["constraints"] = cons
        groups.append(d)
    outs = {m.param for g in st.groups for m in g.members if m.role in ("out", "chan")}  # a depthwise conv is "chan"
    unprunable = [t.name for t in find_targets(model) if t.name not in outs]
    kept = [{"where": n.where, "op": n.op, "reason": n.reason} for n in st.notes]
    return InspectReport(type(model).__name__, groups, kept, unprunable)
