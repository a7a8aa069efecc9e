"""Channel pruning narrows transformers' residual streams: parameters, exactness, save/load.

For each model, 30 % of the channels of every coupled group are removed
(``granularity="channel"``, allocation ``uniform`` and ``global``, magnitude), the model is
compacted, saved with ``pk.save`` and loaded back with ``pk.load`` (from the file alone when
the save holds an architecture graph, else into a fresh instance). Side by side, the same
call with the residual stream left out (``ignore=`` its first layer: what prunekit removed
before the stream was one group: MLP hidden units and heads only).

Columns: parameters dense and compacted and their ratio; the same ratio with the stream
kept; the stream's width before and after (equal to what the result reported); the
largest |masked - compacted| output difference (and |masked - dense|, to show pruning
changed the model); the largest |loaded - compacted| difference after ``pk.save`` ->
``pk.load`` (0 = exact) or why loading was refused.

    python benchmarks/residual_width.py           # every model (~1 min on 2 cores)
    python benchmarks/residual_width.py --quick   # two small models, seconds

Writes ``benchmarks/results/residual_width.json`` (``residual_width_quick.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, print_table, write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "structure"))
sys.path.insert(0, str(ROOT / "tests"))

import prunekit as pk  # noqa: E402
from prunekit.errors import PruneError  # noqa: E402
from prunekit.targets import find_targets  # noqa: E402

RATIO = 0.3


def _models(quick: bool) -> dict[str, Callable[[], tuple[nn.Module, Any]]]:
    from archs import ViTish
    from archs_width import LlamaishLM, Seq2SeqLM, TorchTransformerLM, ViTCls, randomize_norms

    def seeded(build, inputs):
        def make():
            torch.manual_seed(0)
            return randomize_norms(build()).eval(), inputs()
        return make

    tokens = lambda: torch.randint(0, 50, (4, 12))  # noqa: E731
    out = {
        "ViTish": seeded(ViTish, lambda: torch.randn(4, 3, 8, 8)),
        "EncoderLayer LM pre-norm": seeded(lambda: TorchTransformerLM(norm_first=True), tokens),
    }
    if quick:
        return out
    out.update({
        "ViTish 192x4": seeded(lambda: ViTish(192, 3, 4), lambda: torch.randn(4, 3, 8, 8)),
        "ViT cls+RMSNorm": seeded(ViTCls, lambda: torch.randn(4, 3, 8, 8)),
        "EncoderLayer LM post-norm": seeded(lambda: TorchTransformerLM(norm_first=False), tokens),
        "EncoderLayer LM 256x4": seeded(
            lambda: TorchTransformerLM(vocab=50, dim=256, heads=8, depth=4), tokens),
        "Llama-style hand RMSNorm": seeded(LlamaishLM, tokens),
        "nn.Transformer + emb": seeded(
            Seq2SeqLM, lambda: (torch.randint(0, 40, (4, 7)), torch.randint(0, 40, (4, 5)))),
    })
    from foreign.archs import build

    for name in ("transformer_encoder", "transformer_seq2seq", "hf_vit", "hf_llama", "hf_bert"):
        out[f"foreign {name}"] = (lambda n=name: build(n))
    return out


def _run(model: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)
    if hasattr(out, "logits"):
        out = out.logits
    return out.float()


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _stream(groups) -> Any:
    """The group of the residual stream: the one spanning the most parameters."""
    return max(groups, key=lambda g: len(g.params)) if groups else None


def _save_load(small: nn.Module, make: Callable, x: Any, got: torch.Tensor) -> tuple[str, float | None]:
    with tempfile.TemporaryDirectory() as d:
        pk.save(small, f"{d}/m")
        try:
            back = pk.load(f"{d}/m")
            how = "pk.load(path)"
        except PruneError:
            try:
                back = pk.load(f"{d}/m", model=make()[0])
                how = "pk.load(path, model=fresh)"
            except PruneError as e:
                return f"refused: {str(e)[:140]}", None
    return how, float((_run(back.eval(), x) - got).abs().max())


def measure(name: str, make: Callable, allocation: str) -> dict[str, Any]:
    model, x = make()
    dense_out, n_dense = _run(model, x), _n(model)
    row: dict[str, Any] = {"model": name, "allocation": allocation, "params_dense": n_dense}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pk.prune(model, RATIO, granularity="channel", allocation=allocation, example_inputs=x)
        stream = _stream(res.groups)
        norms = {n + ".weight" for n, m in model.named_modules() if "norm" in type(m).__name__.lower()
                 and getattr(m, "weight", None) is not None}
        is_stream = stream is not None and bool(norms) and norms <= set(stream.params)
        masked = _run(model, x)
        small = pk.compact(model, x)
        got = _run(small, x)
        # the same call with the stream left out: the first layer creating it is ignored
        ref_model, _ = make()
        if is_stream:
            first = next(t.name for t in find_targets(ref_model)
                         if t.name in stream.params and isinstance(t.module, (nn.Embedding, nn.Conv2d)))
            ref = pk.prune(ref_model, RATIO, granularity="channel", allocation=allocation, example_inputs=x,
                           ignore=[first])
        else:
            ref = pk.prune(ref_model, RATIO, granularity="channel", allocation=allocation, example_inputs=x)
        n_ref = _n(pk.compact(ref_model, x))
    how, load_err = _save_load(small, make, x, got)
    row.update({
        "params_compacted": _n(small),
        "ratio": _n(small) / n_dense,
        "ratio_stream_kept": n_ref / n_dense,
        "stream_width": [stream.units, stream.units - stream.pruned_units] if is_stream else None,
        "reported_sparsity": res.sparsity,
        "ref_sparsity": ref.sparsity,
        "max_abs_masked_minus_compacted": float((masked - got).abs().max()),
        "max_abs_masked_minus_dense": float((masked - dense_out).abs().max()),
        "load": how,
        "max_abs_loaded_minus_compacted": load_err,
    })
    return row


def _load_cell(r: dict[str, Any]) -> str:
    err = r["max_abs_loaded_minus_compacted"]
    if err is None:
        return "refused"
    return ("exact" if err == 0 else f"{err:.1e}") + (" (file)" if r["load"] == "pk.load(path)" else " (fresh)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small models (seconds)")
    parser.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = [measure(name, make, alloc) for name, make in _models(args.quick).items() for alloc in ("uniform", "global")]
    table = [
        [r["model"], r["allocation"], f"{r['params_dense']:,}", f"{r['params_compacted']:,}", f"{r['ratio']:.3f}",
         f"{r['ratio_stream_kept']:.3f}", f"{r['ratio_stream_kept'] / r['ratio']:.2f}x",
         "kept" if r["stream_width"] is None else f"{r['stream_width'][0]} -> {r['stream_width'][1]}",
         f"{r['max_abs_masked_minus_compacted']:.1e}", f"{r['max_abs_masked_minus_dense']:.1e}",
         _load_cell(r)]
        for r in rows
    ]
    print_table(f"{RATIO:.0%} of the channels, compacted (stream kept: the residual stream left out, as before)",
                ["model", "alloc", "params", "compact", "ratio", "stream kept", "kept/ours", "stream",
                 "|mask-compact|", "|mask-dense|", "save->load"], table)
    name = "residual_width_quick" if args.quick else "residual_width"
    path = write_json(name, {"ratio": RATIO, "rows": rows, "environment": environment()}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
