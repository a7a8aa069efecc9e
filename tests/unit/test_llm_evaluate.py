"""Sentence embeddings, embedding fidelity and encoder calibration on a tiny random BERT (offline)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from prunekit.errors import PruneError, PruneTypeError  # noqa: E402
from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.evaluate import (  # noqa: E402
    FidelityReport,
    compare_embeddings,
    embedding_fidelity,
    encoder_calibration,
    sentence_embeddings,
)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the lord god and of to in that he said unto his i shall for they be is him not them with all thou thy "
    "was which my me but have from ye out were upon man by came day house king people land son israel "
    "spake moses saying went before children hand heart earth come go behold let"
).split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return transformers.BertTokenizer(str(path), model_max_length=64)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(40)]


def _bert(seed: int = 0) -> torch.nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


@pytest.fixture(scope="module")
def bert():
    return _bert(0)


@torch.no_grad()
def _perturbed(model: torch.nn.Module, scale: float, seed: int = 1) -> torch.nn.Module:
    """A copy with Gaussian noise of ``scale`` x each block weight's std added to it."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for name, p in out.named_parameters():
        if name.startswith("encoder.") and p.dim() == 2:
            p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    return out


# ------------------------------------------------------------------------------ embeddings


def test_mean_pooling_is_the_masked_mean_of_a_padded_batch(bert, tok, texts):
    batch = texts[:6]
    enc = tok(batch, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(1) / mask.sum(1)

    got = sentence_embeddings(bert, tok, batch, normalize=False, batch_size=4)
    assert got.shape == (6, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # normalised: unit rows in the same directions
    unit = sentence_embeddings(bert, tok, batch)
    torch.testing.assert_close(unit, F.normalize(expected, dim=1), atol=1e-5, rtol=1e-5)
    # one text alone (no padding) gives the same embedding as inside the padded batch
    alone = torch.cat([sentence_embeddings(bert, tok, [t], normalize=False) for t in batch])
    torch.testing.assert_close(alone, expected, atol=1e-5, rtol=1e-5)


def test_cls_pooling_order_and_truncation(bert, tok, texts):
    enc = tok(texts[:5], padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = bert(**enc).last_hidden_state[:, 0]
    torch.testing.assert_close(sentence_embeddings(bert, tok, texts[:5], pooling="cls", normalize=False), cls, atol=1e-5, rtol=1e-5)
    # rows follow the order of the texts, whatever the batching
    fwd = sentence_embeddings(bert, tok, texts, batch_size=7)
    back = sentence_embeddings(bert, tok, texts[::-1], batch_size=3)
    torch.testing.assert_close(back, fwd.flip(0), atol=1e-5, rtol=1e-5)
    # max_length truncates: a long text cut to 4 tokens equals its first two words with [CLS] [SEP]
    long_text = " ".join(WORDS[:10])
    torch.testing.assert_close(
        sentence_embeddings(bert, tok, [long_text], max_length=4), sentence_embeddings(bert, tok, [" ".join(WORDS[:2])])
    )


def test_eval_mode_no_grad_and_training_flag_restored(tok, texts):
    model = _bert(0).train()
    a = sentence_embeddings(model, tok, texts[:8])
    b = sentence_embeddings(model, tok, texts[:8])
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(a, b)  # dropout was off
    assert not a.requires_grad


# -------------------------------------------------------------------------------- fidelity


def test_identical_models_are_perfectly_faithful(bert, tok, texts):
    report = embedding_fidelity(bert, copy.deepcopy(bert), tok, texts)
    assert isinstance(report, FidelityReport)
    assert report.n_texts == len(texts) and report.n_pairs == len(texts) * (len(texts) - 1) // 2
    for v in (report.mean_cosine, report.median_cosine, report.p05_cosine, report.min_cosine):
        assert v == pytest.approx(1.0, abs=1e-5)
    assert report.neighbour_agreement == 1.0
    assert report.similarity_spearman == pytest.approx(1.0, abs=1e-9)


def test_duplicate_texts_do_not_break_neighbour_agreement(bert, tok, texts):
    # Each text twice: every text's nearest neighbour is its duplicate, a tie with itself.
    doubled = texts[:10] * 2
    report = embedding_fidelity(bert, bert, tok, doubled, batch_size=3)
    assert report.neighbour_agreement == 1.0


def test_precomputed_reference_embeddings(bert, tok, texts):
    cand = _perturbed(bert, 0.3)
    ref = sentence_embeddings(bert, tok, texts)
    assert embedding_fidelity(ref, cand, tok, texts) == embedding_fidelity(bert, cand, tok, texts)
    # the pooling options apply to the model side
    cls_ref = sentence_embeddings(bert, tok, texts, pooling="cls")
    assert embedding_fidelity(cls_ref, bert, tok, texts, pooling="cls").mean_cosine == pytest.approx(1.0, abs=1e-5)


def test_heavier_perturbation_means_lower_fidelity(bert, tok, texts):
    ref = sentence_embeddings(bert, tok, texts)
    light = embedding_fidelity(ref, _perturbed(bert, 0.05), tok, texts)
    heavy = embedding_fidelity(ref, _perturbed(bert, 1.0), tok, texts)
    assert heavy.mean_cosine < light.mean_cosine < 1.0
    assert heavy.p05_cosine < light.p05_cosine
    assert heavy.min_cosine <= heavy.p05_cosine <= heavy.median_cosine <= 1.0
    assert heavy.similarity_spearman < light.similarity_spearman
    assert heavy.neighbour_agreement <= light.neighbour_agreement


def test_wanda_half_sparse_beats_an_unrelated_model(bert, tok, texts):
    calib = encoder_calibration(tok, texts, n=8, seqlen=32, seed=0)
    pruned = copy.deepcopy(bert)
    report = prune_llm(pruned, calib, method="wanda", sparsity=0.5)
    assert report.overall_sparsity == pytest.approx(0.5)
    ref = sentence_embeddings(bert, tok, texts)
    fid = embedding_fidelity(ref, pruned, tok, texts)
    other = embedding_fidelity(ref, _bert(seed=123), tok, texts)
    assert fid.mean_cosine < 0.9999 and fid.similarity_spearman < 0.9999
    assert fid.mean_cosine > other.mean_cosine
    assert fid.similarity_spearman > other.similarity_spearman
    assert fid.neighbour_agreement > other.neighbour_agreement
    for r in (fid, other):
        assert -1.0 <= r.min_cosine <= r.mean_cosine <= 1.0 and -1.0 <= r.similarity_spearman <= 1.0


def test_compare_embeddings_spearman_ties_and_pair_sampling():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(30, 8, generator=g)
    cand = (ref + 0.5 * torch.randn(30, 8, generator=g)).round()  # rounding creates tied similarities
    cand[3] = cand[4]
    rep = compare_embeddings(ref, cand)
    r, c = F.normalize(ref, dim=1), F.normalize(cand, dim=1)
    i, j = torch.triu_indices(30, 30, offset=1)
    expected = stats.spearmanr((r[i] * r[j]).sum(1).numpy(), (c[i] * c[j]).sum(1).numpy()).statistic
    assert rep.similarity_spearman == pytest.approx(expected, abs=1e-6)
    cos = (r * c).sum(1).double()
    assert rep.mean_cosine == pytest.approx(float(cos.mean()), abs=1e-6)
    assert rep.p05_cosine == pytest.approx(float(torch.quantile(cos, 0.05)), abs=1e-6)
    # more pairs than max_pairs: a seeded sample of exactly max_pairs pairs
    a, b = compare_embeddings(ref, cand, max_pairs=100, seed=1), compare_embeddings(ref, cand, max_pairs=100, seed=1)
    assert a.n_pairs == 100 and a == b
    assert a.similarity_spearman == pytest.approx(rep.similarity_spearman, abs=0.2)


def test_neighbour_agreement_counts_changed_neighbours():
    # Points on a line: 0 and 1 are each other's neighbours, so are 2 and 3, and 4's is 3.
    ref = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99], [-0.5, 0.87]])
    cand = ref.clone()
    cand[4] = torch.tensor([0.87, 0.5])  # 4 moves next to 0 and 1: its neighbour becomes 1
    rep = compare_embeddings(ref, cand)
    assert rep.neighbour_agreement == pytest.approx(4 / 5)
    assert rep.n_texts == 5 and rep.n_pairs == 10


