"""Time and peak extra memory of global magnitude pruning as the model grows.

Models are stacks of square ``nn.Linear(w, w, bias=False)`` layers (≈1M, 10M, 100M
parameters). Ours is ``pk.prune(model, 0.9)``; torch's is ``global_unstructured`` with
``L1Unstructured``. Every measurement runs in a fresh child process on one thread: it
warms up on a tiny model (so paging in kernel code is not counted), builds the model,
resets the kernel's peak-RSS counter (VmHWM), prunes, and reports the peak minus the RSS
before pruning, so masks and temporaries both count.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/prune_scaling.py [--quick] [--sizes 1M 10M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common

SPARSITY = 0.9
LAYERS = 6
# Width of each square layer: LAYERS × width² ≈ the nominal size.
SIZES = {"1M": 416, "10M": 1280, "100M": 4096}
METHODS = ("ours", "torch")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, width: int, layers: int) -> dict:
    """Runs in the fresh process: build, reset the peak, prune, measure. Returns a dict."""
    import gc
    import resource
    import time

    import torch
    from torch import nn
    from torch.nn.utils import prune as tprune

    import prunekit as pk

    def prune(model: nn.Module) -> None:
        if method == "ours":
            pk.prune(model, SPARSITY)
        else:
            tprune.global_unstructured(
                [(m, "weight") for m in model], pruning_method=tprune.L1Unstructured, amount=SPARSITY
            )

    torch.set_num_threads(1)
    # Warm up on a tiny model: first calls page in kernel code and set up allocator pools,
    # a fixed cost that would otherwise swamp the 1M measurement.
    prune(nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    rss_before = _status_kb("VmRSS")
    try:
        # "5" resets VmHWM to the current RSS (Linux ≥ 4.0): the peak then covers pruning only.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_source = "VmHWM"
    except OSError:
        peak_source = "ru_maxrss"  # a lower bound: the peak so far may exceed rss_before
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    t0 = time.perf_counter()
    prune(model)
    seconds = time.perf_counter() - t0

    if peak_source == "VmHWM":
        extra_kb = _status_kb("VmHWM") - rss_before
    else:
        extra_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max(rss_before, maxrss_before)
    gc.collect()
    retained_kb = _status_kb("VmRSS") - rss_before  # what stays allocated: masks, copies
    with torch.no_grad():
        zeros = sum(int((m.weight == 0).sum()) for m in model)  # effective (masked) weights
    return {
        "method": method,
        "width": width,
        "layers": layers,
        "params": params,
        "model_bytes": model_bytes,
        "seconds": seconds,
        "extra_bytes": extra_kb * 1024,
        "retained_bytes": retained_kb * 1024,
        "peak_source": peak_source,
        "sparsity": zeros / params,
        "threads": torch.get_num_threads(),
    }


def run_child(method: str, width: int, layers: int) -> dict:
    """One measurement in a fresh interpreter, on one thread."""
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = env.get("OMP_WAIT_POLICY", "PASSIVE")
    env["OMP_NUM_THREADS"] = "1"
    src = str(_common.ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, str(width), str(layers)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {method} width={width} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 1M size, once (smoke test)")
    ap.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=None, help="runs per size and method (default 3)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the parent only waits; this makes its environment record match the children's
    sizes = args.sizes or (["1M"] if args.quick else list(SIZES))
    repeats = args.repeats or (1 if args.quick else 3)
    env_before = _common.environment()
    runs: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in METHODS} for s in sizes}
    for rep in range(repeats):
        for size in sizes:
            # Alternate which method goes first so neither always meets the same load.
            for method in METHODS if rep % 2 == 0 else METHODS[::-1]:
                r = run_child(method, SIZES[size], LAYERS)
                r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                runs[size][method].append(r)
                print(f"  {size:>5} {method:<5} {r['seconds']:8.3f} s  extra {r['extra_bytes'] / 1e6:8.1f} MB"
                      f"  sparsity {r['sparsity']:.6f}  load {r['loadavg'][0]:.2f}", file=sys.stderr)
    env_after = _common.environment()

    results: dict[str, dict] = {}
    rows = []
    for size in sizes:
        ours, torch_ = runs[size]["ours"], runs[size]["torch"]
        mb = ours[0]["model_bytes"]
        res = {"params": ours[0]["params"], "width": SIZES[size], "layers": LAYERS, "model_bytes": mb}
        for name, rs in (("ours", ours), ("torch", torch_)):
            res[name] = {
                "seconds": statistics.median(r["seconds"] for r in rs),
                "seconds_all": [r["seconds"] for r in rs],
                # Memory is near-deterministic; keep the worst run to be safe.
                "extra_bytes": max(r["extra_bytes"] for r in rs),
                "extra_x_model": max(r["extra_bytes"] for r in rs) / mb,
                "retained_bytes": max(r["retained_bytes"] for r in rs),
                "sparsity": min(r["sparsity"] for r in rs),
                "peak_source": rs[0]["peak_source"],
                "loadavg": [r["loadavg"] for r in rs],
            }
        res["speedup"] = res["torch"]["seconds"] / res["ours"]["seconds"]
        results[size] = res
        o, t = res["ours"], res["torch"]
        rows.append([
            size,
            f"{res['params']:,}",
            f"{mb / 1e6:.1f}",
            f"{o['seconds']:.3f}",
            f"{t['seconds']:.3f}",
            f"{res['speedup']:.1f}×",
            f"{o['extra_bytes'] / 1e6:.1f}",
            f"{t['extra_bytes'] / 1e6:.1f}",
            f"{o['extra_x_model']:.2f}×",
            f"{t['extra_x_model']:.2f}×",
            f"{o['sparsity']:.4f} / {t['sparsity']:.4f}",
        ])
    load = env_after["loadavg"]
    _common.print_table(
        f"Global magnitude pruning to {SPARSITY:.0%}, 1 thread, fresh process per run, "
        f"median of {repeats} (load {load[0]:.2f})",
        ["size", "params", "model MB", "ours s", "torch s", "torch/ours",
         "ours extra MB", "torch extra MB", "ours ×model", "torch ×model", "sparsity ours/torch"],
        rows,
    )
    payload = {
        "benchmark": "prune_scaling",
        "quick": args.quick,
        "sparsity": SPARSITY,
        "threads": 1,
        "repeats": repeats,
        "env_before": env_before,
        "env": env_after,
        "sizes": results,
        "runs": runs,
    }
    path = _common.write_json("prune_scaling_quick" if args.quick else "prune_scaling", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
