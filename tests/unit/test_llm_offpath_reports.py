"""prunekit.llm off the Llama path and off the happy path: what is reported is what happened
(GPT-2's Conv1D layers counted, Gemma's embedding scale after a width cut, a bfloat16 folder
written back in bfloat16), and inputs the model cannot take are refused by name before any
work (windows longer than learned position tables, a start token outside the vocabulary,
search tokens beyond the distillation budget, a depth ramp that empties a block, weights
and text files that do not load)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_fixtures import tiny_llama, tiny_llama_folder, token_ids  # noqa: E402

from prunekit.errors import PruneError  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402


def _gpt2(vocab: int = 96, positions: int = 32, **kw):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=vocab, n_positions=positions, **kw)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_conv1d_weights_are_counted_as_block_linears():
    from prunekit.llm.recipe import linear_stats

    model = _gpt2()
    prune_llm(model, token_ids(4, 16, vocab=96, seed=0), sparsity=0.5, reconstruct=0, self_calibration=0.0)
    convs = [m for m in model.transformer.h.modules() if type(m).__name__ == "Conv1D"]
    total = sum(m.weight.numel() for m in convs)
    zeros = sum(int((m.weight == 0).sum()) for m in convs)
    assert linear_stats(model) == {"weights": total, "zeros": zeros} and zeros == total // 2


def test_windows_longer_than_the_learned_positions_are_refused_by_name():
    from prunekit.llm import perplexity

    model = _gpt2(positions=16)
    ids = token_ids(2, 20, vocab=96, seed=0)
    with pytest.raises(PruneError, match="windows of 20 tokens; GPT2LMHeadModel has learned position embeddings for 16"):
        prune_llm(model, ids, sparsity=0.5, reconstruct=0, self_calibration=0.0)
    with pytest.raises(PruneError, match="at most 16"):
        perplexity(model, ids, seqlen=20)
    assert not any(int((p == 0).sum()) for p in model.parameters() if p.dim() == 2)  # refused before any change


def test_a_start_token_outside_the_vocabulary_counts_as_none():
    from prunekit.llm.calibration import start_token_of

    model = _gpt2(vocab=62)  # GPT-2's config keeps bos/eos 50256
    assert model.config.bos_token_id == 50256 and start_token_of(model) is None
    with pytest.warns(UserWarning, match="inside its vocabulary"):
        report = prune_llm(model, token_ids(4, 16, vocab=62, seed=0), sparsity=0.5, reconstruct=0)
    assert report.generated_windows == 0


def test_a_depth_ramp_that_would_empty_a_block_is_refused():
    model = tiny_llama(0, num_hidden_layers=4)
    ids = token_ids(4, 16, vocab=model.config.vocab_size, seed=0)
    with pytest.raises(PruneError, match=r"depth_lambda=0.5 must be below min\(sparsity, 1 - sparsity\) = 0.5"):
        prune_llm(copy.deepcopy(model), ids, sparsity=0.5, allocation="depth", depth_lambda=0.5, reconstruct=0,
                  self_calibration=0.0)
    report = prune_llm(model, ids, sparsity=0.5, allocation="depth", depth_lambda=0.2, reconstruct=0,
                       self_calibration=0.0)
    assert max(report.block_sparsity) < 1.0 and min(report.block_sparsity) > 0.0


def test_gemma_width_shrink_reloads_as_the_model_that_was_scored(tmp_path):
    from prunekit.llm.shrink import shrink

    torch.manual_seed(0)
    config = transformers.GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, vocab_size=128)
    model = transformers.GemmaForCausalLM(config).eval()
    ids = token_ids(4, 16, vocab=128, seed=0)
    small, report = shrink(model, ids, params=int(sum(p.numel() for p in model.parameters()) * 0.8), modes=("width",),
                           seqlen=16, batch_size=2)
    assert small.config.hidden_size < 64
    small.save_pretrained(tmp_path / "s")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, small(ids).logits)


def test_search_tokens_come_out_of_the_distillation_budget():
    from prunekit.llm.shrink import shrink

    model = tiny_llama(0, num_hidden_layers=4)
    ids = token_ids(8, 16, vocab=model.config.vocab_size, seed=0)
    budget = int(sum(p.numel() for p in model.parameters()) * 0.85)
    with pytest.raises(PruneError, match="more than distill_tokens=0, which they are part of"):
        shrink(model, ids, params=budget, modes=("width", "depth"), heldout=ids[:2], search_tokens=64, seqlen=16)
    _, report = shrink(model, ids, params=budget, modes=("width", "depth"), heldout=ids[:2], distill_tokens=256,
                       search_tokens=64, seqlen=16, batch_size=2)
    assert report.distill_tokens == 256  # two searches of 64, then the rest for the chosen one


def test_a_bfloat16_folder_is_pruned_and_written_in_bfloat16(tmp_path):
    from prunekit.llm.models import load_causal_lm

    folder = tiny_llama_folder(tmp_path / "src")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16)
    model.save_pretrained(folder)
    loaded, _ = load_causal_lm(folder, cache_dir=False)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_weights_and_text_that_do_not_load_are_named(tmp_path):
    from prunekit.llm.data import text_tokens
    from prunekit.llm.models import load_causal_lm

    folder = tiny_llama_folder(tmp_path / "src")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PruneError, match=r"the model could not be loaded: SafetensorError"):
        load_causal_lm(folder, cache_dir=False)
    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(PruneError, match="is not UTF-8 text"):
        text_tokens(text, None)


def test_offloaded_outputs_get_the_modes_mkdir_and_open_give(tmp_path):
    from prunekit.llm.offload import prune_offloaded

    folder = tiny_llama_folder(tmp_path / "src", num_hidden_layers=2)
    vocab = transformers.AutoConfig.from_pretrained(folder).vocab_size
    old = os.umask(0o022)
    try:
        prune_offloaded(folder, tmp_path / "out", token_ids(4, 16, vocab=vocab, seed=0), offload="disk", method="wanda",
                        reconstruct=0, self_calibration=0.0)
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert {f.stat().st_mode & 0o777 for f in (tmp_path / "out").iterdir() if f.is_file()} == {0o644}
