"""How one-shot pruning scales: memory and time against depth, offload and processes.

Three measurements and a projection, in one run:

1. **Depth** (8, 16, 32 blocks of one width; ``--quick``: 2 and 4): peak resident memory
   above the process's baseline and wall time of the in-memory path (``from_pretrained``,
   ``prune_llm``, ``save_pretrained``: the reference) and of the disk offload
   (``prune_offloaded(offload="disk")``), each result read back and compared, for Wanda and
   SparseGPT. With offload the memory is flat in depth; in memory it grows with the model.
   The peak is Linux's ``VmHWM`` above the resident size at the start, reset before each run
   (``/proc/self/clear_refs``) after glibc's ``malloc_trim`` returned what earlier runs freed.
2. **Processes** (1 and 2, gloo on the CPU, under ``python -m torch.distributed.run``):
   ``prune_llm(..., distributed=True)``; the 2-process weights must equal the single
   process's (the reference, run in this process, one thread like each rank) bit for bit.
3. **Per block**: the seconds per block of each run, and the projection of
   ``docs/scale.md`` for 7B, 70B and 405B models on one and on eight GPUs, from the
   H200 figures for a LLaMA-7B block (SparseGPT 8.5 s, Wanda 0.9 s at 128 x 2048 tokens).

Usage::

    python benchmarks/llm_scale.py            # writes benchmarks/results/llm_scale.json
    python benchmarks/llm_scale.py --quick    # seconds; writes llm_scale_quick.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, print_table, write_json  # noqa: E402

FULL = dict(depths=[8, 16, 32], hidden=512, mlp=1376, heads=8, kv=8, windows=16, seqlen=64, methods=["wanda", "sparsegpt"])
QUICK = dict(depths=[2, 4], hidden=64, mlp=172, heads=4, kv=4, windows=4, seqlen=16, methods=["wanda"])
VOCAB = 128
BATCH = 2
#: LLaMA-shaped models: hidden, MLP, query heads, KV heads, head size, blocks.
SHAPES = {"7B": (4096, 11008, 32, 32, 128, 32), "70B": (8192, 28672, 64, 8, 128, 80), "405B": (16384, 53248, 128, 8, 128, 126)}
#: H200, one LLaMA-7B-shaped block, 128 x 2048 calibration tokens (seconds).
H200_7B = {"sparsegpt": 8.5, "wanda": 0.9}


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Return freed memory to the system, then reset VmHWM to the current RSS, so that the next
    run's peak above the current RSS is what that run allocates (not memory an earlier run freed)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then be understated
        pass
    Path("/proc/self/clear_refs").write_text("5")


def write_model(folder: Path, depth: int, cfg: dict[str, Any]) -> int:
    """A random Llama of ``depth`` blocks, saved; returns its weight bytes."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=cfg["hidden"], intermediate_size=cfg["mlp"],
                                      num_hidden_layers=depth, num_attention_heads=cfg["heads"],
                                      num_key_value_heads=cfg["kv"], max_position_embeddings=cfg["seqlen"],
                                      tie_word_embeddings=False)
    torch.manual_seed(depth)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _ids(cfg: dict[str, Any]) -> torch.Tensor:
    return torch.randint(0, VOCAB, (cfg["windows"], cfg["seqlen"]), generator=torch.Generator().manual_seed(0))


