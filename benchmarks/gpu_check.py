"""The GPU check: one process, one table, under 5 minutes on one GPU.

    python benchmarks/gpu_check.py            # on a machine with CUDA
    python benchmarks/gpu_check.py --dry-run  # anywhere: tiny shapes, on the CPU when there is no GPU

Three parts:

1. **Device matrix**: ``pytest tests/device`` in a subprocess; passes and failures counted per
   device (``cpu``, ``cuda``) and dtype.
2. **LLM one-shot against the reference algorithms**, side by side on the same model and
   calibration tokens: a LLaMA-7B-shaped decoder (hidden 4096, MLP 11008, 32 heads; 2 blocks)
   in float16, 128 x 2048 random calibration tokens. ``ours`` is :func:`prunekit.llm.prune_llm`
   (``reconstruct=0``, ``self_calibration=0``); ``reference`` is this file's copy of the
   published algorithms (SparseGPT: running-average Hessian in float32 and the blocked OBS
   sweep of IST-DASLab/sparsegpt; Wanda: running-average input norms and per-row sort of
   locuslab/wanda), driven block by block the same way. Reports both times, their ratio and
   the fraction of equal mask entries.
3. **2:4 semi-structured kernels**: dense ``F.linear`` against
   ``torch.sparse.to_sparse_semi_structured`` for the three 7B layer shapes at 512 to 32,768
   tokens, float16, timed with CUDA events. Needs CUDA (skipped on the CPU, and said so).

Writes ``benchmarks/results/gpu_check.json`` (``gpu_check_dry.json`` with ``--dry-run``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402

from prunekit.llm.blocks import block_output, capture_first_inputs, transformer_blocks  # noqa: E402
from prunekit.llm.oneshot import prune_llm  # noqa: E402
from prunekit.masking import get_masks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. device matrix


def device_matrix() -> dict[str, Any]:
    """Run tests/device; count outcomes per (device, dtype) from pytest's -rA summary."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/device"],
                          cwd=ROOT, capture_output=True, text=True)
    counts: dict[str, dict[str, int]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED) .*\[(?:.*-)?(cpu|cuda)-(float32|bfloat16|float16)\]", line)
        if m:
            row = counts.setdefault(f"{m.group(2)} {m.group(3)}", {})
            row[m.group(1).lower()] = row.get(m.group(1).lower(), 0) + 1
    return {"rows": counts, "returncode": proc.returncode, "seconds": time.perf_counter() - t0,
            "tail": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]}


# ---------------------------------------------------------------- 2. the reference algorithms


class ReferenceSparseGPT:
    """The published SparseGPT layer state: running-average Hessian in float32, then the sweep."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        cols = layer.weight.shape[1]
        self.H = torch.zeros(cols, cols, device=layer.weight.device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]  # sequences in the batch: the reference's running average counts them
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity: float, prunen: int = 0, prunem: int = 0, blocksize: int = 128,
                    percdamp: float = 0.01) -> torch.Tensor:
        W = self.layer.weight.data.clone().float()
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        Losses = torch.zeros(W.shape[0], device=W.device)
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(W.shape[1], device=W.device)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H
        mask = None
        for i1 in range(0, W.shape[1], blocksize):
            i2 = min(i1 + blocksize, W.shape[1])
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            if prunen == 0:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            Losses += torch.sum(Losses1, 1) / 2
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
            mask = mask1 if mask is None else torch.cat([mask, mask1], dim=1)
        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return W != 0


class ReferenceWanda:
    """The published Wanda layer state: running-average squared input norms, per-row sort."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        self.scaler_row = torch.zeros(layer.weight.shape[1], device=layer.weight.device)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().float()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples

    def prune(self, sparsity: float, prunen: int = 0, prunem: int = 0) -> torch.Tensor:
        W = self.layer.weight.data
        metric = W.abs() * torch.sqrt(self.scaler_row.reshape((1, -1)))
        mask = torch.zeros_like(metric) == 1  # True = pruned
        if prunen != 0:
            for ii in range(metric.shape[1]):
                if ii % prunem == 0:
                    tmp = metric[:, ii:(ii + prunem)].float()
                    mask.scatter_(1, ii + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
        else:
            idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(W.shape[1] * sparsity)]
            mask.scatter_(1, idx, True)
        W[mask] = 0
        return ~mask


