"""What holding and running a model costs: bytes on disk and estimated energy.

Part of :mod:`prunekit.metrics` (which re-exports :data:`ENERGY_PJ_45NM`; import it from
there). The tallies read the per-module FLOPs of :func:`prunekit.metrics_count.count_flops`
and weigh them, and every parameter, by the per-operation energies below.
"""

from __future__ import annotations

import lzma

import safetensors.torch
import torch
from torch import nn

from .masking import effective_state_dict
from .metrics_count import effective_by_param

#: Energy per operation in picojoules, 45 nm CMOS, from M. Horowitz, "Computing's energy
#: problem (and what we can do about it)", ISSCC 2014, pp. 10-14. Memory entries are per
#: 32-bit access; narrower or wider elements are scaled by their bit width.
ENERGY_PJ_45NM: dict[str, float] = {
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "sram_read_32bit": 5.0,  # 8 KB cache
    "dram_read_32bit": 640.0,
}


def _dtype_key(dtype: torch.dtype) -> str:
    # bf16 has no row in the table; fp16 is its closest neighbour. fp64 falls back to fp32,
    # which understates its cost.
    if dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    if dtype in (torch.int8, torch.uint8, torch.qint8, torch.quint8):
        return "int8"
    return "fp32"


def _mac_pj(dtype: torch.dtype) -> float:
    key = _dtype_key(dtype)
    return ENERGY_PJ_45NM[f"{key}_mult"] + ENERGY_PJ_45NM[f"{key}_add"]


def _bits(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() * 8


def param_tally(model: nn.Module, targets: list) -> tuple[int, int, float, float]:
    """Parameters, nonzeros, and pJ to read them all (dense) or only nonzero prunable ones."""
    eff = effective_by_param(model)
    prunable_ids = {id(t.original) for t in targets}
    params = nonzero = 0
    dense_pj = sparse_pj = 0.0
    with torch.no_grad():
        for p in model.parameters():
            nz = int(torch.count_nonzero(eff.get(id(p), p)))
            params += p.numel()
            nonzero += nz
            per_elem = ENERGY_PJ_45NM["dram_read_32bit"] * _bits(p.dtype) / 32
            dense_pj += p.numel() * per_elem
            sparse_pj += (nz if id(p) in prunable_ids else p.numel()) * per_elem
        for module in model.modules():  # a layer on sparse kernels (deploy.sparsify) keeps its weights as buffers
            bufs = list(module.buffers(recurse=False))
            if not any(b.layout == torch.sparse_csr for b in bufs):
                continue
            for b in bufs:
                values = b.values() if b.layout == torch.sparse_csr else b  # a CSR weight stores only its nonzeros
                per_elem = ENERGY_PJ_45NM["dram_read_32bit"] * _bits(values.dtype) / 32
                params += values.numel()
                nonzero += int(torch.count_nonzero(values))
                dense_pj += values.numel() * per_elem
                sparse_pj += values.numel() * per_elem
    return params, nonzero, dense_pj, sparse_pj


def flop_tally(
    model: nn.Module, targets: list, total: int, per_flops: dict, per_acts: dict, x: torch.Tensor,
    fixed: dict | None = None,
) -> tuple[float, float, float]:
    """Effective FLOPs, compute pJ and activation SRAM pJ from the per-module counts. A
    module's density is over all its prunable weights (an LSTM has several, no ``weight``);
    it scales the module's FLOPs but those in ``fixed`` (an attention module's scores and
    weighted values, which read no weight), which count in full."""
    fixed = fixed or {}
    by_module: dict[int, list] = {}
    for t in targets:
        for m in t.users(model):  # a tied weight's every user runs at its density
            by_module.setdefault(id(m), []).append(t)
    # A module whose parent computes with its weight and never calls it (nn.MultiheadAttention's
    # out_proj) counts no FLOPs of its own: its weights join the density of that parent.
    names = {id(m): n for n, m in model.named_modules()}
    counted = {names[k]: k for k in by_module if per_flops.get(k, 0) and k in names}
    for key in [k for k in by_module if not per_flops.get(k, 0) and k in names]:
        name = names[key]
        parent = max((n for n in counted if name.startswith(n + ".") or (n == "" and name)), key=len, default=None)
        if parent is not None:
            by_module[counted[parent]].extend(by_module.pop(key))
    module_flops = 0
    effective = compute_pj = sram_pj = 0.0
    act_bits = _bits(x.dtype) if x.is_floating_point() else 32
    with torch.no_grad():
        for key, ts in by_module.items():
            f = per_flops.get(key, 0)
            whole = min(fixed.get(key, 0), f)  # FLOPs that read no weight
            core = whole
            if whole:  # scores and values shrink only with the query/key/value features left whole
                proj = [t.weight for t in ts if t.param == "in_proj_weight" and t.weight.dim() == 2]
                core = whole * (float(proj[0].ne(0).any(1).float().mean()) if proj else 1.0)
            nonzero = sum(int(torch.count_nonzero(t.weight)) for t in ts)
            density = nonzero / max(sum(t.weight.numel() for t in ts), 1)
            module_flops += f
            reached = (f - whole) * density + core
            effective += reached
            compute_pj += reached / 2 * _mac_pj(ts[0].weight.dtype)  # 2 FLOPs per MAC
            sram_pj += per_acts.get(key, 0) * ENERGY_PJ_45NM["sram_read_32bit"] * act_bits / 32
    # Ops outside Linear/Conv (e.g. attention matmuls) run dense at the model's dtype.
    other = total - module_flops
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return effective + other, compute_pj + other / 2 * _mac_pj(dtype), sram_pj


def stored_sizes(model: nn.Module) -> tuple[int, int]:
    """Bytes of the model's effective state as safetensors, and of that blob xz-compressed."""
    blob = safetensors.torch.save(effective_state_dict(model))
    return len(blob), len(lzma.compress(blob, preset=6))