def run_one(mode: str, folder: Path, out: Path, method: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One pruning run in this process: ``mode`` is ``memory`` (the reference) or ``disk``."""
    import transformers

    from prunekit.llm import prune_llm
    from prunekit.llm.offload import prune_offloaded

    ids = _ids(cfg)
    kw = dict(method=method, batch_size=BATCH, reconstruct=0, self_calibration=0.0)
    _reset_peak()
    base = _rss("VmRSS")
    t0 = time.perf_counter()
    if mode == "memory":
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        prune_llm(model, ids, **kw)
        model.save_pretrained(out)
        del model
    else:
        prune_offloaded(folder, out, ids, offload="disk", **kw)
    wall = time.perf_counter() - t0
    peak = _rss("VmHWM") - base
    state = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    return {"mode": mode, "method": method, "wall_s": wall, "peak_above_base_bytes": peak, "digest": _digest(state)}


def depth_sweep(cfg: dict[str, Any], work: Path, log: Any = print) -> list[dict[str, Any]]:
    rows = []
    for depth in cfg["depths"]:
        folder = work / f"depth{depth}"
        weights = write_model(folder, depth, cfg)
        for method in cfg["methods"]:
            pair = {}
            for mode in ("memory", "disk"):
                out = work / f"out-{depth}-{method}-{mode}"
                pair[mode] = run_one(mode, folder, out, method, cfg)
                shutil.rmtree(out, ignore_errors=True)
            same = pair["memory"]["digest"] == pair["disk"]["digest"]
            rows.append({"depth": depth, "method": method, "weights_bytes": weights, "same_weights": same,
                         **{f"{m}_{k}": v for m, r in pair.items() for k, v in r.items() if k in ("wall_s", "peak_above_base_bytes")},
                         "disk_s_per_block": pair["disk"]["wall_s"] / depth})
            log(f"depth {depth} {method}: memory {pair['memory']['peak_above_base_bytes'] / 2**20:.0f} MiB "
                f"{pair['memory']['wall_s']:.1f} s, disk {pair['disk']['peak_above_base_bytes'] / 2**20:.0f} MiB "
                f"{pair['disk']['wall_s']:.1f} s, same {same}")
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(folder: Path, out: Path, method: str, cfg: dict[str, Any]) -> None:
    """One rank of the processes sweep (run by torch.distributed.run)."""
    import transformers

    from prunekit import distributed as pkd
    from prunekit.llm import prune_llm

    torch.set_num_threads(1)
    pkd.init_from_env(backend="gloo", timeout_s=300)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    t0 = time.perf_counter()
    prune_llm(model, _ids(cfg), method=method, batch_size=BATCH, reconstruct=0, self_calibration=0.0, distributed=True)
    wall = time.perf_counter() - t0
    if pkd.is_main():
        out.write_text(json.dumps({"wall_s": wall, "digest": _digest(model.state_dict())}))
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _single(folder: Path, method: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import transformers

    from prunekit.llm import prune_llm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        t0 = time.perf_counter()
        prune_llm(model, _ids(cfg), method=method, batch_size=BATCH, reconstruct=0, self_calibration=0.0)
        return {"wall_s": time.perf_counter() - t0, "digest": _digest(model.state_dict())}
    finally:
        torch.set_num_threads(threads)


def processes_sweep(cfg: dict[str, Any], work: Path, counts: list[int], log: Any = print) -> list[dict[str, Any]]:
    depth = cfg["depths"][0]
    folder = work / "procs"
    write_model(folder, depth, cfg)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")])}
    rows = []
    for method in cfg["methods"]:
        results = {}
        for n in counts:
            out = work / f"procs-{method}-{n}.json"
            if n == 1:  # one process: the reference, run here with the ranks' thread count
                results[n] = _single(folder, method, cfg)
                continue
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, "--rank-worker",
                   str(folder), str(out), method, json.dumps(cfg)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"torch.distributed.run failed:\n{done.stderr[-4000:]}")
            results[n] = json.loads(out.read_text())
        one = results[counts[0]]
        for n in counts:
            rows.append({"processes": n, "method": method, "depth": depth, "wall_s": results[n]["wall_s"],
                         "speedup_vs_1": one["wall_s"] / results[n]["wall_s"],
                         "same_weights_as_1": results[n]["digest"] == one["digest"]})
            log(f"{n} process(es) {method}: {results[n]['wall_s']:.2f} s, same as 1: {rows[-1]['same_weights_as_1']}")
    return rows


def block_figures(shape: tuple[int, ...]) -> dict[str, float]:
    """Per-block quantities of a LLaMA shape: parameters, sum of in_features (SparseGPT's columns),
    sum of in_features^2 (its Gram entries) and of out*in^2 (its sweep's multiply-adds)."""
    h, mlp, heads, kv, hd, _ = shape
    mats = [(heads * hd, h), (kv * hd, h), (kv * hd, h), (h, heads * hd), (mlp, h), (mlp, h), (h, mlp)]  # (out, in)
    return {"params": sum(o * i for o, i in mats), "columns": sum(i for _, i in mats),
            "gram": sum(i * i for _, i in mats), "sweep": sum(o * i * i for o, i in mats),
            # one matrix at a time: Wanda's scores, their sort and the mask (19 bytes an entry); SparseGPT's
            # float32 copy of the matrix and its float32 Hessian and inverse Cholesky factor
            "work_wanda": max(o * i for o, i in mats) * 19,
            "work_sparsegpt": max(o * i * 4 + 2 * i * i * 4 for o, i in mats)}


def projection(tokens: int = 128 * 2048, gpus: tuple[int, ...] = (1, 8)) -> list[dict[str, Any]]:
    """docs/scale.md's model: per-block time scaled from the H200 7B figures, memory per GPU in bf16.

    Memory per GPU: the block's bf16 weights, the activations of this GPU's share of the tokens
    (bf16), one matrix's working set and, for SparseGPT, the float64 ``X^T X`` of every linear of
    the block (``sequential=True`` keeps one group's at a time).

    Wanda's block time (forward passes, squared norms) scales with the block's parameters and
    the tokens; split over ``n`` GPUs by distributed calibration. SparseGPT's time is Wanda's plus
    its sweep (8.5 - 0.9 s on the 7B block), which every rank runs whole; the sweep is scaled two
    ways, by SparseGPT's columns (launch-bound, the low end) and by its multiply-adds (the high end).
    """
    ref = block_figures(SHAPES["7B"])
    sweep_7b = H200_7B["sparsegpt"] - H200_7B["wanda"]
    rows = []
    for name, shape in SHAPES.items():
        f = block_figures(shape)
        blocks, h = shape[5], shape[0]
        fwd = H200_7B["wanda"] * f["params"] / ref["params"] * tokens / (128 * 2048)
        lo, hi = sweep_7b * f["columns"] / ref["columns"], sweep_7b * f["sweep"] / ref["sweep"]
        for n in gpus:
            act = tokens / n * h * 2
            rows.append({
                "model": name, "gpus": n, "blocks": blocks, "weights_gb": round(blocks * f["params"] * 2 / 1e9, 1),
                "block_gb": round(f["params"] * 2 / 1e9, 2), "activations_gb_per_gpu": round(act / 1e9, 2),
                "sparsegpt_grams_gb": round(f["gram"] * 8 / 1e9, 2),
                "peak_gb_wanda": round((f["params"] * 2 + act + f["work_wanda"]) / 1e9, 1),
                "peak_gb_sparsegpt": round((f["params"] * 2 + act + f["gram"] * 8 + f["work_sparsegpt"]) / 1e9, 1),
                "wanda_min": round(blocks * fwd / n / 60, 1),
                "sparsegpt_min_low": round(blocks * (fwd / n + lo) / 60, 1),
                "sparsegpt_min_high": round(blocks * (fwd / n + hi) / 60, 1),
            })
    return rows


def _fixed_mmap_threshold() -> None:
    """glibc: serve allocations above 64 KiB with their own mappings, returned to the system when
    freed. Without it glibc raises its threshold up to 32 MiB after the first frees and keeps the
    small model's freed block-sized buffers in its heap, which then grows with the number of blocks
    run; a real model's matrices (tens of MiB and more) are above the threshold anyway."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, Wanda only: seconds")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    p.add_argument("--processes", default="1,2", help="process counts of the distributed sweep")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    _fixed_mmap_threshold()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="llm-scale-") as tmp:
        depth = depth_sweep(cfg, Path(tmp))
        procs = processes_sweep(cfg, Path(tmp), [int(x) for x in args.processes.split(",")])
    proj = projection()
    print_table("peak memory above baseline (MiB) and wall time vs depth", [
        "depth", "method", "weights MiB", "memory MiB", "disk MiB", "disk/memory", "memory s", "disk s", "same"],
        [[r["depth"], r["method"], f"{r['weights_bytes'] / 2**20:.0f}", f"{r['memory_peak_above_base_bytes'] / 2**20:.0f}",
          f"{r['disk_peak_above_base_bytes'] / 2**20:.0f}",
          f"{r['disk_peak_above_base_bytes'] / max(1, r['memory_peak_above_base_bytes']):.2f}",
          f"{r['memory_wall_s']:.2f}", f"{r['disk_wall_s']:.2f}", r["same_weights"]] for r in depth])
    print_table("distributed calibration (gloo, CPU)", ["processes", "method", "s", "speed-up", "same as 1"],
                [[r["processes"], r["method"], f"{r['wall_s']:.2f}", f"{r['speedup_vs_1']:.2f}", r["same_weights_as_1"]]
                 for r in procs])
    print_table("projection (docs/scale.md): H200, bf16, 128 x 2048 tokens", [
        "model", "GPUs", "weights GB", "peak GB wanda", "peak GB sparsegpt", "wanda min", "sparsegpt min"],
        [[r["model"], r["gpus"], r["weights_gb"], r["peak_gb_wanda"], r["peak_gb_sparsegpt"], r["wanda_min"],
          f"{r['sparsegpt_min_low']}-{r['sparsegpt_min_high']}"] for r in proj])
    result = {"benchmark": "llm_scale", "quick": args.quick, "config": cfg, "environment": environment(),
              "depth": depth, "processes": procs, "projection": proj, "h200_7b_block_s": H200_7B}
    path = write_json("llm_scale_quick" if args.quick else "llm_scale", result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-worker":
        _rank_main(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]))
    else:
        main()