@torch.no_grad()
def reference_prune(model: nn.Module, calib: torch.Tensor, method: str, batch_size: int,
                    pattern: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """The reference drivers' block loop: every linear's statistics on the block's inputs, all
    pruned, the block re-run for the next block's inputs. Returns keep-masks by weight name."""
    layers = transformer_blocks(model)
    chunks = capture_first_inputs(model, layers[0], calib, batch_size)
    names = {id(m): n for n, m in model.named_modules()}
    keeps: dict[str, torch.Tensor] = {}
    n, m = pattern or (0, 0)
    for layer in layers:
        linears = [mod for mod in layer.modules() if isinstance(mod, nn.Linear)]
        states = {id(lin): (ReferenceSparseGPT if method == "sparsegpt" else ReferenceWanda)(lin) for lin in linears}
        hooks = [lin.register_forward_hook(lambda mod, i, o: states[id(mod)].add_batch(i[0].data)) for lin in linears]
        for hidden, args, kwargs in chunks:
            block_output(layer, hidden, args, kwargs)
        for h in hooks:
            h.remove()
        for lin in linears:
            s = states[id(lin)]
            keep = s.fasterprune(0.5, m - n if m else 0, m) if method == "sparsegpt" else s.prune(0.5, m - n if m else 0, m)
            keeps[f"{names[id(lin)]}.weight"] = keep.cpu()
        for j, (hidden, args, kwargs) in enumerate(chunks):
            chunks[j] = (block_output(layer, hidden, args, kwargs), args, kwargs)
    return keeps


def llm_side_by_side(device: str, dry: bool) -> list[dict[str, Any]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    if dry:
        cfg = dict(hidden_size=128, intermediate_size=344, num_attention_heads=4, num_key_value_heads=4)
        n, seqlen, dtype = 8, 64, torch.float32 if device == "cpu" else torch.float16
    else:
        cfg = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
        n, seqlen, dtype = 128, 2048, torch.float16
    config = LlamaConfig(vocab_size=1024, num_hidden_layers=2, max_position_embeddings=seqlen, **cfg)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(device, dtype).eval()
    calib = torch.randint(0, config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    for method, pattern in (("wanda", None), ("sparsegpt", None), ("sparsegpt", (2, 4))):
        ours = copy.deepcopy(base)
        sync(device)
        t0 = time.perf_counter()
        prune_llm(ours, calib, method=method, sparsity=0.5, pattern="2:4" if pattern else None, reconstruct=0,
                  self_calibration=0.0, keep_masks=True, batch_size=8)
        sync(device)
        t_ours = time.perf_counter() - t0
        mine = {k: v.bool().cpu() for k, v in get_masks(ours).items()}
        del ours
        ref = copy.deepcopy(base)
        sync(device)
        t0 = time.perf_counter()
        theirs = reference_prune(ref, calib, method, 8, pattern)
        sync(device)
        t_ref = time.perf_counter() - t0
        del ref
        same = sum(int((mine[k] == theirs[k]).sum()) for k in mine)
        total = sum(v.numel() for v in mine.values())
        rows.append({"method": method + (" 2:4" if pattern else " 50%"), "ours_s": t_ours, "reference_s": t_ref,
                     "speedup": t_ref / t_ours, "mask_agreement": same / total,
                     "shape": f"{cfg['hidden_size']}/{cfg['intermediate_size']}, {n}x{seqlen}, {str(dtype)[6:]}"})
    return rows


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------ 3. 2:4 kernels


def semi_structured(dry: bool) -> list[dict[str, Any]]:
    from torch.sparse import to_sparse_semi_structured

    shapes = [(4096, 4096), (11008, 4096), (4096, 11008)] if not dry else [(256, 256)]
    tokens = [512, 2048, 8192, 32768] if not dry else [512]
    rows = []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16)
        keep = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(out_f, in_f // 4)
        w = w * keep
        sparse = to_sparse_semi_structured(w)
        for t in tokens:
            x = torch.randn(t, in_f, device="cuda", dtype=torch.float16)
            dense_ms = cuda_ms(lambda: F.linear(x, w))
            sparse_ms = cuda_ms(lambda: F.linear(x, sparse))
            rows.append({"layer": f"{in_f}->{out_f}", "tokens": t, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                         "speedup": dense_ms / sparse_ms})
    return rows


def cuda_ms(fn, warmup: int = 5, repeats: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes; runs on the CPU when there is no GPU")
    p.add_argument("--skip-matrix", action="store_true", help="leave out the device matrix")
    p.add_argument("--out", type=Path, default=None, help="results folder (benchmarks/results)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda and not args.dry_run:
        p.error("no CUDA device here; run with --dry-run to check the script on the CPU")
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"device: {device} ({gpu}), torch {torch.__version__}", flush=True)
    result: dict[str, Any] = {"benchmark": "gpu_check", "dry_run": args.dry_run, "device": device, "gpu": gpu,
                              "environment": environment()}
    if not args.skip_matrix:
        result["device_matrix"] = m = device_matrix()
        print_table("device matrix (tests/device)", ["row", "passed", "failed", "skipped"],
                    [[k, v.get("passed", 0), v.get("failed", 0) + v.get("error", 0), v.get("skipped", 0)]
                     for k, v in sorted(m["rows"].items())])
        print(m["tail"], flush=True)
    result["llm"] = rows = llm_side_by_side(device, args.dry_run)
    print_table("one-shot pruning: ours against the reference algorithms (same model, same tokens)",
                ["method", "shape", "ours s", "reference s", "reference / ours", "masks equal"],
                [[r["method"], r["shape"], f"{r['ours_s']:.2f}", f"{r['reference_s']:.2f}", f"{r['speedup']:.2f}x",
                  f"{r['mask_agreement']:.2%}"] for r in rows])
    if cuda:
        result["semi_structured"] = srows = semi_structured(args.dry_run)
        print_table("2:4 semi-structured F.linear against dense, float16", ["layer", "tokens", "dense ms", "2:4 ms", "speedup"],
                    [[r["layer"], r["tokens"], f"{r['dense_ms']:.3f}", f"{r['sparse_ms']:.3f}", f"{r['speedup']:.2f}x"]
                     for r in srows])
    else:
        result["semi_structured"] = None
        print("2:4 kernels: not measured (they need CUDA)")
    write_json("gpu_check" + ("_dry" if args.dry_run else ""), result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
