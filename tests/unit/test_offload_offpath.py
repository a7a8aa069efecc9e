"""Offloaded pruning off the Llama-float32 path, and what bad input leaves behind.

Reference: :func:`prunekit.llm.prune_llm` on the same checkpoint held in memory; the
offloaded output is read back with stock ``from_pretrained``. Refusals must name the bad
value, and leave no folder behind, not even the parents of ``out`` they would have made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from llm_fixtures import token_ids  # noqa: E402

from prunekit import PruneError  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.offload import prune_offloaded  # noqa: E402
from prunekit.llm.offload_io import format_bytes, parse_bytes  # noqa: E402

COMMON = dict(batch_size=3, self_calibration=0.0, method="wanda", reconstruct=0)


def _qwen2(dtype: torch.dtype = torch.float32, tied: bool = False) -> torch.nn.Module:
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(cfg).eval().to(dtype)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return token_ids(6, 16, vocab=64, seed=1)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("offload", ["disk", "cpu"])
@pytest.mark.parametrize("dtype, tied, shard", [(torch.float32, True, "20KB"), (torch.bfloat16, False, None)])
def test_sharded_tied_and_bfloat16_checkpoints_equal_in_memory(ids, tmp_path, offload, dtype, tied, shard):
    src = tmp_path / "src"
    _qwen2(dtype, tied).save_pretrained(src, **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert len(list(src.glob("*.safetensors"))) > 1
    rep = prune_offloaded(src, tmp_path / "out", ids, offload=offload, **COMMON)
    got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ref = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    prune_llm(ref, ids, **COMMON)
    assert (got.lm_head.weight is got.model.embed_tokens.weight) == tied
    want = ref.state_dict()
    assert got.state_dict().keys() == want.keys()
    for k, v in got.state_dict().items():
        assert v.dtype == dtype and torch.equal(v, want[k]), k
    assert rep.report.overall_sparsity == pytest.approx(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("offpath") / "src"
    _qwen2().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("offload", ["disk", "cpu"])
@pytest.mark.parametrize("kw, match", [
    ({"method": "bogus"}, "method must be one of"),
    ({"sparsity": 1.5}, "sparsity must be"),
    ({"calibration": "out_of_vocab"}, r"token ids in \[\d+, \d+\], outside the model's vocabulary \[0, 63\]"),
])
def test_refusals_leave_no_parent_folders(source, ids, tmp_path, offload, kw, match):
    kw = dict(kw)
    calib = ids * 50 if kw.pop("calibration", None) else ids
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(PruneError, match=match):
        prune_offloaded(source, out, calib, offload=offload, **{**COMMON, **kw})
    assert _tree(tmp_path) == []


def test_too_small_a_budget_names_sizes_that_are_not_zero(source, ids, tmp_path):
    with pytest.raises(PruneError, match=r"below what one block needs \(block [1-9][\d.]* KiB") as info:
        prune_offloaded(source, tmp_path / "out", ids, max_memory="10KB", **COMMON)
    assert " 0 MiB" not in str(info.value)
    with pytest.raises(PruneError, match=r"10000 bytes is below one block's weights \(\d+ bytes, [1-9][\d.]* KiB\)"):
        prune_offloaded(source, tmp_path / "out", ids, offload="cpu", max_memory="10KB", **COMMON)
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("value", ["0.5", "0.4B", "0.0001KB"])
def test_parse_bytes_refuses_less_than_one_byte(value):
    with pytest.raises(PruneError, match=f"max_memory '{value}' is not a memory size"):
        parse_bytes("max_memory", value)


@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (37120, "36.2 KiB"),
                                     (3 * 2**20, "3.0 MiB"), (2**31, "2.0 GiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
