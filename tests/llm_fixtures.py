"""Tiny random language models, word-level tokenizers, texts and helpers shared by the LLM tests.

Plain functions, imported as ``from llm_fixtures import ...`` (``tests/`` is on ``sys.path``
under pytest, as for ``conftest``). ``transformers`` and ``tokenizers`` are imported inside the
functions, so a test module can still skip itself with ``pytest.importorskip`` when they are
missing. Every model is built after ``torch.manual_seed(seed)``: the same call gives the same
weights.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

# The words of the word-level tokenizers and of the random calibration and evaluation texts.
WORDS = ("the of and to in that a is for it with as his he be by on not this but from they all shall unto "
         "lord god said thou thee thy ye them him me my was were which upon when then day house land people "
         "king son sons children israel man men before came come out up there").split()

# Defaults of tiny_llama_config: 2 blocks, hidden 32, 4 query heads in 2 KV groups, MLP 64;
# initializer_range 0.2 gives sharp predictions, so damage shows in perplexity.
LLAMA_DEFAULTS: dict[str, Any] = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=False,
)

# Defaults of tiny_bert_config: 2 blocks, hidden 32, 4 heads, MLP 64.
BERT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=64, initializer_range=0.2,
)


# ------------------------------------------------------------------------------ models


def _seeded(model_class: str, cfg, seed: int) -> nn.Module:
    """``transformers.<model_class>(cfg)`` built after ``torch.manual_seed(seed)``, in eval mode."""
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, model_class)(cfg).eval()


def tiny_llama_config(**overrides: Any):
    """A ``LlamaConfig`` with LLAMA_DEFAULTS, ``overrides`` replacing or adding fields."""
    import transformers

    return transformers.LlamaConfig(**{**LLAMA_DEFAULTS, **overrides})


def tiny_llama(seed: int = 0, **overrides: Any) -> nn.Module:
    """A random ``LlamaForCausalLM`` of ``tiny_llama_config(**overrides)``, in eval mode."""
    return _seeded("LlamaForCausalLM", tiny_llama_config(**overrides), seed)


def tiny_llama_folder(folder: Path, *, words: list[str] | tuple[str, ...] = WORDS, seed: int = 0,
                      **overrides: Any) -> Path:
    """``folder`` holding a tiny Llama and its word-level tokenizer of ``words`` (the model's
    vocabulary is the tokenizer's), both saved with save_pretrained."""
    tok = word_tokenizer(words)
    tiny_llama(seed, **{"vocab_size": len(tok), **overrides}).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_bert_config(**overrides: Any):
    """A ``BertConfig`` with BERT_DEFAULTS, ``overrides`` replacing or adding fields."""
    import transformers

    return transformers.BertConfig(**{**BERT_DEFAULTS, **overrides})


def tiny_bert(seed: int = 0, **overrides: Any) -> nn.Module:
    """A random ``BertModel`` of ``tiny_bert_config(**overrides)``, in eval mode."""
    return _seeded("BertModel", tiny_bert_config(**overrides), seed)


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of a Llama-style model's blocks, by full name."""
    return {n: m for n, m in model.model.layers.named_modules(prefix="model.layers") if isinstance(m, nn.Linear)}


# ------------------------------------------------------------------- tokens and texts


def word_tokenizer(words: list[str] | tuple[str, ...] = WORDS):
    """A fast word-level tokenizer, offline: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then ``words``
    in order (repeats ignored); text is split on whitespace and unknown words map to ``<unk>``."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")


#: the words of bert_tokenizer's vocabulary and of random_sentences
BERT_WORDS = "the lord god and of to in that he said unto his shall for they be is him not them with all thou thy was".split()


def bert_tokenizer(folder: Path):
    """A ``BertTokenizer`` (offline): ``[PAD]`` 0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, then
    BERT_WORDS; its ``vocab.txt`` is written to ``folder``."""
    import transformers

    vocab = Path(folder) / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]) + "\n")
    return transformers.BertTokenizer(str(vocab), model_max_length=64)


def random_sentences(n: int, seed: int) -> list[str]:
    """``n`` sentences of 3 to 16 BERT_WORDS drawn at random."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(BERT_WORDS) for _ in range(rng.randint(3, 16))) for _ in range(n)]


def word_text(path: Path, n_words: int, seed: int, words: list[str] | tuple[str, ...] = WORDS) -> Path:
    """Write ``n_words`` words drawn from ``words`` (seeded), 12 to a line, to ``path``."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n_words // 12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def token_ids(*shape: int, vocab: int, seed: int) -> torch.Tensor:
    """Random token ids in ``[0, vocab)`` of ``shape``, from a generator seeded with ``seed``."""
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def eval_stream(text: str, tok) -> torch.Tensor:
    """The token stream `prunekit llm eval --text` measures: a text file's tokens, or an
    evaluation domain's (``kjv``: its evaluation half)."""
    from prunekit.llm.data import domain_stream, text_tokens

    return text_tokens(text, tok) if Path(text).is_file() else domain_stream(text, tok)[0]


def direct_perplexity(model: nn.Module, stream: torch.Tensor, *, windows: int, seqlen: int, seed: int) -> float:
    """Perplexity of ``model`` on ``windows`` seeded windows of ``seqlen`` tokens of ``stream``,
    computed with the library's functions directly (the reference for the CLI and recipes)."""
    from prunekit.llm.data import eval_windows
    from prunekit.llm.oneshot import perplexity

    return perplexity(model, eval_windows(stream, windows, seqlen, seed), seqlen=seqlen)


# ----------------------------------------------------------------------------- helpers


def load_benchmark(stem: str):
    """``benchmarks/<stem>.py`` imported as the module ``_<stem>_bench``."""
    path = ROOT / "benchmarks" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"_{stem}_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def hide_module(monkeypatch, name: str) -> None:
    """Make ``importlib.util.find_spec(name)`` report ``name`` as not installed (the
    other modules are still found)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == name else real(n, *a, **k))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by path relative to it, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