# ----------------------------------------------------------------------------- calibration


def test_encoder_calibration_packs_consecutive_texts(tok, texts):
    calib = encoder_calibration(tok, texts, n=6, seqlen=24, seed=3)
    assert calib.shape == (6, 24) and calib.dtype == torch.long
    assert torch.equal(calib, encoder_calibration(tok, texts, n=6, seqlen=24, seed=3))
    assert not torch.equal(calib, encoder_calibration(tok, texts, n=6, seqlen=24, seed=4))
    assert (calib[:, 0] == tok.cls_token_id).all()  # every window starts at a text boundary
    assert (calib != tok.pad_token_id).all()  # no padding
    ids = [tok(t)["input_ids"] for t in texts]

    def packed(start: int) -> list[int]:
        return [i for k in range(len(texts)) for i in ids[(start + k) % len(texts)]][:24]

    # every window is the concatenation of consecutive texts from some start text, cut at seqlen
    assert all(any(window == packed(s) for s in range(len(texts))) for window in calib.tolist())
    # past the last text the packing wraps around to the first
    a, b = tok("the lord")["input_ids"], tok("god said")["input_ids"]
    wrapped = encoder_calibration(tok, ["the lord", "god said"], n=6, seqlen=6, seed=0).tolist()
    assert {tuple(w) for w in wrapped} == {tuple((a + b)[:6]), tuple((b + a)[:6])}


