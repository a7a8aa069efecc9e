"""Dependency groups: the traced coupling turned into units that can be scored and removed.

A **unit** is one class of coupled channel ids: removing it removes, in every member
parameter, the indices whose id belongs to the class (a conv filter, its BN entries, the
next conv's input slice, the residual partners' filters...). A **group** is a set of units
that share parameters (one layer's channels and everything coupled to them); allocation
decides how many units of each group go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..criteria.base import Criterion
from ..errors import PruneError
from .recurrent import KIND as RECURRENT
from .channels import FIXED, Graph, Member, Note
from .tracer import trace
from .transposed import unit_dim

DEFINING = ("out", "chan")  # roles whose entries must all be zero for a unit to be gone


@dataclass
class Group:
    """Coupled units that allocation treats as one layer."""

    name: str
    units: list[int]  # class roots
    members: list[Member] = field(default_factory=list)

    @property
    def params(self) -> list[str]:
        return sorted({m.param for m in self.members})

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "units": len(self.units),
            "members": [
                {"param": m.param, "dim": m.dim, "role": m.role, "size": int(m.ids.numel())}
                for m in self.members
            ],
        }


@dataclass
class Structure:
    """The groups of a model, with the class of every channel id."""

    graph: Graph
    roots: torch.Tensor
    groups: list[Group]
    unit_of: dict[int, tuple[int, int]]  # class root -> (group index, unit index)

    @property
    def notes(self) -> list[Note]:
        return self.graph.notes

    def positions(self, m: Member, removed: set[int]) -> torch.Tensor:
        """Boolean over ``m``'s indices: True where the index belongs to a removed unit."""
        r = self.roots[m.ids]
        if not removed:
            return torch.zeros(r.numel(), dtype=torch.bool)
        return torch.isin(r, torch.tensor(sorted(removed), dtype=torch.long))

    def removed_units(self, tensors: dict[str, torch.Tensor]) -> set[int]:
        """Units whose defining entries are all zero in ``tensors`` (effective values)."""
        alive: set[int] = set()
        seen: set[int] = set()
        for m in self.graph.members:
            if m.role not in DEFINING or m.param not in tensors:
                continue
            t = tensors[m.param]
            nz = t.detach().movedim(m.dim, 0).reshape(t.shape[m.dim], -1).ne(0).any(1)
            r = self.roots[m.ids]
            for root, live in zip(r.tolist(), nz.tolist()):
                if root == FIXED:
                    continue
                seen.add(root)
                if live:
                    alive.add(root)
        return {r for r in seen - alive if r in self.unit_of}

    def channel_counts(self, grp: Group, removed: set[int]) -> tuple[int, int]:
        """``(channels, removed channels)`` of ``grp``: the output channels of its producing
        layers (each ``"out"`` parameter counted once) and how many of them belong to a
        unit in ``removed``. With one producing layer and one channel per unit this is
        ``(units, removed units)``; residual partners and conv groups add every output
        channel they lose. A recurrent layer counts one channel per hidden unit, layer
        and direction (the rows of each ``weight_hh``, divided by its gates)."""
        units = set(grp.units)
        total = gone = 0
        seen: set[str] = set()
        for m in grp.members:
            if m.role != "out" or m.param in seen:
                continue
            seen.add(m.param)
            rnn = self.graph.extra.get((RECURRENT, m.module))
            if rnn is not None and not m.param.rpartition(".")[2].startswith("weight_hh"):
                continue  # weight_ih rows are the same hidden units as weight_hh rows
            r = self.roots[m.ids]
            mine = torch.tensor([x in units for x in r.tolist()], dtype=torch.bool)
            lost = mine & self.positions(m, removed)
            n, k = int(mine.sum()), int(lost.sum())
            facts = self.graph.extra.get(("transposed", m.module))
            if facts is not None and facts[0] > 1 and m.dim == 0:  # rows are inputs: whole groups
                _, gi, go = facts
                n, k = n // gi * go, k // gi * go
            if rnn is not None:  # one row per gate
                n, k = n // rnn["gates"], k // rnn["gates"]
            total, gone = total + n, gone + k
        return total, gone

    def masks_for(self, removed: set[int], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """Masks that zero every removed unit (input slices too where a removed channel is 0)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.graph.members:
            if m.role == "buffer" or (m.role == "in" and m.fill != 0.0) or m.param not in shapes:
                continue
            gone = self.positions(m, removed)
            if not bool(gone.any()):
                continue
            shape = shapes[m.param]
            mask = out.get(m.param)
            if mask is None:
                mask = torch.ones(shape)
            view = [1] * len(shape)
            view[m.dim] = -1
            mask = mask * (~gone).float().view(view)
            out[m.param] = mask
        return out


def build(model: nn.Module, example_inputs: Any) -> Structure:
    """Trace ``model`` and group its coupled channels."""
    g = trace(model, example_inputs)
    roots, order = g.classes()
    # classes produced by the same layer belong to one group
    parent = {r: r for r in order}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_param: dict[str, int] = {}
    for m in g.members:
        if m.role != "out":  # one layer's channels are one group (norms over a concat span several)
            continue
        for r in torch.unique(roots[m.ids]).tolist():
            if r == FIXED or r not in parent:
                continue
            first = by_param.setdefault(m.param, r)
            a, b = find(first), find(r)
            if a != b:
                parent[max(a, b)] = min(a, b)
    comp: dict[int, list[int]] = {}
    for r in order:
        comp.setdefault(find(r), []).append(r)
    groups: list[Group] = []
    unit_of: dict[int, tuple[int, int]] = {}
    for units in comp.values():
        gi = len(groups)
        for ui, r in enumerate(units):
            unit_of[r] = (gi, ui)
        groups.append(Group("", units))
    for m in g.members:
        gis = {unit_of[r][0] for r in torch.unique(roots[m.ids]).tolist() if r in unit_of}
        for gi in gis:
            groups[gi].members.append(m)
    for grp in groups:
        outs = [m.module or m.param for m in grp.members if m.role == "out"]
        grp.name = outs[0] if len(outs) == 1 else "+".join(dict.fromkeys(outs))
    return Structure(g, roots, groups, unit_of)


def _unit_positions(st: Structure, grp: Group, m: Member) -> list[torch.Tensor]:
    """For each unit of ``grp``, the indices of ``m``'s dimension that belong to it."""
    lookup = {r: u for u, r in enumerate(grp.units)}
    unit = torch.tensor([lookup.get(r, -1) for r in st.roots[m.ids].tolist()], dtype=torch.long)
    order = torch.argsort(unit, stable=True)
    counts = torch.bincount(unit + 1, minlength=len(grp.units) + 1)
    parts = list(torch.split(order, counts.tolist()))
    return parts[1:]  # parts[0]: indices of other groups (or kept)


def unit_scores(
    st: Structure,
    crit: Criterion,
    scores: dict[str, torch.Tensor],
    reduce: str = "joint",
) -> list[torch.Tensor]:
    """One score per unit of every group, divided by the group's mean (so a global
    ranking compares groups of different scale).

    ``reduce="joint"`` scores a unit by the criterion's own reduction over every element
    it would remove, in all member parameters at once (for ``magnitude`` the L2 norm of the
    whole coupled slice: the group-lasso norm). ``"mean"``, ``"sum"`` and ``"max"`` reduce
    each member parameter on its own, divide it by its mean, and combine the members.
    Channel-level criteria (one score per output channel) are summed over the unit.
    """
    if reduce not in ("joint", "mean", "sum", "max"):
        raise PruneError(f"group_reduce={reduce!r} is not one of ['joint', 'max', 'mean', 'sum']")
    out: list[torch.Tensor] = []
    for grp in st.groups:
        n = len(grp.units)
        rows: list[torch.Tensor] = []
        joint: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for m in grp.members:
            s = scores.get(m.param)
            if s is None or m.role == "buffer":
                continue
            channel = crit.level == "channel"
            if channel and (m.role not in DEFINING or not unit_dim(st.graph.extra, m.module, m.dim, m.role)
                            or s.dim() != 1 or s.shape[0] != m.ids.numel()):
                continue
            mat = s.float().reshape(-1, 1) if channel else s.float().movedim(m.dim, 0).reshape(s.shape[m.dim], -1)
            parts = _unit_positions(st, grp, m)
            if channel:
                vec = torch.tensor([float(mat[p].sum()) if p.numel() else float("nan") for p in parts])
            elif reduce == "joint":
                for u, p in enumerate(parts):
                    if p.numel():
                        joint[u].append(mat[p].reshape(-1))
                continue
            else:
                vec = torch.tensor(
                    [float(crit.reduce(mat[p].reshape(1, -1), (1,))[0]) if p.numel() else float("nan") for p in parts]
                )
            ok = ~torch.isnan(vec)
            if not bool(ok.any()):
                continue
            mean = vec[ok].mean()
            rows.append(vec / mean if float(mean) > 0 else vec)
        if reduce == "joint" and crit.level != "channel":
            if any(joint):
                v = torch.tensor(
                    [float(crit.reduce(torch.cat(j).reshape(1, -1), (1,))[0]) if j else float("nan") for j in joint]
                )
                rows.append(v)
        if not rows:
            raise PruneError(
                f"criterion {crit.name!r} scored no parameter of group {grp.name!r}; "
                "use a criterion that scores convolution/linear weights"
            )
        mat_all = torch.stack(rows)
        if reduce == "max":
            v = torch.nan_to_num(mat_all, nan=float("-inf")).amax(0)
        elif reduce == "sum" or len(rows) == 1:
            v = torch.nansum(mat_all, 0)
        else:
            v = torch.nanmean(mat_all, 0)
        mean = v[torch.isfinite(v)].mean() if bool(torch.isfinite(v).any()) else torch.tensor(0.0)
        out.append(v / mean if float(mean) > 0 else v)
    return out
