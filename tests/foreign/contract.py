"""The contract every (architecture, granularity) pair must keep.

A call to ``pk.prune`` either

* prunes exactly what its report says: the reported sparsity equals the zero fraction
  measured over the reported scope (for channels: the removed units counted in the
  weights), every weight tensor of the model is either in the scope or listed in
  ``result.coverage.skipped`` with a reason, the model still runs with finite outputs,
  channel pruning compacts to a model with the same outputs (or ``pk.compact`` refuses with
  a ``PruneError``), and the pruned model saves and reloads with the same outputs; or
* refuses with a ``PruneError`` that leaves the model exactly as it was.

Anything else (another exception, a weight neither pruned nor listed, a sparsity that is
not what happened) is a violation. :func:`check` returns an :class:`Outcome` or raises
``AssertionError``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass

import torch
from torch import nn

import prunekit as pk
from prunekit.coverage import CoverageWarning
from prunekit.errors import PruneError
from prunekit.granularity import weight_rows
from prunekit.masking import effective_weights
from prunekit.targets import find_targets

from .archs import ARCHS, build

#: What each architecture is run through. "head" only where there is attention to find.
GRANULARITIES = ("unstructured", "2:4", "block", "channel")
ATTENTION = {"multihead_attention", "transformer_encoder", "transformer_seq2seq", "hf_llama", "hf_qwen2",
             "hf_gpt2", "hf_bert", "hf_vit"}


def pairs() -> list[tuple[str, str]]:
    out = []
    for name in ARCHS:
        grans = GRANULARITIES + (("head",) if name in ATTENTION else ())
        out += [(name, g) for g in grans]
    return out


@dataclass
class Outcome:
    arch: str
    granularity: str
    status: str  # "pruned" or "refused"
    detail: str  # what was pruned (sparsity, scope, compaction) or the refusal message
    compact: str = ""  # channel/head: "exact", "refused: ..." ; else ""
    saved: str = ""  # "" when saved and reloaded exactly, else "save refused: ..."


def _run(model: nn.Module, x) -> torch.Tensor:
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = out["logits"] if "logits" in out else next(iter(out.values()))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol * (1 + float(b.abs().max())), rtol=0))


def check(arch: str, granularity: str, dtype: torch.dtype = torch.float32) -> Outcome:
    model, x = build(arch)
    model = model.to(dtype)
    if dtype != torch.float32:
        x = tuple(t.to(dtype) if t.is_floating_point() else t for t in x) if isinstance(x, tuple) else (
            x.to(dtype) if x.is_floating_point() else x)
    before = _state(model)
    sparsity = None if ":" in granularity else 0.5
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = pk.prune(model, sparsity, granularity=granularity, example_inputs=x)
    except PruneError as e:
        assert _same(model, before), f"{arch}/{granularity}: refused ({e}) but the model changed"
        msg = str(e)
        assert msg and "\n" not in msg.strip()[:200], f"{arch}/{granularity}: unclear refusal {msg!r}"
        return Outcome(arch, granularity, "refused", msg)

    # Every weight tensor is in the scope or listed as skipped, with a reason.
    cov = res.coverage
    assert cov is not None, "result has no coverage"
    scope = {l.name for l in res.layers}
    aliases = {a for t in find_targets(model) for a in t.aliases}
    listed = {s.name for s in cov.skipped}
    assert all(s.reason for s in cov.skipped)
    eff = effective_weights(model)
    silent = [n for n, w in eff.items() if w.dim() >= 2 and n not in scope | listed | aliases]
    assert not silent, f"{arch}/{granularity}: weights neither pruned nor listed as skipped: {silent}"
    assert not scope & listed, f"{arch}/{granularity}: weights both in scope and skipped: {scope & listed}"
    assert cov.covered == sum(eff[n].numel() for n in scope), f"{arch}/{granularity}: coverage.covered is wrong"

    # What the call could not do is said, not only recorded.
    said = " ".join(str(w.message) for w in caught)
    unsupported = sum(k.numel for k in cov.skipped if not k.by_choice) / cov.total
    assert unsupported <= 0.05 or any(issubclass(w.category, CoverageWarning) for w in caught), (
        f"{arch}/{granularity}: {unsupported:.0%} of the parameters left dense without a warning")
    if res.groups is not None and res.sparsity + 0.05 < sparsity:
        assert "asked for" in said, f"{arch}/{granularity}: removed {res.sparsity:.0%} of 50 % without a warning"

    # The reported sparsity is what happened.
    targets = {t.name: t for t in find_targets(model)}
    for l in res.layers:
        w = eff[l.name]
        zeros = int((w == 0).sum())
        assert abs(l.sparsity - zeros / w.numel()) < 1e-9, f"{l.name}: reported {l.sparsity}, measured {zeros / w.numel()}"
    if res.groups is None:
        numel = sum(eff[n].numel() for n in scope)
        zeros = sum(int((eff[n] == 0).sum()) for n in scope)
        assert abs(res.sparsity - zeros / numel) < 1e-9, f"reported {res.sparsity}, measured {zeros / numel}"
        if ":" in granularity:
            n, m = (int(v) for v in granularity.split(":"))
            for name in scope:  # along each output's inputs (a transposed conv's weight turned around)
                rows = weight_rows(targets[name], eff[name]).reshape(-1, m)
                assert int((rows != 0).sum(1).max()) <= n, f"{name} breaks the {granularity} pattern"
    else:
        total = sum(g.units for g in res.groups)
        gone = sum(g.pruned_units for g in res.groups)
        assert abs(res.sparsity - gone / max(1, total)) < 1e-9
        for l in res.layers:
            t = targets[l.name]
            w = eff[l.name].movedim(t.out_dim, 0).reshape(eff[l.name].shape[t.out_dim], -1)
            dead = int((w == 0).all(1).sum())
            assert l.pruned_units == dead, f"{l.name}: reports {l.pruned_units} removed units, {dead} are zero"
        # The removed channels are really gone from the weights that produce them.
        assert gone == 0 or any(l.pruned_units for l in res.layers), "groups report removals the weights do not show"

    out = _run(model, x)
    assert torch.isfinite(out).all(), f"{arch}/{granularity}: non-finite outputs after pruning"

    compact = ""
    if res.groups is not None:
        try:
            small = pk.compact(model, x)
        except PruneError as e:
            compact = f"refused: {str(e)[:120]}"
        else:
            assert _close(_run(small, x), out), f"{arch}/{granularity}: compacted outputs differ"
            n_small = sum(p.numel() for p in small.parameters())
            n_big = sum(p.numel() for p in model.parameters())
            assert res.sparsity == 0 or n_small < n_big, "compaction removed nothing"
            compact = f"exact, {n_big - n_small:,} parameters removed"

    # Saves and reloads with the same outputs (or pk.save refuses before writing anything).
    saved = ""
    if dtype == torch.float32:
        with tempfile.TemporaryDirectory() as d:
            try:
                pk.save(model, f"{d}/m")
            except PruneError as e:
                assert not any(os.scandir(d)), f"{arch}/{granularity}: save refused but left files behind"
                saved = f"save refused: {str(e)[:120]}"
            else:
                fresh, _ = build(arch)
                loaded = pk.load(f"{d}/m", model=fresh)
                assert _close(_run(loaded, x), out, 1e-6), f"{arch}/{granularity}: reloaded model differs"

    detail = f"sparsity {res.sparsity:.1%} over {cov.share:.0%} of params; {len(cov.skipped)} weights listed as skipped"
    return Outcome(arch, granularity, "pruned", detail + (f"; {saved}" if saved else ""), compact, saved)


def table(outcomes: list[Outcome]) -> str:
    """Markdown table: one row per architecture, one column per granularity."""
    grans = list(GRANULARITIES) + ["head"]
    by = {(o.arch, o.granularity): o for o in outcomes}
    lines = ["| model | " + " | ".join(grans) + " |", "|---|" + "---|" * len(grans)]
    for name in ARCHS:
        cells = []
        for g in grans:
            o = by.get((name, g))
            if o is None:
                cells.append("")
            elif o.status == "refused":
                cells.append("refused")
            else:
                cell = "pruned"
                if o.compact.startswith("refused"):
                    cell += ", compact refused"
                elif o.compact.startswith("exact, 0 "):
                    cell = "nothing removable (warned)"
                elif o.compact:
                    cell += " + compact"
                cells.append(cell + (", save refused" if o.saved else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n_p = sum(o.status == "pruned" for o in outcomes)
    n_r = sum(o.status == "refused" for o in outcomes)
    lines.append("")
    lines.append(f"{len(ARCHS)} models, {len(outcomes)} pairs: {n_p} pruned as reported, {n_r} refused clearly, "
                 "0 crashes, 0 silent skips")
    return "\n".join(lines)