# ---------------------------------------------------------------------------------- errors


def test_errors_name_the_bad_value(bert, tok, texts):
    with pytest.raises(PruneError, match="at least 1 text; got 0"):
        sentence_embeddings(bert, tok, [])
    with pytest.raises(PruneTypeError, match="list of strings; got str"):
        sentence_embeddings(bert, tok, "a single string")
    with pytest.raises(PruneTypeError, match="index 1: int"):
        sentence_embeddings(bert, tok, ["the lord", 7])
    with pytest.raises(PruneError, match=r"pooling must be one of 'mean', 'cls'; got 'max'"):
        sentence_embeddings(bert, tok, texts, pooling="max")
    with pytest.raises(PruneError, match=r"batch_size must be an integer >= 1; got 0"):
        sentence_embeddings(bert, tok, texts, batch_size=0)
    with pytest.raises(PruneError, match=r"max_length must be an integer >= 1; got -1"):
        sentence_embeddings(bert, tok, texts, max_length=-1)
    with pytest.raises(PruneTypeError, match="normalize must be True or False; got 'yes'"):
        sentence_embeddings(bert, tok, texts, normalize="yes")
    with pytest.raises(PruneTypeError, match="nn.Module encoder; got dict"):
        sentence_embeddings({}, tok, texts)
    with pytest.raises(PruneTypeError, match="tokenizer .*; got str"):
        sentence_embeddings(bert, "bert-base-uncased", texts)
    small = transformers.BertModel(transformers.BertConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1,
                                                           num_attention_heads=4, intermediate_size=64))
    with pytest.raises(PruneError, match=f"tokenizer has {len(tok)} tokens .* embeds only 10"):
        sentence_embeddings(small, tok, texts)


def test_fidelity_errors_name_the_mismatch(bert, tok, texts):
    wide = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    ))
    with pytest.raises(PruneError, match="dimension 32, candidate embeddings 48"):
        embedding_fidelity(bert, wide, tok, texts)
    with pytest.raises(PruneError, match=r"shape \(5, 32\); expected \[40, dim\]"):
        embedding_fidelity(torch.zeros(5, 32), bert, tok, texts)
    with pytest.raises(PruneError, match="at least 3 texts; got 2"):
        embedding_fidelity(bert, bert, tok, texts[:2])
    with pytest.raises(PruneTypeError, match="candidate must be an encoder .*; got list"):
        embedding_fidelity(bert, [1, 2], tok, texts)
    with pytest.raises(PruneError, match="cover 4 texts, candidate embeddings 5"):
        compare_embeddings(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(PruneTypeError, match=r"torch.int64 tensor of shape \(4, 3\)"):
        compare_embeddings(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(PruneError, match=r"max_pairs must be an integer >= 1; got 0"):
        compare_embeddings(torch.randn(4, 3), torch.randn(4, 3), max_pairs=0)


def test_calibration_errors(tok, texts):
    with pytest.raises(PruneError, match="at least 1 text; got 0"):
        encoder_calibration(tok, [], n=2, seqlen=8)
    with pytest.raises(PruneError, match=r"n must be an integer >= 1; got 0"):
        encoder_calibration(tok, texts, n=0, seqlen=8)
    with pytest.raises(PruneError, match="seqlen 65 exceeds the tokenizer's model_max_length 64"):
        encoder_calibration(tok, texts, n=2, seqlen=65)
    with pytest.raises(PruneError, match="hold 8 tokens in all, fewer than seqlen=20"):
        encoder_calibration(tok, ["the lord", "god said"], n=1, seqlen=20)
    with pytest.raises(PruneTypeError, match="seed must be an integer; got '0'"):
        encoder_calibration(tok, texts, n=2, seqlen=8, seed="0")
