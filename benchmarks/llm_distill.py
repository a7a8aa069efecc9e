"""One-shot pruning of SmolLM2-135M, then recovery by distillation from the dense model.

    python benchmarks/llm_distill.py        # about 10 minutes on 2 CPU cores
    python benchmarks/llm_distill.py --self-windows 176 --gen-batch 16 --validation --tag more  # ~25 min

Prunes with ``prune_llm``'s defaults at 50 % (SparseGPT, half self-generated calibration, 2
epochs of block reconstruction; 32 x 256 KJV calibration tokens), then distills the pruned
model from the dense one (:func:`prunekit.distill`, temperature 1, Adam lr 1e-4 (``--lr``,
constant or ``--schedule cosine``), 2 epochs,
batches of 4) on 64 windows of 256 tokens: 16 KJV calibration windows and 48 written by the
dense model itself (seed 1), interleaved. Masks stay exact. Perplexity (÷ dense) on 8 x 512
tokens of each evaluation domain (KJV evaluation half, pydoc, news), before and after.
Writes ``benchmarks/results/llm_distill.json``. ``--self-windows`` and ``--epochs`` change the
distillation text and length; ``--validation`` also reports ``fortunes``, the domain
settings are chosen on (never a reported test domain); ``--tag`` names another result file.
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

import prunekit as pk  # noqa: E402
from prunekit.callbacks import LRScheduler, warmup_cosine  # noqa: E402
from prunekit.llm.calibration import mix, self_generated  # noqa: E402
from prunekit.llm.data import calibration_windows, eval_windows  # noqa: E402
from prunekit.llm.models import load_causal_lm  # noqa: E402
from prunekit.llm.oneshot import perplexity, prune_llm  # noqa: E402
from prunekit.llm.recipe import load_texts  # noqa: E402
from prunekit.train import make_optimizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--self-windows", type=int, default=48, help="distillation windows the dense model writes")
    ap.add_argument("--epochs", type=int, default=2, help="distillation epochs")
    ap.add_argument("--gen-batch", type=int, default=8, help="windows generated at once")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate of the distillation")
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                    help="constant lr, or a 5 %% warm-up then a cosine to 0 (prunekit.callbacks.warmup_cosine)")
    ap.add_argument("--validation", action="store_true",
                    help="also report the validation domain (fortunes), on which settings are chosen")
    ap.add_argument("--tag", default="", help="suffix of the result file: llm_distill_<tag>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense, tok = load_causal_lm("smollm2")
    domains = ["kjv", "pydoc", "news"] + (["fortunes"] if args.validation else [])
    calib_stream, evals, _, _ = load_texts(tok, "kjv", domains)
    calib = calibration_windows(calib_stream, 32, 256, seed=0)
    windows = {d: eval_windows(s, 8, 512, seed=0) for d, s in evals.items()}

    def ppls(m: torch.nn.Module) -> dict[str, float]:
        return {d: perplexity(m, w, seqlen=512) for d, w in windows.items()}

    out: dict = {"dense": ppls(dense)}
    student = copy.deepcopy(dense)
    t0 = time.perf_counter()
    prune_llm(student, calib, sparsity=0.5, keep_masks=True)
    out["prune_s"] = time.perf_counter() - t0
    out["pruned"] = ppls(student)
    t0 = time.perf_counter()
    text = mix(calib[:16], self_generated(dense, args.self_windows, 256, seed=1, batch_size=args.gen_batch))
    out["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = [text[i : i + 4] for i in range(0, len(text), 4)]
    optimizer = make_optimizer(student, "adam", args.lr, 0.0)
    callbacks = []
    if args.schedule == "cosine":
        steps = len(batches) * args.epochs
        callbacks.append(LRScheduler(warmup_cosine(optimizer, steps, max(1, steps // 20))))
    pk.distill(student, dense, batches, epochs=args.epochs, optimizer=optimizer, temperature=1.0, callbacks=callbacks,
               progress=False)
    out["distill_s"] = time.perf_counter() - t0
    out["distilled"] = ppls(student)
    out["distill_tokens"] = int(text.numel()) * args.epochs
    out["settings"] = {"self_windows": args.self_windows, "kjv_windows": 16, "epochs": args.epochs, "seqlen": 256,
                       "lr": args.lr, "schedule": args.schedule}
    out["masked_zeros"] = int(sum(int((m == 0).sum()) for m in pk.masks(student).values()))
    rows = [[stage] + [f"{out[stage][d]:.3f} ({out[stage][d] / out['dense'][d]:.2f}x)" for d in windows]
            for stage in ("dense", "pruned", "distilled")]
    print_table("SmolLM2-135M at 50 %: perplexity (x dense), 8 x 512 tokens per domain", ["model", *windows], rows)
    print(f"prune {out['prune_s']:.0f} s, generate {out['generate_s']:.0f} s, distill {out['distill_s']:.0f} s "
          f"({out['distill_tokens']:,} tokens)")
    write_json("llm_distill" + (f"_{args.tag}" if args.tag else ""), {"benchmark": "llm_distill", "results": out, "environment": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
