"""Every LLM pruning path leaves a model that ``save_pretrained`` → stock ``from_pretrained``
reloads exactly: same logits, zeros kept, no missing or unexpected keys."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llm_fixtures import block_linears, tiny_llama, token_ids  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.errors import PruneError  # noqa: E402
from prunekit.llm import prune_llm, prune_structured  # noqa: E402

VOCAB, SEQLEN = 96, 16


@pytest.fixture(scope="module")
def dense():
    """2 blocks, hidden 32, 4 heads in 2 KV groups, MLP 64."""
    return tiny_llama(vocab_size=VOCAB, max_position_embeddings=32, initializer_range=0.02)


@pytest.fixture(scope="module")
def calib():
    return token_ids(4, SEQLEN, vocab=VOCAB, seed=1)


def _roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path)
    again, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                                   output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = token_ids(2, SEQLEN, vocab=VOCAB, seed=2)
    with torch.no_grad():
        a = model(input_ids=ids, use_cache=False).logits
        b = again.eval()(input_ids=ids, use_cache=False).logits
    assert torch.equal(a, b)
    return again


def _zeros(model) -> int:
    return sum(int((m.weight == 0).sum()) for m in block_linears(model).values())


PATHS = [
    dict(),  # the defaults: SparseGPT, half self-written calibration, 2 epochs of reconstruction
    dict(method="ria", self_calibration=0),
    dict(method="sparsegpt", shrink=0.5, reconstruct=3, reconstruct_holdout=0.5, self_calibration=1.0, batch_size=2),
    dict(method="magnitude"),
    dict(method="wanda"),
    dict(method="sparsegpt"),
    dict(method="wanda", pattern="2:4"),
    dict(method="sparsegpt", pattern="4:8"),
    dict(method="wanda", allocation="owl"),
    dict(method="sparsegpt", sequential=True),
    dict(method="wanda", reconstruct=1),
]


@pytest.mark.parametrize("keep_masks", [False, True])
@pytest.mark.parametrize("options", PATHS, ids=lambda o: "-".join(str(v) for v in o.values()) or "defaults")
def test_oneshot_saves_and_reloads_exactly(dense, calib, tmp_path, options, keep_masks):
    model = copy.deepcopy(dense)
    report = prune_llm(model, calib, sparsity=0.5, keep_masks=keep_masks, **options)
    assert report.committed is not keep_masks
    assert bool(pk.masks(model)) is keep_masks
    again = _roundtrip(model, tmp_path)
    assert _zeros(again) == _zeros(model) > 0
    assert bool(pk.masks(model)) is keep_masks  # saving a masked model leaves its masks in place


def test_masked_model_fine_tuned_then_saved(dense, calib, tmp_path):
    """keep_masks=True, a few optimizer steps: zeros stay zero and the save is exact."""
    model = copy.deepcopy(dense).train()
    prune_llm(model, calib, method="wanda", sparsity=0.5, keep_masks=True)
    zeros = _zeros(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(input_ids=calib, labels=calib, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert _zeros(model) >= zeros
    again = _roundtrip(model, tmp_path)
    assert _zeros(again) == _zeros(model)


def test_copies_of_a_masked_model_save_themselves(dense, calib, tmp_path):
    model = copy.deepcopy(dense)
    prune_llm(model, calib, method="magnitude", sparsity=0.5, keep_masks=True)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.model.layers[0].mlp.down_proj.parametrizations.weight.original.mul_(2)
    again = _roundtrip(twin, tmp_path / "twin")
    w = again.model.layers[0].mlp.down_proj.weight
    assert torch.equal(w, twin.model.layers[0].mlp.down_proj.weight.detach())
    assert not torch.equal(w, model.model.layers[0].mlp.down_proj.weight.detach())
    restored = pickle.loads(pickle.dumps(model))
    _roundtrip(restored, tmp_path / "pickled")


def test_structured_after_oneshot_saves_exactly(dense, calib, tmp_path):
    model = copy.deepcopy(dense)
    prune_llm(model, calib, method="wanda", sparsity=0.5)
    report = prune_structured(model, calib, heads=0.5, neurons=0.25)
    _roundtrip(model, tmp_path)
    cov = report.coverage
    assert {k.name for k in cov.skipped} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all(k.by_choice for k in cov.skipped) and cov.covered + cov.skipped_numel < cov.total


def test_keep_masks_must_be_a_bool(dense, calib):
    model = copy.deepcopy(dense)
    with pytest.raises(PruneError, match="keep_masks"):
        prune_llm(model, calib, keep_masks="yes")
    assert not pk.masks(model)
