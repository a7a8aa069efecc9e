"""How far one-shot pruning can go on a domain when it is calibrated on that domain itself.

``benchmarks/llm_oneshot.py`` calibrates on the King James Bible and measures on Python's
documentation and BBC news as well. This script gives the bound those off-domain figures
are held against: for each domain, the documents in even positions (0, 2, 4, ...) are the
calibration text and those in odd positions the evaluation text (no document in both);
SparseGPT and SparseGPT + 2 epochs of block-wise reconstruction prune SmolLM2-135M to 50 %
on windows of the calibration half, and the perplexity ratio to dense is measured on windows
of the evaluation half. No calibration text is the model's own (``self_calibration=0``):
the calibration text is already the text served.

    python benchmarks/llm_in_domain.py                       # pydoc and news, 32 x 512 / 16 x 512 (~20 min)
    python benchmarks/llm_in_domain.py --domains news --methods sparsegpt

Writes ``benchmarks/results/llm_in_domain.json`` (``--tag NAME`` appends ``_NAME``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_json  # noqa: E402
from llm_oneshot import run_core  # noqa: E402

from prunekit.llm.data import documents_stream, domain_documents  # noqa: E402
from prunekit.llm.models import load_causal_lm  # noqa: E402


def halves(name: str, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(calibration stream, evaluation stream, documents)``: a domain's even- and
    odd-position documents, each tokenized as :func:`prunekit.llm.data.domain_stream` does
    (:func:`prunekit.llm.data.documents_stream`)."""
    docs = domain_documents(name)
    return documents_stream(docs[0::2], tokenizer), documents_stream(docs[1::2], tokenizer), len(docs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", default="pydoc,news", help="comma-separated evaluation domains")
    p.add_argument("--methods", nargs="+", default=["sparsegpt", "sparsegpt+rec"],
                   help="llm_oneshot.py method names (without +mix or +self: the calibration text is the served one)")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--eval", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    if any("+mix" in m or "+self" in m or m == "default" for m in args.methods):
        p.error("--methods: in-domain calibration uses the domain's own text only (no 'default', +mix or +self)")
    model, tok = load_causal_lm("smollm2", log=print)
    result: dict[str, Any] = {"benchmark": "llm_in_domain", "environment": environment(),
                              "settings": {"calib": args.calib, "eval": args.eval, "seqlen": args.seqlen,
                                           "pattern": "50%", "split": "documents 0, 2, 4, ... calibrate; 1, 3, 5, ... evaluate"},
                              "domains": {}}
    table = []
    for name in args.domains.split(","):
        calib, evals, n_docs = halves(name, tok)
        print(f"{name}: {n_docs} documents, calibration {calib.numel()} tokens, evaluation {evals.numel()} tokens")
        res = run_core(model, calib, {name: evals}, methods=args.methods, patterns=["50%"], n_calib=args.calib,
                       n_eval=args.eval, seqlen=args.seqlen)
        rows = [{"method": r["method"], "ratio": r["ratio_by_domain"][name], "perplexity": r["perplexity_by_domain"][name],
                 "prune_s": r["prune_s"]} for r in res["rows"]]
        result["domains"][name] = {"documents": n_docs, "calibration_tokens": int(calib.numel()),
                                   "evaluation_tokens": int(evals.numel()),
                                   "dense_perplexity": res["dense"]["perplexity_by_domain"][name], "rows": rows}
        table += [[name, r["method"], f"{r['ratio']:.2f}x", f"{r['prune_s']:.0f} s"] for r in rows]
    print_table("SmolLM2-135M at 50 %, calibrated on the domain itself (perplexity / dense)",
                ["domain", "method", "ratio", "prune"], table)
    write_json("llm_in_domain" + (f"_{args.tag}" if args.tag else ""), result)
    return result


if __name__ == "__main__":
    main()
