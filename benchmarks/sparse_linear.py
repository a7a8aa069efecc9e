"""Dense vs CSR forward of LeNet-300-100's Linear layers, per layer and whole model.

For each sparsity (default 90 % and 99 %) and allocation (``global``: ``pk.prune(model, s)``,
one magnitude ranking over all layers, the layers end up unequally sparse; ``uniform``:
every layer exactly ``s``), the untrained LeNet-300-100 (weights as initialized: kernel
time does not depend on the values) is pruned and committed. Each Linear layer is then
timed on the input it really receives, dense ``nn.Linear`` vs ``prunekit.deploy.SparseLinear``
(``torch.sparse.addmm`` with a CSR weight), at batch 1 and 256; the whole model likewise,
with every layer in CSR. Variants run interleaved, the order rotating every round; the
median of ``--repeats`` runs is reported (p10/p90 in the JSON). Finally
``prunekit.deploy.sparsify`` is run at each batch size and its decisions are recorded.

``dense/csr`` is dense time ÷ CSR time: above 1, CSR is faster.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sparse_linear.py [--quick] [--threads 2]

Writes ``benchmarks/results/sparse_linear.json`` (``sparse_linear_quick.json`` with --quick).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import zoo  # noqa: E402
from prunekit.deploy import SparseLinear, sparsify  # noqa: E402

BATCHES = (1, 256)
SPARSITIES = (0.9, 0.99)
ALLOCATIONS = ("global", "uniform")
#: Reference figures (dense time ÷ CSR time, LeNet-300-100 layers), quoted in docs/deploy.md.
PUBLISHED = {0.9: {1: 0.58, 256: 1.39}, 0.99: {1: 0.79, 256: 2.88}}


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Timing summaries (seconds) of each callable over ``repeats`` rounds; order rotates per round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n]()
        for r in range(repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    return {n: _common.summarize(t) for n, t in times.items()}


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each Linear layer receives when ``model`` runs ``x``."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, args[0].detach().clone()))
               for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def all_csr(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear layer replaced by a SparseLinear."""
    new = pk.commit(copy.deepcopy(model))
    for name, m in list(new.named_modules()):
        if isinstance(m, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, child, SparseLinear.from_linear(m))
    return new


def bench(sparsity: float, allocation: str, repeats: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = zoo.create("lenet300100")
    pk.prune(model, sparsity, allocation=allocation)
    pk.commit(model)
    model.eval()
    sparse_model = all_csr(model)
    x_full = torch.randn(max(BATCHES), 1, 28, 28, generator=torch.Generator().manual_seed(1))
    layers: dict[str, dict[str, Any]] = {}
    whole: dict[str, Any] = {}
    for b in BATCHES:
        x = x_full[:b].contiguous()
        ins = layer_inputs(model, x)
        for name, lin in model.named_modules():
            if not isinstance(lin, nn.Linear):
                continue
            csr = SparseLinear.from_linear(lin)
            xi = ins[name]
            stats = interleaved({"dense": lambda: lin(xi), "csr": lambda: csr(xi)}, repeats, warmup)
            with torch.inference_mode():
                err = float((lin(xi) - csr(xi)).abs().max())
            row = layers.setdefault(name, {
                "shape": [lin.out_features, lin.in_features],
                "sparsity": 1 - int(torch.count_nonzero(lin.weight)) / lin.weight.numel(),
                "nnz": csr.nnz,
            })
            row[f"b{b}"] = {"dense_s": stats["dense"], "csr_s": stats["csr"],
                            "dense_over_csr": stats["dense"]["median"] / stats["csr"]["median"], "max_abs_diff": err}
        stats = interleaved({"dense": lambda: model(x), "csr": lambda: sparse_model(x)}, repeats, warmup)
        whole[f"b{b}"] = {"dense_s": stats["dense"], "csr_s": stats["csr"],
                          "dense_over_csr": stats["dense"]["median"] / stats["csr"]["median"]}
    decisions = {}
    for b in BATCHES:
        rep = sparsify(model, x_full[:1], batch_size=b, batch_sizes=BATCHES, repeats=repeats)
        decisions[f"b{b}"] = rep.as_dict()
    return {"sparsity": sparsity, "allocation": allocation,
            "model_sparsity": pk.sparsity(model), "layers": layers, "whole_model": whole, "sparsify": decisions}


def _ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1e3:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few runs, 90 %% global only (smoke test)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 100; quick 5)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None, help="default 0.9 0.99")
    ap.add_argument("--allocations", nargs="+", default=None, choices=ALLOCATIONS, help="default global uniform")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 100)
    warmup = 2 if args.quick else 10
    sparsities = args.sparsities or ((0.9,) if args.quick else SPARSITIES)
    allocations = args.allocations or (("global",) if args.quick else ALLOCATIONS)
    env_before = _common.environment()
    start = time.perf_counter()
    runs = [bench(s, a, repeats, warmup) for a in allocations for s in sparsities]
    env_after = _common.environment()

    rows = []
    for r in runs:
        tag = f"{r['sparsity']:.0%} {r['allocation']}"
        for name, l in list(r["layers"].items()) + [("whole model", None)]:
            d = l if l is not None else r["whole_model"]
            cells = [tag, name, "x".join(map(str, l["shape"])) if l else "",
                     f"{l['sparsity']:.1%}" if l else f"{r['model_sparsity']:.1%}"]
            for b in BATCHES:
                e = d[f"b{b}"]
                cells += [_ms(e["dense_s"]), _ms(e["csr_s"]), f"{e['dense_over_csr']:.2f}×"]
            rows.append(cells)
    cols = ["run", "layer", "shape", "zeros"]
    for b in BATCHES:
        cols += [f"b{b} dense ms", f"b{b} csr ms", f"b{b} dense/csr"]
    load = env_after["loadavg"]
    _common.print_table(
        f"LeNet-300-100 forward, dense vs CSR, {args.threads} thread(s), median of {repeats} interleaved runs "
        f"(dense/csr > 1: CSR faster; load {load[0]:.2f})", cols, rows)
    for r in runs:
        for b in BATCHES:
            d = r["sparsify"][f"b{b}"]
            print(f"sparsify {r['sparsity']:.0%} {r['allocation']}, batch_size={b}: replaced {d['replaced'] or 'nothing'}"
                  + (f"; whole model {d['model_dense_ms']:.3f} -> {d['model_sparse_ms']:.3f} ms"
                     if d["model_sparse_ms"] is not None else ""))
    print("published (dense/csr per layer): " + "; ".join(
        f"{s:.0%}: b1 {v[1]:.2f}×, b256 {v[256]:.2f}×" for s, v in PUBLISHED.items()))
    payload = {
        "benchmark": "sparse_linear", "quick": args.quick, "threads": args.threads, "repeats": repeats,
        "warmup": warmup, "batches": list(BATCHES), "ratio": "dense time / CSR time (> 1: CSR faster)",
        "csr_kernel": "torch.sparse.addmm(bias[:, None], W_csr, x.T).T",
        "published_dense_over_csr": {str(s): {str(b): v for b, v in d.items()} for s, d in PUBLISHED.items()},
        "env_before": env_before, "env": env_after, "wall_s": time.perf_counter() - start, "runs": runs,
    }
    path = _common.write_json("sparse_linear" + ("_quick" if args.quick else ""), payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
