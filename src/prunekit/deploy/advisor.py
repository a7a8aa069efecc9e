"""Which deployable form of a pruned model is fastest and which is smallest, here.

``advise(model, example_inputs)`` builds every form that applies and measures it on this
machine: the model as it is (dense kernels), the compacted model (when channels were
pruned), linear layers on sparse kernels (CSR, and on CUDA the 2:4 semi-structured ones,
where they measured faster), and the packed file with exact, int8 and 4-bit codebook values.
Speeds are medians of interleaved runs; nothing is claimed that was not measured. A 2:4
model on the CPU is reported as such: its kernels need a GPU with sparse tensor cores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .. import masking
from ..criteria.base import call_model
from ..errors import PruneError
from ..masking import effective_state_dict
from ..metrics_count import resize_batch
from ..metrics_timing import time_interleaved
from ..targets import check_module, find_targets


@dataclass
class Form:
    name: str
    latency_ms: float | None  # None: same kernels as another form (see note)
    bytes: int
    note: str = ""


@dataclass
class Advice:
    """The measured forms, and which one is fastest and which smallest."""

    forms: list[Form]
    batch_size: int
    fastest: str
    smallest: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        w = max(len(f.name) for f in self.forms)
        lines = [f"{'form':<{w}}  {'latency ms':>10}  {'bytes':>12}  note", "-" * (w + 40)]
        for f in self.forms:
            lat = f"{f.latency_ms:.3f}" if f.latency_ms is not None else "—"
            lines.append(f"{f.name:<{w}}  {lat:>10}  {f.bytes:>12,}  {f.note}")
        lines.append(f"fastest at batch {self.batch_size}: {self.fastest}; smallest file: {self.smallest}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "fastest": self.fastest, "smallest": self.smallest,
                "forms": [vars(f) for f in self.forms], "notes": list(self.notes)}


def _median_ms(models: dict[str, nn.Module], inputs: Any, repeats: int) -> dict[str, float]:
    runs = [lambda m=m: call_model(m, inputs) for m in models.values()]
    return dict(zip(models, time_interleaved(runs, [()] * len(runs), 3, repeats)))


def _batch(example_inputs: Any, batch_size: int) -> Any:
    """The inputs at ``batch_size`` rows: a tensor, or each batched tensor of a tuple, list or
    dict (others, such as an ``(L, L)`` mask, as they are)."""
    if isinstance(example_inputs, torch.Tensor):
        return resize_batch((example_inputs,), batch_size)[0]
    if isinstance(example_inputs, dict):
        keys = [k for k, v in example_inputs.items() if isinstance(v, torch.Tensor) and v.dim()]
        resized = dict(zip(keys, resize_batch(tuple(example_inputs[k] for k in keys), batch_size))) if keys else {}
        return {k: resized.get(k, v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        idx = [i for i, v in enumerate(example_inputs) if isinstance(v, torch.Tensor) and v.dim()]
        resized = dict(zip(idx, resize_batch(tuple(example_inputs[i] for i in idx), batch_size))) if idx else {}
        return type(example_inputs)(resized.get(i, v) for i, v in enumerate(example_inputs))
    return example_inputs


def _nm_pattern(model: nn.Module, n: int = 2, m: int = 4) -> bool:
    ts = [t for t in find_targets(model) if t.weight.shape[-1] % m == 0 if t.weight.dim() == 2]
    if not ts:
        return False
    return all(bool((t.weight.detach().reshape(-1, m).ne(0).sum(1) <= n).all()) for t in ts)


def advise(model: nn.Module, example_inputs: Any, *, batch_size: int = 1, repeats: int = 30) -> Advice:
    """Measure the deployable forms of ``model`` on this machine (the model is not changed)."""
    check_module(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PruneError(f"batch_size must be a positive int, got {batch_size!r}")
    from .packed import encode

    base = masking.commit(copy.deepcopy(model)).eval()
    x = _batch(example_inputs, batch_size)
    state = effective_state_dict(base)
    models: dict[str, nn.Module] = {"as is (dense kernels)": base}
    sizes = {"as is (dense kernels)": len(safetensors.torch.save(state))}
    notes: dict[str, str] = {}
    try:
        from ..surgery import compact

        small = compact(base, example_inputs)
        if sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in base.parameters()):
            models["compacted"] = small.eval()
            sizes["compacted"] = len(safetensors.torch.save(effective_state_dict(small)))
            notes["compacted"] = "channels physically removed (pk.compact)"
    except PruneError as e:
        notes["_compact"] = f"compaction not applicable: {e}"
    try:
        from .sparse import sparsify

        report = sparsify(base, example_inputs, batch_size=batch_size, batch_sizes=(batch_size,), repeats=repeats)
        if report.replaced:
            kinds = sorted({l.decision.upper() for l in report.layers if l.decision != "dense"})
            label = f"sparse kernels ({', '.join(kinds)})"
            models[label] = report.model.eval()
            sizes[label] = sizes["as is (dense kernels)"]
            notes[label] = "measured faster here: " + ", ".join(
                f"{l.name} ({l.decision.upper()})" for l in report.layers if l.decision != "dense")
        else:
            notes["_sparse"] = "sparse kernels: no linear layer measured faster than dense here"
    except (ImportError, PruneError) as e:
        notes["_sparse"] = f"sparse kernels not measured: {e}"
    lat = _median_ms(models, x, repeats)
    forms = [Form(k, lat[k], sizes[k], notes.get(k, "")) for k in models]
    packed_state, runs_as = state, "as is (dense kernels)"
    if "compacted" in models:
        packed_state, runs_as = effective_state_dict(models["compacted"]), "compacted"
    for q, label in ((None, "packed exact"), ("int8", "packed int8"), ("codebook", "packed 4-bit codebook")):
        nbytes = len(encode(packed_state, q))
        suffix = " (compacted)" if runs_as == "compacted" else ""
        forms.append(Form(label + suffix, None, nbytes, f"a file: loads into dense tensors (runs as '{runs_as}')"))
    extra = [v for k, v in notes.items() if k.startswith("_")]
    if _nm_pattern(base) and not any(p.is_cuda for p in base.parameters()):  # on CUDA, sparsify timed 2:4
        extra.append("every linear weight follows 2:4: semi-structured sparse kernels need a GPU "
                     "(torch.sparse.to_sparse_semi_structured); not measured on this CPU")
    timed = [f for f in forms if f.latency_ms is not None]
    fastest = min(timed, key=lambda f: f.latency_ms).name
    smallest = min(forms, key=lambda f: f.bytes).name
    return Advice(forms, batch_size, fastest, smallest, extra)
